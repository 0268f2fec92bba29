"""Upstream health (README "Upstream health"): the ejection state machine with an injected
clock, then a route's group against real servers on free ports that die, hang, reset and come
back. (Through a real gateway process: tests/ops/test_upstream_health_e2e.py.)"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from gateway.config import HealthConfig
from gateway.errors import UpstreamError
from gateway.health import TargetHealth
from gateway.upstream import UpstreamGroup
from tests.conftest import free_port, wait_for


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


POLICY = HealthConfig(failures=3, eject_seconds=10, max_eject_seconds=30)


def test_ejected_after_failures_in_a_row_and_probed_back() -> None:
    clock = Clock()
    health = TargetHealth(POLICY, "t", clock)
    health.failed("x")
    health.failed("x")
    health.succeeded()  # a success in between: the count starts again
    health.failed("x")
    health.failed("x")
    assert health.up and health.usable()
    health.failed("connect failed")
    assert not health.up and not health.usable() and health.ejections == 1
    clock.now += 9.9
    assert not health.usable()
    clock.now += 0.1
    assert health.usable()  # the probe
    assert not health.usable()  # only one at a time
    health.succeeded()
    assert health.up and health.failures == 0 and health.backoff == 10


def test_a_failed_probe_doubles_the_time_out_up_to_the_maximum() -> None:
    clock = Clock()
    health = TargetHealth(POLICY, "t", clock)
    for _ in range(3):
        health.failed("x")
    outs = []
    for _ in range(4):
        clock.now = health.ejected_until
        assert health.usable()
        health.failed("probe")
        outs.append(health.ejected_until - clock.now)
    assert outs == [20, 30, 30, 30]
    assert health.ejections == 5
    health.failed("a request sent before the ejection")  # not a probe: changes nothing
    assert health.ejections == 5
    clock.now = health.ejected_until
    assert health.usable()
    health.abandoned()  # the probe's client left: no verdict, another may probe
    assert health.usable()


def test_active_checks_eject_and_restore() -> None:
    clock = Clock()
    health = TargetHealth(POLICY, "t", clock)
    health.checked("answered 503")
    health.checked("answered 503")
    health.succeeded()  # traffic that succeeds does not hide failing checks
    health.checked("answered 503")
    assert not health.up
    health.checked(None)  # passing again: back at once, before its time out ends
    assert health.up and health.check_failures == 0


# --- a route's group against real servers ------------------------------------------------------


class Target:
    """An aiohttp upstream on a fixed port that can die and come back; ``/health`` answers
    ``health_status``; with ``hang`` set nothing is answered, with ``reset`` every connection
    is dropped unanswered."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.health_status = 200
        self.status = 200  # of every other answer
        self.hang = False
        self.reset = False
        self.served = 0
        self.checks = 0
        self._runner: web.AppRunner | None = None

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if self.hang:
            await asyncio.sleep(3600)
        if request.path == "/health":
            self.checks += 1
            return web.Response(status=self.health_status)
        if self.reset:
            assert request.transport is not None
            request.transport.abort()
            await asyncio.sleep(3600)
        self.served += 1
        return web.Response(text=self.name, status=self.status)

    async def start(self) -> Target:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


@pytest.fixture
async def targets() -> AsyncIterator[tuple[Target, Target]]:
    a, b = await Target("a").start(), await Target("b").start()
    yield a, b
    await a.stop()
    await b.stop()


@contextlib.asynccontextmanager
async def group_of(*urls: str, **health: float | str) -> AsyncIterator[UpstreamGroup]:
    group = UpstreamGroup(list(urls), health=HealthConfig(**health), name="r")  # type: ignore[arg-type]
    group.start()
    try:
        yield group
    finally:
        await group.close()


async def get(group: UpstreamGroup, path: str = "/", method: str = "GET",
              body: bytes | None = None, timeout: float = 5) -> str:
    response = await group.request(method, path, [], body, timeout=timeout)
    return (await response.read()).decode()


async def test_a_dead_target_is_ejected_without_a_failed_request_and_comes_back(
    targets: tuple[Target, Target],
) -> None:
    a, b = targets
    async with group_of(a.url, b.url, failures=2, eject_seconds=0.3) as group:
        assert [await get(group) for _ in range(4)] == ["a", "b", "a", "b"]
        await a.stop()
        # refused connects are retried on b: no request fails while a dies
        assert [await get(group) for _ in range(6)] == ["b"] * 6
        health = group.pools[0].health
        assert not health.up and health.ejections == 1
        await a.start()  # back on the same port
        assert [await get(group) for _ in range(3)] == ["b"] * 3  # still out
        await asyncio.sleep(0.35)
        served = [await get(group) for _ in range(4)]
        assert "a" in served and health.up  # its probe succeeded: in rotation again
        assert served.count("a") == 2


async def test_a_hanging_target_is_ejected_after_its_timeouts(
    targets: tuple[Target, Target],
) -> None:
    a, b = targets
    async with group_of(a.url, b.url, failures=2, eject_seconds=5) as group:
        a.hang = True
        results = []
        for _ in range(4):
            try:
                results.append(await get(group, timeout=0.2))
            except UpstreamError as exc:
                assert exc.timeout  # not retried: the upstream may be at work on it
                results.append("timeout")
        assert results == ["timeout", "b", "timeout", "b"]
        assert not group.pools[0].health.up
        started = time.monotonic()
        assert [await get(group, timeout=0.2) for _ in range(5)] == ["b"] * 5
        assert time.monotonic() - started < 0.5  # nothing waits on the hanging target now


async def test_an_idempotent_request_reset_unanswered_is_retried_on_another_target(
    targets: tuple[Target, Target],
) -> None:
    a, b = targets
    async with group_of(a.url, b.url, failures=5) as group:
        a.reset = True
        for method in ("GET", "PUT", "DELETE", "OPTIONS"):
            group._next = 0  # a first
            response = await group.request(method, "/", [], b"x", timeout=5)
            assert response.status == 200
            assert (await response.read()).decode() == "b"
        group._next = 0
        with pytest.raises(UpstreamError, match="connection"):  # POST: it may have been acted on
            await get(group, "/", method="POST", body=b"x")
        assert group.pools[0].health.failures == 5 and not group.pools[0].health.up


async def test_a_refused_connect_is_retried_whatever_the_method(
    targets: tuple[Target, Target],
) -> None:
    a, b = targets
    await a.stop()
    async with group_of(a.url, b.url) as group:
        group._next = 0
        assert await get(group, "/", method="POST", body=b"x") == "b"  # nothing was sent to a


async def test_when_every_target_is_out_the_least_recently_ejected_gets_the_request(
    targets: tuple[Target, Target],
) -> None:
    a, b = targets
    async with group_of(a.url, b.url, failures=1, eject_seconds=60) as group:
        await a.stop()
        assert await get(group) == "b"  # a refused, ejected; retried on b
        b.hang = True
        with pytest.raises(UpstreamError):
            await get(group, timeout=0.1)  # b times out: ejected too
        assert not any(pool.health.up for pool in group.pools)
        await a.start()
        assert await get(group) == "a"  # out the longest: it gets the request, not a 502
        assert group.pools[0].health.up  # and its success put it back


async def test_active_checks_eject_a_failing_target_and_restore_it(
    targets: tuple[Target, Target],
) -> None:
    a, b = targets
    async with group_of(a.url, b.url, failures=2, eject_seconds=60, path="/health",
                        interval=0.05, timeout=0.05) as group:
        health = group.pools[0].health
        await wait_for(lambda: a.checks >= 2 and b.checks >= 2)
        assert health.up
        a.health_status = 503
        await wait_for(lambda: not health.up)  # no request needed
        assert [await get(group) for _ in range(3)] == ["b"] * 3
        a.health_status = 200
        await wait_for(lambda: health.up)  # back long before its 60 s were over
        assert sorted([await get(group) for _ in range(2)]) == ["a", "b"]
        a.hang = True  # a check that times out
        await wait_for(lambda: not health.up)


@pytest.mark.parametrize("fail_on_5xx", [False, True])
async def test_a_5xx_answer_counts_against_the_target_only_when_configured(
    targets: tuple[Target, Target], fail_on_5xx: bool,
) -> None:
    a, b = targets
    a.status = 503
    async with group_of(a.url, b.url, failures=2, fail_on_5xx=fail_on_5xx) as group:
        statuses = []
        for _ in range(6):
            response = await group.request("GET", "/", [], None, timeout=5)
            statuses.append(response.status)  # a 5xx is the answer: never retried
            await response.read()
        if fail_on_5xx:
            assert statuses == [503, 200, 503, 200, 200, 200]
            assert not group.pools[0].health.up
        else:
            assert statuses == [503, 200] * 3
            assert group.pools[0].health.up
