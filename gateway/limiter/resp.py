"""A lean, pipelined Redis connection for the limiter's hot path.

The limiter sends one batch of commands per event-loop tick and waits for all their replies at
once; redis-py spends 35-45 µs of CPU on each command it sends and parses, more than the rest
of a gateway request. This connection only frames commands (RESP2, a few lines below) and hands
the byte stream to hiredis — the C parser redis-py itself uses — so a batch costs one write, one
parse loop and one future. Everything else about Redis (URL forms, TLS, AUTH, SELECT) follows
redis-py's own ``parse_url``, so ``redis:`` accepts exactly what redis-py accepts.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol

import hiredis
from redis.asyncio.connection import SSLConnection, parse_url

ReplyError = hiredis.ReplyError


def encode(*args: bytes | int) -> bytes:
    """One command in RESP2: an array of bulk strings (integers written in decimal), framed by
    hiredis in C: the limiter frames one per request."""
    return hiredis.pack_command(args)  # type: ignore[arg-type,no-any-return]  # stub: a 1-tuple


def tls_context(options: Mapping[str, Any]) -> ssl.SSLContext:
    """The TLS settings of a ``rediss://`` URL's query, as redis-py reads them."""
    context = ssl.create_default_context(cafile=options.get("ssl_ca_certs"))
    if options.get("ssl_certfile"):
        context.load_cert_chain(options["ssl_certfile"], options.get("ssl_keyfile"))
    check_hostname = options.get("ssl_check_hostname", True)
    if str(options.get("ssl_cert_reqs", "required")).lower() in ("none", "cert_none"):
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    elif not check_hostname:
        context.check_hostname = False
    return context


class Link(Protocol):
    """What the limiter talks to: one Redis (``RespConnection``) or a Redis Cluster
    (``cluster.ClusterConnection``, one ``RespConnection`` per master)."""

    closed: asyncio.Future[None]

    def pipeline(
        self, parts: list[bytes], routes: list[bytes], future: asyncio.Future[list[Any]]
    ) -> None: ...

    def expire(self, future: asyncio.Future[list[Any]], error: Exception) -> None: ...

    def broadcast(self, payload: bytes, keep: bool = False) -> Awaitable[None]:
        """Send to every Redis that decides (``keep``: and to any that joins later)."""

    def close(self) -> None: ...


Connect = Callable[[str, float], Awaitable[Link]]  # (url, timeout) -> an open Link


class RespConnection(asyncio.Protocol):
    """Replies arrive in the order commands were sent: each ``send`` queues one entry that
    collects ``count`` replies, then resolves its future with them."""

    def __init__(self) -> None:
        self._reader = hiredis.Reader()
        self._pending: deque[tuple[int, list[Any], asyncio.Future[list[Any]]]] = deque()
        self._transport: asyncio.Transport | None = None
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    @classmethod
    async def open(cls, url: str, timeout: float) -> RespConnection:
        """Connect, authenticate and select the database within ``timeout`` seconds."""
        options = parse_url(url)
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(timeout):
            if "path" in options:
                _, conn = await loop.create_unix_connection(cls, options["path"])
            else:
                context = None
                if options.get("connection_class") is SSLConnection:
                    context = tls_context(dict(options))
                _, conn = await loop.create_connection(
                    cls, options.get("host", "localhost"), options.get("port", 6379), ssl=context
                )
            try:
                if options.get("password"):
                    user = options.get("username")
                    auth = (user.encode(),) if user else ()
                    await conn.call(encode(b"AUTH", *auth, options["password"].encode()))
                if options.get("db"):
                    await conn.call(encode(b"SELECT", str(options["db"]).encode()))
            except BaseException:
                conn.close()
                raise
        return conn

    def send(self, payload: bytes, count: int, future: asyncio.Future[list[Any]]) -> None:
        """Write ``count`` framed commands; ``future`` gets their ``count`` replies."""
        if self._transport is None or self.closed.done():
            future.set_exception(ConnectionError("redis connection is closed"))
            return
        self._pending.append((count, [], future))
        self._transport.write(payload)

    def pipeline(
        self, parts: list[bytes], routes: list[bytes], future: asyncio.Future[list[Any]]
    ) -> None:
        """Write the framed commands ``parts`` at once; ``future`` gets their replies in order.
        ``routes`` (a key of each command, for a Redis Cluster's routing) is not needed here."""
        self.send(b"".join(parts), len(parts), future)

    def expire(self, future: asyncio.Future[list[Any]], error: Exception) -> None:
        """A pipeline took too long: it fails, and so does the connection (a stuck Redis must
        not make the next decisions wait too)."""
        if not future.done():
            future.set_exception(error)
        self.close()

    async def broadcast(self, payload: bytes, keep: bool = False) -> None:
        """One command for the whole deployment (SCRIPT LOAD, PING): here, this server (a new
        connection is a new ``RespConnection``: ``keep`` has nothing to keep it for)."""
        await self.call(payload)

    async def call(self, payload: bytes) -> Any:
        """One command, its reply; a Redis error reply is raised as ``ReplyError``."""
        future: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
        self.send(payload, 1, future)
        (reply,) = await future
        if isinstance(reply, ReplyError):
            raise reply
        return reply

    def close(self) -> None:
        """Drop the connection now; every reply still awaited fails with ConnectionError."""
        if self._transport is not None:
            self._transport.abort()

    # ---- asyncio.Protocol -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        reader = self._reader
        reader.feed(data)
        pending = self._pending
        while (reply := reader.gets()) is not False:
            count, replies, future = pending[0]
            replies.append(reply)
            if len(replies) == count:
                pending.popleft()
                if not future.done():  # a batch that timed out has already failed
                    future.set_result(replies)

    def connection_lost(self, exc: Exception | None) -> None:
        error = ConnectionError("redis connection lost")
        while self._pending:
            future = self._pending.popleft()[2]
            if not future.done():
                future.set_exception(error)
        if not self.closed.done():
            self.closed.set_result(None)
