"""``secret_scanning.github.public_keys`` (README "Leaked keys"): where the keys that sign
GitHub's secret-scanning reports come from.

    public_keys: https://api.github.com/meta/public_keys/secret_scanning   # fetched and cached
    public_keys: github-keys.json        # a file, relative to the config file's directory

A file is read and checked here, so ``gateway config check`` and start-up (and a reload, which
reads it again) catch a missing or malformed file in one line naming the field. A URL must be
https: the keys decide who may revoke our keys, so a plain-http fetch from another host would
let anyone on the path forge reports. Plain http is allowed only to a loopback host (a local
mirror, the tests).
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

from gateway.config.listeners import config_relative
from gateway.config.parsers import Ctx, string
from gateway.keys.signature import KeysDocumentError, read_keys_document

LOOPBACK_HOSTS = frozenset({"127.0.0.1", "::1", "localhost"})
MAX_DOCUMENT_BYTES = 1024 * 1024


@dataclass(frozen=True, slots=True)
class PublicKeysSource:
    """A URL to fetch (``keys`` empty), or the keys a file held when the config was read:
    ``(key_identifier, PEM)`` pairs, plain strings so the config pickles to workers."""

    location: str  # the URL, or the file's absolute path
    is_url: bool
    keys: tuple[tuple[str, str], ...] = ()


def public_keys_source(ctx: Ctx, value: object, path: str) -> PublicKeysSource:
    text = string(ctx, value, path)
    if "://" in text:
        return PublicKeysSource(_keys_url(ctx, text, path), is_url=True)
    file = config_relative(ctx, text, path)
    return PublicKeysSource(file, is_url=False, keys=_read_file(ctx, file, text, path))


def _keys_url(ctx: Ctx, text: str, path: str) -> str:
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.fragment \
            or any(c.isspace() for c in text):
        ctx.fail(path, "must be an https URL or a file path", text)
    if parts.scheme == "http" and parts.hostname not in LOOPBACK_HOSTS:
        ctx.fail(path, "must be an https URL (plain http only to a loopback host)", text)
    return text


def _read_file(ctx: Ctx, file: str, text: str, path: str) -> tuple[tuple[str, str], ...]:
    try:
        with open(file, "rb") as handle:
            raw = handle.read(MAX_DOCUMENT_BYTES + 1)
    except OSError as exc:
        ctx.fail(path, f"cannot read {file}: {exc.strerror or exc.__class__.__name__}", text)
    if len(raw) > MAX_DOCUMENT_BYTES:
        ctx.fail(path, f"{file} is over {MAX_DOCUMENT_BYTES} bytes", text)
    try:
        return read_keys_document(raw)
    except KeysDocumentError as exc:
        ctx.fail(path, f"{file} is not a public keys document ({exc})", text)
