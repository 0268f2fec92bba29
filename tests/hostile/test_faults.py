"""Faults with real processes (README "Security and reliability", what happens when each
dependency fails): the suite's own ``redis-server`` on a free port, paused (SIGSTOP) and
restarted under load, for each ``on_limiter_error`` policy; an upstream that refuses, resets
before or in the middle of its response, or stalls. The Postgres outage (the suite's own
cluster, ``initdb``/``pg_ctl``) is ``tests/keys/test_postgres_outage.py``; its listener's
reconnect ``tests/keys/test_revocation.py``.

Each case checks that nothing waits past its configured timeout (+ a margin), that the answer
is the documented one, and that service (limits enforced, the upstream pool) is back within
2 s. The figures are printed at the end of the run ("FAULTS_...").
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import struct
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest

from tests.conftest import GatewayFactory, bearer, free_port
from tests.hostile.figures import record
from tests.limiter.conftest import PrivateRedis

LIMITER_TIMEOUT = 0.2
ROUTE_TIMEOUT = 0.5
MARGIN = 0.35  # the loop, the client and two processes on 2 shared cores
LOAD = 12  # requests per phase, 4 at a time


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    server = PrivateRedis(tmp_path)
    server.start()
    yield server
    if server._process is not None:
        server.resume()
    server.kill()


async def timed(http: aiohttp.ClientSession, url: str, key: str) -> tuple[int, str, float,
                                                                          dict[str, str]]:
    started = time.monotonic()
    async with http.get(url, headers=bearer(key)) as response:
        body = await response.text()
        return response.status, body, time.monotonic() - started, dict(response.headers)


async def load(http: aiohttp.ClientSession, url: str, key: str
               ) -> list[tuple[int, str, float, dict[str, str]]]:
    gate = asyncio.Semaphore(4)

    async def one() -> tuple[int, str, float, dict[str, str]]:
        async with gate:
            return await timed(http, url, key)

    return await asyncio.gather(*(one() for _ in range(LOAD)))


async def limits_back(http: aiohttp.ClientSession, url: str, key: str) -> float:
    """Seconds until a decision comes from Redis again (its limit, 10, not the local share)."""
    back = time.monotonic()
    while True:
        status, _, _, headers = await timed(http, url, key)
        if headers.get("RateLimit-Limit") == "10":
            assert status in (200, 429)
            return time.monotonic() - back
        assert time.monotonic() - back < 2.0, "limits not enforced within 2 s of Redis back"
        await asyncio.sleep(0.02)


def check_policy(policy: str, answers: list[tuple[int, str, float, dict[str, str]]]) -> None:
    statuses = [a[0] for a in answers]
    if policy == "open":
        assert statuses == [200] * LOAD
        assert all("RateLimit-Limit" not in a[3] for a in answers)
    elif policy == "closed":
        assert statuses == [503] * LOAD
        assert all('"rate_limit_unavailable"' in a[1] for a in answers)
    else:  # local: each of 2 expected nodes enforces 10 / 2
        assert statuses.count(200) == 5 and statuses.count(429) == LOAD - 5, statuses
        assert all(a[3].get("RateLimit-Limit") == "5" for a in answers)


@pytest.mark.parametrize("policy", ["open", "closed", "local"])
async def test_redis_paused_and_restarted_under_load(
    make_gateway: GatewayFactory, http: aiohttp.ClientSession, own_redis: PrivateRedis,
    policy: str,
) -> None:
    gateway = await make_gateway(
        redis=own_redis.url,
        limiter={"timeout": LIMITER_TIMEOUT, "expected_nodes": 2},
        defaults={"rate_limit": {"requests": 10, "window": 60}, "on_limiter_error": policy,
                  "max_concurrent": None},
    )
    key = await gateway.key()
    url = f"{gateway.url}/api/ai/x"
    assert (await timed(http, url, key))[3]["RateLimit-Remaining"] == "9"

    own_redis.pause()  # SIGSTOP: connections stay open, nothing answers
    paused = await load(http, url, key)
    check_policy(policy, paused)
    worst_paused = max(a[2] for a in paused)
    assert worst_paused < LIMITER_TIMEOUT + MARGIN, worst_paused
    own_redis.resume()
    resumed_in = await limits_back(http, url, key)

    own_redis.kill()  # then a restart: an empty Redis
    killed = await load(http, url, key)
    if policy != "local":  # local: the local share of this window is already spent
        check_policy(policy, killed)
    worst_killed = max(a[2] for a in killed)
    assert worst_killed < LIMITER_TIMEOUT + MARGIN, worst_killed
    own_redis.start()
    restarted_in = await limits_back(http, url, key)
    # a restarted Redis has forgotten every budget: the window starts again (README)
    status, _, _, headers = await timed(http, url, key)
    assert status == 200 and int(headers["RateLimit-Remaining"]) >= 7

    record(f"FAULTS_REDIS_{policy.upper()}",
           f"paused: {LOAD} requests, slowest {worst_paused * 1000:.0f} ms (timeout "
           f"{LIMITER_TIMEOUT * 1000:.0f} ms), limits back {resumed_in:.2f} s after SIGCONT; "
           f"killed: slowest {worst_killed * 1000:.0f} ms, limits back {restarted_in:.2f} s "
           f"after restart (budget reset)")


# -- upstream faults ---------------------------------------------------------------------------

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


async def faulty(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """An upstream by path: /ok answers; /reset resets before answering; /cut sends the head and
    half the body then resets; /stall never answers; /trickle sends the head then stalls."""
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            path = head.split(b" ", 2)[1]
            if path.endswith(b"/ok"):
                writer.write(OK)
                continue
            if path.endswith(b"/reset") or path.endswith(b"/cut"):
                if path.endswith(b"/cut"):
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" + b"x" * 500)
                    await writer.drain()
                    await asyncio.sleep(0.05)
                sock = writer.get_extra_info("socket")
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                writer.transport.abort()  # RST
                return
            if path.endswith(b"/trickle"):
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" + b"x" * 10)
            await asyncio.sleep(30)  # /stall, /trickle
            return
    except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
        writer.close()


@pytest.fixture
async def faulty_upstream() -> AsyncIterator[str]:
    server = await asyncio.start_server(faulty, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}"
    server.close()


async def test_upstream_refusing_resetting_and_stalling(
    make_gateway: GatewayFactory, http: aiohttp.ClientSession, faulty_upstream: str
) -> None:
    gateway = await make_gateway(routes=[
        {"name": "f", "path": "/f/", "upstream": faulty_upstream, "timeout": ROUTE_TIMEOUT},
        {"name": "dead", "path": "/dead/", "upstream": f"http://127.0.0.1:{free_port()}",
         "timeout": ROUTE_TIMEOUT},
    ], defaults={"rate_limit": {"requests": 1_000_000, "window": 60}, "max_concurrent": None})
    key = await gateway.key()
    seen: dict[str, tuple[str, float]] = {}

    async def fault(path: str) -> tuple[int, str, float]:
        started = time.monotonic()
        try:
            async with http.get(f"{gateway.url}{path}", headers=bearer(key)) as response:
                body = await response.read()
                outcome = f"{response.status} {len(body)} B"
                if response.status >= 500:
                    outcome = f"{response.status} {(await response.json())['code']}"
        except aiohttp.ClientPayloadError:
            outcome = "cut (incomplete body)"
        took = time.monotonic() - started
        seen[path] = (outcome, took)
        return response.status, outcome, took

    assert (await fault("/dead/x"))[1] == "502 upstream_unavailable"
    assert (await fault("/f/reset"))[1] == "502 upstream_unavailable"
    assert (await fault("/f/stall"))[1] == "504 upstream_timeout"
    # mid-body: a 5xx while nothing reached the client yet, else the client's body is cut short
    # (never a complete-looking one)
    assert (await fault("/f/cut"))[1] in ("502 upstream_unavailable", "cut (incomplete body)")
    assert (await fault("/f/trickle"))[1] in ("504 upstream_timeout", "cut (incomplete body)")
    for path, (_, took) in seen.items():
        assert took < ROUTE_TIMEOUT + MARGIN, (path, took)

    # the pool is healthy after: requests pass, no connection is left busy
    answers = await asyncio.gather(*(timed(http, f"{gateway.url}/f/ok", key) for _ in range(20)))
    assert [a[0] for a in answers] == [200] * 20
    await asyncio.sleep(0.05)
    open_, idle = gateway.services.upstreams["f"].usage()
    assert open_ == idle, (open_, idle)
    record("FAULTS_UPSTREAM", ", ".join(
        f"{path.rsplit('/', 2)[-2] if path.startswith('/dead') else path.rsplit('/', 1)[-1]}: "
        f"{outcome} in {took * 1000:.0f} ms" for path, (outcome, took) in seen.items()
    ) + f" (timeout {ROUTE_TIMEOUT * 1000:.0f} ms); then 20/20 ok, 0 busy connections")
