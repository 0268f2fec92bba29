"""A local Redis Cluster from the ``redis-server`` binary, for tests and benchmarks: 3 masters +
3 replicas on free ports, made one by ``redis-cli --cluster create``; ``stop()`` kills them.

    .venv/bin/python scripts/redis_cluster.py       # start one, print its URL, stop on Ctrl-C

Tests (tests/limiter/) and scripts/bench.py, scripts/algorithms.py use it; README "Redis
Cluster" says how the gateway uses one.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import redis
from redis.crc import key_slot


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


NODE_TIMEOUT_MS = 1000  # how long a silent master takes to be failed over (Redis: 15 s)


class RedisCluster:
    def __init__(self, directory: Path, size: int = 6) -> None:
        self.directory = directory
        self.ports: list[int] = []
        while len(self.ports) < size:
            port = free_port()
            # the cluster bus listens on port + 10000: both must be free and distinct
            if port < 55000 and port not in self.ports and port + 10000 not in self.ports:
                self.ports.append(port)
        self.processes: dict[int, subprocess.Popen[bytes]] = {}

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{p}" for p in self.ports[:3])

    def start(self) -> None:
        for port in self.ports:
            self.start_node(port)
        subprocess.run(
            ["redis-cli", "--cluster", "create", *(f"127.0.0.1:{p}" for p in self.ports),
             "--cluster-replicas", "1", "--cluster-yes"],
            check=True, capture_output=True, timeout=60,
        )
        self.wait_until_ok()

    def start_node(self, port: int) -> None:
        self.processes[port] = subprocess.Popen(
            [shutil.which("redis-server") or "redis-server", "--port", str(port),
             "--bind", "127.0.0.1", "--cluster-enabled", "yes",
             "--cluster-config-file", str(self.directory / f"nodes-{port}.conf"),
             "--cluster-node-timeout", str(NODE_TIMEOUT_MS),
             "--cluster-require-full-coverage", "no",  # a failed shard stops no other
             "--save", "", "--appendonly", "no", "--dir", str(self.directory)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                self.client(port).ping()
                return
            except redis.RedisError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.02)

    def client(self, port: int) -> redis.Redis:
        return redis.Redis(port=port, socket_timeout=2)

    def wait_until_ok(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        alive = [p for p in self.ports if p in self.processes]
        while time.monotonic() < deadline:
            try:
                states = [self.client(p).execute_command("CLUSTER", "INFO") for p in alive]
                ranges = self.slots()
                if (all(b"cluster_state:ok" in s for s in states) and self.is_whole()
                        and all(replicas for *_, replicas in ranges)):  # each one attached
                    return
            except redis.RedisError:
                pass
            time.sleep(0.1)
        raise RuntimeError("the Redis Cluster did not come up")

    def slots(self) -> list[tuple[int, int, int, list[int]]]:
        """(first slot, last slot, master port, replica ports) from a live node."""
        port = next(p for p in self.ports if p in self.processes)
        reply = self.client(port).execute_command("CLUSTER", "SLOTS")
        return [(int(r[0]), int(r[1]), int(r[2][1]), [int(x[1]) for x in r[3:]]) for r in reply]

    def is_whole(self) -> bool:
        return sum(last - first + 1 for first, last, _, _ in self.slots()) == 16384

    def masters(self) -> list[int]:
        return sorted({port for _, _, port, _ in self.slots()})

    def master_of(self, key: str) -> int:
        slot = key_slot(key.encode())
        return next(port for first, last, port, _ in self.slots() if first <= slot <= last)

    def replica_of(self, master: int) -> int:
        return next(reps[0] for _, _, port, reps in self.slots() if port == master and reps)

    def node_id(self, port: int) -> str:
        return str(self.client(port).execute_command("CLUSTER", "MYID").decode())

    def pause(self, port: int) -> None:
        self.processes[port].send_signal(signal.SIGSTOP)

    def resume(self, port: int) -> None:
        self.processes[port].send_signal(signal.SIGCONT)

    def kill(self, port: int) -> None:
        process = self.processes.pop(port)
        process.kill()
        process.wait()

    def stop(self) -> None:
        for port in list(self.processes):
            self.resume(port)
            self.kill(port)


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="redis-cluster-") as directory:
        cluster = RedisCluster(Path(directory))
        try:
            cluster.start()
            print(cluster.url, flush=True)
            signal.sigwait({signal.SIGINT, signal.SIGTERM})
        finally:
            cluster.stop()


if __name__ == "__main__":
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    main()
