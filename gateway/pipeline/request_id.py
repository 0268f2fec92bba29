"""Request id: kept from the client when it is a safe token, else generated; every response
carries it as ``X-Request-Id``."""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable

from aiohttp import web

from gateway.logs import Redactor
from gateway.pipeline.exchange import Exchange
from gateway.services import Services

_SAFE = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
_counter = 0
_node = os.urandom(4).hex()


def new_request_id() -> str:
    """Unique and cheap: node tag, start time, counter (no randomness per request needed)."""
    global _counter
    _counter += 1
    return f"{_node}{int(time.time()):x}{_counter:08x}"


def pick_request_id(
    request: web.Request, key_shaped: Callable[[str], object] | None = None
) -> str:
    """The client's X-Request-Id if it is a safe token (and not ``key_shaped``), else a new id."""
    given = request.headers.get("X-Request-Id")
    if given is None or not _SAFE.match(given):
        return new_request_id()
    if key_shaped is not None and key_shaped(given):
        return new_request_id()
    return given


def build(services: Services) -> Callable[[Exchange], None]:
    # a key sent as X-Request-Id would be echoed in every response, log line and upstream request
    key_shaped = Redactor(services.prefixes).pattern.search

    def assign_request_id(exchange: Exchange) -> None:
        exchange.request_id = request_id = pick_request_id(exchange.request, key_shaped)
        exchange.response_headers["X-Request-Id"] = request_id

    return assign_request_id
