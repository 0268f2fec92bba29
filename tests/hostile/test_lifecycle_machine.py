"""Family 6, properties: the key lifecycle as a Hypothesis state machine. Keys are created
(some expiring within 0.3 s), rotated (grace 0: the old key revoked; grace 1 s: it expires),
revoked, disabled, enabled, left to expire, and the node restarted (a fresh process's state: new
services and an empty cache on the same store). After every step the proxy's decision for
every key (200, or 401 ``revoked_api_key`` / ``expired_api_key`` / ``disabled_api_key``, and
``invalid_api_key`` for a key never created) and each admin change's outcome (done, or 409
``conflict``) must match a model a few lines long. Run on both key stores.

Hypothesis drives the rules from a plain thread; the gateway (proxy listener, key service,
echo upstream) runs on an event loop of its own in another thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Awaitable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import pytest
from aiohttp import web
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from gateway.app import create_key_service, create_proxy_server
from gateway.config import parse_config
from gateway.echo import EchoLog, create_echo_app
from gateway.errors import Conflict
from gateway.keys.model import generate_key
from gateway.services import open_services
from tests.conftest import start_site
from tests.hostile.figures import record
from tests.keys.conftest import create_pg_database, drop_pg_database, postgres_reachable

T = TypeVar("T")
MARGIN = 0.2  # seconds around an expiry where either answer is right (clocks, one request)
EXAMPLES, STEPS = 15, 20  # bounded: both backends together in well under a minute
COUNTS: dict[str, int] = {}


@dataclass
class ModelKey:
    plaintext: str
    status: str = "active"  # active | disabled | revoked
    expires: float | None = None  # wall-clock seconds

    def effective(self, now: float) -> str | None:
        """revoked, then expired, then disabled (README "Keys"); None: too close to call."""
        if self.status == "revoked":
            return "revoked"
        if self.expires is not None:
            if abs(now - self.expires) < MARGIN:
                return None
            if now > self.expires:
                return "expired"
        return self.status


ANSWER = {"active": (200, None), "revoked": (401, "revoked_api_key"),
          "expired": (401, "expired_api_key"), "disabled": (401, "disabled_api_key")}


class Node:
    """One gateway process's state on a shared store: services, proxy listener, key service."""

    def __init__(self, database: str, upstream: str) -> None:
        self.config = parse_config({
            "listen": "127.0.0.1:1", "admin_listen": "127.0.0.1:2", "database": database,
            "keys": {"max_active_per_user": 10_000},
            "defaults": {"rate_limit": {"requests": 1_000_000, "window": 60},
                         "max_concurrent": None},
            "logging": {"access_log": False},
            "routes": [{"name": "api", "path": "/api/", "upstream": upstream,
                        "permissions": ["read"]}],
        }, "machine.yaml", {})
        self.stack = contextlib.AsyncExitStack()
        self.port = 0

    async def start(self) -> Node:
        services = await self.stack.enter_async_context(open_services(self.config))
        runner = web.ServerRunner(create_proxy_server(services), handle_signals=False)
        self.port = await start_site(runner)
        self.stack.push_async_callback(runner.cleanup)
        self.keys = create_key_service(services)
        self.http = await self.stack.enter_async_context(aiohttp.ClientSession())
        return self

    async def decide(self, plaintext: str) -> tuple[int, str | None]:
        async with self.http.get(f"http://127.0.0.1:{self.port}/api/x",
                                 headers={"Authorization": f"Bearer {plaintext}"}) as response:
            body = await response.json(content_type=None) if response.status != 200 else {}
            return response.status, body.get("code")


class Harness:
    """An event loop in a thread, with the echo upstream and the current node on it."""

    def __init__(self, database: str) -> None:
        self.database = database
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.upstream_runner = web.AppRunner(create_echo_app(EchoLog()), access_log=None)
        port = self.run(start_site(self.upstream_runner))
        self.upstream = f"http://127.0.0.1:{port}"
        self.node = self.run(Node(database, self.upstream).start())

    def run(self, coro: Awaitable[T]) -> T:
        async def wrapped() -> T:
            return await coro

        return asyncio.run_coroutine_threadsafe(wrapped(), self.loop).result(timeout=60)

    def restart(self) -> None:
        self.run(self.node.stack.aclose())
        self.node = self.run(Node(self.database, self.upstream).start())

    def close(self) -> None:
        self.run(self.node.stack.aclose())
        self.run(self.upstream_runner.cleanup())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


def iso(seconds_from_now: float) -> str:
    return (datetime.now(UTC) + timedelta(seconds=seconds_from_now)).isoformat()


class Lifecycle(RuleBasedStateMachine):
    keys = Bundle("keys")
    harness: Harness  # set by the test before it runs

    def __init__(self) -> None:
        super().__init__()
        self.model: dict[str, ModelKey] = {}
        self.since_restart = 0
        self.workspace = self.harness.run(self.harness.node.keys.create_workspace("m", "t")).id

    def count(self, what: str) -> None:
        COUNTS[what] = COUNTS.get(what, 0) + 1
        self.since_restart += 1

    @rule(target=keys, ttl=st.sampled_from([None, None, 0.3, 1.5]))
    def create(self, ttl: float | None) -> str:
        body: dict[str, Any] = {"name": "k", "permissions": ["read"]}
        if ttl is not None:
            body["expires_at"] = iso(ttl)
        record, plaintext = self.harness.run(
            self.harness.node.keys.create_key(self.workspace, body, "t"))
        self.model[record.key_id] = ModelKey(
            plaintext, expires=None if ttl is None else time.time() + ttl)
        self.count("create")
        return record.key_id

    def changed(self, key_id: str, allowed: tuple[str, ...], change: Awaitable[Any]) -> bool:
        """Run an admin change; True when it was done. It must be refused (409) exactly
        when the key's state is not in ``allowed``."""
        state = self.model[key_id].effective(time.time())
        try:
            result = self.harness.run(change)
        except Conflict:
            assert state is None or state not in allowed, (key_id, state)
            self.count("conflict")
            return False
        assert state is None or state in allowed, (key_id, state)
        return result is not None

    @rule(target=keys, key_id=keys, grace=st.sampled_from([0, 1]))
    def rotate(self, key_id: str, grace: int) -> str:
        old = self.model[key_id]
        now = time.time()
        try:
            _, new, plaintext = self.harness.run(
                self.harness.node.keys.rotate_key(key_id, grace, "t"))
        except Conflict:
            assert old.effective(now) in (None, "revoked", "expired", "disabled")
            self.count("conflict")
            return key_id  # nothing new: the bundle gets the old id again
        assert old.effective(now) in (None, "active")
        self.model[new.key_id] = ModelKey(plaintext, expires=old.expires)
        if grace == 0:
            old.status = "revoked"
        elif old.expires is None or old.expires > now + grace:
            old.expires = now + grace
        self.count("rotate")
        return new.key_id

    @rule(key_id=keys)
    def revoke(self, key_id: str) -> None:
        self.harness.run(self.harness.node.keys.revoke_key(key_id, "t"))
        self.model[key_id].status = "revoked"
        self.count("revoke")

    @rule(key_id=keys)
    def disable(self, key_id: str) -> None:
        if self.changed(key_id, ("active", "disabled"),
                        self.harness.node.keys.disable_key(key_id, "t")):
            self.model[key_id].status = "disabled"
            self.count("disable")

    @rule(key_id=keys)
    def enable(self, key_id: str) -> None:
        if self.changed(key_id, ("active", "disabled"),
                        self.harness.node.keys.enable_key(key_id, "t")):
            self.model[key_id].status = "active"
            self.count("enable")

    def pending_expiry(self) -> float | None:
        now = time.time()
        future = [k.expires for k in self.model.values()
                  if k.status != "revoked" and k.expires is not None and k.expires > now]
        return min(future) if future else None

    @precondition(lambda self: self.pending_expiry() is not None)
    @rule()
    def time_passes(self) -> None:
        """Until the next key's expiry is past (at most 0.35 s: the longer ones stay)."""
        expiry = self.pending_expiry()
        assert expiry is not None
        time.sleep(min(0.35, max(0.0, expiry + MARGIN - time.time())))
        self.count("wait")

    @precondition(lambda self: self.since_restart >= 3)  # else restarts crowd the rest out
    @rule()
    def restart(self) -> None:
        self.harness.restart()
        self.since_restart = 0
        self.count("restart")

    @invariant()
    def decisions_match_the_model(self) -> None:
        for key_id, key in self.model.items():
            state = key.effective(time.time())
            answer = self.harness.run(self.harness.node.decide(key.plaintext))
            if state is None:  # at its expiry: either side is right
                assert answer in (ANSWER["expired"], ANSWER[key.status]), (key_id, answer)
                continue
            assert answer == ANSWER[state], (key_id, state, answer)
            self.count("decision")
        unknown = self.harness.run(self.harness.node.decide(generate_key("sk_live")))
        assert unknown == (401, "invalid_api_key")



@pytest.fixture(params=["sqlite", "postgres"])
def harness(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Harness]:
    if request.param == "sqlite":
        database = f"sqlite:///{tmp_path}/machine.db"
    else:
        if not postgres_reachable():
            pytest.skip("PostgreSQL is not reachable")
        database = asyncio.run(create_pg_database())
    harness = Harness(database)
    try:
        yield harness
    finally:
        harness.close()
        if request.param == "postgres":
            asyncio.run(drop_pg_database(database))


def test_key_lifecycle_matches_the_model(harness: Harness) -> None:
    COUNTS.clear()
    started = time.monotonic()
    Lifecycle.harness = harness
    run_state_machine_as_test(Lifecycle, settings=settings(
        max_examples=EXAMPLES, stateful_step_count=STEPS, deadline=None, derandomize=True,
    ))
    backend = harness.database.partition(":")[0]
    record(f"LIFECYCLE_{backend.upper()}", f"{EXAMPLES} runs of up to {STEPS} steps in "
           f"{time.monotonic() - started:.1f} s: {dict(sorted(COUNTS.items()))}; every decision "
           "and every 409 as the model says")
