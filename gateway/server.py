"""run(): uvloop, services up, the two listeners, signals, graceful drain.

One process (``workers: 1``) runs ``serve`` itself; with ``workers: N > 1``, ``gateway.supervisor``
runs N processes that each run ``serve``.

Signals, in ``serve``:

- SIGTERM / SIGINT: drain. ``/readyz`` turns 503 at once; the public listener closes, so new
  connections are refused; idle keep-alive connections are closed, busy ones after a response
  that says ``Connection: close``; requests in flight (long streams too) get ``drain_timeout``
  less ``closing_reserve`` seconds to finish, then whatever still runs is cut off. The last
  usage flush gets what is left of ``drain_timeout``, so the whole drain fits in it. The admin
  listener stays up meanwhile (``/readyz``, ``/metrics``). Then the services close in reverse.
- SIGHUP: reload the config file (``gateway.reload``). A worker ignores it: its supervisor
  reads the file and sends it the result (``follow_parent``).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
import time
from collections.abc import Callable
from multiprocessing.connection import Connection

from aiohttp import web

from gateway.admin import DRAINING
from gateway.app import create_admin, create_proxy_server
from gateway.config import Config
from gateway.reload import Reloader
from gateway.services import open_services
from gateway.tls import Certificates

log = logging.getLogger("gateway.server")
ADMIN_SHUTDOWN_TIMEOUT = 5.0  # seconds admin requests get once the proxy has drained
CUT_OFF_TIMEOUT = 0.1  # seconds the handlers still running after the drain get to end, cancelled


def install_uvloop() -> None:
    with contextlib.suppress(ImportError):
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


async def serve(config: Config, *, parent: Connection | None = None) -> None:
    """Run one gateway process until SIGTERM/SIGINT, then drain and close.

    ``parent`` is set for a worker under ``gateway.supervisor`` (see ``follow_parent``); its
    listeners bind with SO_REUSEPORT."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    async with open_services(config) as services:
        certificates = Certificates(config.source)
        reloader = Reloader(services, certificates)
        admin = create_admin(services)
        proxy_runner = web.ServerRunner(
            create_proxy_server(services, reloader.holder),
            handle_signals=False,
            shutdown_timeout=CUT_OFF_TIMEOUT,  # ``drain`` has closed every connection
        )
        admin_runner = web.AppRunner(admin, handle_signals=False, access_log=None,
                                     shutdown_timeout=ADMIN_SHUTDOWN_TIMEOUT)
        await proxy_runner.setup()
        await admin_runner.setup()
        try:
            await listen(proxy_runner, admin_runner, config, certificates,
                         reuse_port=parent is not None)
            if parent is None:
                accept_sighup(loop, reloader.on_sighup)
            else:
                follow_parent(loop, parent, reloader, stop)
            # Everything alive now lives as long as the process: keep it out of the cyclic GC.
            # Full collections otherwise walk these objects again and again and took 15-28 ms
            # each under load (the p99 of the keyed route went from ~25 ms to ~6 ms with this).
            gc.freeze()
            await stop.wait()
            admin[DRAINING].set()
            stop_reloading(loop, parent)
            left = await drain(proxy_runner, reloader.config.drain_timeout)
            # the last usage flush, in what is left of drain_timeout (README "Graceful shutdown")
            await services.usage.stop(timeout=left)
        finally:
            await proxy_runner.cleanup()
            await admin_runner.cleanup()
            await reloader.close()
    log.info("stopped")  # the services are closed: usage written behind is flushed


async def listen(
    proxy_runner: web.BaseRunner, admin_runner: web.BaseRunner, config: Config,
    certificates: Certificates, *, reuse_port: bool,
) -> None:
    """Bind both listeners, with TLS where the config says so (README "TLS")."""
    public_tls = certificates.context("listen", config.listen.tls)
    admin_tls = certificates.context("admin_listen", config.admin_listen.tls)
    await web.TCPSite(proxy_runner, config.listen.host, config.listen.port,
                      reuse_port=reuse_port, backlog=1024, ssl_context=public_tls).start()
    await web.TCPSite(admin_runner, config.admin_listen.host, config.admin_listen.port,
                      reuse_port=reuse_port, ssl_context=admin_tls).start()
    log.info("gateway listening on %s (admin %s)", config.listen, config.admin_listen)


def accept_sighup(loop: asyncio.AbstractEventLoop, reload: Callable[[], object]) -> None:
    """Handle SIGHUP from now on. Until here it is blocked (``hold_sighup``), not fatal, so a
    reload asked for during start-up happens now instead of killing the process."""
    loop.add_signal_handler(signal.SIGHUP, reload)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGHUP})


def follow_parent(
    loop: asyncio.AbstractEventLoop, parent: Connection, reloader: Reloader, stop: asyncio.Event
) -> None:
    """A worker: tell the supervisor it listens, then put in force each config the supervisor
    sends (it read and checked the file on SIGHUP). SIGHUP itself is ignored here: only the
    supervisor reads the file, so no two workers can disagree on what it said. The channel's
    end of file means the supervisor is gone: the worker then stops, so a killed supervisor
    never leaves workers holding the port."""
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGHUP})  # held since the spawn
    parent.send_bytes(b"ready")

    def receive() -> None:
        try:
            config = parent.recv()
        except (EOFError, OSError):
            loop.remove_reader(parent.fileno())
            stop.set()
            return
        reloader.apply(config)

    loop.add_reader(parent.fileno(), receive)


def stop_reloading(loop: asyncio.AbstractEventLoop, parent: Connection | None) -> None:
    """Draining: no reload any more (it would open upstream pools nobody closes)."""
    loop.add_signal_handler(signal.SIGHUP, log.warning, "SIGHUP ignored: draining")
    if parent is not None:
        loop.remove_reader(parent.fileno())


def hold_sighup() -> None:
    """Block SIGHUP until ``accept_sighup``: its default action would end the process."""
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGHUP})


def closing_reserve(timeout: float) -> float:
    """The part of ``drain_timeout`` kept for cutting off what still runs and closing the
    services (the last usage flush): a tenth, at most 2 s."""
    return min(2.0, timeout / 10)


async def drain(runner: web.ServerRunner, timeout: float) -> float:
    """Close the listener and idle connections; give requests in flight ``timeout`` minus
    ``closing_reserve`` seconds, then cut off what still runs. Returns the seconds left of
    ``timeout``, for closing the services: the whole shutdown fits in ``drain_timeout``."""
    server = runner.server
    assert server is not None  # set up in serve
    started = time.monotonic()
    grace = timeout - closing_reserve(timeout)
    # One loop turn before each step: connections the kernel completed before the signal are
    # accepted (closing the listener would reset them), then requests that already arrived on
    # open connections are read, so they are served rather than cut.
    await asyncio.sleep(0)
    for site in list(runner.sites):
        await site.stop()  # new connections are refused from here
    log.info("draining %d connections for up to %g s", len(server.connections), grace)
    await asyncio.sleep(0)
    # Idle keep-alive connections close now, busy ones after their response, which says
    # ``Connection: close`` (gateway.proxy_server.ProxyRequest).
    server.pre_shutdown()
    # aiohttp's own ``Server.shutdown(t)`` waits t for each handler, then cancels it and waits
    # t again: up to twice the timeout. Here the wait is bounded once, then the rest is cut.
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(max(0.0, grace - (time.monotonic() - started))):
            await asyncio.gather(*(conn.shutdown(grace) for conn in server.connections))
    left = server.connections
    if left:
        log.warning("cutting off %d connections still busy after %g s", len(left), grace)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(CUT_OFF_TIMEOUT):
                await asyncio.gather(*(conn.shutdown(CUT_OFF_TIMEOUT / 2) for conn in left))
        for conn in server.connections:
            conn.force_close()
    log.info("drained in %.2f s", time.monotonic() - started)
    return max(0.0, timeout - (time.monotonic() - started))
