"""The client's address for stages and the access log, found once per request by the rule of
``gateway.client_address`` (README "Client address") and kept on the exchange."""

from __future__ import annotations

from collections.abc import Callable

from gateway.client_address import address_resolver
from gateway.exchange import Exchange
from gateway.services import Services


def client_of(services: Services) -> Callable[[Exchange], str]:
    resolve = address_resolver(services.config.trusted_proxies)

    def client(exchange: Exchange) -> str:
        address = exchange.client
        if address is None:
            address = exchange.client = resolve(exchange.request)
        return address

    return client
