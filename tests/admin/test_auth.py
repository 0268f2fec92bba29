"""The admin app's authentication seam: authenticators are asked in turn and the first
principal one returns acts on the request (gateway.admin.auth)."""

from __future__ import annotations

import aiohttp
from aiohttp import web

from gateway.admin import create_admin_app
from gateway.admin.auth import bearer_admin_key
from gateway.app import create_key_service
from gateway.keys.model import KeyRecord
from tests.conftest import Gateway, bearer, start_site


async def test_another_authenticator_joins_the_bearer_admin_key(
    gateway: Gateway, http: aiohttp.ClientSession
) -> None:
    console, _ = await gateway.keys.create_key(
        None, {"name": "console", "key_type": "admin"}, "test"
    )

    async def session_cookie(request: web.Request) -> KeyRecord | None:  # a console login
        return console if request.cookies.get("session") == "s3cret" else None

    services = gateway.services
    app = create_admin_app(
        services, create_key_service(services), [session_cookie, bearer_admin_key(services)]
    )
    runner = web.AppRunner(app, handle_signals=False)
    url = f"http://127.0.0.1:{await start_site(runner)}/admin/v1/workspaces"
    try:
        async with http.post(url, json={"name": "w"}, headers={"Cookie": "session=s3cret"}) as r:
            assert r.status == 201
            workspace_id = (await r.json())["id"]
        async with http.get(url, headers=bearer(await gateway.admin_key())) as r:
            assert r.status == 200
        async with http.get(url, headers={"Cookie": "session=wrong"}) as r:
            assert r.status == 401 and (await r.json())["code"] == "missing_api_key"
    finally:
        await runner.cleanup()
    events = await gateway.keys.audit(None, 10)
    assert any(e.actor == console.key_id and e.target == workspace_id for e in events)
