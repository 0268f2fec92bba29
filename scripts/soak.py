"""Soak: a gateway with keys and limits on (Postgres key store, Redis limiter), run at half
its measured maximum rate for a while, sampled every interval; fails unless it stays flat.

    .venv/bin/python scripts/soak.py                   # 30 minutes (make soak)
    .venv/bin/python scripts/soak.py --minutes 5

It starts the demo echo upstream and ``gateway serve`` (one worker) on a fresh database of the
Postgres at ``--postgres`` (dropped at the end) and on ``--redis`` under a prefix of its own,
with 20 keys. It first measures the maximum rate (``--probe`` seconds, 16 requests at a time,
this script being the client), then sends half that rate, paced, round robin over the keys, on
a keyed route with a second per-route budget: every request is authenticated, looked up,
rate-limited in Redis twice over, forwarded and counted for usage.

Every ``--interval`` seconds it samples the gateway process (resident memory, open file
descriptors, its established connections to Redis and to Postgres, read from /proc) and the
interval's requests (rate, p50, p99, errors), and prints one row. The first interval is the
warm-up and the baseline. Flat means, past it: resident memory within 10 % + 8 MiB of the
baseline, file descriptors and connections never more than 4 above it (an idle pool may
shrink: Postgres connections unused for 60 s are closed), every interval's p99 within 2x the
median interval's (plus 2 ms for a shared machine), and no answer other than 200. Exit code
1 when something is not flat, 2 when something failed to start.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp
import asyncpg  # type: ignore[import-untyped]  # no stubs

HOST = "127.0.0.1"
ROOT = Path(__file__).resolve().parent.parent
KEYS = 20


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


# ---- the gateway under test --------------------------------------------------------------------


def config(database: str, redis: str, upstream: int, port: int, admin: int) -> dict[str, object]:
    target = f"http://{HOST}:{upstream}"
    return {
        "listen": f"{HOST}:{port}",
        "admin_listen": f"{HOST}:{admin}",
        "database": database,
        "redis": redis,
        "limiter": {"prefix": f"soak{secrets.token_hex(4)}:"},
        "logging": {"access_log": False},
        "defaults": {"rate_limit": {"requests": 10_000_000, "window": 60},
                     "max_concurrent": 1000},
        "routes": [{"name": "api", "path": "/api/", "upstream": target,
                    "permissions": ["read"],
                    "rate_limit": {"requests": 10_000_000, "window": 60}}],
    }


def gateway(cfg: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "gateway", "-c", str(cfg), *args]


def cli(cfg: Path, *args: str) -> str:
    done = subprocess.run(gateway(cfg, *args), cwd=ROOT, capture_output=True, text=True,
                          timeout=120, check=False)
    if done.returncode != 0:
        raise SystemExit(f"gateway {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout


async def create_database(admin_url: str) -> str:
    name = f"gw_soak_{secrets.token_hex(4)}"
    conn = await asyncpg.connect(admin_url, timeout=5)
    try:
        await conn.execute(f"CREATE DATABASE {name}")
    finally:
        await conn.close()
    return admin_url.rsplit("/", 1)[0] + "/" + name


async def drop_database(admin_url: str, url: str) -> None:
    conn = await asyncpg.connect(admin_url, timeout=5)
    try:
        await conn.execute(f"DROP DATABASE IF EXISTS {url.rsplit('/', 1)[1]} WITH (FORCE)")
    finally:
        await conn.close()


# ---- what is sampled ---------------------------------------------------------------------------


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def file_descriptors(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def connections_to(pid: int, port: int) -> int:
    """The process's established TCP connections whose remote port is ``port``."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    count = 0
    for table in ("tcp", "tcp6"):
        lines = Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
        for line in lines:
            fields = line.split()
            remote_port = int(fields[2].rsplit(":", 1)[1], 16)
            if remote_port == port and fields[3] == "01" and fields[9] in inodes:
                count += 1
    return count


@dataclass
class Sample:
    minute: float
    rate: float
    p50: float
    p99: float
    rss: float
    fds: int
    redis: int
    postgres: int
    errors: int


@dataclass
class Window:
    latencies: list[float] = field(default_factory=list)
    errors: int = 0

    def take(self) -> Window:
        taken = Window(self.latencies, self.errors)
        self.latencies, self.errors = [], 0
        return taken


# ---- the load ----------------------------------------------------------------------------------


async def one(http: aiohttp.ClientSession, url: str, key: str, window: Window) -> None:
    started = time.perf_counter()
    try:
        async with http.get(url, headers={"Authorization": f"Bearer {key}"}) as response:
            await response.read()
            ok = response.status == 200
    except aiohttp.ClientError:
        ok = False
    window.latencies.append(time.perf_counter() - started)
    if not ok:
        window.errors += 1


async def probe_max(http: aiohttp.ClientSession, url: str, keys: list[str],
                    seconds: float) -> float:
    """Requests per second with 16 always in flight: the maximum this client gets."""
    window = Window()
    rotation = itertools.cycle(keys)
    end = time.monotonic() + seconds

    async def worker() -> None:
        while time.monotonic() < end:
            await one(http, url, next(rotation), window)

    started = time.monotonic()
    await asyncio.gather(*(worker() for _ in range(16)))
    if window.errors:
        raise SystemExit(f"{window.errors} errors while measuring the maximum rate")
    return len(window.latencies) / (time.monotonic() - started)


async def paced(http: aiohttp.ClientSession, url: str, keys: list[str], rate: float,
                window: Window, stop: asyncio.Event) -> None:
    """``rate`` requests a second, each started on its own slot (a late one starts at once)."""
    workers = 32
    rotation = itertools.cycle(keys)
    start = time.monotonic()

    async def worker(offset: int) -> None:
        for slot in itertools.count():
            due = start + (slot * workers + offset) / rate
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            if stop.is_set():
                return
            await one(http, url, next(rotation), window)

    await asyncio.gather(*(worker(i) for i in range(workers)))


def sample(pid: int, minute: float, window: Window, seconds: float, redis_port: int,
           postgres_port: int) -> Sample:
    latencies = sorted(window.latencies)
    quantiles = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else [0.0] * 99
    return Sample(minute, len(latencies) / seconds, quantiles[49] * 1000, quantiles[98] * 1000,
                  rss_mib(pid), file_descriptors(pid), connections_to(pid, redis_port),
                  connections_to(pid, postgres_port), window.errors)


HEADER = (f"{'minute':>6} {'req/s':>7} {'p50 ms':>7} {'p99 ms':>7} {'rss MiB':>8} {'fds':>5} "
          f"{'redis':>5} {'pg':>4} {'errors':>6}")


def row(s: Sample) -> str:
    return (f"{s.minute:>6.1f} {s.rate:>7.0f} {s.p50:>7.2f} {s.p99:>7.2f} {s.rss:>8.1f} "
            f"{s.fds:>5} {s.redis:>5} {s.postgres:>4} {s.errors:>6}")


def verdicts(samples: list[Sample]) -> list[str]:
    """What is not flat past the first (warm-up) sample; empty: flat."""
    base, rest = samples[0], samples[1:] or samples
    problems = []
    if max(s.rss for s in rest) > base.rss * 1.10 + 8:
        problems.append(f"resident memory grew: {base.rss:.1f} -> "
                        f"{max(s.rss for s in rest):.1f} MiB")
    for name in ("fds", "redis", "postgres"):  # a leak grows; an idle pool may shrink
        values = [getattr(s, name) for s in rest]
        if max(values) > getattr(base, name) + 4:
            problems.append(f"{name} grew: {getattr(base, name)} -> {values}")
    median = statistics.median(s.p99 for s in samples)
    late = [s for s in rest if s.p99 > 2 * median + 2]
    if late:
        problems.append(f"p99 not stable: median {median:.2f} ms, "
                        f"{[round(s.p99, 2) for s in late]} ms")
    errors = sum(s.errors for s in samples)
    if errors:
        problems.append(f"{errors} answers other than 200")
    return problems


async def drive(args: argparse.Namespace, pid: int, port: int, keys: list[str],
                redis_port: int, postgres_port: int) -> list[Sample]:
    url = f"http://{HOST}:{port}/api/x"
    connector = aiohttp.TCPConnector(limit=64)
    async with aiohttp.ClientSession(connector=connector) as http:
        for key in keys:  # warm: every key cached
            await one(http, url, key, Window())
        top = await probe_max(http, url, keys, args.probe)
        rate = top / 2
        print(f"maximum {top:.0f} req/s (this client, 16 in flight); soaking at {rate:.0f} "
              f"req/s for {args.minutes:g} min, a row every {args.interval:g} s", flush=True)
        print(HEADER, flush=True)
        window, stop = Window(), asyncio.Event()
        load = asyncio.ensure_future(paced(http, url, keys, rate, window, stop))
        samples: list[Sample] = []
        began = last = time.monotonic()
        end = began + args.minutes * 60
        while time.monotonic() < end - 1e-3:
            await asyncio.sleep(min(args.interval, end - time.monotonic()))
            now = time.monotonic()
            taken = window.take()
            samples.append(sample(pid, (now - began) / 60, taken, now - last, redis_port,
                                  postgres_port))
            last = now
            print(row(samples[-1]), flush=True)
        stop.set()
        await load
    return samples


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=30.0, help="how long (default 30)")
    parser.add_argument("--interval", type=float, default=60.0,
                        help="seconds between samples (default 60)")
    parser.add_argument("--probe", type=float, default=10.0,
                        help="seconds of the maximum-rate measurement (default 10)")
    parser.add_argument("--postgres", default="postgresql://postgres@127.0.0.1:5432/postgres",
                        help="a Postgres server's admin URL: a fresh database is made there")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    args = parser.parse_args()
    database = asyncio.run(create_database(args.postgres))
    try:
        with tempfile.TemporaryDirectory(prefix="gw-soak-") as tmp:
            return soak(args, database, Path(tmp))
    finally:
        asyncio.run(drop_database(args.postgres, database))


def soak(args: argparse.Namespace, database: str, directory: Path) -> int:
    upstream, port, admin = free_port(), free_port(), free_port()
    cfg = directory / "gateway.yaml"
    cfg.write_text(json.dumps(config(database, args.redis, upstream, port, admin)))
    workspace = json.loads(cli(cfg, "workspaces", "create", "--name", "soak"))
    keys = [cli(cfg, "keys", "create", "--workspace", workspace["id"], "--name", f"k{i}",
                "--permission", "read").strip().splitlines()[-1] for i in range(KEYS)]
    log = (directory / "gateway.log").open("wb")
    echo = subprocess.Popen(
        [sys.executable, "-m", "gateway", "echo-upstream", "--listen", f"{HOST}:{upstream}"],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    served = subprocess.Popen(gateway(cfg, "serve"), cwd=ROOT, stdout=log, stderr=log)
    try:
        if not asyncio.run(ready(admin)):
            print((directory / "gateway.log").read_text(errors="replace"), file=sys.stderr)
            return 2
        redis_port = urlsplit(args.redis).port or 6379
        postgres_port = urlsplit(database).port or 5432
        samples = asyncio.run(drive(args, served.pid, port, keys, redis_port, postgres_port))
    finally:
        served.terminate()
        echo.terminate()
        served.wait(timeout=60)
        echo.wait(timeout=30)
    problems = verdicts(samples)
    for problem in problems:
        print(f"NOT FLAT: {problem}")
    if not problems:
        print(f"flat: {len(samples)} samples over {args.minutes:g} min")
    return 1 if problems else 0


async def ready(admin: int) -> bool:
    async with aiohttp.ClientSession() as http:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                async with http.get(f"http://{HOST}:{admin}/readyz") as response:
                    if response.status == 200:
                        return True
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.2)
    return False


if __name__ == "__main__":
    sys.exit(main())
