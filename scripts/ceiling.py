"""A measuring stick, not product code: how fast could a Python proxy be here without aiohttp?

A bare HTTP/1.1 server on httptools (keep-alive, small bodies only; no streaming, no error
handling, no pipelining safety) forwarding through the gateway's own upstream client; with
``--server aiohttp``, the same forwarding as one handler of aiohttp's ``web.Server``, the
gateway's own server (``scripts/bench.py --floors`` runs both beside the gateway). With
``--key KEY`` it also does the key work of the full pipeline inline: Bearer parse, checksum,
SHA-256, a cache-dict hit, status and permission checks, the in-process sliding-log admit and
slot release, six quota headers back and the identity headers out. Run it pinned beside the
benchmark's nginx and point wrk at it, e.g.:

    taskset -c 0 .venv/bin/python scripts/ceiling.py --listen 127.0.0.1:18020 \\
        --upstream http://127.0.0.1:<nginx fast port> [--key sk_live_...]
    taskset -c 1 wrk -t1 -c32 -d5s [-H "Authorization: Bearer sk_live_..."] http://127.0.0.1:18020/x

README "Benchmark" has what it measured against the gateway and nginx.
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

import httptools
import uvloop
from aiohttp import web
from multidict import CIMultiDict

from gateway.keys.model import KeyHasher, is_well_formed
from gateway.limiter.memory import MemoryRateLimiter
from gateway.pipeline.rate_limit import quota_headers
from gateway.upstream import UpstreamPool

NOT_FORWARDED = {"host", "connection", "authorization", "content-length"}
NOT_RETURNED = {"connection", "content-length", "transfer-encoding", "keep-alive"}


class KeyWork:
    """The full pipeline's per-request key work, inline, against one known key."""

    def __init__(self, key: str) -> None:
        self.hasher = KeyHasher(None)
        self.prefixes = frozenset({key.rpartition("_")[0]})
        self.cache = {self.hasher(key): ("key_x", "ws_x", "proj_x", ("read",), "active")}
        self.limiter = MemoryRateLimiter()

    def check(self, headers: list[tuple[str, str]]) -> tuple[Any, ...]:
        values = [v for n, v in headers if n.lower() == "authorization"]
        scheme, _, token = values[0].strip().partition(" ") if len(values) == 1 else ("", "", "")
        token = token.strip()
        if scheme.lower() != "bearer" or not is_well_formed(token, self.prefixes):
            raise PermissionError("malformed")
        record = self.cache.get(self.hasher(token))
        if record is None or record[4] != "active" or "read" not in record[3]:
            raise PermissionError("refused")
        decision = self.limiter.admit_nowait(record[0], "", 100_000_000, 60, 1_000_000)
        if not decision.allowed:
            raise PermissionError("limited")
        return record, decision


class Proxy(asyncio.Protocol):
    def __init__(self, pool: UpstreamPool, keys: KeyWork | None) -> None:
        self.pool, self.keys = pool, keys
        self.headers: list[tuple[str, str]] = []
        self.url = b""

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.parser = httptools.HttpRequestParser(self)

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)

    def on_url(self, url: bytes) -> None:
        self.url = url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.decode("latin-1"), value.decode("latin-1")))

    def on_message_complete(self) -> None:
        headers, self.headers = self.headers, []
        method = self.parser.get_method().decode()
        asyncio.get_running_loop().create_task(self.handle(method, self.url.decode(), headers))

    async def handle(self, method: str, url: str, headers: list[tuple[str, str]]) -> None:
        out = [(n, v) for n, v in headers if n.lower() not in NOT_FORWARDED]
        own: dict[str, str] = {}
        lease = None
        if self.keys is not None:
            try:
                record, decision = self.keys.check(headers)
            except PermissionError:
                self.transport.write(b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\n\r\n")
                return
            own, lease = quota_headers(decision), (record[0], decision.lease)
            out += [("X-Workspace-Id", record[1]), ("X-Project-Id", record[2]),
                    ("X-Api-Key-Id", record[0]), ("X-Api-Key-Permissions", ",".join(record[3]))]
        out += [("X-Request-Id", "r"), ("X-Forwarded-For", "127.0.0.1"),
                ("X-Forwarded-Proto", "http")]
        try:
            response = await self.pool.request(method, url, out, None, timeout=30)
            body = await response.read()
        finally:
            if lease is not None and self.keys is not None:
                self.keys.limiter.release(*lease)
        head = [f"HTTP/1.1 {response.status} {response.reason}\r\n"]
        head += [f"{n}: {v}\r\n" for n, v in response.headers if n.lower() not in NOT_RETURNED]
        head += [f"{n}: {v}\r\n" for n, v in own.items()]
        head.append(f"X-Request-Id: r\r\nContent-Length: {len(body)}\r\n\r\n")
        self.transport.write("".join(head).encode() + body)


async def serve_aiohttp(listen: str, upstream: str) -> None:
    """The same forwarding behind aiohttp's low-level ``web.Server`` (the gateway's server):
    what aiohttp's request handling costs before any of the gateway's own work."""
    host, _, port = listen.rpartition(":")
    pool = UpstreamPool(upstream)

    async def handler(request: web.BaseRequest) -> web.Response:
        out = [(n, v) for n, v in request.headers.items() if n.lower() not in NOT_FORWARDED]
        out += [("X-Request-Id", "r"), ("X-Forwarded-For", "127.0.0.1"),
                ("X-Forwarded-Proto", "http")]
        response = await pool.request(request.method, request.raw_path, out, None, timeout=30)
        body = await response.read()
        headers = [(n, v) for n, v in response.headers if n.lower() not in NOT_RETURNED]
        return web.Response(status=response.status, reason=response.reason, body=body,
                            headers=CIMultiDict([*headers, ("X-Request-Id", "r")]))

    loop = asyncio.get_running_loop()
    server = await loop.create_server(web.Server(handler, access_log=None), host, int(port),
                                      backlog=4096)
    await server.serve_forever()


async def serve(listen: str, upstream: str, key: str | None) -> None:
    host, _, port = listen.rpartition(":")
    pool, keys = UpstreamPool(upstream), KeyWork(key) if key else None
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: Proxy(pool, keys), host, int(port), backlog=4096)
    await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", default="127.0.0.1:18020")
    parser.add_argument("--upstream", required=True)
    parser.add_argument("--key", help="do the full pipeline's key work against this key")
    parser.add_argument("--server", choices=("httptools", "aiohttp"), default="httptools",
                        help="aiohttp: the bare forwarding behind aiohttp's web.Server instead")
    args = parser.parse_args()
    if args.server == "aiohttp":
        uvloop.run(serve_aiohttp(args.listen, args.upstream))
    else:
        uvloop.run(serve(args.listen, args.upstream, args.key))


if __name__ == "__main__":
    main()
