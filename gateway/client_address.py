"""Who the client is (README "Client address"): the one rule the limiter, ``X-Forwarded-For``
towards the upstream and the access log all use.

Without ``trusted_proxies`` the client is the socket peer, and whatever ``X-Forwarded-For`` the
client sent is ignored. When the peer is in a trusted range, ``X-Forwarded-For`` is walked from
the right (the entry the peer itself appended) leftwards, and the client is the first address
that is not trusted: entries further left were written by that client and prove nothing. If
every entry is trusted, the client is the left-most one; an entry that is not an address stops
the walk at the trusted hop that sent it (a proxy that writes garbage is not believed further).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from ipaddress import (
    IPv4Address,
    IPv4Network,
    IPv6Address,
    IPv6Network,
    ip_address,
    ip_network,
)

from aiohttp import hdrs, web

Network = IPv4Network | IPv6Network
Address = IPv4Address | IPv6Address
Resolver = Callable[[web.BaseRequest], tuple[str, ...]]


def peer_of(request: web.BaseRequest) -> str:
    return request.remote or ""


def chain_resolver(trusted: Sequence[Network]) -> Resolver:
    """``request`` -> the hops the gateway believes, client first, the peer last (one entry
    when the peer is not trusted or nothing is: the peer)."""
    if not trusted:
        return lambda request: (peer_of(request),)
    networks = tuple(trusted)

    def is_trusted(address: Address) -> bool:
        return any(address in network for network in networks)

    def chain(request: web.BaseRequest) -> tuple[str, ...]:
        peer = parse_address(peer_of(request))
        if peer is None or not is_trusted(peer):
            return (peer_of(request) if peer is None else str(peer),)
        hops = [str(peer)]
        for entry in reversed(forwarded_for(request)):
            address = parse_address(entry)
            if address is None:
                break  # not an address: the trusted hop that sent it is the client
            hops.append(str(address))
            if not is_trusted(address):
                break
        return tuple(reversed(hops))

    return chain


def address_resolver(trusted: Sequence[Network]) -> Callable[[web.BaseRequest], str]:
    """``request`` -> the client's address (the first hop of ``chain_resolver``'s)."""
    if not trusted:
        return peer_of
    chain = chain_resolver(trusted)
    return lambda request: chain(request)[0]


def forwarded_for(request: web.BaseRequest) -> list[str]:
    """Every ``X-Forwarded-For`` entry, in order; several headers read as one list (RFC 9110
    §5.3)."""
    values = request.headers.getall(hdrs.X_FORWARDED_FOR, ())
    return [entry.strip() for value in values for entry in value.split(",")]


def parse_address(text: str) -> Address | None:
    """An IP address, also as ``[v6]:port`` or ``v4:port`` (some proxies add the port); an
    IPv4-mapped IPv6 address is its IPv4 address. None for anything else."""
    if text.startswith("["):
        text = text[1:].partition("]")[0]
    elif text.count(":") == 1:
        text = text.partition(":")[0]
    try:
        address = ip_address(text)
    except ValueError:
        return None
    if isinstance(address, IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


@functools.lru_cache(maxsize=4096)
def budget_of(client: str) -> str:
    """What an address's limits are counted under: an IPv4 address, or the /64 an IPv6 address
    is in (one host is usually given a whole /64, so counting /128s would give it 2^64
    budgets). Cached: the same addresses come back request after request."""
    if ":" not in client:
        return client
    address = parse_address(client)
    if address is None or isinstance(address, IPv4Address):
        return client if address is None else str(address)
    return str(IPv6Network((address, 64), strict=False))


def forwarded_for_resolver(trusted: Sequence[Network]) -> Callable[[web.BaseRequest], str]:
    """``request`` -> the ``X-Forwarded-For`` the upstream gets: the hops believed, client
    first (without trusted proxies: the peer alone; the client's own copy is never kept)."""
    if not trusted:
        return peer_of
    chain = chain_resolver(trusted)
    return lambda request: ", ".join(chain(request))


# -- per-key IP allowlists (README "IP allowlists") ---------------------------------------------

ALLOWED_IPS_MAX = 1000  # entries on one key: far above any egress range list


def allowed_ip(text: object) -> str:
    """One allowlist entry as stored: an address (``203.0.113.7``, ``2001:db8::1``) or a CIDR
    (``203.0.113.0/24``, ``2001:db8::/32``) in canonical form. ``ValueError`` naming the value
    otherwise, host bits set included (``10.0.0.1/8`` is a typo for one of two things)."""
    if not isinstance(text, str) or not text or text != text.strip():
        raise ValueError(f"{text!r} is not an IP address or CIDR")
    try:
        if "/" not in text:
            return str(ip_address(text))
        return str(ip_network(text, strict=True))
    except ValueError:
        try:
            network = ip_network(text, strict=False)
        except ValueError:
            raise ValueError(f"{text!r} is not an IP address or CIDR") from None
        raise ValueError(f"{text!r} has host bits set (the network is {network})") from None


class IpAllowlist:
    """Whether a client address is in a key's ``allowed_ips``: the networks parsed once per
    list (``ip_allowlist``), each address judged once (the same clients come back)."""

    __slots__ = ("allows", "networks")

    def __init__(self, entries: tuple[str, ...]) -> None:
        self.networks = tuple(ip_network(entry, strict=False) for entry in entries)
        self.allows: Callable[[str], bool] = functools.lru_cache(maxsize=1024)(self._allows)

    def _allows(self, client: str) -> bool:
        address = parse_address(client)
        if address is None:
            return False  # no address to judge (a Unix socket peer): not in any list
        return any(address in network for network in self.networks)


@functools.lru_cache(maxsize=4096)
def ip_allowlist(entries: tuple[str, ...]) -> IpAllowlist:
    """The matcher of one ``allowed_ips`` list, built once however many keys or requests
    share it (the request path asks per request: a dict lookup)."""
    return IpAllowlist(entries)
