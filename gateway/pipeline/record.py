"""What every request leaves behind once its response is decided: one metrics observation
(route, method, status class, latency), its usage when it carried a known key (README "Usage
over time"), and, when enabled, one access-log line. A forwarded request that a shadow rule would
have refused (README "Shadow mode") is also counted as ``shadow_refused`` in usage, in
``gateway_shadow_refusals_total{rule}``, and logged once: its access line's ``shadow`` field,
or, with the access log off, a ``shadow refusal`` line (a ``logging`` record costs several
times an access line)."""

from __future__ import annotations

import logging
from collections.abc import Callable

from aiohttp import web

from gateway.exchange import Exchange
from gateway.http import CLIENT_CLOSED_REQUEST
from gateway.keys.model import KeyRecord
from gateway.keys.usage import SHADOW_REFUSED, UPSTREAM_ERROR, outcome_of
from gateway.metrics import NO_ROUTE
from gateway.pipeline.client import client_of
from gateway.services import Services

log = logging.getLogger("gateway.shadow")

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
            outcome = outcome_of(exchange.error_code, status)
            count_usage(key.key_id, key.workspace_id, outcome)
            if exchange.shadow is not None:
                if exchange.error_code is None or outcome == UPSTREAM_ERROR:
                    shadow_refused(exchange, key, route)
                else:  # refused by an enforced rule: that refusal alone is what happened
                    exchange.shadow = None
        if access_log is not None:
            client(exchange)  # the access log's client field (README "Client address")
            access_log.log(exchange, status, seconds)

    def shadow_refused(exchange: Exchange, key: KeyRecord, route: str) -> None:
        """Forwarded (an enforced rule refused nothing), though a shadow rule would have."""
        rule = exchange.shadow
        assert rule is not None
        count_usage(key.key_id, key.workspace_id, SHADOW_REFUSED)
        services.metrics.count_shadow_refusal(rule)
        if access_log is None:  # else its line says it: the shadow field, beside key_id
            log.info("shadow refusal", extra={"rule": rule, "key_id": key.key_id,
                                              "route": route, "request_id": exchange.request_id})

    return record
