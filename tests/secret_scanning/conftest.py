"""Secret-scanning fixtures: a signer with its own P-256 key pair (as GitHub holds one), the
public keys document GitHub publishes, and a gateway whose config lists that document — as a
file (``scanning``, both key stores) or served by a real local HTTP server (``KeysServer``)."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tests.conftest import Gateway, GatewayFactory, bearer, start_site
from tests.keys.conftest import BACKENDS, fresh_pg_database

PATH = "/admin/v1/secret-scanning/github"


class Signer:
    """One signing key pair: what GitHub signs its reports with."""

    def __init__(self, identifier: str) -> None:
        self.identifier = identifier
        self.private = ec.generate_private_key(ec.SECP256R1())

    def public_pem(self) -> str:
        return self.private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ).decode()

    def sign(self, body: bytes) -> str:
        return base64.b64encode(self.private.sign(body, ec.ECDSA(hashes.SHA256()))).decode()

    def headers(self, body: bytes) -> dict[str, str]:
        return {"Github-Public-Key-Identifier": self.identifier,
                "Github-Public-Key-Signature": self.sign(body),
                "Content-Type": "application/json"}


def keys_document(*signers: Signer) -> bytes:
    return json.dumps({"public_keys": [
        {"key_identifier": s.identifier, "key": s.public_pem(), "is_current": i == 0}
        for i, s in enumerate(signers)
    ]}).encode()


def report(*tokens: str, url: str = "https://github.com/o/r/blob/abc/.env") -> bytes:
    return json.dumps([
        {"token": token, "type": "gateway_api_key", "url": url, "source": "content"}
        for token in tokens
    ]).encode()


async def post_report(
    http: aiohttp.ClientSession, admin_url: str, body: bytes, headers: dict[str, str]
) -> tuple[int, Any]:
    async with http.post(admin_url + PATH, data=body, headers=headers) as response:
        return response.status, await response.json(content_type=None)


async def proxy_status(http: aiohttp.ClientSession, gateway: Gateway, key: str) -> int:
    async with http.get(f"{gateway.url}/api/ai/models", headers=bearer(key)) as response:
        await response.read()
        return response.status


@pytest.fixture
def signer() -> Signer:
    return Signer("key-1")


@pytest.fixture(params=BACKENDS)
async def scanning(
    request: pytest.FixtureRequest, make_gateway: GatewayFactory, tmp_path: Path, signer: Signer
) -> AsyncIterator[Gateway]:
    """A gateway (SQLite or Postgres) whose public keys are a file listing ``signer``'s."""
    keys_file = tmp_path / "github-keys.json"
    keys_file.write_bytes(keys_document(signer))
    top = {"secret_scanning": {"github": {"public_keys": str(keys_file)}}}
    if request.param == "sqlite":
        yield await make_gateway(**top)
        return
    async with fresh_pg_database() as url:
        try:
            yield await make_gateway(database=url, **top)
        finally:
            await make_gateway.close()  # type: ignore[attr-defined]


@dataclass
class KeysServer:
    """GitHub's ``/meta/public_keys/secret_scanning``, on a free local port: serves
    ``document`` (or ``status`` when it is not 200) and counts the fetches."""

    document: bytes
    status: int = 200
    fetches: int = 0
    url: str = ""
    runner: web.AppRunner | None = field(default=None, repr=False)

    async def handle(self, request: web.Request) -> web.Response:
        self.fetches += 1
        if self.status != 200:
            return web.Response(status=self.status, text="unavailable")
        return web.Response(body=self.document, content_type="application/json")

    async def start(self) -> KeysServer:
        app = web.Application()
        app.router.add_get("/meta/public_keys/secret_scanning", self.handle)
        self.runner = web.AppRunner(app, handle_signals=False)
        port = await start_site(self.runner)
        self.url = f"http://127.0.0.1:{port}/meta/public_keys/secret_scanning"
        return self

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


@pytest.fixture
async def keys_server(signer: Signer) -> AsyncIterator[KeysServer]:
    server = await KeysServer(keys_document(signer)).start()
    yield server
    await server.stop()
