"""Per-key IP allowlists (README "IP allowlists"): entries parsed and canonicalised once,
IPv4 and IPv6 addresses and CIDRs matched, bad entries refused with the value named."""

from __future__ import annotations

import pytest

from gateway.client_address import allowed_ip, ip_allowlist
from gateway.errors import ValidationError
from gateway.keys.validation import CREATE_FIELDS, validate_fields


@pytest.mark.parametrize(("entry", "stored"), [
    ("203.0.113.7", "203.0.113.7"),
    ("203.0.113.0/24", "203.0.113.0/24"),
    ("0.0.0.0/0", "0.0.0.0/0"),
    ("2001:DB8::1", "2001:db8::1"),
    ("2001:0db8:0000::/32", "2001:db8::/32"),
    ("::/0", "::/0"),
])
def test_entries_are_stored_canonical(entry: str, stored: str) -> None:
    assert allowed_ip(entry) == stored


@pytest.mark.parametrize(("entry", "message"), [
    ("10.0.0.1/8", "'10.0.0.1/8' has host bits set (the network is 10.0.0.0/8)"),
    ("2001:db8::1/32", "'2001:db8::1/32' has host bits set (the network is 2001:db8::/32)"),
    ("10.0.0.0/33", "'10.0.0.0/33' is not an IP address or CIDR"),
    ("300.1.2.3", "'300.1.2.3' is not an IP address or CIDR"),
    ("example.com", "'example.com' is not an IP address or CIDR"),
    (" 10.0.0.1", "' 10.0.0.1' is not an IP address or CIDR"),
    ("", "'' is not an IP address or CIDR"),
    (7, "7 is not an IP address or CIDR"),
])
def test_bad_entries_are_named(entry: object, message: str) -> None:
    with pytest.raises(ValueError) as info:
        allowed_ip(entry)
    assert str(info.value) == message


def test_validation_names_the_field_and_the_value() -> None:
    body = {"name": "k", "allowed_ips": ["10.0.0.0/8", "10.0.0.300"]}
    with pytest.raises(ValidationError) as info:
        validate_fields(body, CREATE_FIELDS, required=("name",))
    assert info.value.errors == {"allowed_ips": "'10.0.0.300' is not an IP address or CIDR"}
    clean = validate_fields({"name": "k", "allowed_ips": ["10.0.0.0/8", "10.0.0.0/8", "::1"]},
                            CREATE_FIELDS, required=("name",))
    assert clean["allowed_ips"] == ("10.0.0.0/8", "::1")  # duplicates dropped, order kept


@pytest.mark.parametrize(("client", "allowed"), [
    ("10.1.2.3", True),  # in 10.0.0.0/8
    ("11.0.0.1", False),
    ("203.0.113.7", True),  # the single address
    ("203.0.113.8", False),
    ("::ffff:10.9.9.9", True),  # IPv4-mapped IPv6: the IPv4 address
    ("2001:db8:abcd::42", True),  # in 2001:db8::/32
    ("2001:db9::1", False),
    ("[2001:db8::5]:443", True),  # a proxy's [v6]:port
    ("10.1.2.3:8080", True),  # ... and v4:port
    ("not-an-address", False),
    ("", False),  # a Unix socket peer
])
def test_matcher(client: str, allowed: bool) -> None:
    matcher = ip_allowlist(("10.0.0.0/8", "203.0.113.7", "2001:db8::/32"))
    assert matcher.allows(client) is allowed


def test_one_matcher_per_list() -> None:
    """Built once per list, however many keys or requests share it: never parsed per request."""
    entries = ("192.0.2.0/24",)
    first = ip_allowlist(entries)
    assert ip_allowlist(tuple(["192.0.2.0/24"])) is first
    assert first.allows("192.0.2.9") and first.allows("192.0.2.9")
    assert first.allows.cache_info().hits >= 1  # type: ignore[attr-defined]
