"""Request id: kept from the client when it is a safe token, else generated; every response
carries it as ``X-Request-Id``."""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable

from aiohttp import web

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


def pick_request_id(request: web.Request) -> str:
    given = request.headers.get("X-Request-Id")
    if given is not None and _SAFE.match(given):
        return given
    return new_request_id()


def build(services: Services) -> Callable[[Exchange], None]:
    def assign_request_id(exchange: Exchange) -> None:
        exchange.request_id = request_id = pick_request_id(exchange.request)
        exchange.response_headers["X-Request-Id"] = request_id

    return assign_request_id
