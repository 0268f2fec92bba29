"""``listen`` / ``admin_listen``: ``"host:port"``, or a mapping that adds TLS (README "TLS"):

    listen: {address: "0.0.0.0:8443", tls: {cert: tls/gateway.crt, key: tls/gateway.key}}

TLS file paths are relative to the config file's directory (absolute ones stay as written) and
are read here, so ``gateway config check`` and start-up catch a bad file in one line that
names the field.
"""

from __future__ import annotations

import os
from dataclasses import replace

from gateway.config.parsers import Ctx, Listen, TlsFiles, join, listen_address, mapping, string
from gateway.tls import CertificateProblem, check_pair


def listener(ctx: Ctx, value: object, path: str) -> Listen:
    if not isinstance(value, dict):
        return listen_address(ctx, value, path)
    data = mapping(ctx, value, path, ("address", "tls"), required=("address",))
    address = listen_address(ctx, data["address"], join(path, "address"))
    if data.get("tls") is None:
        return address
    return replace(address, tls=tls_files(ctx, data["tls"], join(path, "tls")))


def tls_files(ctx: Ctx, value: object, path: str) -> TlsFiles:
    data = mapping(ctx, value, path, ("cert", "key"), required=("cert", "key"))
    files = TlsFiles(
        config_relative(ctx, data["cert"], join(path, "cert")),
        config_relative(ctx, data["key"], join(path, "key")),
    )
    try:
        check_pair(files.cert, files.key)
    except CertificateProblem as problem:
        ctx.fail(join(path, problem.field), problem.what, data[problem.field])
    return files


def config_relative(ctx: Ctx, value: object, path: str) -> str:
    """A file path; a relative one is taken from the config file's directory."""
    text = string(ctx, value, path)
    if not text.strip():
        ctx.fail(path, "must be a file path", text)
    base = os.path.dirname(os.path.abspath(ctx.source))
    return os.path.normpath(os.path.join(base, os.path.expanduser(text)))
