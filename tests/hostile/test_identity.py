"""Family 3, identity and credentials: every identity header in every spelling never reaches
the upstream with the client's value; an Authorization matrix gets 400/401 bodies that are
byte-identical per code apart from ``request_id``, and never reaches the upstream; a canary key
sent everywhere a client can put one is found 0 times in logs, metrics, error bodies or what
the upstream receives (a query-string key is removed, 401 when it is the only credential)."""

from __future__ import annotations

import itertools
import json

import aiohttp
import pytest

from gateway.keys.model import generate_key
from tests.conftest import Gateway
from tests.hostile.conftest import Answer, bounded, send_raw
from tests.hostile.figures import record
from tests.hostile.upstream import StrictUpstream

IDENTITY = ("X-Workspace-Id", "X-Project-Id", "X-Namespace-Id", "X-Namespace", "X-Api-Key-Id",
            "X-Api-Key-Permissions", "X-User-Id", "X-Principal-Id", "X-Forwarded-For",
            "X-Forwarded-Proto", "X-Forwarded-Host", "X-Forwarded-Port", "X-Forwarded-Prefix",
            "X-Forwarded-Scheme", "X-Forwarded-Server", "Forwarded")
FORGED = "forged-by-client"


def spellings(name: str) -> list[list[str]]:
    """Header lines that carry ``FORGED`` under ``name`` as a client could write it."""
    return [
        [f"{name}: {FORGED}"],
        [f"{name.lower()}: {FORGED}"],
        [f"{name.upper()}: {FORGED}"],
        [f"{name.replace('-', '_')}: {FORGED}"],
        [f"{name}: {FORGED}", f"{name}: {FORGED}-2"],
        [f"{name}:    {FORGED}"],
        [f"{name}: {FORGED}, {FORGED}-2"],
        [f"{name.lower()}: {FORGED}", f"{name.upper()}: {FORGED}-2"],
    ]


async def test_identity_headers_never_reach_upstream(
    hostile: Gateway, strict: StrictUpstream
) -> None:
    key = await hostile.key(user_id="alice")
    cases = [lines for name in IDENTITY for lines in spellings(name)]
    answers = await bounded([
        lambda lines=lines: send_raw(hostile.port, (
            f"GET /api/ai/x HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {key}\r\n"
            + "".join(line + "\r\n" for line in lines) + "\r\n").encode())
        for lines in cases
    ])
    carried = [(n, v) for seen in strict.received for n, v in seen.headers if FORGED in v]
    counts = {s: sum(1 for a in answers if a.status // 100 == s) for s in (2, 4, 5)}
    record("IDENTITY", f"{len(cases)} spellings of {len(IDENTITY)} identity headers: "
           f"{counts[2]} forwarded, {counts[4]} refused, {len(carried)} client values upstream")
    assert carried == []
    assert counts[5] == 0 and counts[2] > 0


def authorization_matrix(valid: str, unknown: str, revoked: str) -> list[list[str]]:
    broken = valid[:-1] + ("A" if valid[-1] != "A" else "B")
    other_prefix = "sk_prod_" + valid.split("_", 2)[2]
    values = [
        "", "Bearer", "Bearer ", "bearer", "Bearer  ", f"Basic {valid}", f"Token {valid}",
        f"Bearer {unknown}", f"bearer {unknown}", f"BEARER {unknown}", f"Bearer {broken}",
        f"Bearer {valid.upper()}", f"Bearer {valid.lower()}", f"Bearer {valid}x",
        f"Bearer x{valid}", f"Bearer {valid[:-1]}", f"Bearer {other_prefix}",
        f"Bearer {valid},{valid}", f"Bearer {valid} {valid}", f"Bearer {valid};",
        f"Bearer '{valid}'", f'Bearer "{valid}"', f"Bearer {revoked}", f"Bearer\t{unknown}",
        f"Bearer {unknown}\t", "Bearer null", "Bearer undefined", "Bearer sk_live_",
        f"Bearer {valid[:20]}", f"Bearer {'A' * 41}", f"Bearer {'sk_live_' + 'A' * 300}",
        f"Digest {valid}", f"Bearer%20{valid}", f"{valid}",
    ]
    matrix = [[f"Authorization: {v}"] for v in values]
    matrix += [[], [f"Authorization: Bearer {valid}", f"Authorization: Bearer {valid}"],
               [f"Authorization: Bearer {unknown}", f"authorization: Bearer {valid}"],
               [f"Authorization: Bearer {valid}", "Authorization: Bearer"],
               [f"X-Api-Key: {valid}"], [f"Api-Key: {valid}"], [f"Cookie: api_key={valid}"]]
    return matrix


def without_request_id(body: bytes) -> str:
    data = json.loads(body)
    data.pop("request_id", None)
    return json.dumps(data, sort_keys=True)


async def test_authorization_matrix(hostile: Gateway, strict: StrictUpstream) -> None:
    valid = await hostile.key()
    revoked = await hostile.key()
    await hostile.keys.revoke_key(hostile.created[-1].key_id, "test")
    matrix = authorization_matrix(valid, generate_key("sk_live"), revoked)
    answers: list[Answer] = await bounded([
        lambda lines=lines: send_raw(hostile.port, ("GET /api/ai/x HTTP/1.1\r\nHost: gw\r\n"
                                     + "".join(f"{x}\r\n" for x in lines) + "\r\n").encode())
        for lines in matrix
    ])
    bodies: dict[tuple[int, str], set[str]] = {}
    for answer in answers:
        if answer.status in (400, 401):
            code = json.loads(answer.body)["code"]
            bodies.setdefault((answer.status, code), set()).add(without_request_id(answer.body))
    statuses = sorted({a.status for a in answers})
    distinct = {f"{s} {c}": len(b) for (s, c), b in bodies.items()}
    record("AUTH", f"{len(matrix)} Authorization variants -> statuses {statuses}, distinct "
           f"bodies per code {distinct}, {len(strict.received)} upstream hits")
    assert strict.received == []
    assert set(statuses) <= {400, 401}
    assert bodies[(401, "invalid_api_key")] and len(bodies[(401, "invalid_api_key")]) == 1
    assert all(len(b) == 1 for (s, c), b in bodies.items() if c != "missing_api_key")


@pytest.fixture
def canary_places() -> list[str]:
    return ["authorization", "query", "query-only", "request-id", "header", "path", "cookie"]


async def test_canary_key_leaks_nowhere(
    hostile: Gateway, strict: StrictUpstream, capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture, canary_places: list[str],
) -> None:
    canary = await hostile.key()
    unknown = generate_key("sk_live")
    bodies: list[bytes] = []
    for secret, place in itertools.product((canary, unknown), canary_places):
        auth = f"Authorization: Bearer {secret}\r\n" if place == "authorization" else (
            "" if place == "query-only" else f"Authorization: Bearer {canary}\r\n")
        target = {"query": f"/api/ai/x?api_key={secret}&a=1",
                  "query-only": f"/api/ai/x?key={secret}",
                  "path": f"/api/ai/{secret}"}.get(place, "/api/ai/x?token=" + secret[:8])
        extra = {"request-id": f"X-Request-Id: {secret}\r\n", "header": f"X-Key: {secret}\r\n",
                 "cookie": f"Cookie: k={secret}\r\n"}.get(place, "")
        head = f"GET {target} HTTP/1.1\r\nHost: gw\r\n{auth}{extra}\r\n"
        answer = await send_raw(hostile.port, head.encode())
        bodies.append(answer.body + str(answer.headers).encode())
        if place == "query-only":
            assert answer.status == 401
    async with aiohttp.ClientSession() as http, http.get(f"{hostile.admin_url}/metrics") as r:
        metrics = await r.text()
    logs = capsys.readouterr().out + capsys.readouterr().err + caplog.text
    upstream_text = " ".join(s.target + str(s.headers) for s in strict.received)
    found = {
        "logs": sum(logs.count(k) for k in (canary, unknown)),
        "metrics": sum(metrics.count(k) for k in (canary, unknown)),
        "bodies": sum(b.count(k.encode()) for b in bodies for k in (canary, unknown)),
        "upstream query": sum(s.target.count(k) for s in strict.received for k in (canary, unknown)
                              if "?" in s.target and k in s.target.split("?", 1)[1]),
    }
    record("CANARY", f"{len(bodies)} requests carrying a canary key in {len(canary_places)} "
           f"places: found {found} (the path and custom headers are the client's own data)")
    assert found == {"logs": 0, "metrics": 0, "bodies": 0, "upstream query": 0}, upstream_text
