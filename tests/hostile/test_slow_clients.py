"""Family 4, resources: slow clients and connection caps. Heads trickled a line at a time
(slowloris), connections that never send a byte, bodies trickled below ``min_body_rate`` and
bodies that stall: each is closed within its documented deadline (a 408 problem+json where the
client sent part of a request), the upstream exchange aborted and the concurrency slot given
back, while legitimate requests beside them keep their latency. ``max_connections`` closes a
connection past the cap at once; ``idle_timeout`` closes an idle keep-alive connection, and an
idle one is never mistaken for a slow head."""

from __future__ import annotations

import asyncio
import io
import json
import statistics
import time
from dataclasses import dataclass

import aiohttp

from gateway.config import LimitsConfig
from gateway.deadlines import Deadlines
from tests.conftest import Gateway, GatewayFactory, bearer
from tests.hostile.conftest import UNLIMITED, hostile_routes
from tests.hostile.figures import record
from tests.hostile.upstream import StrictUpstream

HEADER, BODY = 1.0, 1.0  # the deadlines under test (seconds)
LIMITS = {"header_timeout": HEADER, "body_timeout": BODY}
TICK = Deadlines(HEADER, BODY, 1024).tick
SLACK = 0.5  # scheduling on a shared machine
MEASURE = 0.7  # seconds of legitimate requests, alone and while the slow clients hold on


@dataclass
class Slow:
    data: bytes  # everything the gateway sent before closing
    seconds: float  # from the connection's start to its close
    closed: bool

    @property
    def status(self) -> int:
        head = self.data.split(b"\r\n", 1)[0].split()
        return int(head[1]) if len(head) > 1 else 0

    @property
    def code(self) -> str | None:
        body = self.data.partition(b"\r\n\r\n")[2]
        return json.loads(body).get("code") if body else None


async def trickle(port: int, first: bytes, drip: bytes = b"", every: float = 0.2,
                  limit: float = 8.0) -> Slow:
    """Send ``first``, then ``drip`` every ``every`` seconds until the gateway closes."""
    started = time.monotonic()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)

    async def drip_forever() -> None:
        writer.write(first)
        while drip:
            await asyncio.sleep(every)
            writer.write(drip)
            await writer.drain()

    dripping = asyncio.ensure_future(drip_forever())
    data, closed = b"", False
    try:
        data = await asyncio.wait_for(reader.read(-1), limit)
        closed = True
    except (TimeoutError, ConnectionError):
        pass
    finally:
        dripping.cancel()
        await asyncio.gather(dripping, return_exceptions=True)
        writer.close()
    return Slow(data, time.monotonic() - started, closed)


def head(key: str, extra: str, method: str = "POST") -> bytes:
    return (f"{method} /api/ai/x HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {key}\r\n"
            f"{extra}\r\n").encode()


async def latencies(gateway: Gateway, key: str, duration: float) -> list[float]:
    """GETs 4 at a time on keep-alive connections for ``duration`` seconds; each one's
    seconds."""
    seconds: list[float] = []
    connector = aiohttp.TCPConnector(limit=4)
    async with aiohttp.ClientSession(connector=connector) as http:

        async def one() -> None:
            started = time.perf_counter()
            async with http.get(f"{gateway.url}/api/ai/x", headers=bearer(key)) as response:
                await response.read()
                assert response.status == 200
            seconds.append(time.perf_counter() - started)

        end = time.monotonic() + duration
        while time.monotonic() < end:
            await asyncio.gather(*(one() for _ in range(4)))
            await asyncio.sleep(0.002)
    return seconds


def p99(values: list[float]) -> float:
    return statistics.quantiles(values, n=100)[98]


async def slow_round(gateway: Gateway, key: str, strict: StrictUpstream
                     ) -> tuple[float, float, list[Slow]]:
    """80 slow connections, each checked against its deadline; the legitimate p99 measured
    alone, then while they hold on. Returns (p99 alone, p99 beside them, the outcomes)."""
    aborted = strict.aborted
    unloaded = p99(await latencies(gateway, key, MEASURE))
    slot_keys = [await gateway.key(concurrency_limit=1) for _ in range(10)]
    port = gateway.port
    slowloris = [trickle(port, b"GET /api/ai/x HTTP/1.1\r\nHost: gw\r\n", b"X-Slow: a\r\n")
                 for _ in range(30)]
    silent = [trickle(port, b"") for _ in range(30)]
    slow_bodies = [trickle(port, head(k, "Transfer-Encoding: chunked\r\n") + b"4\r\nabcd\r\n",
                           b"1\r\na\r\n") for k in slot_keys]  # 5 bytes a second, forever
    stalled = [trickle(port, head(key, "Content-Length: 50000\r\n") + b"a" * 1000)
               for _ in range(10)]
    clients = asyncio.gather(*slowloris, *silent, *slow_bodies, *stalled)
    await asyncio.sleep(0.15)  # every slow connection open and holding its request
    loaded = p99(await latencies(gateway, key, MEASURE))  # done before the first deadline
    outcomes = await clients
    heads, nothing = outcomes[:30], outcomes[30:60]
    trickled, stalls = outcomes[60:70], outcomes[70:]

    def late(group: list[Slow], deadline: float) -> list[float]:
        return [s.seconds for s in group if not s.closed or s.seconds > deadline]

    head_bound = HEADER + TICK + SLACK
    body_bound = BODY + 2 * TICK + SLACK
    assert late(heads, head_bound) == [] and late(nothing, head_bound) == []
    assert late(trickled, body_bound) == [] and late(stalls, body_bound) == []
    assert {(s.status, s.code) for s in heads + trickled + stalls} == {(408, "request_timeout")}
    assert {s.data for s in nothing} == {b""}  # never sent a byte: closed unanswered
    # a head cut short is answered as HTTP/1.0 (no version was read): closing by default
    assert all(s.data.startswith(b"HTTP/1.0 408 ") for s in heads)
    assert all(b"Connection: close" in s.data for s in trickled + stalls)
    assert strict.aborted - aborted == len(trickled)  # every forwarded exchange ended
    async with aiohttp.ClientSession() as http:
        for k in slot_keys:  # each key's only concurrency slot is back
            async with http.get(f"{gateway.url}/api/ai/x", headers=bearer(k)) as response:
                assert response.status == 200
    return unloaded, loaded, outcomes


async def test_slow_clients_are_cut_within_their_deadlines(
    make_gateway: GatewayFactory, strict: StrictUpstream
) -> None:
    """Every round must keep every deadline. The p99 bound (within 2x of alone, plus 2 ms)
    gets a second round when the first misses it: on a shared machine another process's burst
    during one 0.7 s window is enough, and a second miss is not noise."""
    gateway = await make_gateway(routes=hostile_routes(strict.url), defaults=UNLIMITED,
                                 limits=LIMITS)
    key = await gateway.key()
    await latencies(gateway, key, 0.1)  # warm: the key cached, the upstream pool open
    rounds = 1
    unloaded, loaded, outcomes = await slow_round(gateway, key, strict)
    if loaded > 2 * unloaded + 0.002:
        rounds = 2
        unloaded, loaded, outcomes = await slow_round(gateway, key, strict)
    groups = {"heads": outcomes[:30], "silent": outcomes[30:60], "bodies": outcomes[60:70],
              "stalled": outcomes[70:]}
    slowest = {name: max(s.seconds for s in group) for name, group in groups.items()}
    record("SLOW", f"{len(outcomes)} slow connections (header_timeout {HEADER:g} s, body_timeout "
           f"{BODY:g} s): 30 trickled heads 408 in <= {slowest['heads']:.2f} s, 30 silent closed "
           f"in <= {slowest['silent']:.2f} s, 10 bodies at 5 B/s 408 in <= "
           f"{slowest['bodies']:.2f} s, 10 stalled bodies 408 in <= {slowest['stalled']:.2f} s; "
           f"10/10 upstream exchanges aborted, 10/10 slots back; legitimate p99 "
           f"{unloaded * 1000:.1f} ms alone, {loaded * 1000:.1f} ms beside them "
           f"({loaded / unloaded:.2f}x, round {rounds})")
    assert loaded <= 2 * unloaded + 0.002, (unloaded, loaded)


async def test_an_idle_keep_alive_connection_is_not_a_slow_head(
    make_gateway: GatewayFactory, strict: StrictUpstream
) -> None:
    gateway = await make_gateway(routes=hostile_routes(strict.url), defaults=UNLIMITED,
                                 limits={"header_timeout": 0.4, "idle_timeout": 1.5})
    key = await gateway.key()
    request = head(key, "", method="GET")
    reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
    try:
        for _ in range(2):  # idle past header_timeout between requests: still served
            writer.write(request)
            assert (await reader.readline()).split()[1] == b"200"
            while (await reader.readline()) not in (b"\r\n", b""):
                pass
            await reader.read(2)  # the upstream's body ("ok")
            await asyncio.sleep(0.9)
        started = time.monotonic()
        assert await asyncio.wait_for(reader.read(-1), 3) == b""  # idle_timeout: closed
        idle = 0.9 + time.monotonic() - started
    finally:
        writer.close()
    assert 1.4 <= idle <= 1.5 + 0.5, idle


async def test_connections_past_the_cap_are_closed_at_once(
    make_gateway: GatewayFactory, strict: StrictUpstream
) -> None:
    cap = 20
    gateway = await make_gateway(routes=hostile_routes(strict.url), defaults=UNLIMITED,
                                 limits={"max_connections": cap})
    key = await gateway.key()
    request = head(key, "", method="GET")
    held = [await asyncio.open_connection("127.0.0.1", gateway.port) for _ in range(cap)]
    try:
        await asyncio.sleep(0.05)
        started = time.monotonic()
        refused = []
        for _ in range(5):
            reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
            writer.write(request)
            try:
                refused.append(await asyncio.wait_for(reader.read(-1), 2) == b"")
            except ConnectionError:
                refused.append(True)
            writer.close()
        took = time.monotonic() - started
        assert refused == [True] * 5 and took < 1.0
        # the held connections are served; one closed makes room for a new one
        reader, writer = held[0]
        writer.write(request)
        assert (await reader.readline()).split()[1] == b"200"
        writer.close()
        await asyncio.sleep(0.05)
        async with aiohttp.ClientSession() as http, \
                http.get(f"{gateway.url}/api/ai/x", headers=bearer(key)) as response:
            assert response.status == 200
        async with aiohttp.ClientSession() as http, \
                http.get(f"{gateway.admin_url}/metrics") as response:
            metrics = await response.text()
        assert 'gateway_connections_closed_total{reason="max_connections"} 5.0' in metrics
    finally:
        for _, writer in held:
            writer.close()
    record("CONNECTIONS", f"cap {cap}: {cap} open connections held, the next 5 closed "
           f"unanswered in {took * 1000 / 5:.1f} ms each, served again once one closed")


def test_deadline_defaults_are_the_documented_ones() -> None:
    limits = LimitsConfig()
    assert (limits.header_timeout, limits.body_timeout, limits.min_body_rate,
            limits.idle_timeout, limits.max_connections) == (10.0, 10.0, 1024, 75.0, 10_000)
    assert Deadlines.of(limits).tick == 1.0


async def test_a_body_the_gateway_holds_back_is_not_a_slow_body(
    make_gateway: GatewayFactory,
) -> None:
    """The upstream takes the body only after 2 s: the gateway stops reading the client (flow
    control), and that time is not the client's. The body arrives whole, answered 200."""
    received = 0

    async def late_reader(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal received
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length:")))
        await asyncio.sleep(2.0)
        while received < length:
            received += len(await reader.read(1 << 20))
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(late_reader, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    size = 32 * 1024 * 1024
    try:
        gateway = await make_gateway(
            routes=[{"name": "up", "path": "/up/", "upstream": url, "max_body_bytes": size}],
            defaults=UNLIMITED, limits={"body_timeout": 0.5},
        )
        key = await gateway.key()
        async with aiohttp.ClientSession() as http, http.post(
            f"{gateway.url}/up/x", data=io.BytesIO(b"a" * size), headers=bearer(key)
        ) as response:
            assert response.status == 200, await response.text()
    finally:
        server.close()
    assert received == size


async def test_a_body_waiting_for_100_continue_is_not_slow(
    make_gateway: GatewayFactory, strict: StrictUpstream
) -> None:
    """``Expect: 100-continue``: the client sends its body only once the gateway says so, so
    the time before that is not the body's; after it, the body deadline runs as usual."""
    gateway = await make_gateway(routes=hostile_routes(strict.url), defaults=UNLIMITED,
                                 limits={"body_timeout": 0.5})
    key = await gateway.key()
    reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
    try:
        writer.write(head(key, "Content-Length: 4\r\nExpect: 100-continue\r\n"))
        assert (await asyncio.wait_for(reader.readline(), 2)).startswith(b"HTTP/1.1 100")
        await reader.readline()
        writer.write(b"ab")  # half the body, then nothing: cut after body_timeout
        line = await asyncio.wait_for(reader.readline(), 3)
        assert line.split()[1] == b"408"
    finally:
        writer.close()
