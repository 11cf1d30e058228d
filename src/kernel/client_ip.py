"""Who is calling, by address: the one rule for "the client IP" (API.md, "Edge limits").

The client IP is the peer address, or, only when the peer is one of TRUSTED_PROXIES, the
right-most X-Forwarded-For entry that is not itself a trusted proxy: each proxy appends
the address it was reached from, so everything left of the first untrusted entry was
written by the client and may be forged.

`ClientAddressMiddleware` applies the rule once per request, outermost, and puts the
answer where every reader looks: `scope["client"]` (so `request.client.host`, the
`ClientIP` dependency, the access log, sessions, security events and the per-IP limits
all agree) and `current_client` (for the hashing slots, which have no request at hand).
It does in the app what uvicorn's `proxy_headers` would do in the server, so that any
ASGI server, and the tests' in-process transport, see the same answer; `userapi serve`
turns uvicorn's own handling off so that it is not applied twice.
"""

import ipaddress
from collections.abc import Sequence
from contextvars import ContextVar
from functools import lru_cache

from starlette.types import ASGIApp, Receive, Scope, Send

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
# An IPv6 subscriber gets a /64 (RFC 6177): the addresses in it are one client's to pick.
IPV6_CLIENT_PREFIX = 64

# The calling client's limit key (see limit_key) for the request being served; None
# outside a request or when the peer is not an IP (a Unix socket).
current_client: ContextVar[str | None] = ContextVar("current_client", default=None)


def parse_trusted_proxies(value: str) -> tuple[IPNetwork, ...]:
    """Comma-separated addresses or CIDR networks; ValueError naming the bad entry."""
    networks: list[IPNetwork] = []
    for entry in (part.strip() for part in value.split(",")):
        if not entry:
            continue
        try:
            networks.append(ipaddress.ip_network(entry))
        except ValueError as error:
            raise ValueError(
                f"{entry!r} is not an address or CIDR network (10.0.0.0/8, ::1): {error}"
            ) from None
    return tuple(networks)


# Parsing an address costs more than the rest of the rule, and a client sends the same
# one request after request: the parsed forms of the last few thousand are kept.
ADDRESSES_KEPT = 4096


@lru_cache(maxsize=ADDRESSES_KEPT)
def _address(text: str) -> IPAddress | None:
    """An address as proxies write it: bare, `v4:port` or `[v6]:port`; None if it is not one."""
    text = text.strip()
    if text.startswith("["):
        text = text[1:].partition("]")[0]
    elif text.count(":") == 1:
        text = text.partition(":")[0]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    # ::ffff:192.0.2.1 is the IPv4 client 192.0.2.1 seen through a dual-stack socket.
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        return address.ipv4_mapped
    return address


def _trusted(address: IPAddress, proxies: Sequence[IPNetwork]) -> bool:
    return any(address in network for network in proxies)


def resolve_client_ip(
    peer: str | None, forwarded_for: Sequence[str], proxies: Sequence[IPNetwork]
) -> str | None:
    """The client IP (normalised text), from the peer address and the X-Forwarded-For
    header values in order; None when the peer is not an IP address."""
    client = _address(peer) if peer else None
    if client is None or not _trusted(client, proxies):
        return str(client) if client else None
    hops = [hop for value in forwarded_for for hop in value.split(",")]
    for hop in reversed(hops):
        address = _address(hop)
        if address is None:
            # Not what a proxy writes: the client forged it. The last trusted hop
            # reached us from somewhere we cannot name better than itself.
            break
        client = address
        if not _trusted(address, proxies):
            break
    return str(client)


@lru_cache(maxsize=ADDRESSES_KEPT)
def limit_key(ip: str) -> str:
    """What per-client limits count: the address, or for IPv6 its /64 network."""
    address = ipaddress.ip_address(ip)
    if isinstance(address, ipaddress.IPv6Address):
        return str(ipaddress.ip_network(f"{address}/{IPV6_CLIENT_PREFIX}", strict=False))
    return ip


class ClientAddressMiddleware:
    """Outermost: resolve the client IP once and make it the request's client."""

    def __init__(self, app: ASGIApp, trusted_proxies: Sequence[IPNetwork]) -> None:
        self.app = app
        self.trusted_proxies = tuple(trusted_proxies)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        peer = scope.get("client")
        forwarded_for = [
            value.decode("latin-1")
            for name, value in scope["headers"]
            if name == b"x-forwarded-for"
        ]
        ip = resolve_client_ip(peer[0] if peer else None, forwarded_for, self.trusted_proxies)
        if ip is not None and peer is not None and ip != peer[0]:
            # The port is the proxy's, not the client's: 0 says it is not known.
            scope["client"] = (ip, 0)
        elif ip is None:
            scope["client"] = None
        self._apply_forwarded_proto(scope, peer[0] if peer else None)
        token = current_client.set(limit_key(ip) if ip else None)
        try:
            await self.app(scope, receive, send)
        finally:
            current_client.reset(token)

    def _apply_forwarded_proto(self, scope: Scope, peer: str | None) -> None:
        # A TLS-terminating proxy says the client used https: absolute URLs we publish
        # (the RFC 8414 metadata) must say so too. Only a trusted proxy is believed.
        address = _address(peer) if peer else None
        if address is None or not _trusted(address, self.trusted_proxies):
            return
        for name, value in scope["headers"]:
            if name == b"x-forwarded-proto":
                proto = value.decode("latin-1").strip().lower()
                if proto in ("http", "https"):
                    scope["scheme"] = proto
