"""A real ``gateway serve`` in a subprocess (config and SQLite database in a tmp dir, free
ports), raw HTTP exchanges that record their timing, and a tagged upstream: for the tests of
signals, drains, reloads and workers."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from tests.conftest import free_port

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class GatewayProcess:
    directory: Path
    data: dict[str, Any]  # the config file's content
    port: int
    admin_port: int
    process: subprocess.Popen[bytes] | None = None
    started: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @classmethod
    def create(cls, directory: Path, routes: list[dict[str, Any]], **top: Any) -> GatewayProcess:
        port, admin_port = free_port(), free_port()
        while admin_port == port:  # the kernel may hand the same free port out twice
            admin_port = free_port()
        data = {
            "listen": f"127.0.0.1:{port}",
            "admin_listen": f"127.0.0.1:{admin_port}",
            "database": f"sqlite:///{directory}/gateway.db",
            "defaults": {"rate_limit": {"requests": 1_000_000, "window": 60},
                         "max_concurrent": None},
            "routes": routes,
            **top,
        }
        directory.mkdir(parents=True, exist_ok=True)  # several nodes: a directory each
        gateway = cls(directory, data, port, admin_port)
        gateway.write(data)
        return gateway

    @property
    def config(self) -> Path:
        return self.directory / "gateway.yaml"

    @property
    def log(self) -> Path:
        return self.directory / "gateway.log"

    @property
    def url(self) -> str:
        return f"{self.scheme('listen')}://127.0.0.1:{self.port}"

    @property
    def admin_url(self) -> str:
        return f"{self.scheme('admin_listen')}://127.0.0.1:{self.admin_port}"

    def scheme(self, listener: str) -> str:
        """https when the config gives the listener ``tls`` (``{address, tls}``)."""
        value = self.data[listener]
        return "https" if isinstance(value, dict) and value.get("tls") else "http"

    def write(self, data: dict[str, Any]) -> None:
        """Replace the config file (atomically, as a deploy tool would)."""
        self.data = data
        temporary = self.config.with_suffix(".tmp")
        temporary.write_text(yaml.safe_dump(data, sort_keys=False))
        temporary.replace(self.config)

    def start(self) -> subprocess.Popen[bytes]:
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "gateway", "-c", str(self.config), "serve"],
                cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            )
        self.started.append(self.process)
        return self.process

    def command(self, *args: str) -> str:
        """Run ``gateway -c <config> <args>`` to completion (``admin-key create`` also migrates
        the database); its stdout."""
        done = subprocess.run(
            [sys.executable, "-m", "gateway", "-c", str(self.config), *args],
            cwd=ROOT, capture_output=True, timeout=30,
        )
        assert done.returncode == 0, done.stderr.decode(errors="replace")
        return done.stdout.decode()

    def admin_key(self) -> str:
        """A new operator admin key's plaintext (``admin-key create`` also migrates)."""
        return self.command("admin-key", "create", "--name", "t").strip().splitlines()[-1]

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def send(self, signum: int) -> None:
        assert self.process is not None
        self.process.send_signal(signum)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    async def wait_ready(self, session: aiohttp.ClientSession, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while True:
            assert self.process is not None
            if self.process.poll() is not None:
                raise AssertionError(f"gateway exited {self.process.returncode}:\n"
                                     f"{self.log_text()}")
            try:
                async with session.get(f"{self.admin_url}/readyz") as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"gateway not ready:\n{self.log_text()}")
            await asyncio.sleep(0.05)

    @staticmethod
    async def start_all(nodes: list[GatewayProcess], session: aiohttp.ClientSession) -> None:
        """Start every node, then wait until each is ready."""
        for node in nodes:
            node.start()
        await asyncio.gather(*(node.wait_ready(session) for node in nodes))

    async def wait_exit(self, timeout: float) -> int:
        assert self.process is not None
        deadline = time.monotonic() + timeout
        while self.process.poll() is None:
            if time.monotonic() > deadline:
                raise AssertionError(f"gateway still running:\n{self.log_text()}")
            await asyncio.sleep(0.02)
        return self.process.returncode

    async def wait_log(self, text: str, timeout: float = 10, count: int = 1) -> str:
        deadline = time.monotonic() + timeout
        while self.log_text().count(text) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"{text!r} not logged:\n{self.log_text()}")
            await asyncio.sleep(0.02)
        return self.log_text()

    def workers(self) -> list[int]:
        """The pids of the worker processes (not multiprocessing's resource tracker)."""
        return [pid for pid in children(self.pid) if b"spawn_main" in cmdline(pid)]

    def stop(self) -> None:
        for process in self.started:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(15)
                except subprocess.TimeoutExpired:
                    os.killpg(process.pid, signal.SIGKILL)
                    process.wait(5)


def children(pid: int) -> list[int]:
    pids: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with open(task / "children") as handle:
            pids += [int(p) for p in handle.read().split()]
    return pids


def cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def is_alive(pid: int) -> bool:
    """Any thread of it still running (a dead process waiting to be reaped counts as gone;
    its threads are checked too, since the main one can be a zombie while others still exit)."""
    for stat in Path(f"/proc/{pid}/task").glob("*/stat"):
        try:
            if stat.read_text().rsplit(")", 1)[1].split()[0] != "Z":
                return True
        except (OSError, IndexError):
            continue
    return False


@dataclass
class RawExchange:
    started_at: float  # when the connection was asked for
    sent_at: float | None  # when the request was fully written; None: it never was
    data: bytes  # the whole response, as received
    error: str | None = None
    finished_at: float = field(default_factory=time.monotonic)

    @property
    def status(self) -> int | None:
        head = self.data.split(b"\r\n", 1)[0].split()
        return int(head[1]) if len(head) > 1 and head[1].isdigit() else None


async def raw_get(port: int, path: str, headers: dict[str, str] | None = None,
                  timeout: float = 30) -> RawExchange:
    """One GET on a fresh connection with ``Connection: close``, read until the server closes."""
    started = time.monotonic()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError as exc:
        return RawExchange(started, None, b"", f"connect: {exc!r}")
    sent = None
    try:
        lines = [f"GET {path} HTTP/1.1", "Host: gateway", "Connection: close"]
        lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
        await writer.drain()
        sent = time.monotonic()
        return RawExchange(started, sent, await asyncio.wait_for(reader.read(), timeout))
    except (OSError, TimeoutError) as exc:
        return RawExchange(started, sent, b"", repr(exc))
    finally:
        writer.close()


def route(name: str, path: str, upstream: str) -> dict[str, Any]:
    """A public route (no key needed)."""
    return {"name": name, "path": path, "upstream": upstream, "auth": "none"}


async def fresh(http: aiohttp.ClientSession, url: str) -> tuple[int, str]:
    """A GET on a new connection (with workers, any worker may take it): (status, text)."""
    async with http.get(url, headers={"Connection": "close"}) as response:
        return response.status, await response.text()


async def until(condition: Callable[[], Awaitable[bool]], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not await condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


class Admin:
    """A node's admin API with one admin key: (status, JSON body) per call."""

    def __init__(self, session: aiohttp.ClientSession, node: GatewayProcess, token: str) -> None:
        self.session, self.node, self.auth = session, node, {"Authorization": f"Bearer {token}"}

    async def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        async with self.session.request(method, self.node.admin_url + path, json=body,
                                        headers=self.auth) as response:
            return response.status, await response.json()
