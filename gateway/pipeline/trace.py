"""The decision log: with ``logging.level: debug``, one line per stage per request saying what
it decided (``pass``, ``refused <code>``, ``answered <status>``), with the request id, the
route and the key id once known (README "Metrics and logs").

Whether to trace is decided once, when a pipeline is built (``is_wanted``): otherwise no check
is wrapped and the request path pays nothing for this module, not even a level check.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from aiohttp import web

from gateway.errors import GatewayFailure
from gateway.exchange import Exchange

log = logging.getLogger("gateway.decision")
Stage = TypeVar("Stage", bound=Callable[[Exchange], Any])


def is_wanted() -> bool:
    return log.isEnabledFor(logging.DEBUG)


def stage_name(factory: Callable[..., object]) -> str:
    """``authenticate`` for ``gateway.pipeline.authenticate.build``."""
    return factory.__module__.rpartition(".")[2]


def traced(name: str, check: Stage) -> Stage:
    """``check``, logging its verdict on every request."""

    def run(exchange: Exchange) -> Any:
        try:
            answer = check(exchange)
        except Exception as exc:
            verdict(exchange, name, refused(exc))
            raise
        if answer is None or isinstance(answer, web.StreamResponse):
            verdict(exchange, name, answered(answer))
            return answer
        return awaited(exchange, name, answer)  # it has to wait: so does its verdict

    return run  # type: ignore[return-value]  # same call signature as ``check``


async def awaited(exchange: Exchange, name: str, pending: Awaitable[Any]) -> Any:
    try:
        answer = await pending
    except Exception as exc:
        verdict(exchange, name, refused(exc))
        raise
    verdict(exchange, name, answered(answer))
    return answer


def refused(exc: Exception) -> str:
    if isinstance(exc, GatewayFailure):
        return f"refused {exc.kind.status} {exc.kind.code}"
    return f"failed {type(exc).__name__}"


def answered(answer: web.StreamResponse | None) -> str:
    return "pass" if answer is None else f"answered {answer.status}"


def verdict(exchange: Exchange, stage: str, decision: str) -> None:
    match, key = exchange.match, exchange.key
    log.debug("%s: %s", stage, decision, extra={
        "request_id": exchange.request_id,
        "route": match.route.name if match is not None else None,
        "key_id": key.key_id if key is not None else None,
        "stage": stage,
        "decision": decision,
    })
