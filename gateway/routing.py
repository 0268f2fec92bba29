"""Path normalisation and route matching — pure functions, tested without HTTP.

``normalize_path`` turns the raw request path into the one form that is both authorized and
forwarded: encoded unreserved characters decoded and other escapes upper-cased (RFC 3986
§6.2.2), dot segments removed (§5.2.4). Encoded ``/``, ``\\`` and NUL are refused outright, so
no later decoder can turn one path into another; so are ``;``-parameters (``..;`` is ``..`` to
Tomcat), overlong UTF-8, and any escape that a decoder reading more into the path (decoding
again, NFKC, ``\\`` as ``/``) would turn into a dot segment or a separator. A fragment is cut.
``RouteTable.match`` picks the longest prefix; a path whose dot segments climbed out of the
prefix it lands in is refused (``PathEscape``).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import unquote

from gateway.config import RouteConfig

_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_FORBIDDEN_ESCAPES = ("%2F", "%5C", "%00")
# overlong UTF-8 (C0, C1, E0 80-9F, F0 80-8F): never valid, only ever a disguised "." or "/"
_OVERLONG = re.compile(r"%C[01]|%E0%[89][0-9A-F]|%F0%8[0-9A-F]", re.IGNORECASE)
_HEX = frozenset("0123456789abcdefABCDEF")
_PARAM = re.compile(r"^\{([A-Za-z_][A-Za-z0-9_]*)\}$")


class BadPath(ValueError):
    """The path cannot be normalised safely (the message is safe to show to the client)."""


@dataclass(frozen=True, slots=True)
class NormalizedPath:
    path: str  # normalised, still percent-encoded where needed, always starts with "/"
    query: str  # raw query string without "?", "" when absent
    min_depth: int  # the fewest segments the path had while dot segments were resolved


def normalize_path(raw: str) -> NormalizedPath:
    path, _, query = raw.partition("#")[0].partition("?")  # a fragment is never forwarded
    if not path.startswith("/"):
        raise BadPath("the request target must be an absolute path")
    if "\\" in path or ("%" in path and any(e in path.upper() for e in _FORBIDDEN_ESCAPES)):
        raise BadPath("encoded slashes, backslashes and NUL are not allowed in the path")
    if ";" in path:
        raise BadPath("';' parameters are not allowed in the path")
    if "%" in path or not path.isascii():
        path = _normalize_escapes(path)
        if not _reads_the_same(path):
            raise BadPath("the path hides dot segments or separators in its escapes")
    if "." not in path:
        return NormalizedPath(path, query, path.count("/"))
    resolved, min_depth = _remove_dot_segments(path)
    return NormalizedPath(resolved, query, min_depth)


def _reads_the_same(path: str) -> bool:
    """No decoder reading more into ``path`` (decoding again, NFKC, ``\\`` as ``/``, cutting
    ``;``-parameters) finds a dot segment, separator or NUL the gateway did not see."""
    if _OVERLONG.search(path):
        return False
    lenient = path
    for _ in range(3):
        lenient = unquote(lenient, errors="replace")
    lenient = unicodedata.normalize("NFKC", lenient).replace("\\", "/")
    segments, seen = lenient.split("/"), path.split("/")
    if "\x00" in lenient or len(segments) != len(seen):
        return False
    dots = (".", "..")
    pairs = zip(segments, seen, strict=True)
    return not any(s.partition(";")[0] in dots and t not in dots for s, t in pairs)


def _normalize_escapes(path: str) -> str:
    out: list[str] = []
    i = 0
    while i < len(path):
        ch = path[i]
        if ch != "%":
            out.append(ch)
            i += 1
            continue
        pair = path[i + 1 : i + 3]
        if len(pair) != 2 or not _HEX.issuperset(pair):
            raise BadPath("malformed percent-encoding in the path")
        decoded = chr(int(pair, 16))
        out.append(decoded if decoded in _UNRESERVED else "%" + pair.upper())
        i += 3
    return "".join(out)


def _remove_dot_segments(path: str) -> tuple[str, int]:
    """RFC 3986 §5.2.4 on a path split into segments; refuses climbing above the root."""
    segments = path.split("/")[1:]
    stack: list[str] = []
    min_depth = len(segments)
    for index, segment in enumerate(segments):
        is_last = index == len(segments) - 1
        if segment == ".":
            if is_last:
                stack.append("")
            continue
        if segment == "..":
            if not stack:
                raise BadPath("the path climbs above the root")
            stack.pop()
            min_depth = min(min_depth, len(stack))
            if is_last:
                stack.append("")
            continue
        stack.append(segment)
    return "/" + "/".join(stack), min_depth


@dataclass(frozen=True, slots=True)
class RouteMatch:
    route: RouteConfig
    params: dict[str, str]
    prefix: str  # the concrete prefix that matched, e.g. "/v1/retrievers/r1/"
    remainder: str  # the path after the prefix, without a leading "/"


class _CompiledRoute:
    __slots__ = ("depth", "literal", "route", "segments")

    def __init__(self, route: RouteConfig) -> None:
        self.route = route
        # "/v1/retrievers/{id}/" -> ["v1", "retrievers", "{id}"]
        self.segments = [s for s in route.path.split("/") if s]
        self.depth = len(self.segments)
        self.literal = route.path if "{" not in route.path else None

    def match(self, path: str, parts: list[str]) -> RouteMatch | None:
        if self.literal is not None:
            return self._match_literal(path)
        if len(parts) < self.depth:
            return None
        params: dict[str, str] = {}
        for want, got in zip(self.segments, parts, strict=False):
            param = _PARAM.match(want)
            if param is not None:
                if not got:
                    return None
                params[param.group(1)] = got
            elif want != got:
                return None
        prefix = "/" + "/".join(parts[: self.depth]) + "/"
        return RouteMatch(self.route, params, prefix, "/".join(parts[self.depth :]))

    def _match_literal(self, path: str) -> RouteMatch | None:
        literal = self.literal
        assert literal is not None  # narrowed by the caller; not input validation
        if path.startswith(literal):
            return RouteMatch(self.route, {}, literal, path[len(literal) :])
        if path == literal[:-1]:  # "/api/ai" reaches the "/api/ai/" route
            return RouteMatch(self.route, {}, literal, "")
        return None


class RouteTable:
    """Routes ordered most specific first: more segments, then literal before parameter."""

    def __init__(self, routes: Sequence[RouteConfig]) -> None:
        compiled = [_CompiledRoute(r) for r in routes]
        compiled.sort(key=lambda c: (-c.depth, c.literal is None, -len(c.route.path)))
        self._routes = compiled

    def match(self, path: str) -> RouteMatch | None:
        parts = path.split("/")[1:]
        for compiled in self._routes:
            found = compiled.match(path, parts)
            if found is not None:
                return found
        return None

    def resolve(self, normalized: NormalizedPath) -> RouteMatch | None:
        """Match, refusing paths whose dot segments climbed into or above the prefix they land
        in, or climbed anywhere and land in no route at all."""
        found = self.match(normalized.path)
        climbed = normalized.min_depth < normalized.path.count("/")
        if found is None and climbed:
            raise BadPath("dot segments may not leave the route prefix")
        if found is not None and normalized.min_depth < _depth(found.prefix):
            raise BadPath("dot segments may not leave the route prefix")
        return found


def _depth(prefix: str) -> int:
    return prefix.count("/") - 1
