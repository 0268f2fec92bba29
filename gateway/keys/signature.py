"""The signatures on GitHub's secret-scanning reports (README "Leaked keys"), as pure functions:
reading the public keys document and checking an ECDSA P-256 / SHA-256 signature over the raw
request body. No I/O here: the config reads a file, ``gateway.keys.signing_keys`` fetches a URL.

The document (GitHub's ``/meta/public_keys/secret_scanning``)::

    {"public_keys": [{"key_identifier": "90a4…", "key": "-----BEGIN PUBLIC KEY-----…",
                      "is_current": true}, …]}

Every listed key is accepted, current or not: GitHub keeps an old key listed while reports it
signed may still arrive.
"""

from __future__ import annotations

import base64
import binascii
from typing import TYPE_CHECKING

import orjson

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ec import EllipticCurvePublicKey as PublicKey

# cryptography is imported by the functions that use it, when a report or a keys file first
# needs it: a gateway without secret_scanning never loads it (README "Leaked keys").


class KeysDocumentError(ValueError):
    """The public keys document is not what GitHub publishes; ``str()`` says where."""


def read_keys_document(raw: bytes) -> tuple[tuple[str, str], ...]:
    """``(key_identifier, PEM)`` of every key of the document, each checked to be a P-256
    public key. Plain strings, so a config holding them can be sent to worker processes."""
    try:
        document = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise KeysDocumentError("not JSON") from None
    entries = document.get("public_keys") if isinstance(document, dict) else None
    if not isinstance(entries, list) or not entries:
        raise KeysDocumentError('no "public_keys" list with at least one key')
    return tuple(_entry(entry, f"public_keys[{i}]") for i, entry in enumerate(entries))


def _entry(entry: object, where: str) -> tuple[str, str]:
    if not isinstance(entry, dict):
        raise KeysDocumentError(f"{where}: not an object")
    identifier, pem = entry.get("key_identifier"), entry.get("key")
    if not isinstance(identifier, str) or not identifier:
        raise KeysDocumentError(f"{where}.key_identifier: not a non-empty string")
    if not isinstance(pem, str):
        raise KeysDocumentError(f"{where}.key: not a string")
    load_key(pem, f"{where}.key")
    return identifier, pem


def load_key(pem: str, where: str = "key") -> PublicKey:
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    try:
        key = load_pem_public_key(pem.encode())
    except ValueError:
        raise KeysDocumentError(f"{where}: not a PEM public key") from None
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
        raise KeysDocumentError(f"{where}: not an ECDSA P-256 public key")
    return key


def load_keys(entries: tuple[tuple[str, str], ...]) -> dict[str, PublicKey]:
    """Identifier -> key, for entries ``read_keys_document`` has already checked."""
    return {identifier: load_key(pem) for identifier, pem in entries}


def is_signed(key: PublicKey, signature: str, body: bytes) -> bool:
    """Whether ``signature`` (base64 of a DER ECDSA signature) is ``key``'s over ``body``."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec

    try:
        der = base64.b64decode(signature, validate=True)
    except (binascii.Error, ValueError):
        return False
    try:
        key.verify(der, body, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        return False
    return True

