"""Helpers for tests on a Redis Cluster (the cluster itself: scripts/redis_cluster.py)."""

from __future__ import annotations

from scripts.redis_cluster import RedisCluster

__all__ = ["RedisCluster", "budgets_on_every_master"]


def budgets_on_every_master(cluster: RedisCluster, prefix: str, count: int) -> list[str]:
    """``count`` budget names whose keys (``<prefix>{<budget>}…``) spread over all masters."""
    masters = cluster.masters()
    names: dict[int, list[str]] = {m: [] for m in masters}
    i = 0
    while min(len(v) for v in names.values()) < -(-count // len(masters)):
        name = f"b{i}"
        names[cluster.master_of(f"{prefix}{{{name}}}")].append(name)
        i += 1
    spread = [n for group in zip(*names.values(), strict=False) for n in group]
    return spread[:count]
