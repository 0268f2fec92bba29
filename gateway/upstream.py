"""A minimal keep-alive HTTP/1.1 client for the proxy's upstreams.

aiohttp's ClientSession spends 110-150 µs per request; this client spends a fraction of that.
Each connection is an ``asyncio.Protocol`` (``_Conn``) that feeds bytes to httptools' C parser
(llhttp); the parser callbacks append to plain lists and wake at most one future, so a small
exchange costs one ``transport.write`` (head and body together), one future, one timer and no
Task. ``UpstreamPool`` keeps idle connections per target in a LIFO stack (bounded, swept after
``idle_timeout``) and replays a replayable request once when a reused connection turns out to
be stale. Back-pressure: streamed request bodies wait for ``resume_writing``; response bodies
are buffered up to ``_HIGH_WATER`` bytes, then the transport stops reading until the consumer
takes them. A connection goes back to the pool only after a complete keep-alive response;
every failure closes it and surfaces as ``UpstreamError`` with a short, data-free message.
``UpstreamGroup`` round-robins over pools, skips targets their health has ejected
(``gateway.health``) and retries once on another target a request that never reached one
(README "Upstream health").
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections import deque
from collections.abc import AsyncIterator, Sequence
from typing import Any, cast
from urllib.parse import urlsplit

import httptools

from gateway.config import HealthConfig
from gateway.errors import UpstreamError
from gateway.health import TargetHealth
from gateway.periodic import Periodic

__all__ = ["UpstreamGroup", "UpstreamPool", "UpstreamResponse"]

_HIGH_WATER = 256 * 1024  # response bytes buffered before the transport stops reading
_JOIN_LIMIT = 64 * 1024  # request bodies up to this size are sent in one write with the head
# RFC 9110 §9.2.2: a client may retry these when the connection failed before the response
IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})
CHECK_HEADERS = [("User-Agent", "gateway-health-check")]
_SWEEP_SLACK = 0.05  # idle connections this close to expiry are closed early by the sweeper
_EMPTY_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
_DEFAULT_PORTS = {"http": 80, "https": 443}

Body = bytes | AsyncIterator[bytes] | None


class _ConnectError(UpstreamError):
    """No connection could be made, so nothing was sent: safe to try another target."""


class _NotAnswered(UpstreamError):
    """Sent on a fresh connection that failed before any response byte (not a timeout): an
    idempotent request may be tried on another target."""


class _StaleConnection(Exception):
    """A reused connection died before any response byte: replay on a fresh one."""


def _expire(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_exception(UpstreamError("upstream timed out", timeout=True))


class _Conn(asyncio.Protocol):
    """One upstream connection and the state of the exchange in flight on it."""

    __slots__ = (
        "active",
        "broken",
        "buffered",
        "chunked",
        "chunks",
        "close_token",
        "closed",
        "content_length",
        "eof_body",
        "exc",
        "got_data",
        "head_done",
        "head_only",
        "headers",
        "idle",
        "idle_since",
        "interim",
        "keep_alive",
        "keepalive_token",
        "loop",
        "msg_done",
        "parser",
        "pool",
        "read_paused",
        "reason",
        "reused",
        "stale_parser",
        "status",
        "transport",
        "waiter",
        "write_paused",
    )

    transport: asyncio.Transport

    def __init__(self, pool: UpstreamPool, loop: asyncio.AbstractEventLoop) -> None:
        self.pool = pool
        self.loop = loop
        self.parser = httptools.HttpResponseParser(self)
        self.stale_parser = False
        self.closed = False
        self.reused = False
        self.idle = False
        self.idle_since = 0.0
        self.waiter: asyncio.Future[None] | None = None
        self.write_paused = False
        self.read_paused = False
        self.broken = False
        self.chunks: deque[bytes] = deque()
        self.start(False)
        self.active = False

    # -- exchange state -------------------------------------------------------------------

    def start(self, head_only: bool) -> None:
        """Reset the per-exchange state before a request is written."""
        if self.stale_parser:
            self.parser = httptools.HttpResponseParser(self)
            self.stale_parser = False
        self.active = True
        self.head_only = head_only
        self.got_data = False
        self.interim = False
        self.head_done = False
        self.msg_done = False
        self.keep_alive = False
        self.exc: UpstreamError | None = None
        self.buffered = 0
        self._reset_head()

    def _reset_head(self) -> None:
        self.status = 0
        self.reason = b""
        self.headers: list[tuple[str, str]] = []
        self.content_length: int | None = None
        self.chunked = False
        self.eof_body = False
        self.close_token = False
        self.keepalive_token = False

    def wake(self) -> None:
        waiter = self.waiter
        if waiter is not None:
            self.waiter = None
            if not waiter.done():
                waiter.set_result(None)

    async def wait(self, timeout: float) -> None:
        """Sleep until the protocol reports progress; ``UpstreamError`` after ``timeout``."""
        fut = self.loop.create_future()
        self.waiter = fut
        handle = self.loop.call_later(timeout, _expire, fut)
        try:
            await fut
        finally:
            handle.cancel()
            self.waiter = None

    def take(self) -> bytes:
        """Everything buffered so far, in one piece; resumes reading if it was paused."""
        chunks = self.chunks
        data = chunks.popleft() if len(chunks) == 1 else b"".join(chunks)
        chunks.clear()
        self.buffered = 0
        if self.read_paused:
            self.read_paused = False
            self.transport.resume_reading()
        return data

    def fail(self, exc: UpstreamError) -> None:
        if not self.msg_done and self.exc is None:
            self.exc = exc
        self.broken = True
        self.transport.abort()
        self.wake()

    def finish(self) -> None:
        """End the exchange: back to the pool if the connection is clean, else close it."""
        self.active = False
        if self.msg_done and self.keep_alive and not self.broken and not self.closed:
            if self.chunks:
                self.chunks.clear()
            if self.read_paused:
                self.read_paused = False
                self.transport.resume_reading()
            self.pool._put(self)
        elif self.msg_done and not self.broken:
            self.transport.close()
        else:
            self.broken = True
            self.transport.abort()

    # -- asyncio.Protocol -----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.pool._lost(self)
        if self.active and not self.msg_done and self.exc is None:
            if exc is None and self.head_done and self.eof_body:
                self.msg_done = True  # a read-until-close body ends here
            elif exc is None:
                self.exc = UpstreamError("connection closed before the response was complete")
            else:
                self.exc = UpstreamError(f"connection lost: {type(exc).__name__}")
        self.wake()

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        self.wake()

    def data_received(self, data: bytes) -> None:
        self.got_data = True
        if not self.active:  # an idle connection has nothing to say (e.g. a 408 before close)
            self.broken = True
            self.transport.abort()
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self.fail(UpstreamError("unexpected protocol upgrade"))
        except httptools.HttpParserError:
            self.fail(UpstreamError("malformed response"))

    # -- httptools callbacks --------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self.head_done:  # a second message: not ours to read, the connection is done
            self.broken = True

    def on_status(self, status: bytes) -> None:
        self.reason += status

    def on_header(self, name: bytes, value: bytes) -> None:
        # a value in utf-8 + surrogateescape: the convention of aiohttp's parser (bytes
        # round-trip); a name is a token (llhttp refuses anything else), ASCII
        self.headers.append((name.decode(), value.decode("utf-8", "surrogateescape")))
        size = len(name)
        if size == 14 or size == 17 or size == 10:  # Content-Length, Transfer-Encoding, Connection
            self._special_header(name.lower(), value)

    def _special_header(self, name: bytes, value: bytes) -> None:
        if name == b"content-length":
            with contextlib.suppress(ValueError):  # llhttp rejects a bad value on its own
                self.content_length = int(value)
        elif name == b"transfer-encoding":
            self.chunked = value.rsplit(b",", 1)[-1].strip().lower() == b"chunked"
        elif name == b"connection":
            tokens = {t.strip() for t in value.lower().split(b",")}
            self.close_token = self.close_token or b"close" in tokens
            self.keepalive_token = self.keepalive_token or b"keep-alive" in tokens

    def on_headers_complete(self) -> None:
        parser = self.parser
        status = parser.get_status_code()
        if status < 200:  # interim (100 Continue, 103 Early Hints): skipped
            self.interim = True
            self._reset_head()
            return
        self.status = status
        if self.chunked:
            self.content_length = None
        if self.head_only or status == 204 or status == 304:
            self.keep_alive = self._own_keep_alive(parser.get_http_version())
            if self.head_only:  # llhttp cannot be told to skip the body: fresh parser next time
                self.stale_parser = True
                self.msg_done = True
        else:
            self.keep_alive = parser.should_keep_alive()
            self.eof_body = not self.chunked and self.content_length is None
        self.head_done = True
        self.wake()

    def _own_keep_alive(self, version: str) -> bool:
        if self.close_token:
            return False
        return version == "1.1" or self.keepalive_token

    def on_body(self, body: bytes) -> None:
        if self.msg_done:  # bytes after a HEAD response: the framing is off
            self.broken = True
            return
        self.chunks.append(body)
        self.buffered += len(body)
        if self.buffered > _HIGH_WATER and not self.read_paused:
            self.read_paused = True
            self.transport.pause_reading()
        self.wake()

    def on_message_complete(self) -> None:
        if self.interim:
            self.interim = False
            return
        if not self.msg_done:
            self.msg_done = True
            self.wake()


class UpstreamResponse:
    """A response head; the body is read with ``read()`` or ``chunks()``, then released."""

    __slots__ = ("_conn", "_timeout", "content_length", "headers", "reason", "status")

    def __init__(self, conn: _Conn, timeout: float) -> None:
        self._conn: _Conn | None = conn
        self._timeout = timeout
        self.status: int = conn.status
        self.reason: str = conn.reason.decode("utf-8", "surrogateescape")
        self.headers: list[tuple[str, str]] = conn.headers
        self.content_length: int | None = conn.content_length

    def __repr__(self) -> str:
        return f"<UpstreamResponse {self.status} {self.reason}>"

    def read_now(self) -> bytes | None:
        """The whole body when it is all here already (the usual small response), the
        connection released; else None, and nothing read."""
        conn = self._live()
        if not conn.msg_done:
            return None
        data = conn.take() if conn.chunks else b""
        self.release()
        return data

    async def read(self) -> bytes:
        """The whole body; the connection is released afterwards."""
        whole = self.read_now()
        if whole is not None:
            return whole
        conn = self._live()
        parts: list[bytes] = []
        while True:
            if conn.chunks:
                parts.append(conn.take())
            if conn.msg_done:
                break
            await self._more(conn)
        self.release()
        return b"".join(parts)

    def chunks(self) -> AsyncIterator[bytes]:
        """The body as it arrives (each wait bounded by the timeout); released at the end."""
        return _BodyIterator(self, self._live())

    def release(self) -> None:
        """Idempotent. Reuse the connection if the response was complete, else close it."""
        conn = self._conn
        if conn is not None:
            self._conn = None
            conn.finish()

    def _live(self) -> _Conn:
        if self._conn is None:
            raise RuntimeError("the response was already released")
        return self._conn

    async def _more(self, conn: _Conn) -> None:
        try:
            if conn.exc is not None:
                raise conn.exc
            await conn.wait(self._timeout)
        except BaseException:
            self._abort()
            raise

    def _abort(self) -> None:
        conn = self._conn
        if conn is not None:
            self._conn = None
            conn.broken = True
            conn.finish()

    def __del__(self) -> None:
        conn = self._conn
        if conn is not None and not conn.loop.is_closed():
            conn.broken = True
            conn.finish()


class _BodyIterator:
    __slots__ = ("_conn", "_response")

    def __init__(self, response: UpstreamResponse, conn: _Conn) -> None:
        self._response = response
        self._conn = conn

    def __aiter__(self) -> _BodyIterator:
        return self

    async def __anext__(self) -> bytes:
        response = self._response
        conn = self._conn
        while response._conn is conn:
            if conn.chunks:
                return conn.take()
            if conn.msg_done:
                response.release()
                break
            await response._more(conn)
        raise StopAsyncIteration


class UpstreamPool:
    """Keep-alive HTTP/1.1 connections to one target, reused LIFO, bounded idle set."""

    def __init__(
        self,
        base_url: str,
        *,
        max_idle: int = 256,
        connect_timeout: float = 5.0,
        idle_timeout: float = 60.0,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        parts = urlsplit(base_url)
        scheme = parts.scheme.lower()
        if scheme not in _DEFAULT_PORTS or not parts.hostname:
            raise ValueError("an upstream URL needs an http or https scheme and a host")
        if parts.query or parts.fragment or parts.username is not None:
            raise ValueError("an upstream URL takes no query, fragment or credentials")
        self.url = base_url
        self.health = TargetHealth(HealthConfig(), base_url)  # a group gives it its route's
        self.host: str = parts.hostname
        self.port: int = parts.port or _DEFAULT_PORTS[scheme]
        name = f"[{self.host}]" if ":" in self.host else self.host
        default = self.port == _DEFAULT_PORTS[scheme]
        self.host_header: str = name if default else f"{name}:{self.port}"
        self.base_path: str = parts.path.rstrip("/")
        self._ssl: ssl.SSLContext | None = None
        if scheme == "https":
            self._ssl = ssl_context or ssl.create_default_context()
        self._host_line = f"Host: {self.host_header}\r\n"
        self._max_idle = max_idle
        self._connect_timeout = connect_timeout
        self._idle_timeout = idle_timeout
        self._idle: list[_Conn] = []
        self._conns: set[_Conn] = set()
        self._sweeper: asyncio.TimerHandle | None = None
        self._all_closed: asyncio.Future[None] | None = None
        self._closed = False

    def __repr__(self) -> str:
        scheme = "https" if self._ssl else "http"
        return f"<UpstreamPool {scheme}://{self.host_header}{self.base_path}>"

    async def request(
        self,
        method: str,
        target: str,
        headers: list[tuple[str, str]],
        body: Body,
        *,
        timeout: float,
        body_length: int | None = None,
    ) -> UpstreamResponse:
        """Send one request and return once the response head is in."""
        if self._closed:
            raise UpstreamError("pool closed")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        head = self._head(method, target, headers, body, body_length)
        conn = self._acquire()
        if conn is not None:
            try:
                return await self._exchange(conn, head, body, body_length, deadline, timeout)
            except _StaleConnection:
                pass  # the server had closed it while idle: one replay on a fresh connection
        conn = await self._connect(loop, deadline)
        return await self._exchange(conn, head, body, body_length, deadline, timeout)

    def usage(self) -> tuple[int, int]:
        """(connections open, of which idle): read by the metrics, never per request."""
        return len(self._conns), len(self._idle)

    async def close(self) -> None:
        """Close every connection, idle or busy; later requests fail."""
        self._closed = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        if not self._conns:
            return
        self._all_closed = asyncio.get_running_loop().create_future()
        for conn in list(self._conns):
            conn.broken = True
            conn.transport.abort()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self._all_closed), 1.0)

    # -- request head ---------------------------------------------------------------------

    def _head(
        self,
        method: str,
        target: str,
        headers: list[tuple[str, str]],
        body: Body,
        body_length: int | None,
    ) -> bytes:
        if body is None:
            framing = "Content-Length: 0\r\n" if method in _EMPTY_BODY_METHODS else ""
        elif isinstance(body, bytes):
            framing = f"Content-Length: {len(body)}\r\n"
        elif body_length is not None:
            framing = f"Content-Length: {body_length}\r\n"
        else:
            framing = "Transfer-Encoding: chunked\r\n"
        fields = "\r\n".join(map(": ".join, headers))
        if fields:
            fields += "\r\n"
        # the caller's own Host, if it gave one, else the target's (one pass in C, not a loop)
        host = "" if f"\n{fields}".lower().find("\nhost:") >= 0 else self._host_line
        text = f"{method} {target} HTTP/1.1\r\n{host}{fields}{framing}\r\n"
        lines = len(headers) + 2 + (host != "") + (framing != "")
        if text.count("\n") != lines or text.count("\r") != lines or " " in target:
            raise ValueError("CR, LF or space in the request line or a header")
        return text.encode("utf-8", "surrogateescape")

    # -- connections ----------------------------------------------------------------------

    def _acquire(self) -> _Conn | None:
        idle = self._idle
        while idle:
            conn = idle.pop()
            conn.idle = False
            if not conn.closed and not conn.transport.is_closing():
                conn.reused = True
                return conn
        return None

    async def _connect(self, loop: asyncio.AbstractEventLoop, deadline: float) -> _Conn:
        wait = min(self._connect_timeout, deadline - loop.time())
        try:
            async with asyncio.timeout(wait):
                _, conn = await loop.create_connection(
                    lambda: _Conn(self, loop),
                    self.host,
                    self.port,
                    ssl=self._ssl,
                    server_hostname=self.host if self._ssl else None,
                )
        except TimeoutError:
            raise _ConnectError("connect timed out", timeout=True) from None
        except OSError as exc:
            raise _ConnectError(f"connect failed: {type(exc).__name__}") from None
        if self._closed:
            conn.transport.abort()
            raise UpstreamError("pool closed")
        self._conns.add(conn)
        return conn

    def _put(self, conn: _Conn) -> None:
        idle = self._idle
        if self._closed or len(idle) >= self._max_idle:
            conn.transport.close()
            return
        loop = conn.loop
        conn.idle_since = loop.time()
        conn.idle = True
        idle.append(conn)
        if self._sweeper is None:
            self._sweeper = loop.call_later(self._idle_timeout, self._sweep, loop)

    def _sweep(self, loop: asyncio.AbstractEventLoop) -> None:
        self._sweeper = None
        now = loop.time()
        limit = now + _SWEEP_SLACK - self._idle_timeout
        idle = self._idle  # oldest first: released connections are appended, reuse pops
        expired = 0
        while expired < len(idle) and idle[expired].idle_since <= limit:
            expired += 1
        for conn in idle[:expired]:
            conn.idle = False
            conn.transport.close()
        del idle[:expired]
        if idle:
            delay = idle[0].idle_since + self._idle_timeout - now
            self._sweeper = loop.call_later(delay, self._sweep, loop)

    def _lost(self, conn: _Conn) -> None:
        self._conns.discard(conn)
        if conn.idle:
            conn.idle = False
            self._idle.remove(conn)
        done = self._all_closed
        if done is not None and not self._conns and not done.done():
            done.set_result(None)

    # -- one exchange ---------------------------------------------------------------------

    async def _exchange(
        self,
        conn: _Conn,
        head: bytes,
        body: Body,
        body_length: int | None,
        deadline: float,
        timeout: float,
    ) -> UpstreamResponse:
        conn.start(head.startswith(b"HEAD "))
        try:
            if body is None:
                conn.transport.write(head)
            elif isinstance(body, bytes):
                self._send_bytes(conn, head, body)
            else:
                await self._send_stream(conn, head, body, body_length, timeout)
                deadline = conn.loop.time() + timeout  # streaming: the head wait starts now
            while not conn.head_done:
                if conn.exc is not None:
                    raise conn.exc
                await conn.wait(deadline - conn.loop.time())
        except UpstreamError as exc:
            conn.broken = True
            conn.finish()
            replayable = body is None or isinstance(body, bytes)
            if replayable and not conn.got_data and not exc.timeout:
                if conn.reused:
                    raise _StaleConnection from None
                raise _NotAnswered(str(exc)) from None
            raise
        except BaseException:
            conn.broken = True
            conn.finish()
            raise
        return UpstreamResponse(conn, timeout)

    @staticmethod
    def _send_bytes(conn: _Conn, head: bytes, body: bytes) -> None:
        if len(body) <= _JOIN_LIMIT:
            conn.transport.write(head + body)
        else:
            conn.transport.write(head)
            conn.transport.write(body)

    @staticmethod
    async def _send_stream(
        conn: _Conn,
        head: bytes,
        body: AsyncIterator[bytes],
        declared: int | None,
        timeout: float,
    ) -> None:
        """Write a streamed body chunk by chunk, waiting for the transport to drain.

        Stops early (connection then not reusable) if the response head arrives first or the
        connection drops; the head wait that follows reports what happened.
        """
        transport = conn.transport
        transport.write(head)
        sent = 0
        async for chunk in body:
            if not chunk:
                continue
            if conn.head_done or conn.closed:
                conn.broken = True
                return
            sent += len(chunk)
            if declared is None:
                transport.write(b"%x\r\n%b\r\n" % (len(chunk), chunk))
            elif sent > declared:
                raise UpstreamError("request body longer than its Content-Length")
            else:
                transport.write(chunk)
            while conn.write_paused and not conn.head_done and not conn.closed:
                await conn.wait(timeout)
        if conn.head_done or conn.closed:
            conn.broken = True
        elif declared is None:
            transport.write(b"0\r\n\r\n")
        elif sent != declared:
            raise UpstreamError("request body shorter than its Content-Length")


class UpstreamGroup:
    """Round robin over the UpstreamPools of a route's targets (README "Upstream health").

    ``pick`` skips the targets their health has ejected (one that is due is picked once, as its
    probe); when every target is out, the one ejected longest ago gets the request, rather than
    a certain 502. A request that failed before its response head counts against the target,
    and is tried once more on another target when it never reached the first (a connect
    failure: any method) or when the connection failed before any response byte and the
    method is idempotent with a body that can be sent again (a 5xx answer counts against the
    target with ``health.fail_on_5xx``, and is never retried). ``start`` runs the active checks
    when the route has ``health.path``."""

    def __init__(
        self, base_urls: Sequence[str], *, health: HealthConfig | None = None, name: str = "",
        **pool_kwargs: Any,
    ) -> None:
        if not base_urls:
            raise ValueError("an upstream group needs at least one URL")
        self.policy = health or HealthConfig()
        self.pools: list[UpstreamPool] = [UpstreamPool(url, **pool_kwargs) for url in base_urls]
        for pool in self.pools:
            pool.health = TargetHealth(self.policy, f"{pool.url} (route {name or '?'})")
        self._next = 0
        self._checks: Periodic | None = None
        if self.policy.path is not None:
            self._checks = Periodic(self.policy.interval, self.check)

    def start(self) -> None:
        """Start the active checks, if the route has them."""
        if self._checks is not None:
            self._checks.start()

    def pick(self) -> UpstreamPool:
        """The next target in turn that is in service (or due for its probe)."""
        pools = self.pools
        count = len(pools)
        if count == 1:
            return pools[0]
        for _ in range(count):
            index = self._next
            self._next = index + 1 if index + 1 < count else 0
            health = pools[index].health
            if health.ejected_until == 0.0 or health.usable():
                return pools[index]
        return self._least_recently_ejected(pools)

    def _another(self, failed: UpstreamPool) -> UpstreamPool | None:
        """For the retry: the next usable target other than ``failed``, else the one of the
        others ejected longest ago; None when there is no other."""
        others = [pool for pool in self.pools if pool is not failed]
        if not others:
            return None
        for _ in range(len(self.pools)):
            pool = self.pick()
            if pool is not failed:
                return pool
        return self._least_recently_ejected(others)

    @staticmethod
    def _least_recently_ejected(pools: list[UpstreamPool]) -> UpstreamPool:
        return min(pools, key=lambda pool: pool.health.ejected_at)

    async def request(
        self,
        method: str,
        target: str,
        headers: list[tuple[str, str]],
        body: Body,
        *,
        timeout: float,
        body_length: int | None = None,
    ) -> UpstreamResponse:
        """``UpstreamPool.request`` on the next target; a request that never reached it tries
        one more (see the class).

        ``target`` is relative to each pool's ``base_path`` (``/v1/x?q=1`` becomes
        ``/base/v1/x?q=1`` on a pool at ``http://host/base``), so targets may differ in it."""
        pool = self.pick()
        health = pool.health
        try:
            response = await pool.request(
                method, pool.base_path + target, headers, body, timeout=timeout,
                body_length=body_length,
            )
        except UpstreamError as exc:
            health.failed(str(exc))
            other = self._retry_on(pool, exc, method, body)
            if other is None:
                raise
        except BaseException:
            health.abandoned()
            raise
        else:
            if response.status >= 500 and self.policy.fail_on_5xx:
                health.failed(f"answered {response.status}")
            elif health.failures:
                health.succeeded()
            return response
        return await self._retry(other, method, target, headers, body, timeout, body_length)

    def _retry_on(
        self, pool: UpstreamPool, exc: UpstreamError, method: str, body: Body
    ) -> UpstreamPool | None:
        if isinstance(exc, _ConnectError) or (
            isinstance(exc, _NotAnswered) and method in IDEMPOTENT
            and (body is None or isinstance(body, bytes))
        ):
            return self._another(pool)
        return None

    async def _retry(
        self, pool: UpstreamPool, method: str, target: str, headers: list[tuple[str, str]],
        body: Body, timeout: float, body_length: int | None,
    ) -> UpstreamResponse:
        health = pool.health
        try:
            response = await pool.request(
                method, pool.base_path + target, headers, body, timeout=timeout,
                body_length=body_length,
            )
        except UpstreamError as exc:
            health.failed(str(exc))
            raise
        except BaseException:
            health.abandoned()
            raise
        if response.status >= 500 and self.policy.fail_on_5xx:
            health.failed(f"answered {response.status}")
        elif health.failures:
            health.succeeded()
        return response

    async def check(self) -> None:
        """One round of active checks: every target at once, each within ``timeout``."""
        await asyncio.gather(*(self._check(pool) for pool in self.pools))

    async def _check(self, pool: UpstreamPool) -> None:
        path = self.policy.path
        assert path is not None  # only scheduled with a path
        try:
            response = await pool.request(
                "GET", pool.base_path + path, CHECK_HEADERS, None, timeout=self.policy.timeout
            )
            await response.read()
        except UpstreamError as exc:
            pool.health.checked(f"health check: {exc}")
            return
        ok = 200 <= response.status < 400
        pool.health.checked(None if ok else f"health check answered {response.status}")

    def usage(self) -> tuple[int, int]:
        """(connections open, of which idle), over every target."""
        counts = [pool.usage() for pool in self.pools]
        return sum(c[0] for c in counts), sum(c[1] for c in counts)

    async def close(self) -> None:
        if self._checks is not None:
            await self._checks.stop()
        for pool in self.pools:
            await pool.close()
