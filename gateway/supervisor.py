"""``workers: N``: N gateway processes sharing the ports, and a parent that keeps N running.

The parent serves nothing itself. Each worker is a fresh interpreter (``spawn``: no event loop,
lock or connection is inherited) running ``gateway.server.serve``; all of them bind the public
and the admin port with SO_REUSEPORT, and the kernel spreads connections across them.

- A worker that dies is replaced at once while the others keep serving. One that keeps dying
  soon after its start is restarted after a growing delay (0.5 s doubling to 10 s).
- The parent opens the key store once before any worker starts (migrations, SQLite's WAL
  switch), so workers never race on them. A worker that fails before it listens while the
  gateway starts (a taken port, a bad Redis URL) stops the gateway with exit code 1:
  restarting it would not help.
- SIGTERM / SIGINT: forwarded as SIGTERM, and every worker drains (see ``gateway.server``). The
  parent waits ``drain_timeout`` plus a margin, kills what is left, and exits 0.
- SIGHUP: the parent reads and checks the file. Valid: every worker gets the new config over
  its channel (a pipe) and puts it in force, and a worker started later starts with it.
  Invalid: one error is logged, nothing changes. Workers ignore SIGHUP themselves, so they can
  never disagree on what the file said.
- Metrics: prometheus-client's multiprocess mode. The parent makes a fresh directory and names
  it in PROMETHEUS_MULTIPROC_DIR before any worker starts (workers inherit the environment),
  marks each dead worker's files with ``mark_process_dead``, and removes the directory at exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from types import FrameType

from prometheus_client import multiprocess

from gateway.config import Config
from gateway.errors import ConfigError, StoreUnavailable
from gateway.logs import configure_logging
from gateway.reload import plans_in_use, read_new_config
from gateway.server import install_uvloop, serve
from gateway.services import open_store

log = logging.getLogger("gateway.supervisor")

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
STOP_MARGIN = 5.0  # seconds past drain_timeout before a worker still running is killed
STABLE_AFTER = 10.0  # a worker that served this long before dying is restarted at once
MAX_DELAY = 10.0  # the longest wait before restarting a worker that keeps dying
EXIT_OK = 0
EXIT_FAILURE = 1
# (typed here: prometheus-client's own function is unannotated)
mark_process_dead: Callable[[int, str], None] = multiprocess.mark_process_dead


def run_worker(config: Config, parent: Connection, number: int = 0) -> None:
    """A worker's entry point, in the spawned interpreter; ``number`` is its slot (1..N),
    named by every line it logs."""
    # nothing of the parent's logging set-up survives spawn
    configure_logging(config, worker=number or None)
    install_uvloop()
    try:
        asyncio.run(serve(config, parent=parent))
    except (OSError, ConfigError, StoreUnavailable) as exc:  # e.g. the port is taken
        sys.stderr.write(f"gateway: worker {number} (pid {os.getpid()}): {exc}\n")
        sys.exit(EXIT_FAILURE)


@dataclass
class Slot:
    """One of the N worker places and the process in it."""

    number: int
    process: BaseProcess | None = None
    channel: Connection | None = None  # to the worker: "ready" comes back, configs go there
    ready_at: float | None = None
    failures: int = 0  # deaths in a row, each soon after its start
    restart_at: float | None = None
    died_at: float | None = None  # when the previous process died (for the restart time)
    died_pid: int | None = None


class Supervisor:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.slots = [Slot(number) for number in range(1, config.workers + 1)]
        self._context = multiprocessing.get_context("spawn")
        self._signals: list[int] = []
        self._starting = True  # until every worker has listened once
        self._stopping = False
        self._failed = False
        self._metrics = ""  # the multiprocess directory, while running

    def run(self) -> int:
        """Start the workers, keep them running until SIGTERM/SIGINT; the exit code."""
        asyncio.run(prepare_store(self.config))
        with metrics_directory() as directory, signal_wakeup(self._on_signal) as wakeup:
            self._metrics = directory
            for slot in self.slots:
                self._start(slot)
            while not (self._stopping or self._failed):
                self._wait(wakeup)
                self._tend()
            self._stop()
        return EXIT_FAILURE if self._failed else EXIT_OK

    # ---- the loop ------------------------------------------------------------------------------

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        self._signals.append(signum)  # acted on in the loop, never inside the handler

    def _wait(self, wakeup: socket.socket) -> None:
        waitables: list[object] = [wakeup]
        for slot in self.slots:
            if slot.process is not None:
                waitables.append(slot.process.sentinel)
            if slot.channel is not None and slot.ready_at is None:
                waitables.append(slot.channel)
        pending = [s.restart_at for s in self.slots if s.restart_at is not None]
        timeout = max(0.0, min(pending) - time.monotonic()) if pending else None
        if wakeup in wait(waitables, timeout):  # type: ignore[arg-type]
            with contextlib.suppress(BlockingIOError):
                while wakeup.recv(512):
                    pass

    def _tend(self) -> None:
        while self._signals:
            signum = self._signals.pop(0)
            if signum == signal.SIGHUP:
                self._reload()
            else:
                self._stopping = True
        now = time.monotonic()
        for slot in self.slots:
            self._check_ready(slot, now)
            self._check_exit(slot, now)
            if slot.restart_at is not None and now >= slot.restart_at and not self._stopping:
                self._start(slot)
        if self._starting and all(s.ready_at is not None for s in self.slots):
            self._starting = False
            log.info("%d workers serving", len(self.slots))

    def _start(self, slot: Slot) -> None:
        channel, worker_end = self._context.Pipe()
        process = self._context.Process(
            target=run_worker, args=(self.config, worker_end, slot.number),
            name=f"gateway-worker-{slot.number}",
        )
        # the child starts with SIGHUP held back (its default action is fatal) until it ignores it
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGHUP})
        try:
            process.start()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        worker_end.close()
        slot.process, slot.channel, slot.ready_at, slot.restart_at = process, channel, None, None
        log.info("worker %d started (pid %s)", slot.number, process.pid)

    def _check_ready(self, slot: Slot, now: float) -> None:
        if slot.channel is None or slot.ready_at is not None or not slot.channel.poll():
            return
        try:
            slot.channel.recv_bytes()
        except EOFError:
            return  # it died before listening: _check_exit handles that
        slot.ready_at = now
        if slot.died_at is not None:
            assert slot.process is not None
            log.warning("worker %d replaced: pid %s serving %.2f s after pid %s died",
                        slot.number, slot.process.pid, now - slot.died_at, slot.died_pid)

    def _check_exit(self, slot: Slot, now: float) -> None:
        process = slot.process
        if process is None or process.exitcode is None:
            return
        process.join()
        self._forget(process)
        slot.process = None
        self._close_channel(slot)
        if self._stopping:
            return
        if slot.ready_at is None and self._starting:
            log.error("worker %d (pid %s) failed to start (exit code %s); stopping",
                      slot.number, process.pid, process.exitcode)
            self._failed = True
            return
        served = now - slot.ready_at if slot.ready_at is not None else 0.0
        slot.failures = 0 if served >= STABLE_AFTER else slot.failures + 1
        delay = 0.0 if slot.failures <= 1 else min(MAX_DELAY, 0.5 * 2 ** (slot.failures - 2))
        slot.restart_at, slot.died_at, slot.died_pid = now + delay, now, process.pid
        log.warning("worker %d (pid %s) exited with code %s; restarting it in %.1f s",
                    slot.number, process.pid, process.exitcode, delay)

    def _reload(self) -> None:
        """Read and check the file once, here; each worker gets the result over its channel
        (a worker still starting applies it once it listens)."""
        config = read_new_config(self.config)  # an invalid file: one error, and no more
        if config is None:
            return
        # a removed plan: the store is asked (opened for it, briefly) whether one is in use
        refused = asyncio.run(plans_in_use(self.config, config))
        if refused is not None:
            log.error("%s", refused)
            return
        self.config = config  # what workers started from now on get
        for slot in self.slots:
            if slot.channel is not None:
                with contextlib.suppress(OSError):  # a worker that just died
                    slot.channel.send(config)
        log.info("config reloaded from %s and sent to the workers", config.source)

    def _stop(self) -> None:
        self._stopping = True
        running = [s.process for s in self.slots if s.process is not None]
        for process in running:
            if process.exitcode is None:
                process.terminate()  # SIGTERM: the worker drains
        deadline = time.monotonic() + self.config.drain_timeout + STOP_MARGIN
        for process in running:
            process.join(max(0.0, deadline - time.monotonic()))
        for process in running:
            if process.exitcode is None:
                log.error("worker pid %s still running after the drain timeout; killing it",
                          process.pid)
                process.kill()
                process.join()
            elif process.exitcode != 0:
                log.warning("worker pid %s stopped with exit code %s", process.pid,
                            process.exitcode)
            self._forget(process)
        for slot in self.slots:
            self._close_channel(slot)

    @staticmethod
    def _close_channel(slot: Slot) -> None:
        if slot.channel is not None:
            slot.channel.close()
            slot.channel = None

    def _forget(self, process: BaseProcess) -> None:
        """Its live gauges leave the aggregate; its counters stay (prometheus-client rules)."""
        if process.pid is not None:
            mark_process_dead(process.pid, self._metrics)


async def prepare_store(config: Config) -> None:
    """Open the key store once, here, before N workers open it at the same moment: migrations
    are then applied, and a new SQLite file is in WAL mode already (SQLite's switch to WAL does
    not wait for a lock, so two workers making it together failed with "database is locked").
    ``gateway.launch`` waited for an unreachable Postgres before (``gateway.waiting``); a store
    that fails here stops the gateway, with one error instead of one per worker."""
    async with open_store(config):
        pass


@contextlib.contextmanager
def metrics_directory() -> Iterator[str]:
    """A fresh, empty PROMETHEUS_MULTIPROC_DIR for this gateway's workers, removed at exit."""
    path = tempfile.mkdtemp(prefix="gateway-metrics-")
    previous = os.environ.get(MULTIPROC_ENV)
    os.environ[MULTIPROC_ENV] = path
    try:
        yield path
    finally:
        if previous is None:
            os.environ.pop(MULTIPROC_ENV, None)
        else:
            os.environ[MULTIPROC_ENV] = previous
        shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def signal_wakeup(handler: Callable[[int, FrameType | None], None]) -> Iterator[socket.socket]:
    """``handler`` for SIGTERM, SIGINT and SIGHUP, and a socket that becomes readable when one
    arrives, so the loop can sleep in ``wait`` on processes and signals together."""
    reader, writer = socket.socketpair()
    reader.setblocking(False)
    writer.setblocking(False)
    previous_fd = signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False)
    previous = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT,
                                                       signal.SIGHUP)}
    try:
        yield reader
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)
        signal.set_wakeup_fd(previous_fd)
        reader.close()
        writer.close()
