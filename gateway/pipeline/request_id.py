"""Request id: kept from the client when it is a safe token, else generated; every response
carries it as ``X-Request-Id``, and ``Server: gateway`` (no version banner)."""

from __future__ import annotations

from collections.abc import Callable

from gateway.exchange import Exchange
from gateway.http import SERVER_NAME, pick_request_id
from gateway.logs import Redactor
from gateway.services import Services


def build(services: Services) -> Callable[[Exchange], None]:
    # a key sent as X-Request-Id would be echoed in every response, log line and upstream request
    key_shaped = Redactor(services.prefixes).pattern.search

    def assign_request_id(exchange: Exchange) -> None:
        exchange.request_id = request_id = pick_request_id(exchange.request, key_shaped)
        exchange.response_headers["X-Request-Id"] = request_id
        exchange.response_headers["Server"] = SERVER_NAME  # no version banner, nor the upstream's

    return assign_request_id
