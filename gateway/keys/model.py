"""API keys as data: the plaintext format, hashing, and the records the stores hold.

Format (README "Keys"):
``<prefix>_<26 random base62><6-char base62 CRC32 of everything before it>``.
The checksum lets the gateway reject typos and guesses before any cache or store lookup.
Only ``key_hash`` (hex SHA-256, or HMAC-SHA256 with a pepper), ``key_prefix`` and ``hint`` are
ever stored.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import importlib
import re
import secrets
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, NamedTuple, cast


def _own_sha256() -> Callable[[bytes], hashlib._Hash]:
    """CPython's own SHA-256 (``_sha256``, ``_sha2`` from 3.12): for a key's few dozen bytes it
    costs less than OpenSSL's per-digest set-up; hashlib's where a build lacks it."""
    for name in ("_sha256", "_sha2"):
        with contextlib.suppress(ImportError):
            return cast("Callable[[bytes], hashlib._Hash]",
                        importlib.import_module(name).sha256)
    return hashlib.sha256


_sha256 = _own_sha256()

BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
RANDOM_LEN = 26
CHECKSUM_LEN = 6
KEY_TYPES = ("standard", "admin")
ENVIRONMENTS = ("live", "test")
STATUSES = ("active", "disabled", "revoked", "expired")
ROLES = ("owner", "admin", "member", "viewer")
# README "Shadow mode": a shadow key's own rules (origins, IPs, scopes, permissions, its rate
# limit and concurrency) refuse no one; what they would have refused is counted
ENFORCEMENTS = ("enforce", "shadow")
ENFORCE, SHADOW = ENFORCEMENTS
MEMBER_ID_PREFIX = "usr_"  # a key whose user_id has it is a member's: the member must exist
# A permission name, as granted to a key (permissions, scope operations) and as required by a
# route in the config: one pattern for both, anchored for the OpenAPI document.
PERMISSION_PATTERN = r"^[A-Za-z0-9_.:*-]{1,100}$"


def random_base62(length: int) -> str:
    return "".join(secrets.choice(BASE62) for _ in range(length))


_PAIRS = [a + b for a in BASE62 for b in BASE62]  # every 2-digit base62 number, in order


def checksum(body: str) -> str:
    """6 base62 digits of CRC32 (62**6 > 2**32), two digits at a time: it runs per request."""
    n, low = divmod(zlib.crc32(body.encode()), 3844)
    high, mid = divmod(n, 3844)
    return _PAIRS[high] + _PAIRS[mid] + _PAIRS[low]


def generate_key(prefix: str) -> str:
    body = f"{prefix}_{random_base62(RANDOM_LEN)}"
    return body + checksum(body)


def is_well_formed(key: str, prefixes: frozenset[str]) -> bool:
    """Cheap, allocation-light check: known prefix, base62 tail of the right length, CRC32."""
    prefix, sep, tail = key.rpartition("_")
    if not sep or prefix not in prefixes or len(tail) != RANDOM_LEN + CHECKSUM_LEN:
        return False
    if not (tail.isascii() and tail.isalnum()):  # ASCII letters and digits: base62
        return False
    return checksum(key[: -CHECKSUM_LEN]) == tail[RANDOM_LEN:]


def scanner_pattern(prefixes: Iterable[str]) -> str:
    """The regular expression a secret scanner registers to find these prefixes' keys
    (README "Leaked keys"); a match is one of ours only when ``is_well_formed`` says so."""
    alternatives = "|".join(re.escape(prefix) for prefix in sorted(prefixes))
    return rf"\b(?:{alternatives})_[0-9A-Za-z]{{{RANDOM_LEN + CHECKSUM_LEN}}}\b"


class KeyHasher:
    """SHA-256 of the whole key, or HMAC-SHA256 keyed with the pepper when one is configured."""

    __slots__ = ("_pepper",)

    def __init__(self, pepper: str | None) -> None:
        self._pepper = pepper.encode() if pepper else None

    def __call__(self, key: str) -> str:
        if self._pepper is None:
            return _sha256(key.encode()).hexdigest()
        return hmac.new(self._pepper, key.encode(), hashlib.sha256).hexdigest()


def display_parts(key: str) -> tuple[str, str]:
    """(key_prefix, hint): prefix plus the first 4 random chars, and the last 4 chars."""
    prefix, _, tail = key.rpartition("_")
    return f"{prefix}_{tail[:4]}", key[-4:]


def new_id(kind: str) -> str:
    return f"{kind}_{random_base62(16)}"


def utcnow() -> datetime:
    return datetime.now(UTC)


REFILL_INTERVALS = ("day", "month")


class Credits(NamedTuple):
    """A key's credits as stored (README "Credits"): the balance of the last ``set`` (the key's
    creation counts as one) and every ``add`` since, with the refill. What was spent lives in
    the limiter, which holds the live balance: ``set_version`` and ``added`` let it apply a
    top-up it has not seen exactly once, however many nodes spend meanwhile."""

    set_value: int  # the balance the last set gave
    set_version: int  # bumped by every set: a limiter holding an older one starts again from it
    set_period: int  # the refill period (UTC day or month number) of that set; 0 without refill
    added: int = 0  # the sum of every add since that set
    refill_amount: int | None = None  # the balance each refill sets
    refill_interval: str | None = None  # day | month (UTC), or None: no refill

    def to_public(self, remaining: int) -> dict[str, Any]:
        refill = None
        if self.refill_amount is not None:
            refill = {"amount": self.refill_amount, "interval": self.refill_interval}
        return {"remaining": remaining, "refill": refill}

    @property
    def configured(self) -> int:
        """The balance as the store knows it, before anything spent (the limiter knows that)."""
        return self.set_value + self.added


@dataclass(frozen=True, slots=True)
class Scope:
    resource_id: str
    operations: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class KeyRecord:
    """One API key as stored: never the plaintext. Field names follow the seed docs."""

    key_id: str
    key_hash: str
    key_prefix: str
    hint: str
    name: str
    workspace_id: str | None
    project_id: str | None
    user_id: str | None
    created_at: datetime
    description: str = ""
    key_type: str = "standard"
    environment: str = "live"
    permissions: tuple[str, ...] = ()
    scopes: tuple[Scope, ...] = ()
    allowed_origins: tuple[str, ...] = ()
    rate_limit_override: int | None = None
    concurrency_limit: int | None = None
    status: str = "active"  # as stored: active | revoked (expired and disabled are derived)
    expires_at: datetime | None = None
    last_used_at: datetime | None = None
    created_by: str | None = None
    revoked_at: datetime | None = None
    revoked_by: str | None = None
    rotated_from: str | None = None
    internal_id: str = field(default_factory=lambda: new_id("int"))  # stable, never reused
    disabled_at: datetime | None = None  # set while disabled (README "Disable and enable")
    # README "IP allowlists": addresses and CIDRs (canonical text); empty: any address
    allowed_ips: tuple[str, ...] = ()
    enforcement: str = ENFORCE  # enforce | shadow (README "Shadow mode")
    # Not a column: read with the key (gateway.store.keys.PRINCIPAL), so the request path never
    # asks the store again. The member's user_id, else the svc_ id of the rotation chain.
    principal_id: str = field(default="", compare=False)
    # the workspace's subscription and its plan, read with the key (never stored with it)
    subscription_id: str | None = None
    plan: str | None = None
    credits: Credits | None = None  # README "Credits"; None: the key spends no credits
    # Not a column either: derived once per record (when the key enters the cache, not per
    # request), the identity headers the key itself decides (README "What the upstream
    # receives"); the request's own (X-Request-Id, X-Project-Id ...) are added per request.
    identity: tuple[tuple[str, str], ...] = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        identity = [("X-Api-Key-Id", self.key_id),
                    ("X-Api-Key-Permissions", ",".join(self.permissions))]
        if self.user_id:
            identity.append(("X-User-Id", self.user_id))
        if self.principal_id:
            identity.append(("X-Principal-Id", self.principal_id))
        object.__setattr__(self, "identity", tuple(identity))

    def effective_status(self, now: datetime) -> str:
        """revoked, then expired (both final), then disabled (reversible), else active."""
        if self.status == "revoked":
            return "revoked"
        if self.expires_at is not None and self.expires_at <= now:
            return "expired"
        if self.disabled_at is not None:
            return "disabled"
        return "active"

    def with_changes(self, **changes: Any) -> KeyRecord:
        return replace(self, **changes)

    def to_public(self, now: datetime) -> dict[str, Any]:
        """The key object of the admin API and CLI: everything but the plaintext and the hash,
        which is nobody's business outside the store (README "Keys")."""
        return {
            "key_id": self.key_id,
            "name": self.name,
            "description": self.description,
            "workspace_id": self.workspace_id,
            "project_id": self.project_id,
            "user_id": self.user_id,
            "key_type": self.key_type,
            "environment": self.environment,
            "key_prefix": self.key_prefix,
            "hint": self.hint,
            "permissions": list(self.permissions),
            "scopes": [
                {"resource_id": s.resource_id, "operations": list(s.operations)}
                for s in self.scopes
            ],
            "allowed_origins": list(self.allowed_origins),
            "allowed_ips": list(self.allowed_ips),
            "enforcement": self.enforcement,
            "rate_limit_override": self.rate_limit_override,
            "concurrency_limit": self.concurrency_limit,
            "status": self.effective_status(now),
            "expires_at": rfc3339(self.expires_at),
            "last_used_at": rfc3339(self.last_used_at),
            "created_at": rfc3339(self.created_at),
            "created_by": self.created_by,
            "revoked_at": rfc3339(self.revoked_at),
            "revoked_by": self.revoked_by,
            "rotated_from": self.rotated_from,
            "organization_id": self.workspace_id,
            "internal_id": self.internal_id,
            "principal_id": self.principal_id,
            "disabled_at": rfc3339(self.disabled_at),
            "subscription_id": self.subscription_id,
            # the balance as stored; the admin API shows the limiter's live one instead
            "credits": self.credits.to_public(self.credits.configured) if self.credits else None,
        }


@dataclass(frozen=True, slots=True)
class Workspace:
    id: str
    name: str
    default_project_id: str
    created_at: datetime

    def to_public(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "default_project_id": self.default_project_id,
            "created_at": rfc3339(self.created_at),
        }


@dataclass(frozen=True, slots=True)
class Subscription:
    """The plan (a name of the config's ``plans``) a workspace is on."""

    subscription_id: str
    workspace_id: str
    plan: str
    started_at: datetime

    def to_public(self) -> dict[str, Any]:
        return {
            "subscription_id": self.subscription_id,
            "workspace_id": self.workspace_id,
            "plan": self.plan,
            "started_at": rfc3339(self.started_at),
        }


@dataclass(frozen=True, slots=True)
class Project:
    id: str
    name: str
    workspace_id: str
    created_at: datetime

    def to_public(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "workspace_id": self.workspace_id,
            "created_at": rfc3339(self.created_at),
        }


@dataclass(frozen=True, slots=True)
class Namespace:
    id: str
    name: str
    workspace_id: str
    created_at: datetime

    def to_public(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "workspace_id": self.workspace_id,
            "created_at": rfc3339(self.created_at),
        }


@dataclass(frozen=True, slots=True)
class Member:
    """A member of a workspace (README "Members and roles"); ``email`` is stored lower-cased."""

    user_id: str
    workspace_id: str
    email: str
    role: str
    created_at: datetime

    def to_public(self) -> dict[str, Any]:
        return {
            "user_id": self.user_id,
            "email": self.email,
            "role": self.role,
            "workspace_id": self.workspace_id,
            "created_at": rfc3339(self.created_at),
        }


@dataclass(frozen=True, slots=True)
class AuditEvent:
    id: int
    at: datetime
    actor: str | None  # admin key id, or "cli"
    action: str  # key.create | key.update | key.revoke | key.rotate | workspace.create | ...
    target: str
    workspace_id: str | None
    changes: dict[str, Any] = field(default_factory=dict)

    def to_public(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "at": rfc3339(self.at),
            "actor": self.actor,
            "action": self.action,
            "target": self.target,
            "workspace_id": self.workspace_id,
            "changes": self.changes,
        }


@dataclass(frozen=True, slots=True)
class KeyUsage:
    key_id: str
    requests: int
    rate_limited: int
    last_used_at: datetime | None


# How a request that carried a known key ended, one count each (README "Usage over time"), in
# the order of the usage tables' columns.
OUTCOMES = (
    "success",
    "upstream_error",
    "rate_limited",
    "quota_exceeded",
    "concurrency_limited",
    "forbidden",
    "rejected",
    "other",
    # not an outcome of its own: a request a shadow rule would have refused (README "Shadow
    # mode"), also counted under its real outcome, so never part of a total
    "shadow_refused",
)
REQUEST_OUTCOMES = OUTCOMES[:-1]  # one per request: these sum to the requests counted
GRANULARITIES = {"minute": 60, "hour": 3600, "day": 86400}  # bucket lengths, in seconds


@dataclass(frozen=True, slots=True)
class UsagePoint:
    """One bucket of a series: its start (epoch seconds, UTC) and a count per outcome."""

    start: int
    counts: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class TopKey:
    key_id: str
    name: str
    total: int


@dataclass(frozen=True, slots=True)
class KeyPage:
    results: list[KeyRecord]
    total: int
    next_cursor: str | None


def rfc3339(value: datetime | None) -> str | None:
    if value is None:
        return None
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


@dataclass(frozen=True, slots=True)
class ConsoleSession:
    """A signed-in console session (README "Web console") with its member's role as it is
    now: a removed member has no session, a changed role applies on the next page."""

    token_hash: str
    workspace_id: str
    user_id: str
    email: str
    role: str
    created_at: datetime
    last_seen_at: datetime
