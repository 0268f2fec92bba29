"""Family 1, the other direction: an upstream that answers with hostile framing (both
Content-Length and Transfer-Encoding, repeated or signed lengths, odd chunk sizes, bare LF,
obs-fold, bytes past the end of the message meant to be read as the next response). The
client always gets a message that h11 parses (or an honest abort), never both framing headers,
and the next request on a pooled upstream connection always gets its own answer (no desync)."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections import Counter
from collections.abc import AsyncIterator

import h11
import pytest

from tests.conftest import Gateway, GatewayFactory
from tests.hostile.conftest import UNLIMITED
from tests.hostile.figures import record

POISON = b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\npoisoned"
FRAMINGS: dict[str, list[str]] = {
    "content-length": ["Content-Length: {n}"],
    "chunked": ["Transfer-Encoding: chunked"],
    "cl+te": ["Content-Length: {n}", "Transfer-Encoding: chunked"],
    "te+cl": ["Transfer-Encoding: chunked", "Content-Length: 3"],
    "cl twice same": ["Content-Length: {n}", "Content-Length: {n}"],
    "cl twice differ": ["Content-Length: {n}", "Content-Length: 1"],
    "cl list": ["Content-Length: {n}, {n}"],
    "cl plus": ["Content-Length: +{n}"],
    "cl hex": ["Content-Length: 0x{n:x}"],
    "cl negative": ["Content-Length: -1"],
    "te gzip,chunked": ["Transfer-Encoding: gzip, chunked"],
    "te chunked,identity": ["Transfer-Encoding: chunked, identity"],
    "te identity": ["Transfer-Encoding: identity", "Content-Length: {n}"],
    "te obs-fold": ["Transfer-Encoding:", " chunked"],
    "cl obs-fold": ["Content-Length:", " {n}"],
}
SIZES = {"hex": "{n:x}", "0x": "0x{n:x}", "plus": "+{n:x}", "underscore": "{n:x}_",
         "ext": "{n:x};a=b", "ext-cr": "{n:x};a\rb"}
BODY = b"hello"


def response(framing: str, size: str, bare_lf: bool, poison: bool) -> bytes:
    eol = "\n" if bare_lf else "\r\n"
    lines = ["HTTP/1.1 200 OK", *(f.format(n=len(BODY)) for f in FRAMINGS[framing])]
    chunked = any("chunked" in line for line in lines)
    body = BODY
    if chunked:
        body = (SIZES[size].format(n=len(BODY)).encode() + b"\r\n" + BODY + b"\r\n0\r\n\r\n")
    return (eol.join(lines) + eol + eol).encode() + body + (POISON if poison else b"")


def corpus() -> list[bytes]:
    cases = [response(f, s, lf, p) for f, s, lf, p in
             itertools.product(FRAMINGS, SIZES, (False, True), (False, True))
             if s == "hex" or any("chunked" in x for x in FRAMINGS[f])]
    return list(dict.fromkeys(cases))


@contextlib.asynccontextmanager
async def hostile_upstream(cases: list[bytes]) -> AsyncIterator[str]:
    """Answers ``/r/<i>`` with case ``i`` byte for byte and ``/ok/<tag>`` with ``ok-<tag>``,
    on keep-alive connections."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError,
                                 asyncio.CancelledError):
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                path = head.split(b" ", 2)[1].decode()
                if "/ok/" in path:
                    tag = path.rsplit("/", 1)[1].encode()
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\nok-%s"
                                 % (len(tag) + 3, tag))
                else:
                    writer.write(cases[int(path.rsplit("/", 1)[1])])
                await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    finally:
        server.close()


async def fetch(port: int, target: str) -> tuple[str, int, list[tuple[bytes, bytes]], bytes]:
    """GET ``target`` and read the answer with h11: ("ok"|"aborted"|"malformed", ...)."""
    conn = h11.Connection(h11.CLIENT)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(conn.send(h11.Request(method="GET", target=target,
                                       headers=[("Host", "gw"), ("Connection", "close")]))
                 + (conn.send(h11.EndOfMessage()) or b""))
    status, headers, body = 0, [], bytearray()
    try:
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(await asyncio.wait_for(reader.read(65536), 5))
            elif isinstance(event, h11.Response):
                status, headers = event.status_code, list(event.headers)
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                return "ok", status, headers, bytes(body)
    except h11.RemoteProtocolError as exc:
        return ("aborted" if "incomplete" in str(exc) else "malformed"), status, headers, b""
    finally:
        writer.close()


@pytest.fixture
async def hostile_upstream_gateway(
    make_gateway: GatewayFactory,
) -> AsyncIterator[tuple[Gateway, list[bytes]]]:
    cases = corpus()
    async with hostile_upstream(cases) as url:
        routes = [{"name": "raw", "path": "/raw/", "upstream": url, "auth": "none",
                   "timeout": 1}]
        yield await make_gateway(routes=routes, defaults=UNLIMITED), cases


async def test_upstream_response_framing_corpus(
    hostile_upstream_gateway: tuple[Gateway, list[bytes]],
) -> None:
    gateway, cases = hostile_upstream_gateway
    outcomes: Counter[str] = Counter()
    problems: list[str] = []
    for i, case in enumerate(cases):
        result, status, headers, body = await fetch(gateway.port, f"/raw/r/{i}")
        names = [name.lower() for name, _ in headers]
        both = b"content-length" in names and b"transfer-encoding" in names
        if result == "malformed" or both or status not in (0, 200, 502, 504):
            problems.append(f"{case!r}: {result} {status} {headers}")
        if result == "aborted":
            outcomes["aborted after the head"] += 1
        else:
            outcomes["passed whole" if status == 200 and body == BODY else str(status)] += 1
        if status == 200 and result == "ok" and body != BODY:
            problems.append(f"{case!r}: 200 with body {body!r}")
        check = await fetch(gateway.port, f"/raw/ok/{i}")  # the pooled connection is reused
        if check[3] != f"ok-{i}".encode():
            problems.append(f"desync after {case!r}: next answer {check[1]} {check[3][:40]!r}")
            outcomes["desync"] += 1
    record("RESPONSE-FRAMING", f"{len(cases)} hostile upstream responses: {dict(outcomes)}; "
           f"{outcomes['desync']} desyncs, {len(problems)} problems")
    assert problems == [], "\n".join(problems[:10])
