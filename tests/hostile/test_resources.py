"""Family 4, resources: header count and size, request line length, bodies past the limit by
Content-Length and by chunked stream (413 before more than the limit reaches the upstream), a
chunked upload whose framing breaks mid-stream (ends promptly, upstream aborted, concurrency
slot back), and metrics cardinality under random paths and keys."""

from __future__ import annotations

import asyncio
import json
import random
import re
import string
import time

import aiohttp

from gateway.keys.model import generate_key
from tests.conftest import Gateway, GatewayFactory, bearer
from tests.hostile.conftest import UNLIMITED, Answer, bounded, hostile_routes, send_raw
from tests.hostile.figures import FIGURES, record
from tests.hostile.upstream import StrictUpstream

LIMIT = 64 * 1024  # the hostile models route's max_body_bytes


def head(key: str, extra: str = "", target: str = "/api/ai/x", method: str = "GET") -> bytes:
    return (f"{method} {target} HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {key}\r\n"
            f"{extra}\r\n").encode()


def is_problem(answer: Answer, status: int, code: str) -> bool:
    """``status`` as problem+json with ``code`` and the request id its header names."""
    if answer.status != status or answer.header("Content-Type") != "application/problem+json":
        return False
    body = json.loads(answer.body)
    request_id = answer.header("X-Request-Id")
    return body["code"] == code and bool(request_id) and body["request_id"] == request_id


async def test_oversized_heads_get_problem_json(hostile: Gateway, strict: StrictUpstream) -> None:
    key = await hostile.key()
    cases = {
        "request line 9 KiB": (head(key, target="/api/ai/" + "a" * 9000), 414, "uri_too_long"),
        "query 9 KiB": (head(key, target="/api/ai/x?q=" + "a" * 9000), 414, "uri_too_long"),
        "one header 9 KiB": (head(key, "X-Big: " + "a" * 9000 + "\r\n"), 431,
                             "headers_too_large"),
        "101 headers": (head(key, "".join(f"X-H{i}: v\r\n" for i in range(101))), 431,
                        "headers_too_large"),
        "unknown method": (head(key, method="FROB"), 400, "bad_request"),
        "header name 9 KiB": (head(key, "X" * 9000 + ": v\r\n"), 431, "headers_too_large"),
        "20 headers of 4 KiB": (head(key, "".join(f"X-H{i}: {'a' * 4096}\r\n" for i in range(20))),
                                431, "headers_too_large"),
    }
    answers = {name: await send_raw(hostile.port, payload) for name, (payload, *_) in
               cases.items()}
    wrong = [name for name, (_, status, code) in cases.items()
             if not is_problem(answers[name], status, code) or not answers[name].closed]
    record("HEADS", f"{len(cases)} oversized or unknown heads: {len(cases) - len(wrong)} "
           f"answered with problem+json 414/431/400 and closed, {len(strict.received)} forwarded")
    assert wrong == [], {n: (answers[n].status, answers[n].body[:80]) for n in wrong}
    assert strict.received == []


async def test_limits_are_configurable(
    make_gateway: GatewayFactory, strict: StrictUpstream
) -> None:
    limits = {"max_target_bytes": 1000, "max_header_line_bytes": 500, "max_headers": 10,
              "max_header_bytes": 2048, "admin_max_body_bytes": 100}
    gateway = await make_gateway(routes=hostile_routes(strict.url), defaults=UNLIMITED,
                                 limits=limits)
    key = await gateway.key()
    at_limit = "X-A: " + "a" * (500 - len("X-A: ")) + "\r\n"
    cases = [
        (head(key, target="/api/ai/" + "a" * 900), 200),
        (head(key, target="/api/ai/" + "a" * 1000), 414),
        (head(key, at_limit), 200),
        (head(key, "X-A: " + "a" * 500 + "\r\n"), 431),
        (head(key, "".join(f"X-H{i}: v\r\n" for i in range(9))), 431),  # 11 with Host, Auth
        (head(key, "".join(f"X-H{i}: {'a' * 400}\r\n" for i in range(6))), 431),  # > 2048
    ]
    for payload, status in cases:
        assert (await send_raw(gateway.port, payload)).status == status, payload[:60]
    admin = await gateway.admin_key()
    admin_port = int(gateway.admin_url.rsplit(":", 1)[1])
    body = b'{"name": "' + b"a" * 100 + b'"}'
    answer = await send_raw(admin_port, (
        f"POST /admin/v1/workspaces HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer {admin}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n").encode() + body)
    assert is_problem(answer, 413, "body_too_large"), answer


async def test_bodies_past_the_limit(hostile: Gateway, strict: StrictUpstream) -> None:
    key = await hostile.key()
    by_length = head(key, f"Content-Length: {LIMIT + 1}\r\n", method="POST") + b"a" * 100
    answer = await send_raw(hostile.port, by_length)
    assert is_problem(answer, 413, "payload_too_large"), answer
    reader, writer = await asyncio.open_connection("127.0.0.1", hostile.port)
    writer.write(head(key, "Transfer-Encoding: chunked\r\n", method="POST"))
    chunk = b"a" * 8192
    sent, status = 0, 0
    try:
        while sent < 4 * LIMIT:
            writer.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            await writer.drain()
            sent += len(chunk)
            await asyncio.sleep(0)
        line = await asyncio.wait_for(reader.readline(), 5)
        status = int(line.split()[1])
    except ConnectionError:
        status = 413 if strict.aborted else 0  # the gateway closed mid-upload: acceptable
    finally:
        writer.close()
    reached = max((len(s.body) for s in strict.received), default=0)
    record("BODY", f"CL {LIMIT + 1} > limit {LIMIT}: {answer.status} before reading; chunked "
           f"{sent} bytes: {status}, {reached} bytes reached the upstream whole, "
           f"{strict.aborted} upstream exchanges aborted")
    assert status == 413
    assert reached <= LIMIT


async def test_chunked_upload_with_broken_framing_ends_promptly(
    hostile: Gateway, strict: StrictUpstream
) -> None:
    key = await hostile.key(concurrency_limit=1)
    reader, writer = await asyncio.open_connection("127.0.0.1", hostile.port)
    writer.write(head(key, "Transfer-Encoding: chunked\r\n", method="POST") + b"4\r\nabcd\r\n")
    await writer.drain()
    await asyncio.sleep(0.2)  # the first chunk is forwarded: the upstream exchange is open
    started = time.monotonic()
    writer.write(b"zz-not-a-size\r\n")
    await writer.drain()
    line = await asyncio.wait_for(reader.readline(), 3)
    took = time.monotonic() - started
    writer.close()
    assert int(line.split()[1]) == 400
    url = f"{hostile.url}/api/ai/x"
    async with aiohttp.ClientSession() as http, http.get(url, headers=bearer(key)) as response:
        assert response.status == 200  # the key's only concurrency slot is back
    record("BROKEN-CHUNKED", f"framing broken after the first chunk: 400 in "
           f"{took * 1000:.0f} ms, {strict.aborted} upstream exchange aborted, "
           "concurrency slot released")
    assert strict.aborted == 1


async def test_metrics_cardinality_is_bounded(hostile: Gateway, strict: StrictUpstream) -> None:
    key = await hostile.key()

    async def scrape() -> int:
        async with aiohttp.ClientSession() as http, http.get(f"{hostile.admin_url}/metrics") as r:
            text = await r.text()
        return len([x for x in text.splitlines() if x and not x.startswith("#")])

    rng = random.Random(4)

    def word() -> str:
        return "".join(rng.choices(string.ascii_letters + string.digits, k=12))

    def payloads() -> list[bytes]:
        return [head(rng.choice((key, generate_key("sk_live"), word())),
                     target=rng.choice(("/api/ai/", "/v1/retrievers/", "/", "/public/"))
                     + word() + "?" + word())
                for _ in range(400)]

    # the first round meets each (route, method, status class) once; the second, with new
    # random paths and keys, must add no series at all
    await bounded([lambda p=p: send_raw(hostile.port, p, close_wait=0.0) for p in payloads()])
    before = await scrape()
    await bounded([lambda p=p: send_raw(hostile.port, p, close_wait=0.0) for p in payloads()])
    after = await scrape()
    text = ""
    async with aiohttp.ClientSession() as http, http.get(f"{hostile.admin_url}/metrics") as r:
        text = await r.text()
    leaked = re.findall(r"sk_live_|/api/ai/[A-Za-z0-9]{12}", text)
    record("METRICS", f"400 more random paths and keys: {before} -> {after} series, "
           f"{len(leaked)} paths or keys in labels")
    assert after == before
    assert leaked == []
    assert FIGURES  # the figures reach the terminal summary
