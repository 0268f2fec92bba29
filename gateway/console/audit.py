"""The Audit log page (README "Web console"): the workspace's events, newest first, with
filters; a ``member`` sees what they did and what was done to their keys."""

from __future__ import annotations

from aiohttp import web

from gateway.console.page import Page, own_keys_only, render, session
from gateway.console.state import KEY_SERVICE
from gateway.errors import ValidationError

PAGE_SIZE = 50
ACTIONS = ("key.", "key.create", "key.update", "key.rotate", "key.revoke", "key.disable",
           "key.enable", "member.", "subscription.update", "console.")


async def audit_log(request: web.Request) -> web.Response:
    me, query = session(request), request.query
    action, target, actor = query.get("action", ""), query.get("target", "").strip(), \
        query.get("actor", "").strip()
    before = query.get("before", "")
    errors = {}
    if action and action not in ACTIONS:
        errors["action"] = f"must be one of {', '.join(ACTIONS)}"
    if before and not (before.isascii() and before.isdigit()):
        errors["before"] = "must be an event id"
    if len(target) > 200 or len(actor) > 200:
        errors["target"] = "must be at most 200 characters"
    if errors:
        raise ValidationError(errors)
    events = await request.app[KEY_SERVICE].audit_page(
        me.workspace_id, limit=PAGE_SIZE, before=int(before) if before else None,
        action=action or None, target=target or None, actor=actor or None,
        concerning=own_keys_only(request),
    )
    members = await request.app[KEY_SERVICE].members.all(me.workspace_id)
    return render(request, "audit.html", events=events, actions=ACTIONS, query=query,
                  emails={m.user_id: m.email for m in members},
                  next_before=events[-1].id if len(events) == PAGE_SIZE else None)


PAGES = (Page("GET", "/audit", audit_log, "viewer"),)
