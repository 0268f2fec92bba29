"""Leaked keys, reported by a secret scanner (README "Leaked keys"): each token of a report is
looked up by hash and, when it is one of our keys, revoked through the key service's revoke path
(``revoked_by: "secret-scanning"``, audited with where it leaked, dropped from every node's
cache through the change feed).

The answer labels every token as GitHub asks: ``true_positive`` when it is one of our keys,
whatever its status (a key revoked by an earlier report, or expired, is still a real find: the
scanner's pattern was right), ``false_positive`` for anything else — a string of another
format, a bad checksum (never looked up), a well-formed key we never issued.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import orjson

from gateway.errors import BAD_REQUEST, GatewayError, ValidationError
from gateway.keys.model import KeyHasher, is_well_formed
from gateway.keys.service import KeyService
from gateway.store import Store

ACTOR = "secret-scanning"  # revoked_by and the audit event's actor
TRUE_POSITIVE = "true_positive"
FALSE_POSITIVE = "false_positive"
LABELS = (TRUE_POSITIVE, FALSE_POSITIVE)
FIELDS = ("token", "type", "url", "source")
REQUIRED = ("token", "type")


@dataclass(frozen=True, slots=True)
class Leak:
    """One match of a report: the token found, its type (the scanner's name for our format),
    where it was found (``url``) and in what (``source``: content, commit, npm, ...)."""

    token: str
    type: str
    url: str | None = None
    source: str | None = None


def read_report(body: bytes) -> list[Leak]:
    """The report's matches: a JSON list of objects with string ``token`` and ``type``, and
    optional ``url`` and ``source``; other members are ignored (GitHub may add some)."""
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise GatewayError(BAD_REQUEST, "the body is not valid JSON") from None
    if not isinstance(document, list):
        raise ValidationError({"body": "must be a list of {token, type, url, source}"})
    return [_leak(item, i) for i, item in enumerate(document)]


def _leak(item: Any, index: int) -> Leak:
    if not isinstance(item, dict):
        raise ValidationError({f"[{index}]": "must be an object"})
    errors = {
        f"[{index}].{name}": "must be a string"
        for name in FIELDS
        if not isinstance(item.get(name), str) and (name in REQUIRED or item.get(name) is not None)
    }
    if errors:
        raise ValidationError(errors)
    return Leak(item["token"], item["type"], item.get("url"), item.get("source"))


def token_hash(token: str) -> str:
    """What GitHub calls the token's hash: hex SHA-256 of the token itself (never our
    peppered ``key_hash``, which must not leave the store)."""
    return hashlib.sha256(token.encode()).hexdigest()


class LeakedKeys:
    def __init__(
        self, store: Store, keys: KeyService, hasher: KeyHasher, prefixes: frozenset[str]
    ) -> None:
        self._store = store
        self._keys = keys
        self._hasher = hasher
        self._prefixes = prefixes

    async def report(self, leaks: list[Leak]) -> list[dict[str, str]]:
        """Revoke every leaked key of ours not revoked yet; a label per match, in order."""
        return [
            {"token_hash": token_hash(leak.token), "token_type": leak.type,
             "label": await self._label(leak)}
            for leak in leaks
        ]

    async def _label(self, leak: Leak) -> str:
        if not is_well_formed(leak.token, self._prefixes):
            return FALSE_POSITIVE  # as on the request path: no lookup for a bad checksum
        record = await self._store.get_key_by_hash(self._hasher(leak.token))
        if record is None:
            return FALSE_POSITIVE
        if record.status != "revoked":
            await self._keys.revoke_key(record.key_id, ACTOR, details={
                "reason": "leaked", "url": leak.url, "source": leak.source,
                "token_type": leak.type,
            })
        return TRUE_POSITIVE
