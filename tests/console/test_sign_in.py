"""Signing in without a browser (README "Web console"): the cookie's flags with the default
config, sign-in attempts limited per address, and a console that never answers with a
traceback or lets the admin API's bearer key in."""

from __future__ import annotations

import aiohttp

from tests.conftest import GatewayFactory, bearer


async def test_the_cookie_is_secure_http_only_and_strict_by_default(
    make_gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    gateway = await make_gateway()
    await gateway.keys.members.add(gateway.workspace.id, {"email": "a@example.com",
                                                          "role": "owner"}, "test")
    token = await gateway.keys.console.make_link(gateway.workspace.id, "a@example.com", "test")
    async with http.get(f"{gateway.admin_url}/console/sign-in/{token}") as response:
        assert response.status == 200
        cookie = response.headers["Set-Cookie"]
        assert response.headers["X-Frame-Options"] == "DENY"
        assert response.headers["Cache-Control"] == "no-store"
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Secure" in cookie
    assert "Path=/console" in cookie
    insecure = await make_gateway(console={"insecure_cookies": True})
    await insecure.keys.members.add(insecure.workspace.id, {"email": "a@example.com",
                                                            "role": "owner"}, "test")
    token = await insecure.keys.console.make_link(insecure.workspace.id, "a@example.com", "t")
    async with http.get(f"{insecure.admin_url}/console/sign-in/{token}") as response:
        assert "Secure" not in response.headers["Set-Cookie"]
        assert "HttpOnly" in response.headers["Set-Cookie"]


async def test_sign_in_attempts_are_rate_limited_per_address(
    make_gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    gateway = await make_gateway(console={"sign_in_rate_limit": {"requests": 3, "window": 60}})
    statuses = []
    for _ in range(5):
        async with http.get(f"{gateway.admin_url}/console/sign-in/guess") as response:
            statuses.append(response.status)
            text = await response.text()
    assert statuses == [403, 403, 403, 429, 429]
    assert "Too many sign-in attempts" in text


async def test_the_admin_bearer_key_opens_no_console_page(
    make_gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    gateway = await make_gateway()
    admin = await gateway.admin_key()
    async with http.get(f"{gateway.admin_url}/console/", headers=bearer(admin),
                        allow_redirects=False) as response:
        assert response.status == 303
        assert response.headers["Location"] == "/console/sign-in"
    async with http.post(f"{gateway.admin_url}/console/keys", headers=bearer(admin),
                         data={"name": "x"}) as response:
        assert response.status == 403
        assert "text/html" in response.headers["Content-Type"]
    async with http.get(f"{gateway.admin_url}/console/static/console.css") as response:
        assert response.status == 200
        assert "max-age" in response.headers["Cache-Control"]
    async with http.get(f"{gateway.admin_url}/console/static/missing.js") as response:
        assert response.status == 404
