"""The client-address rule (README "Client address"), without a server: which hop of
``X-Forwarded-For`` is believed, and what a client's limits are counted under."""

from __future__ import annotations

from ipaddress import ip_network

import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request
from multidict import CIMultiDict

from gateway.client_address import (
    address_resolver,
    budget_of,
    chain_resolver,
    forwarded_for_resolver,
    parse_address,
)

TRUSTED = (ip_network("10.0.0.0/8"), ip_network("2001:db8::/32"))


def peer_request(peer: str, *forwarded: str) -> web.Request:
    """A request from ``peer`` with one ``X-Forwarded-For`` header per ``forwarded``."""
    headers = CIMultiDict(("X-Forwarded-For", value) for value in forwarded)
    made = make_mocked_request("GET", "/", headers=headers)
    made._transport_peername = (peer, 1234)  # what request.remote reads
    return made


@pytest.mark.parametrize(
    ("peer", "forwarded", "client", "chain"),
    [
        # no X-Forwarded-For, or an untrusted peer: the peer, whatever it sent
        ("10.1.1.1", (), "10.1.1.1", "10.1.1.1"),
        ("203.0.113.5", ("192.0.2.1",), "203.0.113.5", "203.0.113.5"),
        # the right-most untrusted entry; what the client wrote to its left is not believed
        ("10.1.1.1", ("6.6.6.6, 192.0.2.1",), "192.0.2.1", "192.0.2.1, 10.1.1.1"),
        ("10.1.1.1", ("6.6.6.6, 192.0.2.1, 10.2.2.2",), "192.0.2.1",
         "192.0.2.1, 10.2.2.2, 10.1.1.1"),
        # several headers are one list, in order
        ("10.1.1.1", ("6.6.6.6", "192.0.2.1, 10.2.2.2"), "192.0.2.1",
         "192.0.2.1, 10.2.2.2, 10.1.1.1"),
        # every entry trusted: the left-most
        ("10.1.1.1", ("10.3.3.3, 10.2.2.2",), "10.3.3.3", "10.3.3.3, 10.2.2.2, 10.1.1.1"),
        # garbage stops the walk at the trusted hop that sent it
        ("10.1.1.1", ("192.0.2.1, unknown",), "10.1.1.1", "10.1.1.1"),
        ("10.1.1.1", ("",), "10.1.1.1", "10.1.1.1"),
        # ports and brackets, IPv6, IPv4-mapped peers
        ("10.1.1.1", ("192.0.2.1:4711",), "192.0.2.1", "192.0.2.1, 10.1.1.1"),
        ("10.1.1.1", ("[2001:db9::1]:443",), "2001:db9::1", "2001:db9::1, 10.1.1.1"),
        ("2001:db8::5", ("2001:DB9:0::1",), "2001:db9::1", "2001:db9::1, 2001:db8::5"),
        ("::ffff:10.1.1.1", ("192.0.2.1",), "192.0.2.1", "192.0.2.1, 10.1.1.1"),
    ],
)
def test_the_client_and_the_forwarded_chain(
    peer: str, forwarded: tuple[str, ...], client: str, chain: str
) -> None:
    made = peer_request(peer, *forwarded)
    assert address_resolver(TRUSTED)(made) == client
    assert forwarded_for_resolver(TRUSTED)(made) == chain
    assert chain_resolver(TRUSTED)(made)[0] == client


def test_without_trusted_proxies_the_peer_is_the_client() -> None:
    made = peer_request("10.1.1.1", "192.0.2.1")
    assert address_resolver(())(made) == "10.1.1.1"
    assert forwarded_for_resolver(())(made) == "10.1.1.1"


@pytest.mark.parametrize(
    ("text", "parsed"),
    [("192.0.2.1", "192.0.2.1"), (" 192.0.2.1", None), ("192.0.2.1:80", "192.0.2.1"),
     ("[::1]:80", "::1"), ("::1", "::1"), ("::ffff:192.0.2.1", "192.0.2.1"), ("x", None),
     ("[::1", "::1"), ("1.2.3.4.5", None)],
)
def test_parse_address(text: str, parsed: str | None) -> None:
    address = parse_address(text)
    assert (None if address is None else str(address)) == parsed


def test_an_ipv6_client_is_counted_by_its_64() -> None:
    assert budget_of("192.0.2.1") == "192.0.2.1"
    assert budget_of("2001:db8:1:2:3:4:5:6") == "2001:db8:1:2::/64"
    assert budget_of("2001:db8:1:2::9") == budget_of("2001:db8:1:2:ffff::1")
    assert budget_of("::ffff:192.0.2.1") == "192.0.2.1"
