"""The Keys pages (README "Web console"): the list, Create key, the one showing of a new key,
and a key's detail with its changes. Every read and write goes through ``KeyService``, with the
signed-in member as the actor of every change."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlencode

from aiohttp import web

from gateway.admin.subscriptions import plan_quota
from gateway.console.chart import RANGES, sparkline, usage_chart
from gateway.console.key_form import EXPIRY_PRESETS, GRACE_PRESETS, KeyForm
from gateway.console.page import (
    Handler,
    Page,
    can,
    manages_all,
    own_keys_only,
    read_form,
    render,
    see_other,
    services,
    session,
    visible_key,
)
from gateway.console.state import KEY_SERVICE
from gateway.errors import Conflict, KeyLimitReached, MemberNotFound, ValidationError
from gateway.keys.console import WILDCARD_HOSTS
from gateway.keys.model import ENVIRONMENTS, STATUSES, KeyRecord, utcnow
from gateway.keys.service import KeyService
from gateway.keys.usage_report import Window
from gateway.keys.validation import CREATE_FIELDS, validate_fields

PAGE_SIZE = 50
DAY = 86400
SPARK_DAYS = 7
DONE = {"revoked": "Key revoked.", "disabled": "Key disabled.", "enabled": "Key enabled."}


def keys(request: web.Request) -> KeyService:
    return request.app[KEY_SERVICE]


# the list ------------------------------------------------------------------------------------
async def key_list(request: web.Request) -> web.Response:
    me, query = session(request), request.query
    filters = _list_filters(request)
    page = await keys(request).list_keys(
        me.workspace_id, limit=PAGE_SIZE, cursor=query.get("cursor") or None, newest_first=True,
        **filters,
    )
    today = int(time.time()) // DAY * DAY
    start = today - (SPARK_DAYS - 1) * DAY
    daily = await keys(request).daily_usage([k.key_id for k in page.results], start, today + DAY)
    days = range(start, today + DAY, DAY)
    rows = [(k, sparkline([daily.get(k.key_id, {}).get(d, 0) for d in days]),
             sum(daily.get(k.key_id, {}).values())) for k in page.results]
    kept = {name: value for name, value in query.items() if name != "cursor" and value}
    next_page = urlencode({**kept, "cursor": page.next_cursor}) if page.next_cursor else ""
    return render(request, "keys.html", page=page, rows=rows, now=utcnow(),
                  owners=await _owners(request), query=query, statuses=STATUSES,
                  environments=ENVIRONMENTS, own_only=own_keys_only(request) is not None,
                  first_page=urlencode(kept), next_page=next_page)


def _list_filters(request: web.Request) -> dict[str, Any]:
    """The query's filters, checked: a bad one is a 400 page naming it."""
    query, errors = request.query, {}
    status = query.get("status") or None
    if status is not None and status not in STATUSES:
        errors["status"] = f"must be one of {', '.join(STATUSES)}"
    environment = query.get("environment") or None
    if environment is not None and environment not in ENVIRONMENTS:
        errors["environment"] = f"must be one of {', '.join(ENVIRONMENTS)}"
    search = query.get("q", "").strip()
    if len(search) > 200:
        errors["q"] = "must be at most 200 characters"
    if errors:
        raise ValidationError(errors)
    return {"status": status, "environment": environment, "search": search or None,
            "include_revoked": query.get("include_revoked") == "1",
            "user_id": own_keys_only(request) or query.get("owner") or None}


async def _owners(request: web.Request) -> dict[str, str]:
    """user_id -> email of the workspace's members (keys show their owner's email)."""
    members = await keys(request).members.all(session(request).workspace_id)
    return {m.user_id: m.email for m in members}


# create --------------------------------------------------------------------------------------
async def new_key(request: web.Request) -> web.Response:
    return await _key_form(request, KeyForm())


async def _key_form(request: web.Request, form: KeyForm, status: int = 200) -> web.Response:
    me = session(request)
    projects = await keys(request).list_projects(me.workspace_id)
    return render(request, "key_new.html", status, form=form, owners=await _owners(request),
                  projects=projects, permissions=permission_choices(request),
                  expiry_presets=EXPIRY_PRESETS, environments=ENVIRONMENTS)


async def create_key(request: web.Request) -> web.StreamResponse:
    me = session(request)
    form = KeyForm.read(await read_form(request))
    chooses = manages_all(request)
    body = form.body(owner=None if chooses else me.user_id, may_choose_owner=chooses)
    if form.errors:  # with the service's own findings, all at once
        try:
            validate_fields(body, CREATE_FIELDS, required=("name",))
        except ValidationError as exc:
            form.take(exc.errors)
        return await _key_form(request, form, 400)
    try:
        record, plaintext = await keys(request).create_key(me.workspace_id, body, me.user_id)
    except ValidationError as exc:
        form.take(exc.errors)
        return await _key_form(request, form, 400)
    except MemberNotFound:
        form.errors["owner"] = "not a member of this workspace"
        return await _key_form(request, form, 400)
    except KeyLimitReached as exc:
        form.problem = f"The owner already holds the most active keys allowed: {exc}."
        return await _key_form(request, form, 409)
    return await _to_shown_once(request, record, plaintext)


async def _to_shown_once(request: web.Request, record: KeyRecord, plaintext: str) -> web.Response:
    reveal = await keys(request).console.seal(session(request), record.key_id, plaintext)
    return see_other(f"/keys/{record.key_id}/shown?reveal={reveal}")


async def shown_once(request: web.Request) -> web.Response:
    """The plaintext, this once: taking the reveal deletes it, so a reload shows the notice."""
    record = await visible_key(request, request.match_info["key_id"])
    found = await keys(request).console.reveal(session(request), request.query.get("reveal", ""))
    plaintext = found[1] if found is not None and found[0] == record.key_id else None
    return render(request, "key_shown.html", key=record, plaintext=plaintext,
                  curl=curl_example(request, plaintext) if plaintext else "")


def curl_example(request: web.Request, plaintext: str) -> str:
    config = services(request).config
    listen = config.listen
    host = WILDCARD_HOSTS.get(listen.host, listen.host)
    scheme = "https" if listen.tls is not None else "http"
    guarded = [r for r in config.routes if r.auth == "required"] or list(config.routes)
    path = guarded[0].path if guarded else "/"
    return (f'curl -H "Authorization: Bearer {plaintext}" '
            f"{scheme}://{host}:{listen.port}{path}")


def permission_choices(request: web.Request) -> list[str]:
    """Every permission the config names: route permissions and both sides of ``implies``."""
    config = services(request).config
    names = {p for route in config.routes for ps in route.permissions.values() for p in ps}
    for granted, implied in config.implies.items():
        names.add(granted)
        names.update(implied)
    return sorted(names)


# detail and changes --------------------------------------------------------------------------
async def key_detail(request: web.Request) -> web.Response:
    me = session(request)
    record = await visible_key(request, request.match_info["key_id"])
    chosen = request.query.get("range", "24h")
    if chosen not in RANGES:
        raise ValidationError({"range": f"must be one of {', '.join(RANGES)}"})
    granularity, buckets = RANGES[chosen]
    seconds = {"hour": 3600, "day": DAY}[granularity]
    end = (int(time.time()) // seconds + 1) * seconds
    window = Window(granularity, seconds, end - buckets * seconds, end)
    report = await keys(request).key_usage(record.key_id, window, me.workspace_id)
    return render(
        request, "key_detail.html", key=record, now=utcnow(), chart=usage_chart(report),
        range=chosen, ranges=RANGES, lifetime=report, owners=await _owners(request),
        chain=await keys(request).rotation_chain(record),
        events=await keys(request).audit_page(me.workspace_id, target=record.key_id, limit=50),
        quota=await plan_quota(services(request), keys(request), me.workspace_id),
        grace_presets=GRACE_PRESETS, done=DONE.get(request.query.get("done", ""), ""),
        may_change=can(request, "member"),
    )


async def rotate(request: web.Request) -> web.Response:
    me = session(request)
    record = await visible_key(request, request.match_info["key_id"])
    grace = (await read_form(request)).get("grace", "0")
    if grace not in GRACE_PRESETS:
        raise ValidationError({"grace": "choose one of the grace periods offered"})
    _old, new, plaintext = await keys(request).rotate_key(record.key_id, int(grace), me.user_id,
                                                          me.workspace_id)
    return await _to_shown_once(request, new, plaintext)


KeyChange = Callable[[KeyService, str, str | None, str | None], Awaitable[KeyRecord]]


def change(apply: KeyChange, done: str) -> Handler:
    """A body-less change (disable, enable, revoke): the ``KeyService`` method ``apply``,
    then back to the key's page saying it is ``done``."""

    async def handle(request: web.Request) -> web.StreamResponse:
        me = session(request)
        record = await visible_key(request, request.match_info["key_id"])
        try:
            await apply(keys(request), record.key_id, me.user_id, me.workspace_id)
        except Conflict as exc:
            raise web.HTTPConflict(text=str(exc)) from None
        return see_other(f"/keys/{record.key_id}?done={done}")

    return handle


PAGES = (
    Page("GET", "/", key_list, "viewer"),
    Page("GET", "/keys/new", new_key, "member"),
    Page("POST", "/keys", create_key, "member"),
    Page("GET", "/keys/{key_id}", key_detail, "viewer"),
    Page("GET", "/keys/{key_id}/shown", shown_once, "member"),
    Page("POST", "/keys/{key_id}/rotate", rotate, "member"),
    Page("POST", "/keys/{key_id}/disable", change(KeyService.disable_key, "disabled"), "member"),
    Page("POST", "/keys/{key_id}/enable", change(KeyService.enable_key, "enabled"), "member"),
    Page("POST", "/keys/{key_id}/revoke", change(KeyService.revoke_key, "revoked"), "member"),
)
