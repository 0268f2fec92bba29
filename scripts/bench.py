"""Performance benchmark: the gateway against nginx, in one run, on one machine.

Run from the repository root (as root, so nginx and wrk can be installed with apt-get if missing):

    .venv/bin/python scripts/bench.py                     # -t1 -c32 -d5s, 3 rounds, 2 s warm-up
    .venv/bin/python scripts/bench.py --check             # exit 1 when a target is missed
    .venv/bin/python scripts/bench.py --connections 64 --duration 20 --threads 2

What runs: one nginx (1 worker) serving a fast upstream (``return 200 "ok\\n"``) on port A and a
keep-alive reverse proxy to A on port B; one gateway (``workers: 1``, limits too high to ever
reject but still checked) with an ``auth: none`` route ``/open/`` and a full-pipeline route
``/api/`` (Bearer key, ``permissions: [read]``), both to A. ``--variant``: ``embedded``
(default): SQLite key store and in-process limiter; ``postgres``: the key store on a fresh
database at $GATEWAY_BENCH_PG (default: the local server), dropped afterwards; ``redis``: SQLite
and the limiter on the Redis at $GATEWAY_BENCH_REDIS (default: the local server) under a prefix
of the run's own, deleted afterwards; ``production``: Postgres and Redis; ``redis-cluster``
(``--redis-cluster``): SQLite and the limiter on a local Redis Cluster (3 masters + 3 replicas)
started for the run and stopped afterwards. The key is created with
the CLI before the gateway starts. ``--floors`` adds the same forwarding without the gateway's
pipeline (``scripts/ceiling.py``) behind aiohttp's ``web.Server`` and behind bare httptools;
``--node DIR`` adds fast-gateway on Node (``../shared/peers/run.sh``'s ``NODE_DIR``), its keyed
and its proxy-only route, on the same core and upstream.

What is measured, with wrk and the same threads/connections/duration for every target, each
after a warm-up run, in this order, repeated ``--rounds`` times (interleaved: a slow minute on
a shared machine then lands on every target alike) and reported as each target's median round:

    direct       wrk -> nginx A                                   the ceiling
    nginx_proxy  wrk -> nginx B -> nginx A                        a proxy written in C
    auth_none    wrk -> gateway /open/ -> nginx A                 the gateway's proxying alone
    full         wrk -> gateway /api/ + Bearer key -> nginx A     auth, authorize, tenancy, limits

then ``direct`` and ``full`` again with one connection (``-t1 -c1``), for the latency added.

Targets, each PASS or FAIL:

    full / nginx_proxy    req/s >= 0.40    (0.35 with Redis)
    full / auth_none      req/s >= 0.85    (the key pipeline costs at most 15 %)
    p50(full, c=1) - p50(direct, c=1) <= 0.3 ms
    Redis round trips per request (full) <= 1   (Redis variants: the gateway's
                          gateway_limiter_round_trips_total; INFO commandstats gives the
                          EVALSHA calls per request beside it)

A target that got any non-2xx/3xx response or socket error has failed, and so has every ratio
that uses it. With ``taskset`` and two cores, nginx and the gateway run on core 0 and wrk on
core 1. The "other cpu" column is the CPU (in cores) that processes outside the benchmark used
during each run, from /proc; above 0.1 the run is marked noisy and the checks using it
unreliable (run again on a quiet machine). The "cpu us/req" column is the CPU time nginx and the
gateway together spent per request (user + system, from /proc): for a gateway target that is the
gateway plus the nginx upstream behind it. It moves less from run to run than req/s, so it is
the figure to compare when judging a change to the request path.

The table goes to stdout, the numbers to ``bench-out/results.json`` (the nginx and gateway logs
beside it). Exit code: 0; 1 with ``--check`` when a target is missed; 2 when something failed to
start; 130 when interrupted. nginx and the gateway are always stopped, temp files removed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from string import Template
from typing import Any

import yaml
from redis_cluster import RedisCluster  # scripts/redis_cluster.py, beside this file

REPO = Path(__file__).resolve().parent.parent
OUT_DIR = REPO / "bench-out"
NGINX_TEMPLATE = Path(__file__).with_name("bench_nginx.conf.tmpl")
HOST = "127.0.0.1"
SBIN_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

EXIT_OK = 0
EXIT_TARGET_MISSED = 1  # only with --check
EXIT_START_FAILED = 2
EXIT_INTERRUPTED = 130

START_TIMEOUT = 30.0  # seconds for nginx / the gateway to come up
STOP_TIMEOUT = 10.0  # seconds between SIGTERM and SIGKILL
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
NOISY_CORES = 0.1  # other processes using more than this many cores make a run "noisy"
UNIT_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}


class SetupError(Exception):
    """Something the benchmark needs did not start; the message says what and why."""


# ---- what runs where ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Backends:
    """The gateway's key store and limiter state: all that differs between variants."""

    database: str
    redis: str | None
    cleanup: Callable[[], None] | None = None  # e.g. drop the database made for the run
    limiter_prefix: str = "gw:"
    evalsha_calls: Callable[[], int] | None = None  # EVALSHA calls Redis executed so far


PG_ADMIN = os.environ.get("GATEWAY_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/postgres")


def psql(sql: str) -> None:
    subprocess.run(["psql", PG_ADMIN, "-q", "-v", "ON_ERROR_STOP=1", "-c", sql],
                   check=True, capture_output=True, timeout=30)


def postgres_backends(workdir: Path) -> Backends:
    """A fresh database on the Postgres server at $GATEWAY_BENCH_PG, dropped afterwards."""
    name = f"gw_bench_{os.getpid()}_{int(time.time())}"
    psql(f"CREATE DATABASE {name}")
    url = PG_ADMIN.rsplit("/", 1)[0] + "/" + name
    return Backends(url, None, lambda: psql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))


REDIS = os.environ.get("GATEWAY_BENCH_REDIS", "redis://127.0.0.1:6379/0")


def redis_cli(*args: str) -> str:
    done = subprocess.run(["redis-cli", "-u", REDIS, *args], check=True, capture_output=True,
                          text=True, timeout=30)
    return done.stdout


def redis_backends(database: Backends) -> Backends:
    """The limiter on the Redis at $GATEWAY_BENCH_REDIS under a prefix of this run's own, whose
    keys are deleted afterwards."""
    prefix = f"gwbench:{os.getpid()}:"

    def cleanup() -> None:
        keys = redis_cli("--scan", "--pattern", f"{prefix}*").split()
        if keys:
            redis_cli("DEL", *keys)
        if database.cleanup is not None:
            database.cleanup()

    return Backends(database.database, REDIS, cleanup, prefix, redis_commands)


def cluster_backends(database: Backends) -> Backends:
    """The limiter on a local Redis Cluster of the run's own (3 masters + 3 replicas,
    scripts/redis_cluster.py), stopped afterwards."""
    directory = Path(tempfile.mkdtemp(prefix="gateway-bench-cluster-"))
    cluster = RedisCluster(directory)

    def cleanup() -> None:
        cluster.stop()
        shutil.rmtree(directory, ignore_errors=True)
        if database.cleanup is not None:
            database.cleanup()

    try:
        cluster.start()
    except BaseException:
        cleanup()
        raise

    def evalsha_calls() -> int:
        return sum(int(cluster.client(port).info("commandstats")
                       .get("cmdstat_evalsha", {}).get("calls", 0))
                   for port in cluster.masters())

    return Backends(database.database, cluster.url, cleanup, "gwbench:", evalsha_calls)


def embedded_backends(workdir: Path) -> Backends:
    return Backends(f"sqlite:///{workdir / 'bench.db'}", None)


# A variant maps the run's temp dir to its backends.
VARIANTS: dict[str, Callable[[Path], Backends]] = {
    "embedded": embedded_backends,  # SQLite, in-process limiter (the default)
    "postgres": postgres_backends,  # key store on Postgres, in-process limiter
    "redis": lambda workdir: redis_backends(embedded_backends(workdir)),  # SQLite, Redis limits
    "production": lambda workdir: redis_backends(postgres_backends(workdir)),  # Postgres + Redis
    # SQLite, limits on a local 3+3 Redis Cluster (README "Redis Cluster")
    "redis-cluster": lambda workdir: cluster_backends(embedded_backends(workdir)),
}
# The targets for full / nginx_proxy: Redis adds a network round trip per batch of requests.
PROXY_RATIO = {"embedded": 0.40, "postgres": 0.40, "redis": 0.35, "production": 0.35,
               "redis-cluster": 0.35}


@dataclass(frozen=True)
class Ports:
    fast: int  # nginx upstream (A)
    proxy: int  # nginx proxy_pass (B)
    gateway: int
    admin: int


@dataclass(frozen=True)
class Pinning:
    server: tuple[str, ...]  # command prefix for nginx and the gateway
    client: tuple[str, ...]  # command prefix for wrk
    note: str


@dataclass(frozen=True)
class WrkOptions:
    threads: int
    connections: int
    duration: int  # seconds
    warmup: int  # seconds


@dataclass(frozen=True)
class Target:
    name: str
    url: str
    headers: tuple[tuple[str, str], ...] = ()


@dataclass
class WrkResult:
    name: str
    connections: int
    requests_per_sec: float = 0.0
    p50_ms: float | None = None
    p99_ms: float | None = None
    requests: int = 0
    non_2xx_3xx: int = 0
    socket_errors: dict[str, int] = field(default_factory=dict)
    error: str | None = None  # wrk failed or its output could not be read
    other_cpu: float | None = None  # cores used by processes outside the benchmark meanwhile
    server_cpu_us: float | None = None  # CPU µs per request of nginx and the gateway together
    redis_commands: int | None = None  # EVALSHA calls Redis executed during the run
    redis_round_trips: int | None = None  # limiter batches the gateway sent (its /metrics)
    output: str = ""

    @property
    def ok(self) -> bool:
        return self.error is None and self.non_2xx_3xx == 0 and not any(
            self.socket_errors.values()
        )

    def problem(self) -> str:
        if self.error:
            return self.error
        errors = ", ".join(f"{k} {v}" for k, v in self.socket_errors.items() if v)
        parts = [f"{self.non_2xx_3xx} non-2xx/3xx"] if self.non_2xx_3xx else []
        return "; ".join([*parts, f"socket errors: {errors}"] if errors else parts)


@dataclass(frozen=True)
class Check:
    name: str
    value: float | None
    comparison: str  # ">=" or "<="
    limit: float
    passed: bool
    note: str = ""


# ---- tools and pinning -------------------------------------------------------------------------
def find_tool(name: str) -> str | None:
    return shutil.which(name, path=f"{os.environ.get('PATH', '')}:{SBIN_PATH}")


def ensure_tools() -> tuple[str, str]:
    """Paths of nginx and wrk, installed with apt-get when missing."""
    if find_tool("nginx") is None or find_tool("wrk") is None:
        install_tools()
    nginx, wrk = find_tool("nginx"), find_tool("wrk")
    if nginx is None or wrk is None:
        raise SetupError("nginx and wrk are needed: apt-get install -y nginx wrk failed")
    return nginx, wrk


def install_tools() -> None:
    if os.geteuid() != 0:
        raise SetupError("nginx or wrk is missing; run as root or `apt-get install -y nginx wrk`")
    print("installing nginx and wrk with apt-get ...", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "nginx", "wrk"]
    if subprocess.run(install, env=env, check=False).returncode != 0:
        subprocess.run(["apt-get", "update"], env=env, check=False)
        subprocess.run(install, env=env, check=False)


def choose_pinning(enabled: bool) -> Pinning:
    if not enabled:
        return Pinning((), (), "off (--no-pin)")
    if shutil.which("taskset") is None:
        return Pinning((), (), "off: taskset not found")
    if not {0, 1} <= os.sched_getaffinity(0):
        return Pinning((), (), "off: cores 0 and 1 are not both available")
    return Pinning(("taskset", "-c", "0"), ("taskset", "-c", "1"),
                   "nginx + gateway on core 0, wrk on core 1 (taskset)")


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind((HOST, 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


# ---- processes ---------------------------------------------------------------------------------
def child_env() -> dict[str, str]:
    # GATEWAY_DATABASE_URL / GATEWAY_REDIS_URL would override the variant's backends.
    return {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}


def spawn(command: Sequence[str], log_path: Path,
          started: list[subprocess.Popen[bytes]],
          env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """Start a server in its own process group (so it and its children stop together), listed
    in ``started`` at once, so an interrupt while it starts up still stops it."""
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True, cwd=REPO, env={**child_env(), **(env or {})},
        )
    started.append(process)
    return process


def stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM the process group, SIGKILL it if still there after STOP_TIMEOUT; idempotent."""
    if process.returncode is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def log_tail(path: Path, lines: int = 20) -> str:
    text = path.read_text(errors="replace") if path.exists() else ""
    return "\n".join(text.splitlines()[-lines:]) or "(empty log)"


def wait_until(ready: Callable[[], bool], process: subprocess.Popen[bytes], what: str,
               log_path: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SetupError(f"{what} exited with {process.returncode}:\n{log_tail(log_path)}")
        if ready():
            return
        time.sleep(0.1)
    raise SetupError(f"{what} not ready after {START_TIMEOUT:.0f} s:\n{log_tail(log_path)}")


def port_open(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((HOST, port), timeout=0.5):
        return True
    return False


def http_get(url: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    """Status and body; status 0 when nothing answered."""
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=2) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except OSError:
        return 0, b""


# ---- nginx -------------------------------------------------------------------------------------
def start_nginx(nginx: str, workdir: Path, ports: Ports, pin: Pinning,
                started: list[subprocess.Popen[bytes]]) -> None:
    for sub in ("logs", "tmp"):
        (workdir / sub).mkdir()
    conf = workdir / "nginx.conf"
    conf.write_text(Template(NGINX_TEMPLATE.read_text()).substitute(
        workdir=workdir, fast_port=ports.fast, proxy_port=ports.proxy))
    log_path = workdir / "logs" / "nginx-error.log"
    command = [*pin.server, nginx, "-p", str(workdir), "-c", str(conf), "-e", str(log_path)]
    process = spawn(command, workdir / "logs" / "nginx-stdout.log", started)
    wait_until(lambda: port_open(ports.fast) and port_open(ports.proxy), process, "nginx",
               log_path)


# ---- the gateway -------------------------------------------------------------------------------
def gateway_config(ports: Ports, backends: Backends) -> dict[str, Any]:
    upstream = f"http://{HOST}:{ports.fast}"
    return {
        "listen": f"{HOST}:{ports.gateway}",
        "admin_listen": f"{HOST}:{ports.admin}",
        "workers": 1,
        "database": backends.database,
        "redis": backends.redis,
        "limiter": {"prefix": backends.limiter_prefix},
        # nginx runs with access_log off; the gateway's access lines cost about 2 µs each
        "logging": {"access_log": False},
        # Never rejects during a run, but the limiter and the concurrency stage still run.
        "defaults": {"rate_limit": {"requests": 100_000_000, "window": 60},
                     "max_concurrent": 1_000_000},
        # The keyed route runs the whole of README "Rate limits" (which limit): the key's plan
        # found with the key, its budget, and the workspace's day and month quotas counted on
        # every request.
        "plans": {"bench": {"rate_limit": {"requests": 100_000_000, "window": 60},
                            "quota": {"day": 1_000_000_000, "month": 1_000_000_000}}},
        "default_plan": "bench",
        "routes": [
            {"name": "open", "path": "/open/", "upstream": upstream, "auth": "none"},
            {"name": "api", "path": "/api/", "upstream": upstream, "permissions": ["read"]},
        ],
    }


def gateway_command(config_path: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "gateway", "-c", str(config_path), *args]


def run_cli(config_path: Path, *args: str) -> str:
    result = subprocess.run(gateway_command(config_path, *args), capture_output=True, text=True,
                            cwd=REPO, env=child_env(), timeout=60, check=False)
    if result.returncode != 0:
        raise SetupError(f"gateway {' '.join(args)} exited with {result.returncode}: "
                         f"{result.stderr.strip()}")
    return result.stdout


def create_key(config_path: Path) -> str:
    workspace = json.loads(run_cli(config_path, "workspaces", "create", "--name", "bench"))
    output = run_cli(config_path, "keys", "create", "--workspace", workspace["id"],
                     "--name", "bench", "--permission", "read")
    return output.strip().splitlines()[-1]  # the plaintext key is the last line


def start_gateway(config_path: Path, ports: Ports, pin: Pinning, log_path: Path,
                  started: list[subprocess.Popen[bytes]]) -> None:
    process = spawn([*pin.server, *gateway_command(config_path, "serve")], log_path, started)
    healthz = f"http://{HOST}:{ports.admin}/healthz"
    wait_until(lambda: http_get(healthz)[0] == 200, process, "the gateway", log_path)


# ---- CPU used by other processes (another test run on these cores skews every number) -------
@dataclass(frozen=True)
class CpuSnapshot:
    wall: float
    machine: float  # CPU seconds in user + nice + system, all cores
    ours: float  # CPU seconds of this script, its reaped children (wrk) and the servers
    servers: float  # CPU seconds of the servers alone (nginx and the gateway)


def cpu_snapshot(server_groups: set[int]) -> CpuSnapshot:
    own = os.times()
    ours = own.user + own.system + own.children_user + own.children_system
    servers = group_cpu(server_groups)
    return CpuSnapshot(time.monotonic(), machine_cpu_seconds(), ours + servers, servers)


def machine_cpu_seconds() -> float:
    user, nice, system = Path("/proc/stat").read_text().split(maxsplit=4)[1:4]
    return (int(user) + int(nice) + int(system)) / CLOCK_TICKS


def group_cpu(process_groups: set[int]) -> float:
    """CPU seconds of every live process in these process groups (nginx workers included)."""
    ticks = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[2]) in process_groups:  # pgrp; then utime and stime (proc(5))
                ticks += int(fields[11]) + int(fields[12])
    return ticks / CLOCK_TICKS


def other_cores(before: CpuSnapshot, after: CpuSnapshot) -> float:
    """Cores' worth of CPU that processes outside the benchmark used in between."""
    other = (after.machine - before.machine) - (after.ours - before.ours)
    return max(0.0, other / max(after.wall - before.wall, 1e-9))


# ---- wrk ---------------------------------------------------------------------------------------
RedisCounters = Callable[[], tuple[int, int | None]]


def redis_commands() -> int:
    """EVALSHA calls Redis has executed, from INFO commandstats (every client's, so run the
    benchmark alone). The commands the script runs inside count under their own names."""
    match = re.search(r"^cmdstat_evalsha:calls=(\d+)", redis_cli("INFO", "commandstats"), re.M)
    return int(match[1]) if match else 0


def limiter_round_trips(admin_port: int) -> int | None:
    status, body = http_get(f"http://{HOST}:{admin_port}/metrics")
    match = re.search(rb"^gateway_limiter_round_trips_total ([\d.e+]+)", body, re.M)
    return int(float(match[1])) if status == 200 and match else None


def run_wrk(wrk: str, target: Target, options: WrkOptions, pin: Pinning,
            server_groups: set[int], redis: RedisCounters | None = None) -> WrkResult:
    headers = [arg for name, value in target.headers for arg in ("-H", f"{name}: {value}")]

    def command(seconds: int) -> list[str]:
        return [*pin.client, wrk, f"-t{options.threads}", f"-c{options.connections}",
                f"-d{seconds}s", "--latency", *headers, target.url]

    print(f"  {target.name:<12} c={options.connections:<4} ...", end="", flush=True)
    if options.warmup > 0:
        subprocess.run(command(options.warmup), capture_output=True, timeout=options.warmup + 30,
                       check=False)
    before = cpu_snapshot(server_groups)
    redis_before = redis() if redis else None
    done = subprocess.run(command(options.duration), capture_output=True, text=True,
                          timeout=options.duration + 30, check=False)
    result = parse_wrk(target.name, options.connections, done.stdout)
    after = cpu_snapshot(server_groups)
    result.other_cpu = other_cores(before, after)
    if result.requests > 0:  # idle servers cost next to nothing: this is the requests' CPU
        result.server_cpu_us = (after.servers - before.servers) / result.requests * 1e6
    if redis and redis_before:
        # wrk's count leaves out requests still in flight at the end: a few % at most
        commands, trips = redis()
        result.redis_commands = commands - redis_before[0]
        if trips is not None and redis_before[1] is not None:
            result.redis_round_trips = trips - redis_before[1]
    if done.returncode != 0:
        result.error = f"wrk exited with {done.returncode}: {done.stderr.strip()}"
    print(f" {result.requests_per_sec:>10,.0f} req/s" + ("" if result.ok else "  FAILED"))
    return result


def parse_wrk(name: str, connections: int, output: str) -> WrkResult:
    result = WrkResult(name, connections, output=output)
    rps = re.search(r"^Requests/sec:\s+([\d.]+)", output, re.M)
    requests = re.search(r"^\s*(\d+) requests in", output, re.M)
    non_2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    sockets = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)",
                        output)
    result.p50_ms, result.p99_ms = percentile_ms(output, "50"), percentile_ms(output, "99")
    if rps is None or requests is None or result.p50_ms is None:
        result.error = "could not read wrk's output"
        return result
    result.requests_per_sec, result.requests = float(rps[1]), int(requests[1])
    result.non_2xx_3xx = int(non_2xx[1]) if non_2xx else 0
    if sockets:
        result.socket_errors = dict(zip(("connect", "read", "write", "timeout"),
                                        map(int, sockets.groups()), strict=True))
    return result


def percentile_ms(output: str, percent: str) -> float | None:
    """A line of wrk's latency distribution, e.g. ``99%  1.23ms``, in milliseconds."""
    match = re.search(rf"^\s*{percent}(?:\.0+)?%\s+([\d.]+)(us|ms|s|m|h)\s*$", output, re.M)
    return float(match[1]) * UNIT_MS[match[2]] if match else None


# ---- verdict -----------------------------------------------------------------------------------
def ratio_check(name: str, numerator: WrkResult, denominator: WrkResult,
                minimum: float) -> Check:
    if not (numerator.ok and denominator.ok) or denominator.requests_per_sec <= 0:
        return Check(name, None, ">=", minimum, False, "a target failed")
    value = numerator.requests_per_sec / denominator.requests_per_sec
    return Check(name, value, ">=", minimum, value >= minimum, noise_note(numerator, denominator))


def latency_check(full: WrkResult, direct: WrkResult, maximum: float) -> Check:
    name = "p50(full, c=1) - p50(direct, c=1), ms"
    if not (full.ok and direct.ok) or full.p50_ms is None or direct.p50_ms is None:
        return Check(name, None, "<=", maximum, False, "a target failed")
    value = full.p50_ms - direct.p50_ms
    return Check(name, value, "<=", maximum, value <= maximum, noise_note(full, direct))


def noise_note(*results: WrkResult) -> str:
    noisy = any((r.other_cpu or 0.0) > NOISY_CORES for r in results)
    return "noisy: other processes used the CPU, unreliable" if noisy else ""


def per_request_check(name: str, count: int | None, full: WrkResult, maximum: float) -> Check:
    if count is None or not full.ok or full.requests <= 0:
        return Check(name, None, "<=", maximum, False, "not measured")
    value = count / full.requests
    return Check(name, value, "<=", maximum, value <= maximum)


def evaluate(results: dict[str, WrkResult], variant: str) -> list[Check]:
    full = results["full"]
    checks = [
        ratio_check("full / nginx_proxy, req/s", full, results["nginx_proxy"],
                    PROXY_RATIO[variant]),
        ratio_check("full / auth_none, req/s", full, results["auth_none"], 0.85),
        latency_check(results["full_c1"], results["direct_c1"], 0.3),
    ]
    if full.redis_commands is not None:
        checks.append(per_request_check("Redis round trips per request (full)",
                                        full.redis_round_trips, full, 1.0))
    return checks


# ---- report ------------------------------------------------------------------------------------
def fmt_ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def print_table(results: dict[str, WrkResult]) -> None:
    print(f"\n{'target':<14} {'conns':>5} {'req/s':>11} {'p50 ms':>8} {'p99 ms':>8} "
          f"{'cpu us/req':>10} {'other cpu':>9}  status")
    for r in results.values():
        status = "ok" if r.ok else f"FAILED: {r.problem()}"
        other = "-" if r.other_cpu is None else f"{r.other_cpu:.2f}"
        cpu = "-" if r.server_cpu_us is None else f"{r.server_cpu_us:.1f}"
        print(f"{r.name:<14} {r.connections:>5} {r.requests_per_sec:>11,.0f} "
              f"{fmt_ms(r.p50_ms):>8} {fmt_ms(r.p99_ms):>8} {cpu:>10} {other:>9}  {status}")
        if r.redis_commands is not None and r.requests:
            trips = ("-" if r.redis_round_trips is None
                     else f"{r.redis_round_trips / r.requests:.3f}")
            print(f"{'':<12} Redis: {r.redis_commands / r.requests:.3f} EVALSHA/request "
                  f"(INFO commandstats), {trips} round trips/request (gateway metrics)")
    noisy = [r.name for r in results.values() if (r.other_cpu or 0.0) > NOISY_CORES]
    print("cpu us/req: CPU time of nginx and the gateway per request (steadier than req/s); "
          "other cpu: cores used by processes outside the benchmark during the run"
          + (f"; NOISY (> {NOISY_CORES}): {', '.join(noisy)} -- rerun on a quiet machine"
             if noisy else ""))


def print_checks(checks: list[Check]) -> None:
    print(f"\n{'check':<40} {'value':>7} {'target':<8}  result")
    for c in checks:
        value = "-" if c.value is None else f"{c.value:.3f}"
        verdict = ("PASS" if c.passed else "FAIL") + (f" ({c.note})" if c.note else "")
        print(f"{c.name:<40} {value:>7} {c.comparison} {c.limit:<5.2f}  {verdict}")


def logged_lines(path: Path) -> list[str]:
    """What a server logged: the gateway's output only holds warnings and worse (no handler
    is configured), nginx's error log is at level warn; so every line is worth a look."""
    if not path.exists():
        return []
    return [line for line in path.read_text(errors="replace").splitlines() if line.strip()]


def print_logs(logs: dict[str, list[str]], shown: int = 20) -> None:
    print()
    for name, lines in logs.items():
        if not lines:
            print(f"{name}: nothing logged")
            continue
        print(f"{name}: {len(lines)} line(s) logged, first {min(shown, len(lines))}:")
        print("\n".join(f"  {line}" for line in lines[:shown]))


def git_revision() -> dict[str, Any]:
    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True,
                              check=False)
        return done.stdout.strip()

    return {"commit": git("rev-parse", "--short", "HEAD"),
            "dirty": bool(git("status", "--porcelain", "--untracked-files=no"))}


def write_json(report: dict[str, Any]) -> Path:
    OUT_DIR.mkdir(exist_ok=True)
    path = OUT_DIR / "results.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    return path


# ---- the run -----------------------------------------------------------------------------------
@dataclass
class Run:
    args: argparse.Namespace
    nginx: str
    wrk: str
    pin: Pinning
    workdir: Path
    ports: Ports
    load_before: float  # 1-minute load average before the servers started
    key: str = ""
    backends: Backends | None = None
    floor_ports: dict[str, int] = field(default_factory=dict)  # --floors: server -> port
    node_port: int = 0  # --node: fast-gateway's port
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    cleanups: list[Callable[[], None]] = field(default_factory=list)

    @property
    def gateway_log(self) -> Path:
        return self.workdir / "logs" / "gateway.log"

    @property
    def nginx_log(self) -> Path:
        return self.workdir / "logs" / "nginx-error.log"

    def stop_all(self) -> None:
        for process in reversed(self.processes):
            stop(process)
        for cleanup in self.cleanups:
            with contextlib.suppress(Exception):  # best effort: the run is already over
                cleanup()


def start_servers(run: Run) -> None:
    backends = run.backends = VARIANTS[run.args.variant](run.workdir)
    if backends.cleanup is not None:
        run.cleanups.append(backends.cleanup)
    config_path = run.workdir / "gateway.yaml"
    config_path.write_text(yaml.safe_dump(gateway_config(run.ports, backends), sort_keys=False))
    start_nginx(run.nginx, run.workdir, run.ports, run.pin, run.processes)
    run.key = create_key(config_path)
    start_gateway(config_path, run.ports, run.pin, run.gateway_log, run.processes)
    if run.args.floors:
        start_floors(run)
    if run.args.node:
        start_node(run)


# --floors: the same forwarding without the gateway's pipeline (scripts/ceiling.py), behind
# aiohttp's web.Server (the gateway's server) and behind a bare httptools protocol
FLOORS = ("aiohttp", "httptools")


def start_floors(run: Run) -> None:
    upstream = f"http://{HOST}:{run.ports.fast}"
    for server, port in zip(FLOORS, free_ports(len(FLOORS)), strict=True):
        command = [*run.pin.server, sys.executable, str(REPO / "scripts" / "ceiling.py"),
                   "--listen", f"{HOST}:{port}", "--upstream", upstream, "--server", server]
        log_path = run.workdir / "logs" / f"floor-{server}.log"
        process = spawn(command, log_path, run.processes)
        wait_until(lambda p=port: port_open(p), process, f"the {server} floor", log_path)
        run.floor_ports[server] = port


# --node DIR: fast-gateway on Node, as ../shared/peers/run.sh runs it (its gateway.js and
# node_modules in DIR, that script's NODE_DIR), one process on the gateway's core, the bench's
# key in its key list: its keyed route and its proxy-only route, beside the floors
def start_node(run: Run) -> None:
    port = free_ports(1)[0]
    keys = run.workdir / "node-keys.txt"
    keys.write_text(f"{run.key} ws_bench\n")
    env = {"NODE_ENV": "production", "PORT": str(port), "KEYS_FILE": str(keys),
           "UPSTREAM": f"http://{HOST}:{run.ports.fast}", "RATE_LIMIT": "1000000000"}
    log_path = run.workdir / "logs" / "node.log"
    command = [*run.pin.server, "node", str(run.args.node / "gateway.js")]
    process = spawn(command, log_path, run.processes, env)
    wait_until(lambda: port_open(port), process, "fast-gateway (--node)", log_path)
    run.node_port = port


def targets(run: Run) -> dict[str, Target]:
    bearer = (("Authorization", f"Bearer {run.key}"),)
    return {
        "direct": Target("direct", f"http://{HOST}:{run.ports.fast}/ping"),
        "nginx_proxy": Target("nginx_proxy", f"http://{HOST}:{run.ports.proxy}/ping"),
        "auth_none": Target("auth_none", f"http://{HOST}:{run.ports.gateway}/open/ping"),
        "full": Target("full", f"http://{HOST}:{run.ports.gateway}/api/ping", bearer),
        **{f"{server}_bare": Target(f"{server}_bare", f"http://{HOST}:{port}/ping")
           for server, port in run.floor_ports.items()},
        **({"node_proxy": Target("node_proxy", f"http://{HOST}:{run.node_port}/open/ping"),
            "node_keyed": Target("node_keyed", f"http://{HOST}:{run.node_port}/api/ping",
                                 bearer)} if run.node_port else {}),
    }


def preflight(by_name: dict[str, Target]) -> None:
    """One request per target first, so a misconfigured target shows its answer, not a count."""
    for target in by_name.values():
        status, body = http_get(target.url, dict(target.headers))
        if status != 200:
            print(f"  warning: {target.name} answered {status}: {body[:300]!r}")


def measure(run: Run) -> dict[str, WrkResult]:
    """``--rounds`` rounds, each measuring every target once, interleaved, so a slow minute on
    a shared machine lands on every target alike; each target reports its median round."""
    args = run.args
    by_name = targets(run)
    preflight(by_name)
    plan = [(t, False) for t in by_name.values()]
    # at one connection too: the latency added; with --floors and --node, theirs beside ours
    single = ("direct", "full", "aiohttp_bare", "httptools_bare", "node_keyed")
    plan += [(Target(f"{n}_c1", by_name[n].url, by_name[n].headers), True)
             for n in single if n in by_name]
    groups = {process.pid for process in run.processes}
    redis: RedisCounters | None = None
    calls = run.backends.evalsha_calls if run.backends is not None else None
    if calls is not None:
        def redis() -> tuple[int, int | None]:
            return calls(), limiter_round_trips(run.ports.admin)
    rounds: dict[str, list[WrkResult]] = {target.name: [] for target, _ in plan}
    for index in range(args.rounds):
        warmup = args.warmup if index == 0 else 0
        for target, single in plan:
            options = WrkOptions(1 if single else args.threads, 1 if single else args.connections,
                                 args.duration, warmup)
            counters = redis if target.name.startswith("full") else None
            rounds[target.name].append(
                run_wrk(run.wrk, target, options, run.pin, groups, counters))
    return {name: median_round(results) for name, results in rounds.items()}


def median_round(results: list[WrkResult]) -> WrkResult:
    """The median round by req/s; a failed round (errors, non-2xx) is reported instead."""
    failed = [r for r in results if not r.ok]
    if failed:
        return failed[0]
    ordered = sorted(results, key=lambda r: r.requests_per_sec)
    return ordered[(len(ordered) - 1) // 2]


def save_logs(run: Run) -> dict[str, list[str]]:
    OUT_DIR.mkdir(exist_ok=True)
    logs = {}
    for name, path in (("gateway log", run.gateway_log), ("nginx error log", run.nginx_log)):
        if path.exists():
            shutil.copyfile(path, OUT_DIR / path.name)
        logs[name] = logged_lines(path)
    return logs


def build_report(run: Run, results: dict[str, WrkResult], checks: list[Check],
                 logs: dict[str, list[str]]) -> dict[str, Any]:
    args = run.args
    return {
        "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
        "variant": args.variant,
        "git": git_revision(),
        "wrk": {"threads": args.threads, "connections": args.connections,
                "duration_s": args.duration, "warmup_s": args.warmup,
                "rounds": args.rounds},
        "pinning": run.pin.note,
        "cpus": os.cpu_count(),
        "load_average_1m_before": round(run.load_before, 2),
        "results": {name: {**asdict(r), "ok": r.ok} for name, r in results.items()},
        "checks": [asdict(c) for c in checks],
        "all_passed": all(c.passed for c in checks),
        "logs": {name: {"lines": len(lines), "first": lines[:50]} for name, lines in logs.items()},
    }


def benchmark(args: argparse.Namespace) -> int:
    nginx, wrk = ensure_tools()
    pin = choose_pinning(not args.no_pin)
    print(f"variant: {args.variant}; wrk -t{args.threads} -c{args.connections} "
          f"-d{args.duration}s (warm-up {args.warmup} s); pinning: {pin.note}")
    load = os.getloadavg()[0]
    print(f"load average before the run: {load:.2f} "
          "(anything else running on these cores skews the numbers)")
    with tempfile.TemporaryDirectory(prefix="gateway-bench-") as tmp:
        run = Run(args, nginx, wrk, pin, Path(tmp), Ports(*free_ports(4)), load)
        try:
            start_servers(run)
            results = measure(run)
        finally:
            run.stop_all()
            logs = save_logs(run)
    checks = evaluate(results, args.variant)
    print_table(results)
    print_checks(checks)
    print_logs(logs)
    path = write_json(build_report(run, results, checks, logs))
    print(f"\nresults: {path.relative_to(REPO)}")
    missed = not all(c.passed for c in checks)
    return EXIT_TARGET_MISSED if args.check and missed else EXIT_OK


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1, help="wrk -t (default 1)")
    parser.add_argument("--connections", type=int, default=32, help="wrk -c (default 32)")
    parser.add_argument("--duration", type=int, default=5, help="seconds per run (default 5)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="interleaved rounds; each target reports its median (default 3)")
    parser.add_argument("--warmup", type=int, default=2, help="seconds of warm-up (default 2)")
    parser.add_argument("--variant", choices=sorted(VARIANTS), default="embedded",
                        help="key store and limiter backends (default embedded)")
    parser.add_argument("--redis-cluster", action="store_const", dest="variant",
                        const="redis-cluster", help="the same as --variant redis-cluster")
    parser.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    parser.add_argument("--no-pin", action="store_true", help="do not pin with taskset")
    parser.add_argument("--node", metavar="DIR", type=Path,
                        help="also fast-gateway on Node from DIR (gateway.js and node_modules: "
                             "../shared/peers/run.sh's NODE_DIR), keyed and proxy-only")
    parser.add_argument("--floors", action="store_true",
                        help="also measure the bare forwarding behind aiohttp's web.Server and "
                             "behind httptools (scripts/ceiling.py): what the server costs")
    args = parser.parse_args(argv)
    if min(args.threads, args.duration, args.rounds) < 1 or args.warmup < 0:
        parser.error("--threads, --duration and --rounds must be >= 1, --warmup >= 0")
    if args.connections < args.threads:
        parser.error("--connections must be >= --threads")
    return args


@contextlib.contextmanager
def interrupt_on_sigterm() -> Iterator[None]:
    """SIGTERM and SIGHUP unwind like Ctrl-C, so the servers are stopped either way."""
    def interrupt(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    previous = {s: signal.signal(s, interrupt) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        with interrupt_on_sigterm():
            return benchmark(args)
    except SetupError as exc:
        print(f"\nbench: {exc}", file=sys.stderr)
        return EXIT_START_FAILED
    except KeyboardInterrupt:
        print("\nbench: interrupted; nginx and the gateway were stopped", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
