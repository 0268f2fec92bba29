"""The two rate-limit algorithms side by side (README "Algorithms"): how often the sliding
counter decides otherwise than the exact sliding log, and what each costs Redis.

    .venv/bin/python scripts/algorithms.py            # everything (about a minute)
    .venv/bin/python scripts/algorithms.py --accuracy-only

* **Accuracy**: seeded request traces (bursty on/off, steady at the limit, three times over it)
  replayed through the in-process limiter of each algorithm on a fake clock — the arithmetic
  Redis's script repeats (tests/limiter/test_redis.py checks they agree) — counting the
  decisions that differ, and the most requests the counter let into any sliding window.
* **Cost**: a ``redis-server`` of the script's own on a free port; ``INFO commandstats``
  gives the Redis CPU per EVALSHA (one decision) for a limit that refuses half the offers and
  for a large limit that admits all, and ``MEMORY USAGE`` gives a key's bytes at several limits.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from typing import NamedTuple

import redis

from gateway.config import LimiterConfig
from gateway.limiter.memory import MemoryRateLimiter
from gateway.limiter.redis import RedisRateLimiter

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


def evalsha_stats(client: redis.Redis) -> tuple[int, int]:
    stats = client.info("commandstats").get("cmdstat_evalsha", {})
    return int(stats.get("calls", 0)), int(stats.get("usec", 0))


async def offer(limiter: RedisRateLimiter, keys: int, offers: int, limit: int,
                algorithm: str) -> None:
    """``offers`` decisions per key over ``keys`` keys, 256 at a time (one batch each)."""
    pending = [(f"k{k}", i) for i in range(offers) for k in range(keys)]
    for start in range(0, len(pending), 256):
        await asyncio.gather(*(limiter.admit(key, "", limit, 3600, None, algorithm=algorithm)
                               for key, _ in pending[start:start + 256]))


async def cost(url: str, client: redis.Redis) -> None:
    print("\nRedis CPU per decision (INFO commandstats, usec_per_call of EVALSHA)")
    print("| workload | sliding_log | sliding_counter |")
    print("|---|---|---|")
    workloads = [("limit 100, 200 offered per key (half refused), 500 keys", 500, 200, 100),
                 ("limit 10000, all admitted (a full log of 10000), 10 keys", 10, 10_000, 10_000)]
    for name, keys, offers, limit in workloads:
        row = []
        for algorithm in ALGORITHMS:
            limiter = RedisRateLimiter(url, LimiterConfig(prefix=f"cpu:{algorithm}:",
                                                          timeout=5))
            await limiter.open()
            before = evalsha_stats(client)
            await offer(limiter, keys, offers, limit, algorithm)
            calls, usec = (a - b for a, b in zip(evalsha_stats(client), before, strict=True))
            await limiter.close()
            row.append(f"{usec / calls:.2f} µs")
        print(f"| {name} | {' | '.join(row)} |")
    print("\nRedis memory per active key (MEMORY USAGE, the key's window full)")
    print("| limit | sliding_log | sliding_counter |")
    print("|---|---|---|")
    for limit in (10, 100, 128, 129, 1000, 10_000):
        row = []
        for algorithm, suffix in zip(ALGORITHMS, (":r", ":n"), strict=True):
            prefix = f"mem{limit}:{algorithm}:"
            limiter = RedisRateLimiter(url, LimiterConfig(prefix=prefix, timeout=5))
            await limiter.open()
            await offer(limiter, 1, limit, limit, algorithm)
            await limiter.close()
            row.append(f"{client.memory_usage(f'{prefix}{{k0}}{suffix}')} B")
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keys", type=int, default=100, help="traces per kind (default 100)")
    parser.add_argument("--accuracy-only", action="store_true", help="skip the Redis part")
    args = parser.parse_args()
    report_accuracy(args.keys, limit=100, window=60, duration=3600)
    if args.accuracy_only:
        return
    with tempfile.TemporaryDirectory() as directory:
        server, port = private_redis(directory)
        try:
            client = redis.Redis(port=port)
            print(f"\nRedis {client.info('server')['redis_version']}")
            asyncio.run(cost(f"redis://127.0.0.1:{port}/0", client))
        finally:
            server.kill()
            server.wait()


if __name__ == "__main__":
    main()
