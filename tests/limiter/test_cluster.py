"""The limiter on a real Redis Cluster (README "Redis Cluster"): one batch split over every
master, exact limits from two gateway processes, slots migrated under traffic (ASK, MOVED),
and a master killed under load (failover). The contract suite runs on the cluster too
(test_contract.py, ``cluster``)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from redis.crc import key_slot

from gateway.config import LimiterConfig
from gateway.errors import LimiterUnavailable
from gateway.limiter.redis import cluster_limiter
from tests.conftest import start_site
from tests.gateway_process import GatewayProcess
from tests.limiter.redis_cluster import RedisCluster, budgets_on_every_master

PREFIX = "gw:"


@contextlib.asynccontextmanager
async def opened(cluster: RedisCluster, prefix: str, **options: Any) -> Any:
    limiter = cluster_limiter(cluster.url, LimiterConfig(prefix=prefix, **options))
    await limiter.open()
    try:
        yield limiter
    finally:
        await limiter.close()


async def test_credits_on_another_master_are_spent_in_the_same_batch_and_given_back(
    redis_cluster: RedisCluster,
) -> None:
    """README "Credits": a key's credit hash ``{cr:<budget>}`` lives on another master than its
    windows; both go in the one batch, and a refusal on either side leaves the other as it was
    (check and compensate, as for quotas)."""
    from gateway.keys.model import Credits
    from gateway.limiter.base import QuotaAsk

    prefix = "credit:"
    budget = next(f"k{i}" for i in range(1000)
                  if redis_cluster.master_of(f"{prefix}{{k{i}}}")
                  != redis_cluster.master_of(f"{prefix}{{cr:k{i}}}"))
    credit_master = redis_cluster.master_of(f"{prefix}{{cr:{budget}}}")
    ask = Credits(3, 1, 0)
    async with opened(redis_cluster, prefix) as limiter:
        spent = await asyncio.gather(*(limiter.admit(budget, "", 2, 60, None, credits=ask)
                                       for _ in range(3)))
        # windows and credits in one batch over both masters; the refused one's credit goes
        # back in a second, started before its refusal is answered
        assert limiter.batches == 2
        assert [d.allowed for d in spent] == [True, True, False]  # the rate limit refused
        assert {d.credits for d in spent if d.allowed} == {1, 2}
        assert spent[2].credits == 1 and not spent[2].no_credits
        await asyncio.sleep(0.05)  # the compensation left before the refusal was answered
        balance = redis_cluster.client(credit_master).hget(f"{prefix}{{cr:{budget}}}", "b")
        assert int(balance) == 1  # the third request's credit went back
        # a credit refusal: nothing stays in the other master's window or the quota's
        empty = Credits(0, 2, 0)
        refused = await limiter.admit("other", "", 5, 60, None, quota=QuotaAsk("ws", 9, 0),
                                      credits=empty)
        assert refused.no_credits
        await asyncio.sleep(0.05)
        assert (await limiter.peek("other", "", 5, 60)).remaining == 5
        assert (await limiter.quota_usage("ws")).day == 0


async def test_one_tick_is_one_batch_over_every_master_and_exact(
    redis_cluster: RedisCluster,
) -> None:
    prefix = "tick:"
    budgets = budgets_on_every_master(redis_cluster, prefix, 6)
    async with opened(redis_cluster, prefix) as limiter:
        offers = [limiter.admit(b, "", 10, 60, None) for b in budgets for _ in range(25)]
        decisions = await asyncio.gather(*offers)
        assert limiter.batches == 1  # one pipeline per master, all in that one batch
    admitted = Counter(b for b, d in zip([b for b in budgets for _ in range(25)], decisions,
                                         strict=True) if d.allowed)
    assert admitted == dict.fromkeys(budgets, 10)
    holding = {m for m in redis_cluster.masters()
               if redis_cluster.client(m).execute_command("DBSIZE") > 0}
    assert holding == set(redis_cluster.masters())


def migrate(cluster: RedisCluster, slot: int, source: int, target: int,
            finish: bool = True) -> None:
    """What ``redis-cli --cluster reshard`` does for one slot: IMPORTING/MIGRATING, MIGRATE
    its keys, then (``finish``) give the slot to ``target`` on every master."""
    source_id, target_id = cluster.node_id(source), cluster.node_id(target)
    cluster.client(target).execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", source_id)
    cluster.client(source).execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", target_id)
    keys = cluster.client(source).execute_command("CLUSTER", "GETKEYSINSLOT", slot, 1000)
    if keys:
        cluster.client(source).execute_command(
            "MIGRATE", "127.0.0.1", target, "", 0, 5000, "KEYS", *keys)
    if finish:
        for port in (target, source, *cluster.masters()):
            cluster.client(port).execute_command("CLUSTER", "SETSLOT", slot, "NODE", target_id)


async def test_ask_then_moved_are_followed_and_the_count_moves_with_the_slot(
    redis_cluster: RedisCluster,
) -> None:
    prefix = "moved:"
    (budget,) = budgets_on_every_master(redis_cluster, prefix, 1)
    slot = key_slot(f"{prefix}{{{budget}}}".encode())
    source = redis_cluster.master_of(f"{prefix}{{{budget}}}")
    target = next(m for m in redis_cluster.masters() if m != source)
    async with opened(redis_cluster, prefix) as limiter:
        for _ in range(3):
            assert (await limiter.admit(budget, "", 5, 60, 10)).allowed
        migrate(redis_cluster, slot, source, target, finish=False)  # keys moved: ASK
        asked = await limiter.admit(budget, "", 5, 60, 10)
        assert asked.allowed and asked.remaining == 1
        migrate(redis_cluster, slot, source, target)  # the slot is the target's: MOVED
        moved = await limiter.admit(budget, "", 5, 60, 10)
        assert moved.allowed and moved.remaining == 0
        assert not (await limiter.admit(budget, "", 5, 60, 10)).allowed
        assert redis_cluster.master_of(f"{prefix}{{{budget}}}") == target


async def test_a_slot_migrated_under_traffic_fails_no_decision_and_stays_exact(
    redis_cluster: RedisCluster,
) -> None:
    prefix = "reshard:"
    budgets = budgets_on_every_master(redis_cluster, prefix, 3)
    budget = budgets[0]
    slot = key_slot(f"{prefix}{{{budget}}}".encode())
    source = redis_cluster.master_of(f"{prefix}{{{budget}}}")
    target = next(m for m in redis_cluster.masters() if m != source)
    outcomes: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    limit = 400
    async with opened(redis_cluster, prefix) as limiter:
        stop = time.monotonic() + 2.0

        async def client(name: str) -> None:
            while time.monotonic() < stop:
                try:
                    decision = await limiter.admit(name, "", limit, 60, 50)
                except LimiterUnavailable as exc:
                    outcomes[f"{name} failed"] += 1
                    errors[str(exc)[:60]] += 1
                    continue
                outcomes[f"{name} {'admitted' if decision.allowed else 'refused'}"] += 1
                if decision.lease:
                    limiter.release(name, decision.lease)
                await asyncio.sleep(0.002)

        async def reshard() -> None:
            await asyncio.sleep(0.5)
            await asyncio.to_thread(migrate, redis_cluster, slot, source, target)

        await asyncio.gather(reshard(), *(client(b) for b in budgets for _ in range(16)))
    print(f"\n{dict(outcomes)} {dict(errors)}")
    assert not any(k.endswith("failed") for k in outcomes)
    for name in budgets:
        assert outcomes[f"{name} admitted"] == limit  # offered more: exactly the limit
    assert redis_cluster.master_of(f"{prefix}{{{budget}}}") == target


async def test_a_killed_master_fails_its_slots_at_once_and_its_replica_takes_over(
    own_redis_cluster: RedisCluster, caplog: pytest.LogCaptureFixture,
) -> None:
    cluster = own_redis_cluster
    prefix = "failover:"
    doomed_budget, *others = budgets_on_every_master(cluster, prefix, 3)
    doomed = cluster.master_of(f"{prefix}{{{doomed_budget}}}")
    replica = cluster.replica_of(doomed)
    timeout = 0.25
    waits: dict[str, list[float]] = {b: [] for b in (doomed_budget, *others)}
    failures: Counter[str] = Counter()
    last_failure: dict[str, float] = {}
    async with opened(cluster, prefix, timeout=timeout) as limiter:
        stop = asyncio.Event()

        async def client(name: str) -> None:
            while not stop.is_set():
                started = time.monotonic()
                try:
                    await limiter.admit(name, "", 1_000_000, 60, None)
                except LimiterUnavailable:
                    failures[name] += 1
                    last_failure[name] = time.monotonic()
                waits[name].append(time.monotonic() - started)
                await asyncio.sleep(0.005)

        clients = [asyncio.ensure_future(client(b)) for b in waits for _ in range(4)]
        await asyncio.sleep(0.3)
        cluster.kill(doomed)
        killed = time.monotonic()
        await asyncio.sleep(0.1)
        await limiter.ping()  # ready: the other masters answer
        promoted = await asyncio.to_thread(wait_for_master, cluster, replica, 30)
        await asyncio.sleep(2.5)
        stop.set()
        await asyncio.gather(*clients)
    print(f"\nfailover: promoted {promoted - killed:.2f} s after the kill; failures {failures}; "
          f"limiter back {last_failure.get(doomed_budget, killed) - promoted:+.2f} s after it")
    assert max(max(w) for w in waits.values()) < timeout + 0.1  # nobody waited past it
    assert failures[doomed_budget] > 0  # on_limiter_error applied to its slots
    assert all(failures[b] == 0 for b in others)  # the other masters were not affected
    assert last_failure[doomed_budget] < promoted + 2.0  # the replica decides within 2 s
    unreachable = [r for r in caplog.records if "unreachable" in r.getMessage()]
    assert len(unreachable) == 1, [r.getMessage() for r in caplog.records]  # once, not per retry


async def test_no_reachable_seed_fails_decisions_at_once() -> None:
    limiter = cluster_limiter("redis+cluster://127.0.0.1:1,127.0.0.1:2",
                              LimiterConfig(timeout=0.1))
    await limiter.open()
    try:
        started = time.monotonic()
        with pytest.raises(LimiterUnavailable, match="unreachable"):
            await limiter.admit("b", "", 10, 60, None)
        assert time.monotonic() - started < 0.05
        with pytest.raises(LimiterUnavailable):
            await limiter.ping()
    finally:
        await limiter.close()


async def test_a_stalled_master_costs_its_slots_one_timeout_and_nothing_else(
    own_redis_cluster: RedisCluster,
) -> None:
    """SIGSTOP, shorter than the failover: the first decisions on its slots wait the whole
    ``limiter.timeout``, later ones fail at once; the others never fail; after SIGCONT its
    slots are decided again within 2 s."""
    cluster = own_redis_cluster
    prefix = "stall:"
    stalled_budget, *others = budgets_on_every_master(cluster, prefix, 3)
    stalled = cluster.master_of(f"{prefix}{{{stalled_budget}}}")
    timeout = 0.25
    waits: dict[str, list[float]] = {b: [] for b in (stalled_budget, *others)}
    failures: Counter[str] = Counter()
    last_failure: dict[str, float] = {}
    async with opened(cluster, prefix, timeout=timeout) as limiter:
        stop = asyncio.Event()

        async def client(name: str) -> None:
            while not stop.is_set():
                started = time.monotonic()
                try:
                    await limiter.admit(name, "", 1_000_000, 60, 3)
                except LimiterUnavailable:
                    failures[name] += 1
                    last_failure[name] = time.monotonic()
                waits[name].append(time.monotonic() - started)
                await asyncio.sleep(0.005)

        clients = [asyncio.ensure_future(client(b)) for b in waits for _ in range(2)]
        await asyncio.sleep(0.3)
        cluster.pause(stalled)
        await asyncio.sleep(0.6)  # under cluster-node-timeout: no failover
        cluster.resume(stalled)
        resumed = time.monotonic()
        await asyncio.sleep(2.2)
        stop.set()
        await asyncio.gather(*clients)
    print(f"\nstall: failures {failures}; back {last_failure[stalled_budget] - resumed:+.2f} s "
          f"after SIGCONT; longest waits { {b: round(max(w), 3) for b, w in waits.items()} }")
    assert max(max(w) for w in waits.values()) < timeout + 0.1
    assert failures[stalled_budget] > 0 and all(failures[b] == 0 for b in others)
    assert last_failure[stalled_budget] < resumed + 2.0


def wait_for_master(cluster: RedisCluster, replica: int, timeout: float) -> float:
    """Poll until ``replica`` serves slots as a master; when it was first seen so."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            if replica in cluster.masters():
                return time.monotonic()
        time.sleep(0.02)
    raise AssertionError(f"replica {replica} was not promoted within {timeout} s")


# ---- two gateway processes ------------------------------------------------------------------

LIMIT = 100
CLIENTS = 32  # per gateway process


@pytest.mark.slow
async def test_two_gateways_admit_exactly_the_limit_of_keys_on_every_master(
    tmp_path: Path, redis_cluster: RedisCluster
) -> None:
    prefix = "exact:"
    admitted: Counter[str] = Counter()

    async def record(request: web.Request) -> web.Response:
        admitted[request.match_info["who"]] += 1
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/api/{who}/{tail:.*}", record)
    runner = web.AppRunner(app, access_log=None)
    upstream = await start_site(runner)
    api = {"name": "api", "path": "/api/", "upstream": f"http://127.0.0.1:{upstream}"}
    database = f"sqlite:///{tmp_path}/gateway.db"
    nodes = [GatewayProcess.create(
        tmp_path / f"node{i}", [api], database=database, redis=redis_cluster.url,
        limiter={"prefix": prefix},
        defaults={"max_concurrent": None, "on_limiter_error": "closed",
                  "rate_limit": {"requests": LIMIT, "window": 600}},
    ) for i in range(2)]
    try:
        token = nodes[0].admin_key()
        async with aiohttp.ClientSession() as admin:
            await GatewayProcess.start_all(nodes, admin)
            keys = await keys_on_every_master(admin, nodes[0], token, redis_cluster, prefix)
        statuses = await offer(nodes, keys, 3 * LIMIT)
    finally:
        for gateway in nodes:
            gateway.stop()
        await runner.cleanup()
    print(f"\nexact: {statuses}; admitted per key {dict(admitted)}")
    assert statuses["other"] == 0
    assert admitted == dict.fromkeys(keys.values(), LIMIT)  # 0 over-admits, none lost
    assert statuses[200] == LIMIT * len(keys) and statuses[429] == 2 * LIMIT * len(keys)


async def keys_on_every_master(
    session: aiohttp.ClientSession, node: GatewayProcess, token: str, cluster: RedisCluster,
    prefix: str,
) -> dict[str, str]:
    """Plaintext key -> a name, two keys whose budgets live on each master."""
    auth = {"Authorization": f"Bearer {token}"}
    async with session.post(f"{node.admin_url}/admin/v1/workspaces", json={"name": "w"},
                            headers=auth) as response:
        workspace = (await response.json())["id"]
    per_master: dict[int, int] = dict.fromkeys(cluster.masters(), 0)
    keys: dict[str, str] = {}
    while min(per_master.values()) < 2:
        async with session.post(f"{node.admin_url}/admin/v1/workspaces/{workspace}/keys",
                                json={"name": "k", "permissions": ["read"]},
                                headers=auth) as response:
            body = await response.json()
        master = cluster.master_of(f"{prefix}{{{body['key_id']}}}")
        if per_master[master] < 2:
            per_master[master] += 1
            keys[body["key"]] = f"k{len(keys)}"
    return keys


async def offer(nodes: list[GatewayProcess], keys: dict[str, str], each: int) -> Counter[Any]:
    """``each`` requests per key, over both nodes and CLIENTS connections per node."""
    queue: asyncio.Queue[tuple[str, str]] = asyncio.Queue()
    for _ in range(each):
        for key, name in keys.items():
            queue.put_nowait((key, name))
    statuses: Counter[Any] = Counter()

    async def client(session: aiohttp.ClientSession, node: GatewayProcess) -> None:
        while not queue.empty():
            key, name = queue.get_nowait()
            headers = {"Authorization": f"Bearer {key}"}
            async with session.get(f"{node.url}/api/{name}/x", headers=headers) as response:
                await response.read()
                statuses[response.status if response.status in (200, 429) else "other"] += 1

    sessions = [aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=CLIENTS))
                for _ in nodes]
    try:
        await asyncio.gather(*(client(s, n) for s, n in zip(sessions, nodes, strict=True)
                               for _ in range(CLIENTS)))
    finally:
        for session in sessions:
            await session.close()
    return statuses
