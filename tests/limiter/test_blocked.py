"""The memo of addresses past their failed-auth budget, with an injected clock."""

from __future__ import annotations

import pytest

from gateway.limiter import blocked
from gateway.limiter.blocked import BlockedAddresses


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_an_address_is_blocked_until_its_time_is_up() -> None:
    clock = Clock()
    memo = BlockedAddresses(clock)
    assert not memo.until and memo.seconds_left("192.0.2.1") == 0.0
    memo.block("192.0.2.1", 30.0)
    clock.now += 10
    assert memo.seconds_left("192.0.2.1") == 20.0
    assert memo.seconds_left("192.0.2.2") == 0.0
    clock.now += 20
    assert memo.seconds_left("192.0.2.1") == 0.0
    assert not memo.until  # forgotten once over: the request path's test is cheap again


def test_expired_entries_are_swept_when_the_memo_grows(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = Clock()
    memo = BlockedAddresses(clock)
    monkeypatch.setattr(blocked, "SWEEP_AT", 3)
    memo.block("a", 1.0)
    memo.block("b", 1.0)
    memo.block("c", 50.0)
    clock.now += 5
    memo.block("d", 1.0)  # the fourth: a and b are over and dropped
    assert sorted(memo.until) == ["c", "d"]
