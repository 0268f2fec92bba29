"""What both listeners read from a request the same way: the bearer credential and the
request id, and the status logged for a client that left (neither is a pipeline stage)."""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable
from urllib.parse import unquote_plus

from aiohttp import hdrs, web

from gateway.errors import BAD_REQUEST, INVALID_API_KEY, MISSING_API_KEY, GatewayError
from gateway.keys.model import is_well_formed

# no response: the client closed the connection first (nginx's 499, for logs and metrics)
CLIENT_CLOSED_REQUEST = 499
# every response's Server header: no version banner (aiohttp's would name itself and Python)
SERVER_NAME = "gateway"

_QUERY_KEY_NAMES = ("api_key", "apikey", "key", "access_token", "token")
_SAFE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
_WORD = re.compile(r"[A-Za-z0-9_]{20,}")  # anything shorter cannot hold a key
_counter = 0
_node = os.urandom(4).hex()


def missing_key(request: web.Request) -> GatewayError:
    """401 for a request with no credential, with a hint when a key came in the query."""
    hint = ""
    if any(name in request.query for name in _QUERY_KEY_NAMES):
        hint = "; keys in query strings are not accepted"
    return GatewayError(MISSING_API_KEY, "send the key as 'Authorization: Bearer <key>'" + hint)


def without_keys(query: str, prefixes: frozenset[str]) -> str:
    """``query`` without any parameter that carries an API key (a well-formed one: prefix and
    checksum), under any name: a key in a query string is never forwarded (README "The request
    path")."""
    if not query:
        return query
    kept = [pair for pair in query.split("&") if not _has_key(unquote_plus(pair), prefixes)]
    return "&".join(kept)


def _has_key(text: str, prefixes: frozenset[str]) -> bool:
    return any(is_well_formed(word, prefixes) for word in _WORD.findall(text))


def invalid_key() -> GatewayError:
    """Every invalid credential reads the same (malformed, bad checksum, unknown, wrong scheme):
    a caller learns nothing about how close a guess came."""
    return GatewayError(INVALID_API_KEY, "the API key is not valid")


def bearer_token(request: web.Request) -> str:
    """The token of exactly one ``Authorization: Bearer <token>`` header (else 400/401)."""
    values = request.headers.getall(hdrs.AUTHORIZATION, ())
    if not values:
        raise missing_key(request)
    if len(values) > 1:
        raise GatewayError(BAD_REQUEST, "exactly one Authorization header is allowed")
    scheme, _, token = values[0].strip().partition(" ")
    if scheme.lower() != "bearer":
        raise invalid_key()  # not Bearer
    token = token.strip()
    if not token:
        raise invalid_key()  # empty
    return token


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
    if given is None or not _SAFE_REQUEST_ID.match(given):
        return new_request_id()
    if key_shaped is not None and key_shaped(given):
        return new_request_id()
    return given
