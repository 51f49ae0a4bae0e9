"""The client's address: the socket peer, or what a trusted proxy in front says it is.

`X-Forwarded-For` is believed only when the peer is in `TRUSTED_PROXIES`; then the address is the
right-most one in the header that is not itself a trusted proxy (each proxy appends the address it
saw, so everything left of the first untrusted entry may be forged). The access log, and every rule
by address, see the result as the ASGI scope's `client`.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from starlette.types import ASGIApp, Receive, Scope, Send

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(entries: Iterable[str]) -> list[Network]:
    return [ipaddress.ip_network(entry.strip(), strict=False) for entry in entries if entry.strip()]


def _trusted(address: str, networks: list[Network]) -> bool:
    try:
        ip = ipaddress.ip_address(address.strip().strip("[]"))
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return any(ip in network for network in networks)


def client_address(peer: str | None, forwarded_for: str | None, networks: list[Network]) -> str | None:
    """The client's address, given the socket peer and the `X-Forwarded-For` header (all of them,
    joined with commas)."""
    if peer is None or not forwarded_for or not _trusted(peer, networks):
        return peer
    hops = [hop.strip() for hop in forwarded_for.split(",") if hop.strip()]
    for hop in reversed(hops):
        if not _trusted(hop, networks):
            return _clean(hop) or peer
    return _clean(hops[0]) if hops else peer  # every hop is a trusted proxy: the first one


def _clean(hop: str) -> str | None:
    """An address from the header, or None when it is not one (then the peer stands)."""
    candidate = hop.strip().strip('"')
    if candidate.startswith("[") and "]" in candidate:
        candidate = candidate[1 : candidate.index("]")]
    elif candidate.count(":") == 1:  # IPv4 with a port
        candidate = candidate.partition(":")[0]
    try:
        return str(ipaddress.ip_address(candidate))
    except ValueError:
        return None


class ClientAddressMiddleware:
    def __init__(self, app: ASGIApp, trusted: Iterable[str]) -> None:
        self.app = app
        self.networks = parse_networks(trusted)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.networks and scope["type"] in ("http", "websocket") and scope.get("client"):
            peer_host, peer_port = scope["client"]
            values = [v.decode("latin-1") for k, v in scope.get("headers", ()) if k == b"x-forwarded-for"]
            address = client_address(peer_host, ",".join(values), self.networks)
            if address != peer_host:
                scope = dict(scope)
                scope["client"] = (address, peer_port)
        await self.app(scope, receive, send)
