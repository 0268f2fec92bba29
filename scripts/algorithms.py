"""The two rate-limit algorithms side by side (README "Algorithms"): how often the sliding
counter decides otherwise than the exact sliding log, and what each costs Redis.

    .venv/bin/python scripts/algorithms.py            # everything (about a minute)
    .venv/bin/python scripts/algorithms.py --accuracy-only

* **Accuracy**: seeded request traces (bursty on/off, steady at the limit, three times over it)
  replayed through the in-process limiter of each algorithm on a fake clock — the arithmetic
  Redis's script repeats (tests/limiter/test_redis.py checks they agree) — counting the
  decisions that differ, and the most requests the counter let into any sliding window.
* **Cost**: a ``redis-server`` of the script's own on a free port (``--redis-cluster``: then a
  local Redis Cluster, 3 masters + 3 replicas, too); ``INFO commandstats`` gives the Redis CPU
  per EVALSHA (one decision) for a limit that refuses half the offers and for a large limit
  that admits all, and ``MEMORY USAGE`` gives a key's bytes at several limits;
  ``--instructions``: the instructions ``redis-server`` runs per decision under callgrind,
  which do not move with the machine's load.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import re
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import redis
from redis_cluster import RedisCluster  # scripts/redis_cluster.py, beside this file

from gateway.config import LimiterConfig
from gateway.limiter.memory import MemoryRateLimiter
from gateway.limiter.redis import COUNTER_SCRIPT, SCRIPT, RedisRateLimiter, cluster_limiter

ALGORITHMS = ("sliding_log", "sliding_counter")


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


# ---- accuracy ---------------------------------------------------------------------------------


def poisson(rng: random.Random, rate: float, start: float, end: float) -> Iterator[float]:
    t = start
    while True:
        t += rng.expovariate(rate)
        if t >= end:
            return
        yield t


def bursty(rng: random.Random, limit: int, window: float, duration: float) -> list[float]:
    """A background at 0.3x the limit's rate (the limit per window, spread evenly), and
    bursts at 4x it (10 s on, 60 s off on average, both exponential)."""
    rate = limit / window
    times = list(poisson(rng, 0.3 * rate, 0, duration))
    t = rng.uniform(0, 60)
    while t < duration:
        on = rng.expovariate(1 / 10)
        times += poisson(rng, 4 * rate, t, min(duration, t + on))
        t += on + rng.expovariate(1 / 60)
    return sorted(times)


Trace = Callable[[random.Random, int, float, float], list[float]]


def steady(factor: float) -> Trace:
    def trace(rng: random.Random, limit: int, window: float, duration: float) -> list[float]:
        return list(poisson(rng, factor * limit / window, 0, duration))
    return trace


TRACES: dict[str, Trace] = {
    "bursty": bursty, "steady at 0.5x": steady(0.5), "steady at 1x": steady(1.0),
    "steady at 3x": steady(3.0),
}


class Accuracy(NamedTuple):
    decisions: int
    differ: int  # decided otherwise than the exact log
    extra: int  # admitted by the counter, refused by the log
    peak: int  # the most requests the counter admitted in any sliding window


def replay(times: list[float], limit: int, window: float) -> tuple[list[bool], list[bool]]:
    decisions = []
    for algorithm in ALGORITHMS:
        clock = Clock()
        limiter = MemoryRateLimiter(clock)
        made = []
        for t in times:
            clock.now = t
            made.append(limiter.admit_nowait("k", "", limit, window, None, algorithm=algorithm)
                        .allowed)
        decisions.append(made)
    return decisions[0], decisions[1]


def peak(times: list[float], window: float) -> int:
    """The most of ``times`` (sorted) inside any window of length ``window``."""
    most, first = 0, 0
    for last, t in enumerate(times):
        while times[first] <= t - window:
            first += 1
        most = max(most, last - first + 1)
    return most


def accuracy(trace: str, keys: int, limit: int, window: float, duration: float) -> Accuracy:
    total = Accuracy(0, 0, 0, 0)
    for seed in range(keys):
        rng = random.Random(seed)
        times = TRACES[trace](rng, limit, window, duration)
        exact, counted = replay(times, limit, window)
        differ = sum(a != b for a, b in zip(exact, counted, strict=True))
        extra = sum(b and not a for a, b in zip(exact, counted, strict=True))
        admitted = [t for t, ok in zip(times, counted, strict=True) if ok]
        total = Accuracy(total.decisions + len(times), total.differ + differ,
                         total.extra + extra, max(total.peak, peak(admitted, window)))
    return total


def report_accuracy(keys: int, limit: int, window: float, duration: float) -> None:
    print(f"accuracy: {keys} keys x {duration:.0f} s, limit {limit} per {window:.0f} s")
    print("| trace | decisions | differ from the log | admitted over the log's | "
          "most in any window |")
    print("|---|---|---|---|---|")
    for trace in TRACES:
        a = accuracy(trace, keys, limit, window, duration)
        print(f"| {trace} | {a.decisions} | {a.differ} ({a.differ / a.decisions:.3%}) | "
              f"{a.extra} ({a.extra / a.decisions:.3%}) | {a.peak} ({a.peak / limit:.2f}x) |")


# ---- cost on Redis ----------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Deployment:
    """Where the Redis part runs: one Redis, or a Redis Cluster's masters."""

    url: str
    masters: list[redis.Redis]
    holder: Callable[[str], redis.Redis]  # the Redis that holds a key
    open: Callable[[str, LimiterConfig], RedisRateLimiter] = RedisRateLimiter

    def evalsha(self) -> list[tuple[int, int, float]]:
        """(calls, µs) of EVALSHA so far, and the process's CPU seconds, per master."""
        found = []
        for master in self.masters:
            stats = master.info("commandstats").get("cmdstat_evalsha", {})
            used = master.info("cpu")
            found.append((int(stats.get("calls", 0)), int(stats.get("usec", 0)),
                          float(used["used_cpu_user"]) + float(used["used_cpu_sys"])))
        return found


async def offer(limiter: RedisRateLimiter, keys: int, offers: int, limit: int,
                algorithm: str) -> None:
    """``offers`` decisions per key over ``keys`` keys, 256 at a time (one batch each)."""
    pending = [(f"k{k}", i) for i in range(offers) for k in range(keys)]
    for start in range(0, len(pending), 256):
        await asyncio.gather(*(limiter.admit(key, "", limit, 3600, None, algorithm=algorithm)
                               for key, _ in pending[start:start + 256]))


async def cpu(where: Deployment, workload: tuple[str, int, int, int], algorithm: str) -> str:
    """µs of Redis CPU per decision, and (several masters) how the decisions spread."""
    _, keys, offers, limit = workload
    limiter = where.open(where.url, LimiterConfig(prefix=f"cpu:{algorithm}:", timeout=5))
    await limiter.open()
    before = where.evalsha()
    await offer(limiter, keys, offers, limit, algorithm)
    after = where.evalsha()
    await limiter.close()
    calls = [a[0] - b[0] for a, b in zip(after, before, strict=True)]
    usec = sum(a[1] - b[1] for a, b in zip(after, before, strict=True))
    process = sum(a[2] - b[2] for a, b in zip(after, before, strict=True)) * 1e6
    text = f"{usec / sum(calls):.2f} µs (process: {process / sum(calls):.1f} µs)"
    if len(calls) > 1:
        text += f" ({' / '.join(f'{c / sum(calls):.0%}' for c in calls)} of the decisions)"
    return text


async def cost(where: Deployment) -> None:
    print("\nRedis CPU per decision (INFO commandstats, usec_per_call of EVALSHA; process: the "
          f"whole redis-server's user+sys CPU per decision; over {len(where.masters)} master(s))")
    print("| workload | sliding_log | sliding_counter |")
    print("|---|---|---|")
    workloads = [("limit 100, 200 offered per key (half refused), 500 keys", 500, 200, 100),
                 ("limit 10000, all admitted (a full log of 10000), 10 keys", 10, 10_000, 10_000)]
    for workload in workloads:
        row = [await cpu(where, workload, algorithm) for algorithm in ALGORITHMS]
        print(f"| {workload[0]} | {' | '.join(row)} |")
    print("\nRedis memory per active key (MEMORY USAGE, the key's window full)")
    print("| limit | sliding_log | sliding_counter |")
    print("|---|---|---|")
    for limit in (10, 100, 128, 129, 1000, 10_000):
        row = []
        for algorithm, suffix in zip(ALGORITHMS, (":r", ":n"), strict=True):
            prefix = f"mem{limit}:{algorithm}:"
            limiter = where.open(where.url, LimiterConfig(prefix=prefix, timeout=5))
            await limiter.open()
            await offer(limiter, 1, limit, limit, algorithm)
            await limiter.close()
            key = f"{prefix}{{k0}}{suffix}"
            row.append(f"{where.holder(key).memory_usage(key)} B")
        print(f"| {limit} | {' | '.join(row)} |")


def private_redis(directory: str) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    server = subprocess.Popen(
        [shutil.which("redis-server") or "redis-server", "--port", str(port), "--bind",
         "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", directory],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    client = redis.Redis(port=port, socket_timeout=1)
    for _ in range(200):
        try:
            client.ping()
            return server, port
        except redis.RedisError:
            time.sleep(0.025)
    server.kill()
    raise SystemExit("redis-server did not start")


def redis_instructions(script: bytes, argv: Callable[[int], list[object]], calls: int) -> int:
    """Instructions ``redis-server`` executes (under callgrind, start to shutdown) running
    ``script`` ``calls`` times over 64 keys: deterministic, unlike CPU time on a busy machine."""
    with tempfile.TemporaryDirectory() as directory:
        out, port = Path(directory) / "callgrind.out", free_port()
        server = subprocess.Popen(
            ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", "redis-server",
             "--port", str(port), "--save", "", "--appendonly", "no", "--dir", directory],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis(port=port, socket_timeout=30)
        for _ in range(600):
            try:
                client.ping()
                break
            except redis.RedisError:
                time.sleep(0.05)
        sha = client.script_load(script)
        pipe = client.pipeline(transaction=False)
        for i in range(calls):
            tag = f"{{k{i % 64}}}"
            pipe.evalsha(sha, 3, f"{tag}:r", f"{tag}:c", f"{tag}:r", *argv(i))
            if i % 200 == 199:
                pipe.execute()
        pipe.execute()
        client.shutdown(nosave=True)
        server.wait()
        found = re.search(r"^(?:summary|totals): (\d+)", out.read_text(), re.M)
        assert found is not None
        return int(found[1])


def report_instructions(calls: int = 3000) -> None:
    """Per decision, limit 100 per 60 s with at most 5 in flight, 64 keys (most decisions
    past the first ones are refused), the instructions of an idle server taken away."""
    print("\nredis-server instructions per decision (callgrind)")
    print("| script | instructions |")
    print("|---|---|")
    common = [100, 60_000_000]
    rest = [5, 30_000_000, 0, 0]
    variants = {
        "SCRIPT, both windows logs": (SCRIPT, lambda i: ["a", *common, f"m{i}", *rest]),
        "COUNTER_SCRIPT, both windows counters": (
            COUNTER_SCRIPT, lambda i: ["a", "cc", *common, f"m{i}", *rest]),
        "COUNTER_SCRIPT, both windows logs (not used: for comparison)": (
            COUNTER_SCRIPT, lambda i: ["a", "ll", *common, f"m{i}", *rest]),
    }
    for name, (script, argv) in variants.items():
        idle = redis_instructions(script, argv, 0)
        busy = redis_instructions(script, argv, calls)
        print(f"| {name} | {(busy - idle) / calls / 1000:.1f}k |")


def on_one_redis() -> None:
    with tempfile.TemporaryDirectory() as directory:
        server, port = private_redis(directory)
        try:
            client = redis.Redis(port=port)
            print(f"\nOne Redis {client.info('server')['redis_version']}")
            asyncio.run(cost(Deployment(f"redis://127.0.0.1:{port}/0", [client],
                                        lambda _: client)))
        finally:
            server.kill()
            server.wait()


def on_a_cluster() -> None:
    with tempfile.TemporaryDirectory() as directory:
        cluster = RedisCluster(Path(directory))
        try:
            cluster.start()
            masters = [cluster.client(port) for port in cluster.masters()]
            print(f"\nA Redis Cluster of {len(masters)} masters + their replicas "
                  f"({masters[0].info('server')['redis_version']})")
            asyncio.run(cost(Deployment(cluster.url, masters,
                                        lambda key: cluster.client(cluster.master_of(key)),
                                        cluster_limiter)))
        finally:
            cluster.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keys", type=int, default=100, help="traces per kind (default 100)")
    parser.add_argument("--accuracy-only", action="store_true", help="skip the Redis part")
    parser.add_argument("--redis-cluster", action="store_true",
                        help="the Redis part on a local 3+3 Redis Cluster too")
    parser.add_argument("--instructions", action="store_true",
                        help="redis-server's instructions per decision under callgrind too")
    args = parser.parse_args()
    report_accuracy(args.keys, limit=100, window=60, duration=3600)
    if args.accuracy_only:
        return
    on_one_redis()
    if args.redis_cluster:
        on_a_cluster()
    if args.instructions:
        report_instructions()


if __name__ == "__main__":
    main()
