"""The OpenAPI 3.1 document of the admin API (SPEC §6), built as plain data.

Request schemas take their limits from ``gateway.keys.validation`` so the document and the
validators cannot drift apart; ``tests/admin/test_openapi.py`` checks that every route of the
admin app is documented and runs schemathesis against the live app.

Design decision: ``GET /admin/v1/openapi.json`` requires an admin key like every other admin
endpoint. SPEC §6 says every admin endpoint takes ``Authorization: Bearer <admin key>``; only
``/healthz``, ``/readyz`` and ``/metrics`` are open (load balancers and scrapers carry no key),
and a public schema would advertise the admin surface to anyone who can reach the listener.
"""

from __future__ import annotations

from typing import Any

from gateway.keys.model import ENVIRONMENTS, KEY_TYPES, PERMISSION_PATTERN, STATUSES
from gateway.keys.rows import MAX_PAGE
from gateway.keys.validation import (
    COUNT_MAX,
    DESCRIPTION_MAX,
    FREE_TEXT_PATTERN,
    GRACE_MAX,
    NAME_MAX,
    NAME_PATTERN,
    ORIGIN_PATTERN,
    PLAIN_TEXT_PATTERN,
    RESOURCE_ID_MAX,
    USER_ID_MAX,
)
from gateway.problem import PROBLEM_JSON

JSON = "application/json"
Schema = dict[str, Any]


def _ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


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

# PATCH fields; create adds the ones that cannot change after creation.
UPDATABLE: dict[str, Schema] = {
    "name": NAME,
    "description": _nullable(
        {"type": "string", "maxLength": DESCRIPTION_MAX, "pattern": FREE_TEXT_PATTERN}
    ),
    "permissions": PERMISSIONS,
    "scopes": _nullable({"type": "array", "items": _ref("Scope")}),
    "allowed_origins": _nullable({"type": "array", "items": ORIGIN}),
    "rate_limit_override": _nullable(COUNT),
    "concurrency_limit": _nullable(COUNT),
    "expires_at": _nullable({**TIMESTAMP, "description": "RFC 3339, in the future"}),
}
CREATE_ONLY: dict[str, Schema] = {
    "user_id": _nullable(
        {"type": "string", "minLength": 1, "maxLength": USER_ID_MAX, "pattern": PLAIN_TEXT_PATTERN}
    ),
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
KEY_OBJECT: dict[str, Schema] = {
    "key_id": _STRING, "name": _STRING, "description": _STRING,
    "workspace_id": _OPT_STRING, "project_id": _OPT_STRING, "user_id": _OPT_STRING,
    "key_type": {"type": "string", "enum": list(KEY_TYPES)},
    "environment": {"type": "string", "enum": list(ENVIRONMENTS)},
    "key_prefix": _STRING, "hint": _STRING,
    "key_hash": {"type": "string", "description": "hex SHA-256 (or HMAC) of the key"},
    "permissions": {"type": "array", "items": _STRING},
    "scopes": {"type": "array", "items": _ref("Scope")},
    "allowed_origins": {"type": "array", "items": _STRING},
    "rate_limit_override": {"type": ["integer", "null"]},
    "concurrency_limit": {"type": ["integer", "null"]},
    "status": {"type": "string", "enum": list(STATUSES)},
    "expires_at": _OPT_TIME, "last_used_at": _OPT_TIME, "created_at": TIMESTAMP,
    "created_by": _OPT_STRING, "revoked_at": _OPT_TIME, "revoked_by": _OPT_STRING,
    "rotated_from": _OPT_STRING,
}
TENANT: dict[str, Schema] = {"id": _STRING, "name": _STRING, "workspace_id": _STRING,
                             "created_at": TIMESTAMP}

SCHEMAS: dict[str, Schema] = {
    "Scope": SCOPE,
    "Key": {**_object(KEY_OBJECT), "additionalProperties": False},
    "CreatedKey": {
        **_object({**KEY_OBJECT, "key": {"type": "string", "description": "plaintext, once"}}),
        "additionalProperties": False,
    },
    "KeyList": _object({
        "results": {"type": "array", "items": _ref("Key")},
        "total": {"type": "integer", "minimum": 0},
        "next_cursor": _OPT_STRING,
    }),
    "KeyCreate": _body({**UPDATABLE, **CREATE_ONLY}, ["name"]),
    "KeyUpdate": _body(UPDATABLE, []),
    "Rotate": _body({"grace_period_seconds": _nullable(
        {"type": "integer", "minimum": 0, "maximum": GRACE_MAX})}, []),
    "NamedCreate": _body({"name": NAME}, ["name"]),
    "Workspace": _object({"id": _STRING, "name": _STRING, "default_project_id": _STRING,
                          "created_at": TIMESTAMP}),
    "Project": _object(TENANT),
    "Namespace": _object(TENANT),
    "Usage": _object({
        "key_id": _STRING,
        "requests": {"type": "integer", "minimum": 0},
        "rate_limited": {"type": "integer", "minimum": 0},
        "last_used_at": _OPT_TIME,
    }),
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
for _item in ("Workspace", "Project", "Namespace", "AuditEvent"):
    SCHEMAS[f"{_item}List"] = _object({"results": {"type": "array", "items": _ref(_item)},
                                       "total": {"type": "integer", "minimum": 0}})

ERRORS = {
    "400": "validation_error (with `errors`) or bad_request (body not JSON)",
    "401": "missing_api_key or invalid_api_key (unknown, revoked or expired admin key)",
    "403": "insufficient_permissions: the key is not an admin key",
    "404": "not_found: no such object, or one outside the caller's workspace",
    "409": "conflict or key_limit_reached",
    "503": "store_unavailable: the key store is unreachable",
}


def _problem(description: str) -> Schema:
    return {"description": description, "content": {PROBLEM_JSON: {"schema": _ref("Problem")}}}


def _operation(
    summary: str, status: str, schema: str, *, body: str | None = None,
    params: list[Schema] | None = None, errors: tuple[str, ...] = ("401", "403", "404", "503"),
) -> Schema:
    operation: Schema = {
        "summary": summary,
        "operationId": summary.lower().replace(" ", "_").replace("'", ""),
        "parameters": params or [],
        "responses": {
            status: {"description": summary, "content": {JSON: {"schema": _ref(schema)}}},
            **{code: _problem(ERRORS[code]) for code in sorted(errors)},
        },
    }
    if body is not None:
        operation["requestBody"] = {"required": True,
                                    "content": {JSON: {"schema": _ref(body)}}}
    return operation


def _path_param(name: str) -> Schema:
    return {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}


def _query(name: str, schema: Schema, description: str) -> Schema:
    return {"name": name, "in": "query", "required": False, "schema": schema,
            "description": description}


LIMIT = _query("limit", {"type": "integer", "minimum": 1, "maximum": MAX_PAGE, "default": 50},
               "page size")
KEY_LIST_PARAMS = [
    _query("include_revoked", {"type": "boolean", "default": False},
           "also list revoked and expired keys"),
    _query("user_id", {"type": "string"}, "only keys of this owner"),
    _query("resource_id", {"type": "string"},
           "only keys whose scopes name this resource, or that have no scopes"),
    LIMIT,
    _query("cursor", {"type": "string"},
           "next_cursor of the previous page (opaque; empty means the first page)"),
]
BAD = ("400", "401", "403", "404", "503")
WRITE = (*BAD, "409")


def _paths() -> dict[str, Schema]:
    ws, key = "/admin/v1/workspaces/{workspace_id}", "/admin/v1/keys/{key_id}"
    ws_param, key_param = [_path_param("workspace_id")], [_path_param("key_id")]
    return {
        "/admin/v1/workspaces": {
            "post": _operation("Create workspace", "201", "Workspace", body="NamedCreate",
                               errors=BAD),
            "get": _operation("List workspaces", "200", "WorkspaceList",
                              errors=("401", "403", "503")),
        },
        f"{ws}/projects": {
            "parameters": ws_param,
            "post": _operation("Create project", "201", "Project", body="NamedCreate",
                               errors=WRITE),
            "get": _operation("List projects", "200", "ProjectList"),
        },
        f"{ws}/namespaces": {
            "parameters": ws_param,
            "post": _operation("Create namespace", "201", "Namespace", body="NamedCreate",
                               errors=WRITE),
            "get": _operation("List namespaces", "200", "NamespaceList"),
        },
        f"{ws}/keys": {
            "parameters": ws_param,
            "post": _operation("Create key", "201", "CreatedKey", body="KeyCreate", errors=WRITE),
            "get": _operation("List keys", "200", "KeyList", params=KEY_LIST_PARAMS, errors=BAD),
        },
        key: {
            "parameters": key_param,
            "get": _operation("Get key", "200", "Key"),
            "patch": _operation("Update key", "200", "Key", body="KeyUpdate", errors=WRITE),
            "delete": _operation("Revoke key", "200", "Key"),
        },
        f"{key}/rotate": {
            "parameters": key_param,
            "post": _operation("Rotate key", "201", "CreatedKey", body="Rotate", errors=WRITE),
        },
        f"{key}/usage": {
            "parameters": key_param,
            "get": _operation("Key usage", "200", "Usage"),
        },
        "/admin/v1/audit": {
            "get": _operation("List audit events", "200", "AuditEventList", errors=BAD, params=[
                _query("workspace_id", {"type": "string"},
                       "events of this workspace (a workspace admin: its own, the default)"),
                LIMIT,
            ]),
        },
        "/admin/v1/openapi.json": {
            "get": {
                "summary": "This document",
                "operationId": "openapi",
                "responses": {
                    "200": {"description": "OpenAPI 3.1",
                            "content": {JSON: {"schema": {"type": "object"}}}},
                    **{code: _problem(ERRORS[code]) for code in ("401", "403", "503")},
                },
            },
        },
        **_open_paths(),
    }


def _open_paths() -> dict[str, Schema]:
    """Health and metrics: no key (SPEC §6), so ``security: []``."""
    status = {JSON: {"schema": _object({"status": _STRING})}}
    return {
        "/healthz": {"get": {"summary": "Liveness", "operationId": "healthz", "security": [],
                             "responses": {"200": {"description": "alive", "content": status}}}},
        "/readyz": {"get": {"summary": "Readiness", "operationId": "readyz", "security": [],
                            "responses": {
                                "200": {"description": "ready", "content": status},
                                "503": {"description": "key store unreachable",
                                        "content": status}}}},
        "/metrics": {"get": {"summary": "Prometheus metrics", "operationId": "metrics",
                             "security": [],
                             "responses": {"200": {"description": "Prometheus text format",
                                                   "content": {"text/plain": {
                                                       "schema": {"type": "string"}}}}}}},
    }


def build_openapi() -> dict[str, Any]:
    """The document served at ``GET /admin/v1/openapi.json``."""
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "API-key gateway admin API",
            "version": "1",
            "description": "Manage workspaces, projects, namespaces and API keys (SPEC §6). "
                           "A workspace admin key sees its own workspace only: anything else "
                           "is a 404.",
        },
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                                           "description": "an admin key"}},
        },
        "security": [{"bearer": []}],
        "paths": _paths(),
    }
