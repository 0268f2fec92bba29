"""Family 2, paths and destination: ``..`` in every encoding (``%2e``, ``%252e``, overlong
UTF-8, fullwidth dots), ``%2F``, ``%5C``, ``%00``, ``//``, ``;``, fragments, absolute-form
targets, ``Host``/``X-Forwarded-Host``/``X-Original-URL``/``X-Rewrite-URL`` pointing elsewhere,
``CONNECT``: nothing is forwarded outside its route's prefix, by any decoder's reading, and the
path that was authorized (a key scoped to one retriever) is the path forwarded."""

from __future__ import annotations

import itertools
import re
import unicodedata
from urllib.parse import unquote

from tests.conftest import Gateway
from tests.hostile.conftest import Answer, bounded, send_raw
from tests.hostile.figures import record
from tests.hostile.upstream import StrictUpstream

DOTS = ("..", "%2e%2e", "%2E%2E", ".%2e", "%2e.", "%252e%252e", "%25252e%25252e",
        "%c0%ae%c0%ae", "%e0%80%ae%e0%80%ae", "%ef%bc%8e%ef%bc%8e", "\uff0e\uff0e", "..;",
        "%2e%2e;", "..%00", "..%3b", ".%00.")
SLASHES = ("/", "%2f", "%2F", "%5c", "\\", "%255c", "%252f", "//", "/./", "/;x=1/")
# (route prefix as the client writes it, the prefix the upstream must see it under)
ROUTES = (("/api/ai/", "/api/ai/"), ("/s/", "/base/"), ("/v1/retrievers/r1/", "/v1/retrievers/r1/"))
ELSEWHERE = ("Host: evil.example", "X-Forwarded-Host: evil.example", "X-Original-URL: /admin",
             "X-Rewrite-URL: /admin", "X-HTTP-Method-Override: DELETE",
             "X-Method-Override: DELETE", "X-Real-IP: 10.0.0.1")


def any_decoder(target: str) -> str:
    """What the most lenient upstream could read: decoded until stable, NFKC, ``\\`` as ``/``,
    ``;``-parameters cut, dot segments resolved."""
    path = target.split("?")[0]
    for _ in range(4):
        path = unquote(path, errors="replace")
    path = unicodedata.normalize("NFKC", path).replace("\\", "/")
    path = re.sub(r";[^/]*", "", path)
    out: list[str] = []
    for segment in path.split("/"):
        if segment == "..":
            if out:
                out.pop()
        elif segment != ".":
            out.append(segment)
    return "/".join(out) or "/"


def corpus() -> list[str]:
    targets = []
    for (prefix, _), dots, slash in itertools.product(ROUTES, DOTS, SLASHES):
        targets.append(f"{prefix}x{slash}{dots}{slash}{dots}{slash}secret")
        targets.append(f"{prefix}{dots}{slash}r2{slash}x")
    for prefix, _ in ROUTES:
        targets += [f"{prefix}x#frag", f"{prefix}x#/../../admin", f"{prefix}x?a=1#f",
                    f"http://evil.example{prefix}x", f"//evil.example{prefix}x",
                    f"{prefix}x;jsessionid=1", f"{prefix}.;/x", f"{prefix}%2e/x"]
    return targets


def forwarded_outside(target: str) -> bool:
    seen = any_decoder(target)
    return not any(seen.startswith(base.rstrip("/") + "/") for _, base in ROUTES)


async def test_path_corpus(hostile: Gateway, strict: StrictUpstream) -> None:
    key = await hostile.key(scopes=[{"resource_id": "r1", "operations": ["read"]}])
    targets = corpus()
    elsewhere = ("", "X-Forwarded-Host: evil.example\r\n")
    heads = [(f"GET {t} HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {key}\r\n"
              f"{extra}\r\n") for t in targets for extra in elsewhere]
    heads += [f"GET /api/ai/x HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {key}\r\n"
              f"{extra}\r\n\r\n" for extra in ELSEWHERE]
    heads += [f"CONNECT evil.example:443 HTTP/1.1\r\nHost: evil.example:443\r\n"
              f"Authorization: Bearer {key}\r\n\r\n"]
    answers: list[Answer] = await bounded([
        lambda h=h: send_raw(hostile.port, h.encode("utf-8")) for h in heads
    ])
    outside = [t for t in strict.paths() if forwarded_outside(t)]
    wrong_resource = [t for t in strict.paths() if t.startswith("/v1/")
                      and not any_decoder(t).startswith("/v1/retrievers/r1/")]
    raw_bits = [t for t in strict.paths() if ";" in t or "#" in t]
    rewrites = {"x-original-url", "x-rewrite-url", "x-http-method-override", "x-method-override",
                "x-real-ip"}
    leaked = [(name, v) for seen in strict.received for name, v in seen.headers
              if name in rewrites or ("evil" in v and name != "x-forwarded-host")]
    errors = [a for a in answers if a.status >= 500 or a.status == 0]
    record("PATH", f"{len(heads)} variants, {len(strict.received)} forwarded, "
           f"{len(outside)} forwarded outside prefix, {len(wrong_resource)} outside the "
           f"authorized resource, {len(raw_bits)} with ';' or '#', {len(leaked)} rewrite/"
           f"override/host headers leaked, {len(errors)} 5xx or unanswered")
    assert outside == []
    assert wrong_resource == []
    assert raw_bits == []
    assert leaked == []
    assert errors == []


async def test_semicolon_parameters_are_refused(hostile: Gateway, strict: StrictUpstream) -> None:
    key = await hostile.key()
    for target in ("/api/ai/..;/x", "/api/ai/x;jsessionid=1", "/api/ai/x/..;/y"):
        answer = await send_raw(hostile.port, (f"GET {target} HTTP/1.1\r\nHost: gw\r\n"
                                               f"Authorization: Bearer {key}\r\n\r\n").encode())
        assert answer.status == 400, target
        assert answer.header("Content-Type") == "application/problem+json"
    assert strict.received == []


async def test_fragment_is_never_forwarded(hostile: Gateway, strict: StrictUpstream) -> None:
    key = await hostile.key()
    for target in ("/api/ai/x#frag", "/api/ai/x?a=1#frag"):
        answer = await send_raw(hostile.port, (f"GET {target} HTTP/1.1\r\nHost: gw\r\n"
                                               f"Authorization: Bearer {key}\r\n\r\n").encode())
        assert answer.status in (200, 400), target
    assert all("#" not in t and "frag" not in t for t in strict.paths())


async def test_override_and_rewrite_headers_are_dropped(
    hostile: Gateway, strict: StrictUpstream
) -> None:
    key = await hostile.key()
    head = f"GET /api/ai/x HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {key}\r\n"
    head += "".join(h + "\r\n" for h in ELSEWHERE[2:]) + "\r\n"
    assert (await send_raw(hostile.port, head.encode())).status == 200
    names = {name for name, _ in strict.received[-1].headers}
    assert names.isdisjoint({"x-original-url", "x-rewrite-url", "x-http-method-override",
                             "x-method-override", "x-real-ip"})


async def test_host_and_absolute_form_do_not_pick_the_destination(
    hostile: Gateway, strict: StrictUpstream
) -> None:
    key = await hostile.key()
    own_host = strict.url.removeprefix("http://")
    for target, host in (("/api/ai/x", "evil.example"), ("http://evil.example/api/ai/x", "gw"),
                         ("http://evil.example:1/api/ai/x", "evil.example:1")):
        answer = await send_raw(hostile.port, (f"GET {target} HTTP/1.1\r\nHost: {host}\r\n"
                                               f"Authorization: Bearer {key}\r\n\r\n").encode())
        assert answer.status in (200, 400), target
        if answer.status == 200:
            assert strict.received[-1].all("host") == [own_host]
            assert strict.received[-1].target == "/api/ai/x"
