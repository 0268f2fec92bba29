"""The OpenAPI 3.1 document of the admin API (README "Admin API"), built from the route table
(``gateway.admin.ROUTES``), so it lists exactly what the app serves.

Request schemas take their limits from ``gateway.keys.validation`` so the document and the
validators cannot drift apart; ``tests/admin/test_tenancy.py`` checks that every route of the
admin app is documented and ``tests/admin/test_schemathesis.py`` runs schemathesis against the
live app.

Design decision: ``GET /admin/v1/openapi.json`` requires an admin key like every other admin
endpoint. README "Admin API": every admin endpoint takes ``Authorization: Bearer <admin key>``;
only ``/healthz``, ``/readyz`` and ``/metrics`` are open (load balancers and scrapers carry no key),
and a public schema would advertise the admin surface to anyone who can reach the listener.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from aiohttp import web

from gateway.admin.handler import json_response
from gateway.admin.route import JSON, UNSCOPED, Reply, Route, Schema, ref
from gateway.admin.state import OPENAPI
from gateway.client_address import ALLOWED_IPS_MAX
from gateway.keys.leaks import LABELS
from gateway.keys.model import (
    ENFORCEMENTS,
    ENVIRONMENTS,
    KEY_TYPES,
    OUTCOMES,
    PERMISSION_PATTERN,
    REFILL_INTERVALS,
    ROLES,
    STATUSES,
)
from gateway.keys.validation import (
    COUNT_MAX,
    DESCRIPTION_MAX,
    EMAIL_MAX,
    EMAIL_PATTERN,
    FREE_TEXT_PATTERN,
    GRACE_MAX,
    KEY_MAX,
    NAME_MAX,
    NAME_PATTERN,
    ORIGIN_PATTERN,
    PLAIN_TEXT_PATTERN,
    PLAN_MAX,
    RESOURCE_ID_MAX,
    USER_ID_MAX,
)
from gateway.problem import PROBLEM_JSON

PATH_PARAMETER = re.compile(r"\{(\w+)\}")


def _nullable(schema: Schema) -> Schema:
    return {"oneOf": [schema, {"type": "null"}]}


TIMESTAMP: Schema = {"type": "string", "format": "date-time"}
NAME: Schema = {"type": "string", "minLength": 1, "maxLength": NAME_MAX, "pattern": NAME_PATTERN}
PERMISSIONS: Schema = {"type": "array", "items": {"type": "string", "pattern": PERMISSION_PATTERN}}
COUNT: Schema = {"type": "integer", "minimum": 1, "maximum": COUNT_MAX}
# scheme://host[:port] or scheme://*.domain[:port]; gateway.origins also checks host and port.
ORIGIN: Schema = {"type": "string", "pattern": ORIGIN_PATTERN}

SCOPE: Schema = {
    "type": "object",
    "additionalProperties": False,
    "required": ["resource_id", "operations"],
    "properties": {
        "resource_id": {"type": "string", "minLength": 1, "maxLength": RESOURCE_ID_MAX,
                        "pattern": PLAIN_TEXT_PATTERN},
        "operations": {**PERMISSIONS, "minItems": 1},
    },
}

EMAIL: Schema = {"type": "string", "maxLength": EMAIL_MAX, "pattern": EMAIL_PATTERN,
                 "description": "compared without regard to case; stored lower-cased"}
ROLE: Schema = {"type": "string", "enum": list(ROLES)}

IP: Schema = {"type": "string", "anyOf": [{"format": "ipv4"}, {"format": "ipv6"}]}
# an address or a CIDR without host bits (README "IP allowlists"); canonical form when stored
IP_OR_CIDR: Schema = {"type": "string", "anyOf": [
    {"format": "ipv4"}, {"format": "ipv6"},
    {"pattern": r"^[0-9A-Fa-f:.]+/[0-9]{1,3}$"},
]}

# PATCH fields; create adds the ones that cannot change after creation.
UPDATABLE: dict[str, Schema] = {
    "name": NAME,
    "description": _nullable(
        {"type": "string", "maxLength": DESCRIPTION_MAX, "pattern": FREE_TEXT_PATTERN}
    ),
    "permissions": PERMISSIONS,
    "scopes": _nullable({"type": "array", "items": ref("Scope")}),
    "allowed_origins": _nullable({"type": "array", "items": ORIGIN}),
    "allowed_ips": _nullable({"type": "array", "maxItems": ALLOWED_IPS_MAX, "items": IP_OR_CIDR,
                              "description": "empty or null: any address"}),
    "enforcement": {"type": "string", "enum": list(ENFORCEMENTS),
                    "description": "shadow: the key's own rules refuse no one (README \"Shadow "
                                   "mode\")"},
    "rate_limit_override": _nullable(COUNT),
    "concurrency_limit": _nullable(COUNT),
    "expires_at": _nullable({**TIMESTAMP, "description": "RFC 3339, in the future"}),
    "credits": _nullable({**ref("CreditsSet"), "description": "README \"Credits\": a set of "
                          "the balance (and the refill); null: the key spends no credits"}),
}
OWNER: dict[str, Schema] = {
    "user_id": _nullable(
        {"type": "string", "minLength": 1, "maxLength": USER_ID_MAX, "pattern": PLAIN_TEXT_PATTERN,
         "description": "the owner: a member's usr_ id (which must exist), or any other string "
                        "for a service key"}
    ),
    "user_email": {**EMAIL, "description": "a member's email: the key's user_id becomes the "
                                           "member's (404 member_not_found for anyone else)"},
}
CREATE_ONLY: dict[str, Schema] = {
    "environment": {"type": "string", "enum": list(ENVIRONMENTS)},
    "project_id": _nullable({"type": "string", "minLength": 1}),
    "key_type": {"type": "string", "enum": list(KEY_TYPES)},
}


def _body(properties: dict[str, Schema], required: list[str]) -> Schema:
    return {"type": "object", "additionalProperties": False, "required": required,
            "properties": properties}


def _object(properties: dict[str, Schema]) -> Schema:
    return {"type": "object", "required": list(properties), "properties": properties}


_STRING = {"type": "string"}
_OPT_STRING = {"type": ["string", "null"]}
_OPT_TIME = _nullable(TIMESTAMP)
_COUNT = {"type": "integer", "minimum": 0}
_WINDOW = {  # a usage series (README "Usage over time")
    "granularity": {"enum": ["minute", "hour", "day"]},
    "from": TIMESTAMP,
    "to": TIMESTAMP,
    "series": {"type": "array", "items": ref("UsageBucket"),
               "description": "one entry per bucket of [from, to), zeros included"},
    "totals": ref("UsageCounts"),
}
KEY_OBJECT: dict[str, Schema] = {
    "key_id": _STRING, "name": _STRING, "description": _STRING,
    "workspace_id": _OPT_STRING, "project_id": _OPT_STRING, "user_id": _OPT_STRING,
    "key_type": {"type": "string", "enum": list(KEY_TYPES)},
    "environment": {"type": "string", "enum": list(ENVIRONMENTS)},
    "key_prefix": _STRING, "hint": _STRING,
    "permissions": {"type": "array", "items": _STRING},
    "scopes": {"type": "array", "items": ref("Scope")},
    "allowed_origins": {"type": "array", "items": _STRING},
    "allowed_ips": {"type": "array", "items": _STRING},
    "enforcement": {"type": "string", "enum": list(ENFORCEMENTS)},
    "rate_limit_override": {"type": ["integer", "null"]},
    "concurrency_limit": {"type": ["integer", "null"]},
    "status": {"type": "string", "enum": list(STATUSES)},
    "expires_at": _OPT_TIME, "last_used_at": _OPT_TIME, "created_at": TIMESTAMP,
    "created_by": _OPT_STRING, "revoked_at": _OPT_TIME, "revoked_by": _OPT_STRING,
    "rotated_from": _OPT_STRING,
    "organization_id": {**_OPT_STRING, "description": "the workspace_id (seed 003)"},
    "internal_id": {"type": "string", "description": "int_…: stable, never reused"},
    "principal_id": {"type": "string", "description": "who the key acts for: the owning "
                     "member's usr_ id, else svc_… (same across rotations); sent upstream as "
                     "X-Principal-Id"},
    "disabled_at": _OPT_TIME,
    "subscription_id": {**_OPT_STRING, "description": "the workspace's subscription"},
    "credits": _nullable(ref("Credits")),
}
MEMBER_OBJECT: dict[str, Schema] = {"user_id": _STRING, "email": _STRING, "role": ROLE,
                                    "workspace_id": _STRING, "created_at": TIMESTAMP}
TENANT: dict[str, Schema] = {"id": _STRING, "name": _STRING, "workspace_id": _STRING,
                             "created_at": TIMESTAMP}

REFILL: Schema = {
    "type": "object", "additionalProperties": False, "required": ["amount", "interval"],
    "properties": {
        "amount": {**COUNT, "description": "the balance each refill sets"},
        "interval": {"type": "string", "enum": list(REFILL_INTERVALS),
                     "description": "at each UTC day's or month's start"},
    },
}
# README "Leaked keys"
REPORT: Schema = {
    "type": "array",
    "description": "GitHub's secret-scanning partner payload: one entry per match",
    "items": {
        "type": "object",
        "required": ["token", "type"],
        "properties": {
            "token": {"type": "string", "description": "the leaked token, as found"},
            "type": {"type": "string", "description": "the name of the token's format"},
            "url": {"type": ["string", "null"], "description": "where it was found"},
            "source": {"type": ["string", "null"],
                       "description": "content, commit, pull_request, npm, ..."},
        },
    },
}
LABELLED: Schema = {
    "type": "array",
    "items": {
        "type": "object",
        "required": ["token_hash", "token_type", "label"],
        "properties": {
            "token_hash": {"type": "string", "pattern": "^[0-9a-f]{64}$",
                           "description": "hex SHA-256 of the token"},
            "token_type": {"type": "string"},
            "label": {"type": "string", "enum": list(LABELS),
                      "description": "true_positive: one of our keys (now revoked)"},
        },
    },
}

SCHEMAS: dict[str, Schema] = {
    "Scope": SCOPE,
    "CreditsSet": {
        "type": "object", "additionalProperties": False, "required": ["remaining"],
        "properties": {"remaining": {"type": "integer", "minimum": 0, "maximum": COUNT_MAX},
                       "refill": _nullable(REFILL)},
    },
    "Credits": _object({
        "remaining": {"type": "integer", "description": "the live balance (the limiter's)"},
        "refill": _nullable(REFILL),
    }),
    "CreditsTopUp": {
        "type": "object", "additionalProperties": False, "minProperties": 1,
        "maxProperties": 1, "description": "exactly one of add or set",
        "properties": {"add": COUNT,
                       "set": {"type": "integer", "minimum": 0, "maximum": COUNT_MAX}},
    },
    "Key": {**_object(KEY_OBJECT), "additionalProperties": False},
    "CreatedKey": {
        **_object({**KEY_OBJECT, "key": {"type": "string", "description": "plaintext, once"}}),
        "additionalProperties": False,
    },
    "KeyList": _object({
        "results": {"type": "array", "items": ref("Key")},
        "total": {"type": "integer", "minimum": 0},
        "next_cursor": _OPT_STRING,
    }),
    "KeyCreate": _body({**UPDATABLE, **OWNER, **CREATE_ONLY}, ["name"]),
    "MemberKeyCreate": _body({**UPDATABLE, **CREATE_ONLY}, ["name"]),
    "Member": _object(MEMBER_OBJECT),
    "MemberCreate": _body({"email": EMAIL, "role": ROLE}, ["email", "role"]),
    "MemberUpdate": _body({"role": ROLE}, ["role"]),
    "RemovedMember": _object({**MEMBER_OBJECT, "revoked_keys": {
        "type": "array", "items": _STRING, "description": "the member's keys revoked with it"}}),
    "KeyUpdate": _body(UPDATABLE, []),
    "Rotate": _body({"grace_period_seconds": _nullable(
        {"type": "integer", "minimum": 0, "maximum": GRACE_MAX})}, []),
    "NamedCreate": _body({"name": NAME}, ["name"]),
    "SubscriptionPut": _body({"plan": {"type": "string", "minLength": 1,
                                       "maxLength": PLAN_MAX}}, ["plan"]),
    "Subscription": _object({
        "subscription_id": {**_OPT_STRING, "description": "null: on default_plan"},
        "workspace_id": _STRING, "plan": _OPT_STRING, "started_at": _OPT_TIME,
    }),
    "Quota": _object({
        "workspace_id": _STRING, "plan": _OPT_STRING,
        "day": ref("QuotaPeriod"), "month": ref("QuotaPeriod"),
        "shadow": {"type": "boolean", "description": "the plan's quota is in shadow: counted, "
                   "refusing no one (README \"Shadow mode\")"},
    }),
    "QuotaPeriod": _object({
        "limit": {"type": ["integer", "null"], "description": "null: no quota for the period"},
        "used": {"type": "integer", "minimum": 0, "description": "live: the limiter's counter"},
        "reset": {"type": "integer", "minimum": 0, "description": "seconds to the period's end"},
    }),
    "Workspace": _object({"id": _STRING, "name": _STRING, "default_project_id": _STRING,
                          "created_at": TIMESTAMP}),
    "Project": _object(TENANT),
    "Namespace": _object(TENANT),
    "Usage": _object({
        "key_id": _STRING,
        **_WINDOW,
        "last_used_at": _OPT_TIME,
        "requests": {"type": "integer", "minimum": 0,
                     "description": "lifetime: requests that reached the upstream or "
                                    "passed a check"},
        "rate_limited": {"type": "integer", "minimum": 0,
                         "description": "lifetime: refused by the rate limit or the quota"},
    }),
    "KeyCheckAsk": _body({
        "key": {"type": "string", "minLength": 1, "maxLength": KEY_MAX,
                "description": "the plaintext key to check (never echoed back)"},
        "permissions": {**PERMISSIONS, "description": "each must be granted (through "
                        "permissions.implies)"},
        "resource_id": {"type": "string", "minLength": 1, "maxLength": RESOURCE_ID_MAX,
                        "pattern": PLAIN_TEXT_PATTERN,
                        "description": "with operation: checked against the key's scopes"},
        "operation": {"type": "string", "pattern": PERMISSION_PATTERN,
                      "description": "with resource_id"},
        "ip": {**IP, "description": "the client address the check is about: a key with "
               "allowed_ips is ip_not_allowed without it"},
    }, ["key"]) | {"dependentRequired": {"resource_id": ["operation"],
                                         "operation": ["resource_id"]}},
    "KeyCheck": _object({
        "valid": {"type": "boolean", "description": "code is ok: the request path would admit "
                  "it (one request was spent)"},
        "code": {"type": "string", "description": "ok, or the request path's error code "
                 "(README \"Errors\")"},
        "key_id": _OPT_STRING, "workspace_id": _OPT_STRING, "project_id": _OPT_STRING,
        "principal_id": _OPT_STRING,
        "permissions": {"type": "array", "items": _STRING},
        "ratelimit": _nullable(_object({
            "limit": {"type": "integer", "minimum": 0},
            "remaining": {"type": "integer", "minimum": 0},
            "reset": {"type": "integer", "minimum": 0, "description": "seconds"},
        })),
        "shadow_refused": {**_OPT_STRING, "description": "the code a shadow rule would have "
                           "answered (README \"Shadow mode\"); the check itself is ok"},
        "credits_remaining": {"type": ["integer", "null"], "description": "the key's credits "
                              "after this check (README \"Credits\"); null: it has none"},
    }),
    "WorkspaceUsage": _object({
        "workspace_id": _STRING,
        **_WINDOW,
        "top_keys": {"type": "array", "maxItems": 10, "items": _object({
            "key_id": _STRING, "name": _STRING, "total": _COUNT,
        })},
        "quota": _object({"plan": _OPT_STRING, "day": ref("QuotaPeriod"),
                          "month": ref("QuotaPeriod"), "shadow": {"type": "boolean"}}),
    }),
    "UsageCounts": _object({name: _COUNT for name in OUTCOMES}),
    "UsageBucket": _object({"start": TIMESTAMP, **{name: _COUNT for name in OUTCOMES}}),
    "AuditEvent": _object({
        "id": {"type": "integer"}, "at": TIMESTAMP, "actor": _OPT_STRING,
        "action": _STRING, "target": _STRING, "workspace_id": _OPT_STRING,
        "changes": {"type": "object", "description": "changed fields; never a secret"},
    }),
    "Problem": {
        "type": "object",
        "description": "RFC 9457 problem details with the gateway's extension members",
        "required": ["type", "title", "status", "detail", "code", "request_id"],
        "properties": {
            "type": _STRING, "title": _STRING, "status": {"type": "integer"},
            "detail": _STRING, "code": _STRING, "request_id": _STRING,
            "errors": {"type": "object", "additionalProperties": _STRING,
                       "description": "validation_error: every failing field -> message"},
        },
    },
}
SCHEMAS.update(SecretScanningReport=REPORT, SecretScanningLabels=LABELLED)
for _item in ("Workspace", "Project", "Namespace", "Member", "AuditEvent"):
    SCHEMAS[f"{_item}List"] = _object({"results": {"type": "array", "items": ref(_item)},
                                       "total": {"type": "integer", "minimum": 0}})

ERRORS = {
    "400": "validation_error (with `errors`) or bad_request (body not JSON)",
    "401": "missing_api_key or invalid_api_key (unknown, revoked, expired or disabled admin key); "
           "invalid_signature: a secret-scanning report unsigned or not signed by a listed key",
    "403": "insufficient_permissions: the key is not an admin key",
    "404": "not_found: no such object, or one outside the caller's workspace; "
           "member_not_found: no such member in the workspace",
    "409": "conflict or key_limit_reached",
    "503": "store_unavailable: the key store is unreachable; signing_keys_unavailable: the "
           "public keys of secret-scanning reports cannot be fetched",
}


def _problem(description: str) -> Schema:
    return {"description": description, "content": {PROBLEM_JSON: {"schema": ref("Problem")}}}


def _snake(summary: str) -> str:
    return summary.lower().replace(" ", "_").replace("'", "")


def _operation(route: Route) -> Schema:
    replies = {
        reply.status: {"description": reply.description or route.summary,
                       "content": {reply.media_type: {"schema": reply.schema}}}
        for reply in route.replies
    }
    operation: Schema = {
        "summary": route.summary,
        "operationId": route.operation_id or _snake(route.summary),
        "parameters": [*route.query, *route.headers],
        "responses": {**replies, **{code: _problem(ERRORS[code]) for code in sorted(route.errors)}},
    }
    if route.body is not None:
        operation["requestBody"] = {"required": True,
                                    "content": {JSON: {"schema": ref(route.body)}}}
    if route.public:
        operation["security"] = []
    return operation


def _paths(routes: Iterable[Route]) -> dict[str, Schema]:
    paths: dict[str, Schema] = {}
    for route in routes:
        item = paths.setdefault(route.path, {})
        names = PATH_PARAMETER.findall(route.path)
        if names and not item:
            item["parameters"] = [
                {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
                for name in names
            ]
        item[route.method.lower()] = _operation(route)
    return paths


def build_openapi(routes: Iterable[Route]) -> dict[str, Any]:
    """The document served at ``GET /admin/v1/openapi.json``, for these routes."""
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "API-key gateway admin API",
            "version": "1",
            "description": "Manage workspaces, their members, projects, namespaces and API keys "
                           "(see the README, \"Admin API\"). "
                           "A workspace admin key sees its own workspace only: anything else "
                           "is a 404.",
        },
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                                           "description": "an admin key"}},
        },
        "security": [{"bearer": []}],
        "paths": _paths(routes),
    }


async def serve_openapi(request: web.Request) -> web.Response:
    return json_response(request.app[OPENAPI])


ROUTES = (
    Route("GET", "/admin/v1/openapi.json", serve_openapi, "This document",
          (Reply("200", {"type": "object"}, "OpenAPI 3.1"),), errors=UNSCOPED,
          operation_id="openapi"),
)
