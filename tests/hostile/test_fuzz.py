"""Raw-socket fuzz of the public listener (Hypothesis): request heads built from hostile pieces
(methods, targets, header names and values, framing headers, bodies) sent on fresh connections.

Whatever arrives, the gateway answers with a status below 500 or one of the upstream errors it
documents (502, 504), every error it writes is problem+json, it never answers 500 (a bug), the
upstream never receives a request h11 refuses, and the gateway still serves a normal request
afterwards. ``GATEWAY_FUZZ_EXAMPLES`` sets the count (``make fuzz`` runs many more than CI).
"""

from __future__ import annotations

import os
from collections import Counter

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import Gateway
from tests.hostile.conftest import send_raw
from tests.hostile.figures import record
from tests.hostile.upstream import StrictUpstream

EXAMPLES = int(os.environ.get("GATEWAY_FUZZ_EXAMPLES", "2000"))
FUZZ = settings(
    max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

TOKEN = st.text("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.!~", min_size=1,
                max_size=12)
METHOD = st.one_of(st.sampled_from(["GET", "POST", "PUT", "DELETE", "OPTIONS", "HEAD",
                                    "CONNECT", "TRACE", "get", "G\x00T"]), TOKEN)
SEGMENT = st.one_of(
    st.sampled_from(["..", ".", "%2e%2e", "%2F", "%5C", "%00", "%252e", ";x", "..;", "%c0%ae",
                     "\uff0e\uff0e", "", "api", "ai", "v1", "retrievers", "r1", "public", "s"]),
    st.text(min_size=0, max_size=8),
)
TARGET = st.one_of(
    st.lists(SEGMENT, max_size=8).map(lambda parts: "/" + "/".join(parts)),
    st.sampled_from(["*", "http://evil.example/api/ai/x", "//evil/api/ai/", "/api/ai/#frag"]),
)
FRAMING = st.sampled_from([
    [], [("Content-Length", "0")], [("Content-Length", "5")], [("Content-Length", "-1")],
    [("Content-Length", "5"), ("Content-Length", "6")], [("Transfer-Encoding", "chunked")],
    [("Transfer-Encoding", "chunked"), ("Content-Length", "3")],
    [("Transfer-Encoding", "gzip, chunked")], [("Expect", "100-continue")],
])
HEADER = st.tuples(
    st.one_of(TOKEN, st.sampled_from(["Authorization", "X-Workspace-Id", "X_Api_Key_Id",
                                      "Host", "X-Namespace", "Origin", " X-Pad"])),
    st.text(max_size=40),
)
BODY = st.one_of(st.just(""), st.sampled_from(["hello", "0\r\n\r\n", "5\r\nhello\r\n0\r\n\r\n",
                                                "zz\r\n", "GET /canary HTTP/1.1\r\n\r\n"]))
OUTCOMES: Counter[str] = Counter()


def head(method: str, target: str, headers: list[tuple[str, str]], body: str) -> bytes:
    lines = [f"{method} {target} HTTP/1.1", "Host: gw"] + [f"{k}: {v}" for k, v in headers]
    text = "\r\n".join(lines) + "\r\n\r\n" + body
    return text.encode("utf-8", "surrogatepass")


@FUZZ
@given(METHOD, TARGET, st.lists(HEADER, max_size=6), FRAMING, BODY)
async def test_raw_socket_fuzz(
    hostile: Gateway, strict: StrictUpstream, method: str, target: str,
    headers: list[tuple[str, str]], framing: list[tuple[str, str]], body: str,
) -> None:
    answer = await send_raw(hostile.port, head(method, target, headers + framing, body),
                            timeout=0.5, close_wait=0.2)
    OUTCOMES["unanswered" if answer.status == 0 else f"{answer.status // 100}xx"] += 1
    assert answer.status != 500, (method, target, headers, framing, body)
    assert answer.status < 500 or answer.status in (502, 504)
    if answer.status >= 400:
        assert answer.header("Content-Type") == "application/problem+json", answer
    assert strict.violations == []
    assert not any("canary" in path for path in strict.paths())


async def test_the_gateway_still_serves_after_the_fuzz(hostile: Gateway) -> None:
    """Runs after the fuzz in file order; records its figure."""
    key = await hostile.key()
    answer = await send_raw(hostile.port, (f"GET /api/ai/ok HTTP/1.1\r\nHost: gw\r\n"
                                           f"Authorization: Bearer {key}\r\n\r\n").encode())
    assert answer.status == 200
    total = sum(OUTCOMES.values())
    record("FUZZ", f"{total} generated requests: {dict(sorted(OUTCOMES.items()))}; 0 answered "
           f"500, every error problem+json, 0 h11 violations or canary hits upstream")
