"""``gateway serve``: one process, or a supervisor and N worker processes.

The switch sits above both ``server`` (one process serving) and ``supervisor`` (which runs
``server.serve`` in each worker), so neither imports the other's caller.

Before either starts, both listen addresses are probed (``probe_listeners``): workers bind with
SO_REUSEPORT, so a second gateway's workers would otherwise share the ports of a running one
and the kernel would split the traffic between the two. A probe binds without SO_REUSEPORT,
which no listening socket allows, whatever ``workers`` either gateway has.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import socket

from gateway.config import Config, Listen
from gateway.config.summary import startup_fields
from gateway.errors import AddressInUse
from gateway.server import hold_sighup, install_uvloop, serve
from gateway.supervisor import Supervisor
from gateway.version import gateway_version
from gateway.waiting import wait_for_store

log = logging.getLogger("gateway.launch")


def run(config: Config) -> int:
    """Serve ``config`` until a signal ends it; the process exit code."""
    probe_listeners(config)
    # the start-up line (README "The start-up line"): what runs, from where, on what
    log.info("gateway starting", extra=startup_fields(config, gateway_version()))
    if not asyncio.run(wait_for_store(config)):  # Postgres down: wait, not ready (no loop)
        return 0
    if config.workers > 1:
        return Supervisor(config).run()
    hold_sighup()
    install_uvloop()
    asyncio.run(serve(config))
    return 0


def probe_listeners(config: Config) -> None:
    """Raise ``AddressInUse`` (one line naming the key and the address) when another process
    listens on ``listen`` or ``admin_listen``; any other bind failure is an ``OSError`` that
    names them too. Nothing stays bound."""
    for key, address in (("listen", config.listen), ("admin_listen", config.admin_listen)):
        try:
            for family, kind, proto, _name, sockaddr in socket.getaddrinfo(
                address.host, address.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
            ):
                _probe(family, kind, proto, sockaddr)
        except OSError as exc:
            raise _named(exc, key, address) from None


def _probe(family: int, kind: int, proto: int, sockaddr: tuple[object, ...]) -> None:
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the listeners do
        if family == socket.AF_INET6:
            probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        probe.bind(sockaddr)


def _named(exc: OSError, key: str, address: Listen) -> OSError:
    where = f"{key}: cannot listen on {address}"
    if exc.errno == errno.EADDRINUSE:
        return AddressInUse(exc.errno, f"{where}: address already in use (another gateway or "
                                       "process holds it)")
    reason = os.strerror(exc.errno).lower() if exc.errno else str(exc)
    return OSError(exc.errno, f"{where}: {reason}")
