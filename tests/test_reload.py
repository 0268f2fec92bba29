"""Config reload in-process: the Reloader swaps the pipeline for new requests, keeps unchanged
pools, closes the others once their requests are done, and rejects an invalid file whole.
(SIGHUP to a real process: tests/test_server.py and tests/test_supervisor.py.)"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from aiohttp import web

from gateway.app import create_key_service, create_proxy_server
from gateway.config import load_config, parse_config
from gateway.errors import UpstreamError
from gateway.reload import Reloader, keep_restart_only, plans_in_use
from gateway.services import Services, open_services
from gateway.upstream import UpstreamGroup
from tests.conftest import Tagged, start_site
from tests.gateway_process import route


@dataclass
class Running:
    path: Path
    data: dict[str, Any]
    services: Services
    reloader: Reloader
    url: str

    def rewrite(self, **changes: Any) -> None:
        self.data = {**self.data, **changes}
        self.path.write_text(yaml.safe_dump(self.data))


@pytest.fixture
async def running(tmp_path: Path, first: Tagged) -> AsyncIterator[Running]:
    data = {
        "listen": "127.0.0.1:1",  # the test binds port 0 itself
        "admin_listen": "127.0.0.1:2",
        "database": f"sqlite:///{tmp_path}/gateway.db",
        "routes": [route("r", "/r/", first.url)],
    }
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(data))
    async with open_services(load_config(path, environ={})) as services:
        reloader = Reloader(services)
        runner = web.ServerRunner(create_proxy_server(services, reloader.holder),
                                  handle_signals=False)
        port = await start_site(runner)
        yield Running(path, data, services, reloader, f"http://127.0.0.1:{port}")
        await runner.cleanup()
        await reloader.close()


async def text(http: aiohttp.ClientSession, url: str) -> tuple[int, str]:
    async with http.get(url) as response:
        return response.status, await response.text()


async def is_closed(group: UpstreamGroup) -> bool:
    try:
        await group.request("GET", "/", [], None, timeout=1)
    except UpstreamError as exc:
        return "closed" in str(exc)
    return False


def test_restart_only_fields_keep_their_running_values() -> None:
    base = {"routes": [route("r", "/r/", "http://127.0.0.1:9000")], "drain_timeout": 5}
    running = parse_config(base, "g.yaml", {})
    new = parse_config(
        {**base, "listen": "127.0.0.1:9999", "database": "sqlite:///other.db", "drain_timeout": 9,
         "routes": [route("n", "/n/", "http://127.0.0.1:9001")],
         "defaults": {"max_concurrent": 3}, "keys": {"max_active_per_user": 2}},
        "g.yaml", {},
    )
    config, changed = keep_restart_only(running, new)
    assert changed == ["listen", "database", "keys"]
    assert (config.listen, config.database, config.keys) == (
        running.listen, running.database, running.keys
    )
    assert (config.routes, config.defaults, config.drain_timeout) == (
        new.routes, new.defaults, 9.0
    )


async def test_new_requests_get_the_new_config_in_flight_ones_finish_on_the_old(
    running: Running, first: Tagged, second: Tagged, http: aiohttp.ClientSession
) -> None:
    old_group = running.services.upstreams["r"]
    held = asyncio.create_task(text(http, f"{running.url}/r/hold"))
    await first.holding.wait()

    running.rewrite(routes=[route("r", "/r/", second.url), route("n", "/n/", second.url)])
    assert await running.reloader.reload()
    assert await text(http, f"{running.url}/r/x") == (200, "second /r/x")
    assert await text(http, f"{running.url}/n/x") == (200, "second /n/x")
    assert running.services.upstreams["r"] is not old_group
    assert [r.name for r in running.services.config.routes] == ["r", "n"]

    assert not held.done() and not await is_closed(old_group)  # still serving the held one
    first.released.set()
    assert await held == (200, "first /r/hold")
    for _ in range(100):  # the old pool closes once the request on it is done
        if await is_closed(old_group):
            break
        await asyncio.sleep(0.01)
    else:
        raise AssertionError("the old upstream pool was not closed")


async def test_a_reload_adds_a_verify_route_and_a_route_turned_verify_loses_its_pool(
    running: Running, first: Tagged, http: aiohttp.ClientSession
) -> None:
    """README "Forward auth": a verify route has no upstream pool; switching a proxy route to
    verify closes the pool it had."""
    group = running.services.upstreams["r"]
    verify = {"name": "v", "path": "/v/", "mode": "verify"}
    running.rewrite(routes=[route("r", "/r/", first.url), verify])
    assert await running.reloader.reload()
    assert set(running.services.upstreams) == {"r"}
    headers = {"X-Original-Method": "GET", "X-Original-URI": "/r/x"}
    async with http.get(f"{running.url}/v/", headers=headers) as response:
        assert response.status == 200
    assert first.arrived == 0  # asked about, never forwarded

    running.rewrite(routes=[{"name": "r", "path": "/r/", "mode": "verify"}])
    assert await running.reloader.reload()
    assert running.services.upstreams == {}
    async with http.get(f"{running.url}/r/", headers=headers) as response:
        assert response.status == 404  # no proxy route left to match
    for _ in range(100):
        if await is_closed(group):
            break
        await asyncio.sleep(0.01)
    else:
        raise AssertionError("the pool of the route turned verify was not closed")


async def test_a_route_whose_upstream_did_not_change_keeps_its_pool(
    running: Running, first: Tagged, second: Tagged, http: aiohttp.ClientSession
) -> None:
    group = running.services.upstreams["r"]
    running.rewrite(routes=[route("r", "/r/", first.url), route("n", "/n/", second.url)])
    assert await running.reloader.reload()
    assert running.services.upstreams["r"] is group
    assert await text(http, f"{running.url}/r/x") == (200, "first /r/x")
    assert await text(http, f"{running.url}/n/x") == (200, "second /n/x")
    await asyncio.sleep(0.05)
    assert not await is_closed(group)


async def test_an_invalid_file_changes_nothing_and_logs_one_error(
    running: Running, second: Tagged, http: aiohttp.ClientSession,
    caplog: pytest.LogCaptureFixture,
) -> None:
    running.rewrite(routes=[route("r", "/r/", "ftp://nowhere")])
    with caplog.at_level(logging.WARNING, logger="gateway.reload"):
        assert not await running.reloader.reload()
    (record,) = caplog.records
    assert record.levelno == logging.ERROR
    assert f"{running.path}: routes[0].upstream" in record.getMessage()
    assert "'ftp://nowhere'" in record.getMessage()
    assert await text(http, f"{running.url}/r/x") == (200, "first /r/x")


async def test_a_restart_only_change_is_logged_and_the_rest_applies(
    running: Running, second: Tagged, http: aiohttp.ClientSession,
    caplog: pytest.LogCaptureFixture,
) -> None:
    listen = running.services.config.listen
    running.rewrite(listen="127.0.0.1:3", routes=[route("r", "/r/", second.url)])
    with caplog.at_level(logging.WARNING, logger="gateway.reload"):
        assert await running.reloader.reload()
    assert [r.getMessage() for r in caplog.records] == [
        f"reload: listen changed in {running.path}; it takes effect at the next restart"
    ]
    assert running.services.config.listen == listen
    assert await text(http, f"{running.url}/r/x") == (200, "second /r/x")


def warnings(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.levelno >= logging.WARNING]


async def limit_of(http: aiohttp.ClientSession, url: str, key: str) -> str:
    async with http.get(url, headers={"Authorization": f"Bearer {key}"}) as response:
        assert response.status == 200, await response.text()
        return response.headers["X-RateLimit-Limit"]


async def test_plans_and_default_plan_are_reloaded(
    running: Running, first: Tagged, http: aiohttp.ClientSession,
    caplog: pytest.LogCaptureFixture,
) -> None:
    keyed = {"name": "k", "path": "/k/", "upstream": first.url}
    plans = {"free": {"rate_limit": {"requests": 50, "window": 60}},
             "pro": {"rate_limit": {"requests": 70, "window": 60}}}
    running.rewrite(routes=[*running.data["routes"], keyed], plans=plans, default_plan="free")
    assert await running.reloader.reload()
    keys = create_key_service(running.services)
    workspace = await keys.create_workspace("w", "test")
    _, key = await keys.create_key(workspace.id, {"name": "k"}, "test")
    url = f"{running.url}/k/x"
    assert await limit_of(http, url, key) == "50"

    with caplog.at_level(logging.WARNING, logger="gateway.reload"):
        running.rewrite(plans=plans, default_plan="pro")
        assert await running.reloader.reload()
        assert await limit_of(http, url, key) == "70"  # the new default plan
        running.rewrite(plans={**plans, "free": {"rate_limit": {"requests": 60, "window": 60}}},
                        default_plan="free")
        assert await running.reloader.reload()
        assert await limit_of(http, url, key) == "60"  # the plan's new limit
        await keys.put_subscription(workspace.id, {"plan": "pro"}, "test")
        assert await limit_of(http, url, key) == "70"  # a plan the reload added: in force
    assert warnings(caplog) == []  # nothing "takes effect at the next restart"
    assert running.services.config.default_plan == "free"


async def test_a_reload_removing_a_plan_in_use_keeps_the_running_config(
    running: Running, first: Tagged, http: aiohttp.ClientSession,
    caplog: pytest.LogCaptureFixture,
) -> None:
    keyed = {"name": "k", "path": "/k/", "upstream": first.url}
    plans = {"free": {"rate_limit": {"requests": 50, "window": 60}},
             "pro": {"rate_limit": {"requests": 70, "window": 60}},
             "old": {}}
    running.rewrite(routes=[*running.data["routes"], keyed], plans=plans, default_plan="free")
    assert await running.reloader.reload()
    keys = create_key_service(running.services)
    users = [await keys.create_workspace(name, "test") for name in ("a", "b", "c")]
    for workspace in users[:2]:
        await keys.put_subscription(workspace.id, {"plan": "pro"}, "test")
    _, key = await keys.create_key(users[0].id, {"name": "k"}, "test")
    running_config = running.services.config

    # "pro" renamed to "team": refused, one line naming the plan and its two workspaces
    renamed = {"free": plans["free"], "team": plans["pro"]}
    running.rewrite(plans=renamed)
    with caplog.at_level(logging.WARNING):
        assert not await running.reloader.reload()
    (record,) = warnings(caplog)
    assert record.levelno == logging.ERROR
    expected = ", ".join(sorted(w.id for w in users[:2]))
    assert record.getMessage() == (
        "reload rejected, the running config stays in force: "
        f"{running.path}: plans.pro is removed but workspaces still subscribe to it: {expected}"
    )
    assert running.services.config is running_config
    assert await limit_of(http, f"{running.url}/k/x", key) == "70"

    # a plan nobody subscribes to may go
    caplog.clear()
    running.rewrite(plans={"free": plans["free"], "pro": plans["pro"]})
    with caplog.at_level(logging.WARNING):
        assert await running.reloader.reload()
    assert warnings(caplog) == []
    assert list(running.services.config.plans) == ["free", "pro"]


async def test_the_supervisor_check_opens_the_store_itself(running: Running) -> None:
    """With workers, the supervisor (no store open) asks ``plans_in_use`` with none."""
    running.rewrite(plans={"free": {}, "pro": {}})
    assert await running.reloader.reload()
    keys = create_key_service(running.services)
    workspace = await keys.create_workspace("w", "test")
    await keys.put_subscription(workspace.id, {"plan": "pro"}, "test")
    old = running.services.config
    assert await plans_in_use(old, replace(old, plans={"pro": old.plans["pro"]})) is None
    message = await plans_in_use(old, replace(old, plans={"free": old.plans["free"]}))
    assert message is not None and message.endswith(
        f"plans.pro is removed but workspaces still subscribe to it: {workspace.id}"
    )
