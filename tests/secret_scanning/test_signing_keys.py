"""The public keys fetched from a URL (a real local HTTP server standing in for GitHub's
``/meta/public_keys/secret_scanning``): fetched once and kept ``cache_ttl``; an unknown
identifier refetches at most once per ``refetch_interval``, so forged identifiers cannot make
the gateway hammer the URL; a rotated key is picked up; a failed fetch keeps the old keys, and
with none at all a report is 503."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from gateway.config import GithubScanningConfig
from gateway.config.scanning import PublicKeysSource
from gateway.errors import GatewayError
from gateway.keys.signing_keys import SigningKeys
from tests.conftest import GatewayFactory
from tests.ops.metrics_text import scrape, value
from tests.secret_scanning.conftest import (
    KeysServer,
    Signer,
    keys_document,
    post_report,
    proxy_status,
    report,
)


def url_config(server: KeysServer, **options: float) -> GithubScanningConfig:
    return GithubScanningConfig(PublicKeysSource(server.url, is_url=True), **options)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_fetched_once_kept_for_cache_ttl_then_fetched_again(
    keys_server: KeysServer, signer: Signer
) -> None:
    clock = Clock()
    keys = SigningKeys(url_config(keys_server, cache_ttl=600.0), clock=clock)
    for _ in range(5):
        assert await keys.key(signer.identifier) is not None
    assert keys_server.fetches == 1
    clock.now += 599
    await keys.key(signer.identifier)
    assert keys_server.fetches == 1
    clock.now += 2
    await keys.key(signer.identifier)
    assert keys_server.fetches == 2


async def test_forged_identifiers_refetch_at_most_once_per_interval(
    keys_server: KeysServer, signer: Signer
) -> None:
    clock = Clock()
    keys = SigningKeys(url_config(keys_server, refetch_interval=60.0), clock=clock)
    assert await keys.key(signer.identifier) is not None
    for i in range(50):
        clock.now += 0.5
        assert await keys.key(f"forged-{i}") is None
    assert keys_server.fetches == 1  # 25 s: still within the first fetch's interval
    clock.now += 40
    for i in range(50):
        assert await keys.key(f"forged-again-{i}") is None
    assert keys_server.fetches == 2  # one refetch for the whole flood


async def test_a_rotated_key_is_picked_up_by_the_refetch(
    keys_server: KeysServer, signer: Signer
) -> None:
    clock = Clock()
    keys = SigningKeys(url_config(keys_server, refetch_interval=60.0), clock=clock)
    assert await keys.key(signer.identifier) is not None
    rotated = Signer("key-2")
    keys_server.document = keys_document(rotated, signer)
    clock.now += 61
    assert await keys.key(rotated.identifier) is not None
    assert await keys.key(signer.identifier) is not None  # the old one is still listed
    assert keys_server.fetches == 2


async def test_a_failed_fetch_keeps_the_old_keys_and_none_at_all_is_unavailable(
    keys_server: KeysServer, signer: Signer
) -> None:
    clock = Clock()
    keys = SigningKeys(url_config(keys_server, cache_ttl=10.0, refetch_interval=5.0),
                       clock=clock)
    assert await keys.key(signer.identifier) is not None
    keys_server.status = 500
    clock.now += 11
    assert await keys.key(signer.identifier) is not None  # expired, refresh failed: kept
    assert keys_server.fetches == 2
    assert await keys.key(signer.identifier) is not None  # no retry before the interval
    assert keys_server.fetches == 2

    fresh = SigningKeys(url_config(keys_server), clock=clock)
    with pytest.raises(GatewayError) as info:
        await fresh.key(signer.identifier)
    assert info.value.kind.code == "signing_keys_unavailable"


async def test_a_document_that_is_not_keys_counts_as_a_failed_fetch(
    keys_server: KeysServer, signer: Signer
) -> None:
    for document in (b"<html>", b'{"public_keys": []}',
                     b'{"public_keys": [{"key_identifier": "k", "key": "not pem"}]}'):
        keys_server.document = document
        keys = SigningKeys(url_config(keys_server))
        with pytest.raises(GatewayError) as info:
            await keys.key(signer.identifier)
        assert info.value.kind.code == "signing_keys_unavailable", document


async def test_concurrent_reports_share_one_fetch(
    keys_server: KeysServer, signer: Signer
) -> None:
    keys = SigningKeys(url_config(keys_server))
    found = await asyncio.gather(*(keys.key(signer.identifier) for _ in range(20)),
                                 *(keys.key(f"forged-{i}") for i in range(20)))
    assert all(found[:20]) and not any(found[20:])
    assert keys_server.fetches == 1


async def test_a_gateway_revokes_with_keys_from_the_url(
    make_gateway: GatewayFactory, keys_server: KeysServer, signer: Signer,
    http: aiohttp.ClientSession,
) -> None:
    gateway = await make_gateway(secret_scanning={"github": {"public_keys": keys_server.url}})
    first, second = await gateway.key(), await gateway.key()
    assert keys_server.fetches == 0  # fetched when a report comes, not at start
    for key in (first, second):
        body = report(key)
        status, answer = await post_report(http, gateway.admin_url, body, signer.headers(body))
        assert status == 200 and answer[0]["label"] == "true_positive"
        assert await proxy_status(http, gateway, key) == 401
    forged = Signer("key-forged")
    for _ in range(10):
        body = report(first)
        status, answer = await post_report(http, gateway.admin_url, body, forged.headers(body))
        assert status == 401 and answer["code"] == "invalid_signature"
    assert keys_server.fetches == 1  # the forged flood came within refetch_interval
    metrics = await scrape(http, gateway.admin_url)
    assert value(metrics, "gateway_secret_scanning_key_fetches_total", result="ok") == 1


async def test_an_unreachable_url_is_503_and_revokes_nothing(
    make_gateway: GatewayFactory, keys_server: KeysServer, signer: Signer,
    http: aiohttp.ClientSession,
) -> None:
    keys_server.status = 503
    gateway = await make_gateway(secret_scanning={"github": {"public_keys": keys_server.url}})
    key = await gateway.key()
    body = report(key)
    status, answer = await post_report(http, gateway.admin_url, body, signer.headers(body))
    assert status == 503 and answer["code"] == "signing_keys_unavailable"
    assert await proxy_status(http, gateway, key) == 200
    metrics = await scrape(http, gateway.admin_url)
    assert value(metrics, "gateway_secret_scanning_key_fetches_total", result="failed") == 1


async def test_an_unsigned_report_never_fetches(
    make_gateway: GatewayFactory, keys_server: KeysServer, http: aiohttp.ClientSession
) -> None:
    gateway = await make_gateway(secret_scanning={"github": {"public_keys": keys_server.url}})
    for _ in range(5):
        status, _answer = await post_report(http, gateway.admin_url, b"[]", {})
        assert status == 401
    assert keys_server.fetches == 0
