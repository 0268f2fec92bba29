"""TLS on the listeners (README "TLS"): one server ``SSLContext`` per listener, made from the
config's certificate chain and key, and loaded again on SIGHUP.

A context whose ``load_cert_chain`` is called again gives the new certificate to every
handshake from then on; connections already open keep the one they were made with, so a
renewal drops none. A pair is always tried on a scratch context first: a bad renewal leaves
the live context serving the old pair. The same check names the file at fault for the config
loader, so a missing, unreadable, non-PEM, encrypted or mismatched file is one config error.

HTTP/2 is not spoken here (aiohttp serves HTTP/1.1): ALPN offers ``http/1.1`` only, so a
client never tries h2 on the gateway; terminate HTTP/2 at a load balancer in front of it.
"""

from __future__ import annotations

import logging
import ssl
from typing import TYPE_CHECKING

from gateway.errors import ConfigError

if TYPE_CHECKING:
    from gateway.config.parsers import TlsFiles

__all__ = ["ALPN", "CertificateProblem", "Certificates", "check_pair", "load_pair",
           "server_context"]

log = logging.getLogger("gateway.tls")

ALPN = ["http/1.1"]


class CertificateProblem(Exception):
    """A certificate or key file that cannot serve; ``field`` is ``cert`` or ``key``."""

    def __init__(self, field: str, what: str) -> None:
        super().__init__(what)
        self.field = field
        self.what = what


class _Encrypted(Exception):
    """Raised by the password callback: without it OpenSSL would prompt on the terminal."""


def _no_password() -> bytes:
    raise _Encrypted


def server_context(cert: str, key: str) -> ssl.SSLContext:
    """A server context (Python's secure defaults, TLS 1.2 or later) serving ``cert``/``key``."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.set_alpn_protocols(ALPN)
    load_pair(context, cert, key)
    return context


def load_pair(context: ssl.SSLContext, cert: str, key: str) -> None:
    """Load the pair into ``context``, or raise ``CertificateProblem`` and leave it as it was."""
    check_pair(cert, key)
    context.load_cert_chain(cert, key, password=_no_password)


def check_pair(cert: str, key: str) -> None:
    """Raise ``CertificateProblem`` unless the pair could serve."""
    for field, path in (("cert", cert), ("key", key)):
        try:
            with open(path, "rb"):
                pass
        except OSError as exc:
            raise CertificateProblem(
                field, f"cannot read {path}: {exc.strerror or type(exc).__name__}"
            ) from None
    scratch = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        scratch.load_verify_locations(cafile=cert)
    except ssl.SSLError:
        raise CertificateProblem("cert", f"{cert} holds no PEM certificate") from None
    try:
        scratch.load_cert_chain(cert, key, password=_no_password)
    except _Encrypted:
        what = f"{key} is encrypted (the gateway takes an unencrypted key: keep it readable " \
               "only by the gateway's user)"
        raise CertificateProblem("key", what) from None
    except ssl.SSLError as exc:
        if exc.reason == "KEY_VALUES_MISMATCH":
            what = f"{key} does not match the certificate in {cert}"
        else:
            what = f"{key} holds no PEM private key"
        raise CertificateProblem("key", what) from None


class Certificates:
    """The listeners' contexts by config field (``listen``, ``admin_listen``), for SIGHUP."""

    def __init__(self, source: str) -> None:
        self.source = source  # the config file, for messages
        self._served: dict[str, tuple[ssl.SSLContext, TlsFiles]] = {}

    def context(self, field: str, files: TlsFiles | None) -> ssl.SSLContext | None:
        """The context the listener at ``field`` serves with; None for plain HTTP."""
        if files is None:
            return None
        try:
            context = server_context(files.cert, files.key)
        except CertificateProblem as problem:
            raise ConfigError(f"{self.source}: {field}.tls.{problem.field}: {problem}") from None
        self._served[field] = (context, files)
        return context

    def reload(self) -> None:
        """Read every listener's files again; a pair that cannot serve is logged and the
        listener keeps the pair it has."""
        for field, (context, files) in self._served.items():
            try:
                load_pair(context, files.cert, files.key)
            except CertificateProblem as problem:
                log.error("%s: %s.tls.%s: %s; the listener keeps its previous certificate",
                          self.source, field, problem.field, problem)
            else:
                log.info("%s: TLS certificate reloaded from %s", field, files.cert)
