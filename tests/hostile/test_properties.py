"""Family 6, properties (Hypothesis, bounded examples): the path normaliser, the Authorization
parser, the origin matcher and the key-format parser hold their promises on generated input."""

from __future__ import annotations

import re
import string
from collections import Counter

import pytest
from aiohttp.test_utils import make_mocked_request
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.errors import GatewayError
from gateway.http import bearer_token
from gateway.keys.model import BASE62, CHECKSUM_LEN, RANDOM_LEN, generate_key, is_well_formed
from gateway.origins import is_origin_allowed
from gateway.routing import BadPath, normalize_path
from tests.hostile.figures import record
from tests.hostile.test_paths import any_decoder

EXAMPLES = 300
BOUNDED = settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                   suppress_health_check=[HealthCheck.too_slow])
RAN: Counter[str] = Counter()
PREFIXES = frozenset({"sk_live", "sk_test"})
LABEL = re.compile(r"[a-z0-9-]+(\.[a-z0-9-]+)*")

path_parts = st.sampled_from(["/", ".", "..", "%2e", "%2E", "%252e", "%25", "%2f", "%5c", "%00",
                              "a", "B", "~", "%41", "%7E", ";", "#", "?", "%c0%ae", "\uff0e",
                              "%ef%bc%8e", "\\", "//", "x=1", "%3b", "%zz", "%"])


@BOUNDED
@given(st.lists(path_parts, max_size=12).map(lambda parts: "/" + "".join(parts)))
def test_normalised_path_is_what_any_decoder_reads(raw: str) -> None:
    RAN["path"] += 1
    try:
        normalized = normalize_path(raw)
    except BadPath:
        return
    path = normalized.path
    segments = path.split("/")
    assert path.startswith("/") and "#" not in path and ";" not in path
    assert not {".", ".."} & set(segments[1:])
    assert normalize_path(path).path == path  # idempotent: what is forwarded reads the same
    lenient = any_decoder(path)
    assert lenient.count("/") <= path.count("/")  # no decoder finds a separator we did not see


tokens = st.text(alphabet=string.printable + "\u00e9\u200b", max_size=60)


@BOUNDED
@given(st.lists(tokens, max_size=3))
def test_bearer_parser_takes_exactly_one_bearer_token(values: list[str]) -> None:
    RAN["authorization"] += 1
    headers = [("Authorization", v) for v in values]
    try:
        request = make_mocked_request("GET", "/", headers=headers)
    except ValueError:
        return
    try:
        token = bearer_token(request)
    except GatewayError as exc:
        assert exc.kind.status in (400, 401)
        assert len(values) != 1 or not values[0].strip().lower().startswith("bearer ") or \
            not values[0].strip()[7:].strip()
        return
    assert len(values) == 1
    scheme, _, rest = values[0].strip().partition(" ")
    assert scheme.lower() == "bearer" and token == rest.strip() and token


hosts = st.one_of(
    st.from_regex(r"[a-zA-Z0-9._*\\%-]{0,12}(\.example\.com)?", fullmatch=True),
    st.from_regex(r"[a-zA-Z0-9-]{1,8}(\.[a-z0-9-]{1,8}){0,2}\.example\.com", fullmatch=True),
)


@BOUNDED
@given(hosts, st.sampled_from(["https", "http"]), st.sampled_from(["", ":443", ":8443"]))
def test_wildcard_origin_admits_dns_labels_only(host: str, scheme: str, port: str) -> None:
    RAN["origin"] += 1
    origin = f"{scheme}://{host}{port}"
    if not is_origin_allowed(origin, ("https://*.example.com",)):
        return
    RAN["origin allowed"] += 1
    assert scheme == "https" and port in ("", ":443")
    below = host.lower().removesuffix(".example.com")
    assert host.lower().endswith(".example.com") and LABEL.fullmatch(below)


@BOUNDED
@given(st.sampled_from(sorted(PREFIXES)), st.data())
def test_key_format_catches_every_single_character_change(prefix: str, data: st.DataObject) -> None:
    RAN["key"] += 1
    key = generate_key(prefix)
    assert is_well_formed(key, PREFIXES)
    assert len(key) == len(prefix) + 1 + RANDOM_LEN + CHECKSUM_LEN
    at = data.draw(st.integers(0, len(key) - 1))
    other = data.draw(st.sampled_from([c for c in BASE62 + "_-" if c != key[at]]))
    assert not is_well_formed(key[:at] + other + key[at + 1:], PREFIXES)


@BOUNDED
@given(st.text(alphabet=BASE62 + "_", max_size=50))
def test_random_text_is_not_a_key(text: str) -> None:
    RAN["key"] += 1
    if is_well_formed(text, PREFIXES):  # only with a valid checksum: 1 in 62**6
        prefix, _, tail = text.rpartition("_")
        assert prefix in PREFIXES and len(tail) == RANDOM_LEN + CHECKSUM_LEN


@pytest.fixture(scope="module", autouse=True)
def figure() -> object:
    yield
    record("PROPERTIES", f"generated examples per property: {dict(RAN)} (a counterexample "
           "fails its test)")
