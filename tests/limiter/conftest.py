"""Limiter fixtures: every limiter backend runs the same contract tests.

Redis tests use the shared server on 127.0.0.1:6379 (``GATEWAY_TEST_REDIS``) with a fresh key
prefix per test, deleted afterwards; outage tests start their own ``redis-server`` on a free port
(``private_redis``) so they can kill and restart it. ``cluster`` runs the contract on a Redis
Cluster of the session's own (``redis_cluster``: 3 masters + 3 replicas, started at its first use).
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from gateway.config import LimiterConfig
from gateway.limiter.memory import MemoryRateLimiter
from gateway.limiter.redis import RedisRateLimiter, cluster_limiter
from tests.conftest import free_port
from tests.limiter.redis_cluster import RedisCluster

REDIS_URL = os.environ.get("GATEWAY_TEST_REDIS", "redis://127.0.0.1:6379/0")
LIMITERS = ["memory", "redis"]
CONTRACT_LIMITERS = [*LIMITERS, "cluster"]

OpenLimiter = Callable[..., Awaitable[Any]]


def redis_reachable() -> bool:
    try:
        return bool(redis.Redis.from_url(REDIS_URL, socket_timeout=1).ping())
    except redis.RedisError:
        return False


def require_redis() -> None:
    if not redis_reachable():
        pytest.skip(f"no Redis at {REDIS_URL}")


@pytest.fixture
def redis_prefix() -> Iterator[str]:
    """A key prefix no other test uses; its keys are deleted afterwards."""
    prefix = f"gwtest:{secrets.token_hex(4)}:"
    yield prefix
    client = redis.Redis.from_url(REDIS_URL)
    keys = list(client.scan_iter(match=f"{prefix}*"))
    if keys:
        client.delete(*keys)


@pytest.fixture
def redis_client() -> redis.Redis:
    require_redis()
    return redis.Redis.from_url(REDIS_URL)


def require_redis_cluster_binaries() -> None:
    if shutil.which("redis-server") is None or shutil.which("redis-cli") is None:
        pytest.skip("redis-server and redis-cli are needed for a Redis Cluster")


def started_cluster(directory: Path) -> Iterator[RedisCluster]:
    cluster = RedisCluster(directory)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisCluster]:
    """One cluster for the session's tests that do not break it."""
    require_redis_cluster_binaries()
    directory = tmp_path_factory.mktemp("redis-cluster")
    yield from started_cluster(directory)
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def own_redis_cluster(tmp_path: Path) -> Iterator[RedisCluster]:
    """A cluster of this test's own, which it may break (kill a master)."""
    require_redis_cluster_binaries()
    yield from started_cluster(tmp_path)


@pytest.fixture(params=CONTRACT_LIMITERS)
async def open_limiter(
    request: pytest.FixtureRequest, redis_prefix: str
) -> AsyncIterator[OpenLimiter]:
    """``await open_limiter(**options)``: a fresh limiter of the parametrized backend."""
    opened: list[Any] = []

    async def factory(**options: Any) -> Any:
        if request.param == "memory":
            limiter: Any = MemoryRateLimiter()
        elif request.param == "cluster":
            cluster = request.getfixturevalue("redis_cluster")
            limiter = cluster_limiter(cluster.url, LimiterConfig(prefix=redis_prefix, **options))
            await limiter.open()
        else:
            require_redis()
            limiter = RedisRateLimiter(REDIS_URL, LimiterConfig(prefix=redis_prefix, **options))
            await limiter.open()
        opened.append(limiter)
        return limiter

    yield factory
    for limiter in opened:
        await limiter.close()


class PrivateRedis:
    """A redis-server of this test's own, on a free port, that the test may kill and restart."""

    def __init__(self, directory: Path) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._directory = directory
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self._process = subprocess.Popen(
            [
                shutil.which("redis-server") or "redis-server",
                "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                "--appendonly", "no", "--dir", str(self._directory),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        client = redis.Redis(port=self.port, socket_timeout=0.5)
        while time.monotonic() < deadline:
            try:
                if client.ping():
                    return
            except redis.RedisError:
                time.sleep(0.02)
        raise RuntimeError(f"redis-server on port {self.port} did not start")

    def kill(self) -> None:
        if self._process is not None:
            self._process.kill()
            self._process.wait()
            self._process = None

    def pause(self) -> None:
        assert self._process is not None
        self._process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self._process is not None
        self._process.send_signal(signal.SIGCONT)


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    server = PrivateRedis(tmp_path)
    server.start()
    yield server
    server.resume() if server._process is not None else None
    server.kill()
