"""Origin matching for CORS and per-key ``allowed_origins`` (README "The request path", step 4).

A pattern is an exact ``scheme://host[:port]`` or ``scheme://*.domain[:port]``; the wildcard
matches one or more DNS labels (letters, digits, ``-``) under ``domain`` — never the bare domain,
never a look-alike such as ``evil-example.com``, ``evil.com\\.example.com`` or a literal
``*.example.com``. Scheme and host compare case-insensitively, default ports are implied,
``null`` and malformed origins never match. ``*`` (route CORS only) matches any real origin.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from urllib.parse import urlsplit

_DEFAULT_PORTS = {"http": 80, "https": 443}
_LABELS = re.compile(r"[a-z0-9-]+(?:\.[a-z0-9-]+)*")  # what a wildcard may stand for


@dataclass(frozen=True, slots=True)
class Origin:
    scheme: str
    host: str
    port: int


@dataclass(frozen=True, slots=True)
class OriginPattern:
    scheme: str
    host: str  # for a wildcard: ".example.com"
    port: int
    wildcard: bool
    any_origin: bool = False

    def matches(self, origin: Origin) -> bool:
        if self.any_origin:
            return True
        if origin.scheme != self.scheme or origin.port != self.port:
            return False
        if self.wildcard:
            host = origin.host
            return host.endswith(self.host) and bool(
                _LABELS.fullmatch(host, 0, len(host) - len(self.host))
            )
        return origin.host == self.host


def parse_origin(value: str) -> Origin | None:
    """``scheme://host[:port]`` with nothing after it, else None (``null`` included)."""
    try:
        parts = urlsplit(value.strip())
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()
    if scheme not in _DEFAULT_PORTS or not host or parts.path or parts.query or parts.fragment:
        return None
    if parts.username is not None or parts.password is not None or ".." in host:
        return None
    return Origin(scheme, host.rstrip("."), port or _DEFAULT_PORTS[scheme])


def parse_pattern(value: str) -> OriginPattern | None:
    if value == "*":
        return OriginPattern("", "", 0, wildcard=False, any_origin=True)
    wildcard = "://*." in value
    origin = parse_origin(value.replace("://*.", "://", 1) if wildcard else value)
    if origin is None:
        return None
    host = "." + origin.host if wildcard else origin.host
    return OriginPattern(origin.scheme, host, origin.port, wildcard)


@lru_cache(maxsize=4096)
def compile_patterns(patterns: tuple[str, ...]) -> tuple[OriginPattern, ...]:
    return tuple(p for p in map(parse_pattern, patterns) if p is not None)


@lru_cache(maxsize=4096)
def is_origin_allowed(origin: str, patterns: tuple[str, ...]) -> bool:
    parsed = parse_origin(origin)
    if parsed is None:
        return False
    return any(p.matches(parsed) for p in compile_patterns(patterns))
