"""The key check API (README "Key check API"): ``POST /admin/v1/keys/verify`` tells a service
that checks keys itself what the request path would answer for one: the key's status, the
permissions asked for (through ``permissions.implies``), a resource and operation against its
scopes, then its own rate limit, its workspace's quotas and its credits (one each), spent as
a request spends them (gateway.keys.access, gateway.limiter.budget: the request path's own
rules). Usage is counted with the outcome.

The answer is 200 whatever the key: ``valid``, and ``code``, ``ok`` or the error code the
request path would have answered. A workspace admin key asks about its own workspace's keys
only: another workspace's key reads as an unknown one, and nothing is spent or counted for it.
A check takes no concurrency slot: it is over once answered.

The client address the check is about is the body's ``ip`` (README "Key check API"): a key with
``allowed_ips`` is ``ip_not_allowed`` for an address outside them, and for a check that names no
address (the caller's own address is not the client's). A key with ``enforcement: shadow``
(README "Shadow mode") is refused by none of its own rules: the answer is ``ok`` with
``shadow_refused``, the code they would have given, counted as the request path counts it."""

from __future__ import annotations

import math
from typing import Any

from aiohttp import web

from gateway.admin.handler import caller_workspace, json_response, read_json
from gateway.admin.route import BAD, Route, returns
from gateway.admin.state import SERVICES
from gateway.client_address import ip_allowlist
from gateway.errors import (
    AUTH_UNAVAILABLE,
    CREDITS_EXHAUSTED,
    INSUFFICIENT_PERMISSIONS,
    INVALID_API_KEY,
    IP_NOT_ALLOWED,
    QUOTA_EXCEEDED,
    RATE_LIMIT_UNAVAILABLE,
    RATE_LIMITED,
    RESOURCE_FORBIDDEN,
    GatewayError,
    LimiterUnavailable,
    StoreUnavailable,
)
from gateway.keys.access import check_status, expand, missing_permission, scope_allows
from gateway.keys.model import SHADOW, KeyRecord, is_well_formed
from gateway.keys.usage import SHADOW_REFUSED
from gateway.keys.validation import validate_key_check
from gateway.limiter.base import Decision
from gateway.limiter.budget import Limits, admit_local_share, budget_of
from gateway.limiter.shadow import Ask, split, visible, would_refuse
from gateway.services import Services

OK = "ok"
FORBIDDEN = (INSUFFICIENT_PERMISSIONS.code, RESOURCE_FORBIDDEN.code, IP_NOT_ALLOWED.code)


async def find_key(services: Services, token: str, workspace_id: str | None) -> KeyRecord | None:
    """The key ``token`` names, as the caller may see it (None: unknown to the caller)."""
    if not is_well_formed(token, services.prefixes):
        return None  # malformed or a bad checksum: no lookup, as on the request path
    record = await services.cache.get(services.hasher(token))
    if record is None or (workspace_id is not None and record.workspace_id != workspace_id):
        return None
    return record


def refusal(services: Services, record: KeyRecord, ask: dict[str, Any]) -> str | None:
    """The code of the first check the key fails before its limits are asked, else None."""
    try:
        check_status(record)
    except GatewayError as exc:
        return exc.kind.code
    return forbidden(services, record, ask)


def forbidden(services: Services, record: KeyRecord, ask: dict[str, Any]) -> str | None:
    """The key's own rules (a shadow key's refuse no one): permissions, scopes, addresses."""
    granted = expand(record.permissions, services.config.implies)
    if missing_permission(tuple(ask.get("permissions", ())), granted) is not None:
        return INSUFFICIENT_PERMISSIONS.code
    if "resource_id" in ask and not scope_allows(record, ask["resource_id"], ask["operation"]):
        return RESOURCE_FORBIDDEN.code
    if record.allowed_ips:
        address = ask.get("ip")
        if address is None or not ip_allowlist(record.allowed_ips).allows(address):
            return IP_NOT_ALLOWED.code
    return None


async def spend(
    services: Services, record: KeyRecord
) -> tuple[str, Decision | None, str | None]:
    """One request from the key's own budget and its workspace's quotas, under the default
    ``on_limiter_error`` when the limiter fails; and the code a shadow limit would have given
    (a shadow key's budget, a shadow quota)."""
    limits = Limits(None, services.config)
    limit, window, _cap, quota = limits.of(record)
    real, shadow = split(budget_of(record), limit, window, None, None, quota,
                         limits.algorithm, None, record.enforcement == SHADOW, record.credits)
    if shadow is None:
        assert real is not None  # split leaves out the real ask only for a shadow key
        code, decision = await spend_real(services, real)
        would = would_refuse(decision, None) if code == OK else None  # a shadow quota's
        return code, visible(decision) if decision else None, would
    pending = services.limiter.admit(*shadow)  # first: one Redis batch with the real one
    code, decision = await spend_real(services, real) if real else (OK, None)
    try:
        shadow_decision: Decision | None = await pending
    except LimiterUnavailable:
        shadow_decision = None
    would = would_refuse(decision, shadow_decision) if code == OK else None
    # a shadow key's own budget (shadow scope "") is what the answer shows
    shown = shadow_decision if shadow.scope == "" and shadow_decision else decision
    if shown is not decision and shown is not None and decision is not None:
        shown = shown._replace(credits=decision.credits)  # credits are spent by the real one
    return code, visible(shown) if shown else None, would


async def spend_real(services: Services, real: Ask) -> tuple[str, Decision | None]:
    config = services.config
    budget, limit, window, quota, algorithm = (real.budget, real.limit, real.window, real.quota,
                                               real.algorithm)
    try:
        decision = await services.limiter.admit(budget, real.scope, limit, window, None,
                                                real.also, quota, algorithm, real.credits,
                                                real.cost)
    except LimiterUnavailable:
        policy = config.defaults.on_limiter_error
        services.metrics.count_limiter_error(policy)
        if policy == "closed" or (policy == "local" and real.credits is not None):
            return RATE_LIMIT_UNAVAILABLE.code, None  # credits: only the shared limiter's
        if policy == "open":
            return OK, None
        nodes = config.limiter.expected_nodes * config.workers if config.redis else 1
        decision = await admit_local_share(services.local_limiter, nodes, budget, limit,
                                           window, None, real.also, quota, algorithm,
                                           scope=real.scope)
    if decision.allowed:
        return OK, decision
    if decision.no_credits:
        return CREDITS_EXHAUSTED.code, decision
    return (QUOTA_EXCEEDED if decision.over_quota else RATE_LIMITED).code, decision


async def peek(services: Services, record: KeyRecord) -> Decision | None:
    """The key's budget without spending any (a refused key's answer shows it, as on the
    request path)."""
    limits = Limits(None, services.config)
    limit, window, _cap, _quota = limits.of(record)
    try:
        return await services.limiter.peek(budget_of(record), "", limit, window,
                                           limits.algorithm)
    except LimiterUnavailable:
        return None


async def check(services: Services, ask: dict[str, Any], workspace_id: str | None) -> Any:
    try:
        record = await find_key(services, ask["key"], workspace_id)
    except StoreUnavailable:
        return answer(AUTH_UNAVAILABLE.code)
    if record is None:
        return answer(INVALID_API_KEY.code)
    code = refusal(services, record, ask)
    shadow = None
    if code in FORBIDDEN and record.enforcement == SHADOW:  # README "Shadow mode"
        shadow, code = code, None
    if code is None:
        code, decision, would = await spend(services, record)
        shadow = shadow or would
    elif code in FORBIDDEN:
        decision = await peek(services, record)
    else:
        decision = None  # refused as a key (revoked, expired, disabled): no budget to show
    services.usage.record_outcome(record.key_id, record.workspace_id, code)
    if shadow is not None and code == OK:
        services.usage.count(record.key_id, record.workspace_id, SHADOW_REFUSED)
        services.metrics.count_shadow_refusal(shadow)
    else:
        shadow = None
    return answer(code, record, decision, shadow)


def answer(code: str, record: KeyRecord | None = None, decision: Decision | None = None,
           shadow: str | None = None) -> Any:
    limits = None
    if decision is not None:
        limits = {"limit": decision.limit, "remaining": decision.remaining,
                  "reset": max(0, math.ceil(decision.reset))}
    return {
        "valid": code == OK,
        "code": code,
        "key_id": record.key_id if record else None,
        "workspace_id": record.workspace_id if record else None,
        "project_id": record.project_id if record else None,
        "principal_id": (record.principal_id or None) if record else None,
        "permissions": list(record.permissions) if record else [],
        "ratelimit": limits,
        "shadow_refused": shadow,
        "credits_remaining": decision.credits if decision is not None else None,
    }


async def verify_key(request: web.Request) -> web.Response:
    ask = validate_key_check(await read_json(request))
    services = request.app[SERVICES]
    return json_response(await check(services, ask, caller_workspace(request)))


ROUTES = (
    Route("POST", "/admin/v1/keys/verify", verify_key, "Verify key", returns(200, "KeyCheck"),
          body="KeyCheckAsk", errors=BAD),
)
