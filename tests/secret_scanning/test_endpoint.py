"""The secret-scanning endpoint on a real gateway, on both key stores: a signed report revokes
our keys (401 on the proxy at once) and labels every token; anything not signed by a listed
key is a 401 that revokes nothing (the key keeps working)."""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Callable

import aiohttp
import pytest

from gateway.keys.model import generate_key, random_base62
from tests.conftest import Gateway, bearer, well_formed_unknown_key
from tests.ops.metrics_text import scrape, value
from tests.secret_scanning.conftest import (
    PATH,
    Signer,
    post_report,
    proxy_status,
    report,
)


def bad_checksum(key: str) -> str:
    """Our format, one checksum character changed."""
    last = "A" if key[-1] != "A" else "B"
    return key[:-1] + last


async def test_signed_report_revokes_our_key_and_labels_every_token(
    scanning: Gateway, http: aiohttp.ClientSession, signer: Signer
) -> None:
    leaked = await scanning.key()
    bystander = await scanning.key()
    assert await proxy_status(http, scanning, leaked) == 200  # cached on this node
    tokens = [leaked, "not-a-key-" + random_base62(20), bad_checksum(bystander),
              well_formed_unknown_key(), generate_key("sk_test")]
    body = report(*tokens)

    status, answer = await post_report(http, scanning.admin_url, body, signer.headers(body))

    assert status == 200, answer
    assert answer == [
        {"token_hash": hashlib.sha256(token.encode()).hexdigest(),
         "token_type": "gateway_api_key", "label": label}
        for token, label in zip(tokens, ["true_positive"] + ["false_positive"] * 4, strict=True)
    ]
    async with http.get(f"{scanning.url}/api/ai/models", headers=bearer(leaked)) as response:
        assert response.status == 401
        assert (await response.json())["code"] == "revoked_api_key"
    assert await proxy_status(http, scanning, bystander) == 200  # a bad checksum names no key
    record = await scanning.keys.get_key(scanning.created[0].key_id)
    assert record.status == "revoked" and record.revoked_by == "secret-scanning"
    event = (await scanning.keys.audit(scanning.workspace.id))[0]
    assert (event.action, event.actor, event.target) == (
        "key.revoke", "secret-scanning", record.key_id)
    assert event.changes == {"status": "revoked", "reason": "leaked", "source": "content",
                             "url": "https://github.com/o/r/blob/abc/.env",
                             "token_type": "gateway_api_key"}
    metrics = await scrape(http, scanning.admin_url)
    assert value(metrics, "gateway_secret_scanning_tokens_total", label="true_positive") == 1
    assert value(metrics, "gateway_secret_scanning_tokens_total", label="false_positive") == 4


async def test_a_key_revoked_before_is_still_ours_and_left_as_it_was(
    scanning: Gateway, http: aiohttp.ClientSession, signer: Signer
) -> None:
    leaked = await scanning.key()
    key_id = scanning.created[0].key_id
    await scanning.keys.revoke_key(key_id, "key_operator")
    body = report(leaked, leaked)  # the same leak found twice in one report
    status, answer = await post_report(http, scanning.admin_url, body, signer.headers(body))
    assert status == 200
    assert [item["label"] for item in answer] == ["true_positive", "true_positive"]
    assert (await scanning.keys.get_key(key_id)).revoked_by == "key_operator"
    revokes = [e for e in await scanning.keys.audit(scanning.workspace.id)
               if e.action == "key.revoke"]
    assert len(revokes) == 1  # nothing revoked a second time


async def test_disabled_and_admin_keys_are_revoked_too(
    scanning: Gateway, http: aiohttp.ClientSession, signer: Signer
) -> None:
    disabled = await scanning.key()
    await scanning.keys.disable_key(scanning.created[0].key_id, "test")
    operator = await scanning.admin_key()  # the worst leak of all
    async with http.get(f"{scanning.admin_url}/admin/v1/workspaces",
                        headers=bearer(operator)) as response:
        assert response.status == 200
    body = report(disabled, operator)
    status, answer = await post_report(http, scanning.admin_url, body, signer.headers(body))
    assert status == 200 and {item["label"] for item in answer} == {"true_positive"}
    assert (await scanning.keys.get_key(scanning.created[0].key_id)).status == "revoked"
    async with http.get(f"{scanning.admin_url}/admin/v1/workspaces",
                        headers=bearer(operator)) as response:
        assert response.status == 401


def other_signer(signer: Signer, body: bytes) -> dict[str, str]:
    return Signer(signer.identifier).headers(body)  # same identifier, another key


def unsigned(signer: Signer, body: bytes) -> dict[str, str]:
    return {"Content-Type": "application/json"}


def identifier_only(signer: Signer, body: bytes) -> dict[str, str]:
    return {"Github-Public-Key-Identifier": signer.identifier}


def replayed_signature(signer: Signer, body: bytes) -> dict[str, str]:
    return signer.headers(report(well_formed_unknown_key()))  # genuine, for another body


def unknown_identifier(signer: Signer, body: bytes) -> dict[str, str]:
    headers = signer.headers(body)
    return {**headers, "Github-Public-Key-Identifier": "key-forged"}


def not_base64(signer: Signer, body: bytes) -> dict[str, str]:
    return {**signer.headers(body), "Github-Public-Key-Signature": "%%% not base64 %%%"}


def truncated(signer: Signer, body: bytes) -> dict[str, str]:
    headers = signer.headers(body)
    return {**headers, "Github-Public-Key-Signature": headers["Github-Public-Key-Signature"][:40]}


REFUSED: dict[str, Callable[[Signer, bytes], dict[str, str]]] = {
    "signed by another key": other_signer,
    "unsigned": unsigned,
    "identifier only": identifier_only,
    "replayed signature of another body": replayed_signature,
    "unknown key identifier": unknown_identifier,
    "signature not base64": not_base64,
    "signature truncated": truncated,
}


@pytest.mark.parametrize("case", REFUSED, ids=list(REFUSED))
async def test_a_report_not_signed_by_a_listed_key_revokes_nothing(
    scanning: Gateway, http: aiohttp.ClientSession, signer: Signer, case: str
) -> None:
    leaked = await scanning.key()
    body = report(leaked)
    status, answer = await post_report(http, scanning.admin_url, body, REFUSED[case](signer, body))
    assert status == 401 and answer["code"] == "invalid_signature", answer
    assert await proxy_status(http, scanning, leaked) == 200
    assert (await scanning.keys.get_key(scanning.created[0].key_id)).status == "active"
    metrics = await scrape(http, scanning.admin_url)
    assert value(metrics, "gateway_secret_scanning_refused_reports_total") == 1


async def test_a_body_changed_after_signing_revokes_nothing(
    scanning: Gateway, http: aiohttp.ClientSession, signer: Signer
) -> None:
    leaked = await scanning.key()
    signed = report(leaked)
    headers = signer.headers(signed)
    for changed in (signed.replace(b"content", b"commit"), signed + b" ", signed[:-1]):
        status, answer = await post_report(http, scanning.admin_url, changed, headers)
        assert status == 401 and answer["code"] == "invalid_signature"
    assert await proxy_status(http, scanning, leaked) == 200
    status, _ = await post_report(http, scanning.admin_url, signed, headers)  # as signed: taken
    assert status == 200
    assert await proxy_status(http, scanning, leaked) == 401


@pytest.mark.parametrize(("body", "status", "code"), [
    (b"{not json", 400, "bad_request"),
    (b'{"token": "x", "type": "t"}', 400, "validation_error"),
    (b'[{"type": "t"}]', 400, "validation_error"),
    (b'[{"token": 5, "type": "t"}]', 400, "validation_error"),
    (b'[{"token": "x", "type": "t", "url": ["u"]}]', 400, "validation_error"),
    (b"[]", 200, None),
])
async def test_a_signed_body_that_is_not_a_report(
    scanning: Gateway, http: aiohttp.ClientSession, signer: Signer, body: bytes, status: int,
    code: str | None,
) -> None:
    got, answer = await post_report(http, scanning.admin_url, body, signer.headers(body))
    assert got == status, answer
    assert (answer["code"] if code else answer) == (code or [])


async def test_extra_members_are_ignored_and_url_source_optional(
    scanning: Gateway, http: aiohttp.ClientSession, signer: Signer
) -> None:
    leaked = await scanning.key()
    body = json.dumps([{"token": leaked, "type": "t", "token_raw": "x", "url": None}]).encode()
    status, answer = await post_report(http, scanning.admin_url, body, signer.headers(body))
    assert status == 200 and answer[0]["label"] == "true_positive"
    assert await proxy_status(http, scanning, leaked) == 401


async def test_a_body_over_the_admin_limit_is_413(
    scanning: Gateway, http: aiohttp.ClientSession, signer: Signer
) -> None:
    body = b"[" + b" " * (1024 * 1024) + b"]"
    async with http.post(scanning.admin_url + PATH, data=io.BytesIO(body),
                         headers=signer.headers(body)) as response:
        assert response.status == 413
        assert (await response.json(content_type=None))["code"] == "body_too_large"


async def test_not_configured_is_404(gateway: Gateway, http: aiohttp.ClientSession) -> None:
    signer = Signer("key-1")
    key = await gateway.key()
    body = report(key)
    status, answer = await post_report(http, gateway.admin_url, body, signer.headers(body))
    assert status == 404 and answer["code"] == "not_found"
    assert await proxy_status(http, gateway, key) == 200


@pytest.mark.parametrize("path", [
    PATH + "/", PATH.upper(), "/admin/v1/secret-scanning", "/admin/v1/secret-scanning/gitlab",
    PATH + "/x", "/admin/v1/secret-scanning/github%2F..%2Fworkspaces",
])
async def test_no_other_path_skips_the_admin_key(
    scanning: Gateway, http: aiohttp.ClientSession, path: str
) -> None:
    async with http.post(scanning.admin_url + path, data=b"[]") as response:
        assert response.status == 401
        assert (await response.json())["code"] == "missing_api_key"


async def test_other_methods_on_the_path_are_not_served(
    scanning: Gateway, http: aiohttp.ClientSession
) -> None:
    for method in ("GET", "PUT", "DELETE"):
        async with http.request(method, scanning.admin_url + PATH) as response:
            assert response.status == 405, method
