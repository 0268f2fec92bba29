"""TLS on the listeners (README "TLS"): certificates made here with trustme, a real ``gateway
serve`` process serving both listeners over TLS, SIGHUP reading a renewed certificate without
dropping an open connection, and one config error line for each bad file."""

from __future__ import annotations

import asyncio
import os
import signal
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import trustme
import yaml
from cryptography.hazmat.primitives import serialization

from gateway.config import load_config
from gateway.errors import ConfigError
from tests.conftest import Upstream
from tests.gateway_process import GatewayProcess, route


def write_pair(directory: Path, cert: trustme.LeafCert, name: str = "gateway") -> None:
    (directory / "tls").mkdir(exist_ok=True)
    cert.cert_chain_pems[0].write_to_path(str(directory / "tls" / f"{name}.crt"))
    cert.private_key_pem.write_to_path(str(directory / "tls" / f"{name}.key"))


def der(cert: trustme.LeafCert) -> bytes:
    return ssl.PEM_cert_to_DER_cert(cert.cert_chain_pems[0].bytes().decode())


TLS = {"cert": "tls/gateway.crt", "key": "tls/gateway.key"}  # relative to the config file


@pytest.fixture
def authority() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def client_context(authority: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context()
    authority.configure_trust(context)
    return context


@pytest.fixture(params=[1, 2], ids=["one process", "two workers"])
def workers(request: pytest.FixtureRequest) -> int:
    return int(request.param)


@pytest.fixture
async def tls_gateway(
    tmp_path: Path, upstream: Upstream, authority: trustme.CA, workers: int
) -> AsyncIterator[GatewayProcess]:
    gateway = GatewayProcess.create(tmp_path, [route("open", "/open/", upstream.url)],
                                    workers=workers)
    write_pair(tmp_path, authority.issue_cert("127.0.0.1", "localhost"))
    data = dict(gateway.data)
    data["listen"] = {"address": data["listen"], "tls": TLS}
    data["admin_listen"] = {"address": data["admin_listen"], "tls": TLS}
    gateway.write(data)
    yield gateway
    gateway.stop()


async def served_certificate(port: int, context: ssl.SSLContext) -> tuple[bytes, str | None]:
    """The certificate a new handshake gets, and the protocol ALPN chose."""
    _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context)
    try:
        tls = writer.get_extra_info("ssl_object")
        return tls.getpeercert(binary_form=True), tls.selected_alpn_protocol()
    finally:
        writer.close()


class KeptConnection:
    """One keep-alive TLS connection to the public listener, for requests one after another."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, port: int, context: ssl.SSLContext) -> KeptConnection:
        return cls(*await asyncio.open_connection("127.0.0.1", port, ssl=context))

    def certificate(self) -> bytes:
        return bytes(self.writer.get_extra_info("ssl_object").getpeercert(binary_form=True))

    async def get(self, path: str) -> int:
        self.writer.write(f"GET {path} HTTP/1.1\r\nHost: gateway\r\n\r\n".encode())
        head = (await self.reader.readuntil(b"\r\n\r\n")).decode("latin-1")
        length = next(int(line.split(":", 1)[1]) for line in head.split("\r\n")
                      if line.lower().startswith("content-length:"))
        await self.reader.readexactly(length)
        return int(head.split()[1])


async def test_both_listeners_serve_tls_and_a_renewal_is_read_on_sighup(
    tls_gateway: GatewayProcess, authority: trustme.CA, client_context: ssl.SSLContext,
    upstream: Upstream, workers: int,
) -> None:
    """With workers, the supervisor checks the files and every worker reads them again."""
    gateway = tls_gateway
    client_context.set_alpn_protocols(["h2", "http/1.1"])
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(ssl=client_context)
    ) as session:
        gateway.start()
        await gateway.wait_ready(session)
        assert gateway.url.startswith("https://")
        async with session.get(f"{gateway.url}/open/x") as response:
            assert response.status == 200
    assert upstream.log.last.all("X-Forwarded-Proto") == ["https"]
    first, protocol = await served_certificate(gateway.port, client_context)
    assert protocol == "http/1.1"  # never h2: README "TLS"
    assert (await served_certificate(gateway.admin_port, client_context))[0] == first

    kept = await KeptConnection.open(gateway.port, client_context)
    assert await kept.get("/open/before") == 200
    renewed = authority.issue_cert("127.0.0.1", "localhost")
    write_pair(gateway.directory, renewed)
    gateway.send(signal.SIGHUP)
    await gateway.wait_log("TLS certificate reloaded", count=2 * workers)
    for _ in range(2 * workers):  # new connections, to whichever worker the kernel picks
        assert (await served_certificate(gateway.port, client_context))[0] == der(renewed)
        assert (await served_certificate(gateway.admin_port, client_context))[0] == der(renewed)
    assert await kept.get("/open/after") == 200  # the connection made before is still served
    assert kept.certificate() == first

    # a renewal that went wrong: the reload is refused, the running certificate stays
    other = authority.issue_cert("127.0.0.1")
    other.private_key_pem.write_to_path(str(gateway.directory / "tls" / "gateway.key"))
    gateway.send(signal.SIGHUP)
    log = await gateway.wait_log("reload rejected")
    assert "listen.tls.key" in log and "does not match the certificate" in log
    for _ in range(2 * workers):
        assert (await served_certificate(gateway.port, client_context))[0] == der(renewed)
    assert await kept.get("/open/later") == 200
    kept.writer.close()


async def test_plain_http_on_a_tls_listener_is_refused(
    tls_gateway: GatewayProcess, client_context: ssl.SSLContext
) -> None:
    gateway = tls_gateway
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(ssl=client_context)
    ) as session:
        gateway.start()
        await gateway.wait_ready(session)
    async with aiohttp.ClientSession() as plain:
        with pytest.raises(aiohttp.ClientError):
            async with plain.get(f"http://127.0.0.1:{gateway.port}/open/x") as response:
                await response.read()


# --- config errors: one line naming the file, the field and the value -------------------------


def load(tmp_path: Path, listen: Any) -> None:
    path = tmp_path / "gateway.yaml"
    data = {"listen": listen, "routes": [route("r", "/r/", "http://127.0.0.1:9")]}
    path.write_text(yaml.safe_dump(data))
    load_config(path, environ={})


@pytest.fixture
def pair_dir(tmp_path: Path, authority: trustme.CA) -> Path:
    write_pair(tmp_path, authority.issue_cert("localhost"))
    return tmp_path


def test_relative_paths_are_read_from_the_config_files_directory(
    pair_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir("/")
    path = pair_dir / "gateway.yaml"
    path.write_text(yaml.safe_dump({"listen": {"address": "127.0.0.1:8443", "tls": TLS},
                                    "routes": [route("r", "/r/", "http://127.0.0.1:9")]}))
    config = load_config(path, environ={})
    assert config.listen.tls is not None
    assert config.listen.tls.cert == str(pair_dir / "tls" / "gateway.crt")
    assert config.listen.tls.key == str(pair_dir / "tls" / "gateway.key")
    assert str(config.listen) == "127.0.0.1:8443"
    assert config.admin_listen.tls is None


def encrypt(key: Path) -> None:
    private = serialization.load_pem_private_key(key.read_bytes(), None)
    key.write_bytes(private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret"),
    ))


@pytest.mark.parametrize(
    ("tls", "prepare", "message"),
    [
        ({"cert": "tls/missing.crt", "key": "tls/gateway.key"}, None,
         "listen.tls.cert: cannot read {dir}/tls/missing.crt: No such file or directory, "
         "got 'tls/missing.crt'"),
        ({"cert": "tls", "key": "tls/gateway.key"}, None,
         "listen.tls.cert: cannot read {dir}/tls: Is a directory, got 'tls'"),
        ({"cert": "tls/gateway.key", "key": "tls/gateway.key"}, None,
         "listen.tls.cert: {dir}/tls/gateway.key holds no PEM certificate, got 'tls/gateway.key'"),
        (TLS, "mismatch",
         "listen.tls.key: {dir}/tls/gateway.key does not match the certificate in "
         "{dir}/tls/gateway.crt, got 'tls/gateway.key'"),
        (TLS, "encrypt", "listen.tls.key: {dir}/tls/gateway.key is encrypted"),
        ({"cert": "tls/gateway.crt", "key": "tls/gateway.crt"}, None,
         "listen.tls.key: {dir}/tls/gateway.crt holds no PEM private key"),
        ({"cert": "tls/gateway.crt"}, None, "listen.tls: missing required key 'key'"),
        ({"cert": "tls/gateway.crt", "key": "tls/gateway.key", "ca": "x"}, None,
         "listen.tls.ca: unknown key"),
        ({"cert": "", "key": "tls/gateway.key"}, None, "listen.tls.cert: must be a file path"),
    ],
)
def test_a_bad_tls_file_is_one_config_error(
    pair_dir: Path, authority: trustme.CA, tls: dict[str, str], prepare: str | None,
    message: str,
) -> None:
    if prepare == "mismatch":
        authority.issue_cert("other").private_key_pem.write_to_path(
            str(pair_dir / "tls" / "gateway.key"))
    elif prepare == "encrypt":
        encrypt(pair_dir / "tls" / "gateway.key")
    with pytest.raises(ConfigError) as info:
        load(pair_dir, {"address": "127.0.0.1:8443", "tls": tls})
    text = str(info.value)
    assert "\n" not in text
    assert text.startswith(f"{pair_dir}/gateway.yaml: ")
    assert message.format(dir=os.fspath(pair_dir)) in text


@pytest.mark.parametrize(
    ("listen", "message"),
    [
        ({"tls": TLS}, "listen: missing required key 'address'"),
        ({"address": "nowhere", "tls": TLS}, "listen.address: must be 'host:port'"),
        ({"adress": "127.0.0.1:1"}, "listen.adress: unknown key (did you mean 'address'?"),
    ],
)
def test_a_bad_listener_mapping_is_one_config_error(
    pair_dir: Path, listen: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("?", r"\?")):
        load(pair_dir, listen)


def test_tls_null_is_plain_http(pair_dir: Path) -> None:
    path = pair_dir / "gateway.yaml"
    path.write_text(yaml.safe_dump({"listen": {"address": "127.0.0.1:8443", "tls": None},
                                    "routes": [route("r", "/r/", "http://127.0.0.1:9")]}))
    assert load_config(path, environ={}).listen.tls is None
