"""``gateway serve``: one process, or a supervisor and N worker processes.

The switch sits above both ``server`` (one process serving) and ``supervisor`` (which runs
``server.serve`` in each worker), so neither imports the other's caller.
"""

from __future__ import annotations

import asyncio

from gateway.config import Config
from gateway.server import hold_sighup, install_uvloop, serve
from gateway.supervisor import Supervisor


def run(config: Config) -> int:
    """Serve ``config`` until a signal ends it; the process exit code."""
    if config.workers > 1:
        return Supervisor(config).run()
    hold_sighup()
    install_uvloop()
    asyncio.run(serve(config))
    return 0
