"""What every request leaves behind once its response is decided: one metrics observation
(route, method, status class, latency), its usage when it carried a known key (README "Usage
over time"), and, when enabled, one access-log line."""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web

from gateway.exchange import Exchange
from gateway.http import CLIENT_CLOSED_REQUEST
from gateway.keys.usage import outcome_of
from gateway.metrics import NO_ROUTE
from gateway.pipeline.client import client_of
from gateway.services import Services

Recorder = Callable[[Exchange, "web.StreamResponse | None", float], None]


def build_recorder(services: Services) -> Recorder:
    # the pool gauges follow the config in force: a reload builds its pipeline, so this, anew
    services.metrics.watch(services.cache, services.upstreams, services.limiter)
    observe = services.metrics.observe_request
    access_log = services.access_log
    count_usage = services.usage.count
    client = client_of(services)

    def record(exchange: Exchange, response: web.StreamResponse | None, seconds: float) -> None:
        # no response: the handler was cancelled, the client had left
        status = CLIENT_CLOSED_REQUEST if response is None else response.status
        match = exchange.match
        route = match.route.name if match is not None else NO_ROUTE
        observe(route, exchange.request.method, status, seconds)
        key = exchange.key
        if key is not None:
            count_usage(key.key_id, key.workspace_id, outcome_of(exchange.error_code, status))
        if access_log is not None:
            client(exchange)  # the access log's client field (README "Client address")
            access_log.log(exchange, status, seconds)

    return record
