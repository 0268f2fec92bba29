"""A demo upstream that answers every request with what it received, as JSON. Used by the
README walk-through (``gateway echo-upstream``) and, recording every request, by the tests."""

from __future__ import annotations

from dataclasses import dataclass, field

import orjson
from aiohttp import web


@dataclass
class Received:
    method: str
    path: str  # raw path and query, exactly as received
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        values = self.all(name)
        return values[0] if values else None

    def all(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name.lower()]


@dataclass
class EchoLog:
    received: list[Received] = field(default_factory=list)

    @property
    def last(self) -> Received:
        return self.received[-1]


ECHO_LOG = web.AppKey("echo_log", EchoLog)


async def echo(request: web.Request) -> web.Response:
    body = await request.read()
    received = Received(
        request.method,
        request.raw_path,
        [(k.decode("latin-1"), v.decode("latin-1")) for k, v in request.raw_headers],
        body,
    )
    request.app[ECHO_LOG].received.append(received)
    return web.Response(
        body=orjson.dumps(
            {
                "method": received.method,
                "path": received.path,
                "headers": dict(received.headers),
                "body_bytes": len(body),
            }
        ),
        content_type="application/json",
    )


def create_echo_app(log: EchoLog | None = None) -> web.Application:
    app = web.Application(client_max_size=1024**3)
    app[ECHO_LOG] = log or EchoLog()
    app.router.add_route("*", "/{tail:.*}", echo)
    return app
