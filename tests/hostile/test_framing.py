"""Family 1, framing: a generated corpus of ~2 000 raw requests (CL+TE, repeated CL/TE, odd
chunk sizes, bare LF, obs-fold, chunk extensions with CR, a smuggled second request aimed at
a canary path, ``Expect: 100-continue``, empty and compressed bodies). Each is either refused
(4xx and the connection closed), left unanswered with nothing forwarded (a body that never
ends), or forwarded as exactly one request that h11 parses, never with both Content-Length
and Transfer-Encoding nor a Content-Length unequal to the body. The canary is never reached."""

from __future__ import annotations

import gzip
import itertools
import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from tests.conftest import Gateway
from tests.hostile.conftest import Answer, bounded, send_raw
from tests.hostile.figures import record
from tests.hostile.upstream import StrictUpstream

CORPUS_SIZE = 2000
DATA = {"plain": b"abcd", "empty": b"", "gzip": gzip.compress(b"abcd", mtime=0)}
TE_VALUES = (None, "chunked", "Chunked", " chunked", "chunked ", "chunked, chunked",
             "gzip, chunked", "chunked, identity", "identity", "xchunked", "chunked\x0b",
             "\tchunked")
TE_SHAPES = ("plain", "lower", "space-before-colon", "underscore", "obs-fold", "twice")
CL_SHAPES = (None, "exact", "exact, exact", "twice-same", "twice-differ", "+exact", "-1",
             "0xexact", "exact-with-space", "0exact", "1_0")
SIZE_SPELLINGS: dict[str, Callable[[int], str]] = {
    "hex": lambda n: f"{n:x}",
    "zero-padded": lambda n: f"0{n:x}",
    "0x": lambda n: f"0x{n:x}",
    "plus": lambda n: f"+{n:x}",
    "minus": lambda n: f"-{n:x}",
    "underscore": lambda n: f"{n:x}_",
    "space": lambda n: f"{n:x} ",
    "extension": lambda n: f"{n:x};ext=1",
    "extension-cr": lambda n: f"{n:x};ext\r=1",
    "upper": lambda n: f"{n:X}",
    "tab": lambda n: f"{n:x}\t",
}


@dataclass(frozen=True)
class Case:
    te: str | None
    te_shape: str
    cl: str | None
    spelling: str
    data: str
    expect: bool
    bare_lf: bool
    smuggle: bool

    def payload(self, index: int, key: str) -> bytes:
        eol = "\n" if self.bare_lf else "\r\n"
        data = DATA[self.data]
        body = self.chunked(data) if self.te is not None else data
        if self.smuggle:  # a second request inside the body by one reading, after it by another
            body += f"GET /public/canary-{index} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
        lines = [f"POST /api/ai/f/{index} HTTP/1.1", "Host: gateway",
                 f"Authorization: Bearer {key}"]
        lines += self.te_lines() + self.cl_lines(len(body))
        if self.expect:
            lines.append("Expect: 100-continue")
        if self.data == "gzip":
            lines.append("Content-Encoding: gzip")
        return (eol.join(lines) + eol + eol).encode("latin-1") + body

    def chunked(self, data: bytes) -> bytes:
        size = SIZE_SPELLINGS[self.spelling](len(data)).encode("latin-1")
        if not data:
            return size + b"\r\n\r\n"
        return size + b"\r\n" + data + b"\r\n0\r\n\r\n"

    def te_lines(self) -> list[str]:
        if self.te is None:
            return []
        value = self.te
        return {
            "plain": [f"Transfer-Encoding: {value}"],
            "lower": [f"transfer-encoding: {value}"],
            "space-before-colon": [f"Transfer-Encoding : {value}"],
            "underscore": [f"Transfer_Encoding: {value}"],
            "obs-fold": ["Transfer-Encoding:", f" {value}"],
            "twice": [f"Transfer-Encoding: {value}", "Transfer-Encoding: identity"],
        }[self.te_shape]

    def cl_lines(self, length: int) -> list[str]:
        if self.cl is None:
            return []
        if self.cl == "twice-same":
            return [f"Content-Length: {length}"] * 2
        if self.cl == "twice-differ":
            return [f"Content-Length: {length}", f"Content-Length: {length + 1}"]
        if self.cl == "exact-with-space":
            return [f"Content-Length: {length} "]
        value = self.cl.replace("exact", str(length)).replace("0x" + str(length), f"0x{length:x}")
        return [f"Content-Length: {value}"]


def is_coherent(values: tuple[object, ...]) -> bool:
    te, te_shape, cl, spelling, *_rest, smuggle = values
    # with no Content-Length a "smuggled" request is only a pipelined one; and without
    # Transfer-Encoding its shape and the chunk spelling do not apply
    if smuggle and cl is None:
        return False
    return te is not None or (te_shape == "plain" and spelling == "hex")


def corpus() -> list[Case]:
    """Every well-framed variant near the valid forms, then a seeded sample of the rest."""
    near_valid = itertools.product((None, "chunked"), ("plain", "lower"), (None, "exact"),
                                   ("hex", "upper", "zero-padded", "extension"), DATA,
                                   (False, True), (False, True), (False, True))
    everything = itertools.product(TE_VALUES, TE_SHAPES, CL_SHAPES, SIZE_SPELLINGS, DATA,
                                   (False, True), (False, True), (False, True))
    first = list(dict.fromkeys(Case(*v) for v in near_valid if is_coherent(v)))
    seen = set(first)
    rest = [c for v in everything if is_coherent(v) and (c := Case(*v)) not in seen]
    return first + random.Random(17).sample(rest, CORPUS_SIZE - len(first))


def outcome(answer: Answer, forwarded: int) -> str:
    if 200 <= answer.status < 300 and forwarded == 1:
        return "forwarded"
    if 400 <= answer.status < 500 and answer.closed and forwarded == 0:
        return "refused"
    if answer.status == 0 and forwarded == 0:
        return "unanswered"  # a body that never ends: the gateway waits, forwards nothing whole
    return f"BAD status={answer.status} closed={answer.closed} forwarded={forwarded}"


async def test_framing_corpus(hostile: Gateway, strict: StrictUpstream) -> None:
    key = await hostile.key()
    cases = corpus()
    answers = await bounded([
        lambda i=i, case=case: send_raw(hostile.port, case.payload(i, key), timeout=0.5)
        for i, case in enumerate(cases)
    ])
    hits = Counter(t.split("?")[0] for t in strict.paths())
    outcomes = Counter()
    bad: list[str] = []
    for i, (case, answer) in enumerate(zip(cases, answers, strict=True)):
        result = outcome(answer, hits[f"/api/ai/f/{i}"])
        outcomes[result.split()[0]] += 1
        if result.startswith("BAD"):
            bad.append(f"{case}: {result}")
    canary = sum(1 for t in strict.paths() if "canary" in t)
    record("FRAMING", f"{len(cases)} payloads: {outcomes['forwarded']} forwarded as one request, "
           f"{outcomes['refused']} refused+closed, {outcomes['unanswered']} held unforwarded, "
           f"{len(bad)} other; {canary} canary hits, {len(strict.violations)} h11/framing "
           f"violations upstream")
    assert canary == 0
    assert strict.violations == []
    assert bad == [], "\n".join(bad[:20])
    assert outcomes["forwarded"] > 0 and outcomes["refused"] > 0
