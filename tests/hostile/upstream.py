"""A recording upstream that reads what the gateway sends with a strict reference parser (h11)
and answers each request with 200 ``ok``. Every request is recorded with its framing headers;
anything h11 refuses, or framing h11 tolerates but a proxy must never send (both
Content-Length and Transfer-Encoding, a Content-Length unequal to the body), is a violation.
A request whose body never completes (the gateway aborted it) is counted as ``aborted``."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import h11


@dataclass
class Seen:
    method: str
    target: str
    headers: list[tuple[str, str]]
    body: bytearray = field(default_factory=bytearray)

    def all(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k == name.lower()]


@dataclass
class StrictUpstream:
    url: str = ""
    received: list[Seen] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)
    aborted: int = 0
    body: bytes = b"ok"
    extra_headers: list[tuple[str, str]] = field(default_factory=list)

    def paths(self) -> list[str]:
        return [seen.target for seen in self.received]

    def check(self, seen: Seen) -> None:
        lengths, codings = seen.all("content-length"), seen.all("transfer-encoding")
        if lengths and codings:
            self.violations.append(f"both Content-Length and Transfer-Encoding: {seen.target}")
        if lengths and int(lengths[0]) != len(seen.body):
            self.violations.append(f"Content-Length {lengths[0]} != body {len(seen.body)}")

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=256 * 1024)
        current: Seen | None = None
        try:
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    conn.receive_data(await reader.read(65536))
                elif isinstance(event, h11.Request):
                    headers = [(k.decode().lower(), v.decode("latin-1")) for k, v in event.headers]
                    current = Seen(event.method.decode(), event.target.decode("latin-1"), headers)
                elif isinstance(event, h11.Data) and current is not None:
                    current.body += event.data
                elif isinstance(event, h11.EndOfMessage) and current is not None:
                    self.received.append(current)
                    self.check(current)
                    current = None
                    writer.write(self.answer(conn))
                    await writer.drain()
                    if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                        break
                    conn.start_next_cycle()
                elif isinstance(event, h11.ConnectionClosed):
                    break
        except h11.RemoteProtocolError as exc:
            if current is not None and "incomplete" in str(exc):
                self.aborted += 1  # the gateway gave up mid-body: the honest thing to do
            else:
                self.violations.append(f"h11 refused: {exc}")
        except ConnectionError:
            if current is not None:
                self.aborted += 1
        except asyncio.CancelledError:
            pass  # the test is over
        finally:
            writer.close()

    def answer(self, conn: h11.Connection) -> bytes:
        headers = [("Content-Length", str(len(self.body))), *self.extra_headers]
        return b"".join(
            (
                conn.send(h11.Response(status_code=200, headers=headers)) or b"",
                conn.send(h11.Data(data=self.body)) or b"",
                conn.send(h11.EndOfMessage()) or b"",
            )
        )


@contextlib.asynccontextmanager
async def strict_upstream() -> AsyncIterator[StrictUpstream]:
    upstream = StrictUpstream()
    tasks: set[asyncio.Task[None]] = set()

    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        tasks.add(task)  # type: ignore[arg-type]
        try:
            await upstream.serve(reader, writer)
        finally:
            tasks.discard(task)  # type: ignore[arg-type]

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    upstream.url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    try:
        yield upstream
    finally:
        server.close()
        for task in list(tasks):
            task.cancel()
        await server.wait_closed()
