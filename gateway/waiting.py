"""Starting while Postgres is down (README "Health"). ``gateway serve`` does not exit: a
supervisor (systemd, Kubernetes) would only restart it in a loop. It waits for the key store,
trying again every 0.5 s, doubling up to ``MAX_RETRY`` seconds, each failure logged with its
reason, and meanwhile the admin listener answers ``/healthz`` 200 and ``/readyz`` 503
``{"status": "not ready", "store": "unreachable"}`` (anything else 503 ``store_unavailable``).
The public listener is bound only once the store answers, so no request is taken that could
not be checked. SIGTERM or SIGINT ends the wait (exit 0).

A SQLite file is not a dependency that comes back by itself: failing to open it still stops
the gateway with one error, as does anything else that is not the store being unreachable.
Redis unreachable at start is no reason to wait either: ``on_limiter_error`` applies until it
answers (README "Rate limits").
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Iterator

from aiohttp import web

from gateway.config import Config
from gateway.errors import STORE_UNAVAILABLE, GatewayError, StoreUnavailable
from gateway.http import new_request_id
from gateway.problem import problem_response
from gateway.services import open_store
from gateway.store.postgres import is_postgres_url
from gateway.tls import Certificates

log = logging.getLogger("gateway.launch")
FIRST_RETRY = 0.5  # seconds before the second attempt
MAX_RETRY = 2.0  # seconds between attempts at most: the store is used within that of its return
NOT_READY = {"status": "not ready", "store": "unreachable"}


async def wait_for_store(config: Config) -> bool:
    """Open (and migrate) the key store once it answers: True. False when a signal asked to
    stop first. Raises what is not a reachable-later store (see the module docstring)."""
    try:
        await open_once(config)
        return True
    except StoreUnavailable as exc:
        if not is_postgres_url(config.database):
            raise
        log.warning("%s; not ready, trying again", exc)
    stop = asyncio.Event()
    with stopped_by_signals(stop):
        runner = await waiting_admin(config)
        try:
            return await retry(config, stop)
        finally:
            await runner.cleanup()


async def open_once(config: Config) -> None:
    async with open_store(config):
        pass


async def retry(config: Config, stop: asyncio.Event) -> bool:
    delay = FIRST_RETRY
    while True:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), delay)
            log.info("stopped while waiting for the key store")
            return False
        try:
            await open_once(config)
        except StoreUnavailable as exc:
            log.warning("%s; not ready, trying again in %g s", exc, min(delay * 2, MAX_RETRY))
            delay = min(delay * 2, MAX_RETRY)
            continue
        log.info("key store reachable: starting")
        return True


@contextlib.contextmanager
def stopped_by_signals(stop: asyncio.Event) -> Iterator[None]:
    loop = asyncio.get_running_loop()
    signals = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
    for signum in signals[:2]:
        loop.add_signal_handler(signum, stop.set)
    loop.add_signal_handler(signal.SIGHUP, log.warning, "SIGHUP ignored: not started yet")
    try:
        yield
    finally:
        for signum in signals:
            loop.remove_signal_handler(signum)


async def waiting_admin(config: Config) -> web.AppRunner:
    """The admin listener while the store is away: alive, not ready."""
    app = web.Application()
    app.router.add_get("/healthz", alive)
    app.router.add_get("/readyz", not_ready)
    app.router.add_route("*", "/{tail:.*}", unavailable)
    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    await runner.setup()
    tls = Certificates(config.source).context("admin_listen", config.admin_listen.tls)
    address = config.admin_listen
    await web.TCPSite(runner, address.host, address.port, ssl_context=tls).start()
    return runner


async def alive(_request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def not_ready(_request: web.Request) -> web.Response:
    return web.json_response(NOT_READY, status=503)


async def unavailable(_request: web.Request) -> web.Response:
    failure = GatewayError(STORE_UNAVAILABLE, "the key store is unreachable")
    return problem_response(failure, new_request_id(), {})
