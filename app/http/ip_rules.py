"""Client IP rules: `ALLOW_IPS` and `DENY_IPS`, lists of addresses or CIDRs (IPv4 and IPv6).

Deny wins over allow; an empty allow list allows everyone not denied. The address judged is the
ASGI scope's `client`, which `ClientAddressMiddleware` (further out) has already set to the real
client: the socket peer, or what a trusted proxy says. A refused client gets 403 in the dialect of
the path it called (`renderer_for`), and nothing about itself, its address or the rules is echoed.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from starlette.types import ASGIApp, Receive, Scope, Send

from app.core.errors import GatewayError
from app.http.client_address import Network, parse_networks
from app.http.errors import renderer_for

# A liveness probe (Docker's healthcheck, nginx, an orchestrator) comes from the machine itself or
# from the Compose network, which an allow list written for users need not name.
OPEN_PATHS = frozenset({"/health"})

IP_NOT_ALLOWED = "Your address is not allowed to use this gateway."


def _parse(address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    candidate = address.strip()
    if candidate.startswith("[") and candidate.endswith("]"):
        candidate = candidate[1:-1]
    try:
        return ipaddress.ip_address(candidate)
    except ValueError:
        return None


def ip_allowed(address: str | None, allow: list[Network], deny: list[Network]) -> bool:
    """Whether a client at `address` may call the gateway under these rules."""
    if not allow and not deny:
        return True
    ip = _parse(address) if address is not None else None
    if ip is None:
        # Rules exist, so the operator wants to know who calls; a caller whose address cannot be
        # read (no peer address, as on a Unix socket, or a peer host that is not an IP) cannot be
        # shown to be outside the deny list nor inside the allow list: fail closed.
        return False
    # An IPv4 client on a dual-stack socket shows as `::ffff:a.b.c.d`: the same host as `a.b.c.d`,
    # so it is judged by both forms (an IPv4 rule and a `::ffff:0:0/96`-style rule both apply).
    forms: tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, ...] = (ip,)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        forms = (ip.ipv4_mapped, ip)
    if any(form in network for form in forms for network in deny):
        return False
    return not allow or any(form in network for form in forms for network in allow)


class IpRulesMiddleware:
    """Refuses callers outside the IP rules with 403, before any route or key check.

    `/health` is always let through: the liveness probe of Docker's healthcheck and nginx comes
    from the machine itself (or the Compose network), and a gateway that refuses its own probe is
    restarted in a loop. It reveals nothing but that the process serves.

    With no rules at all, a request costs one attribute check here.
    """

    def __init__(self, app: ASGIApp, allow: Iterable[str], deny: Iterable[str]) -> None:
        self.app = app
        self.allow = parse_networks(allow)
        self.deny = parse_networks(deny)
        self.enabled = bool(self.allow or self.deny)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not self.enabled or scope["type"] not in ("http", "websocket") or scope["path"] in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        client = scope.get("client")
        if ip_allowed(client[0] if client else None, self.allow, self.deny):
            await self.app(scope, receive, send)
            return
        if scope["type"] == "websocket":
            # Closing before the handshake is accepted makes the server answer 403.
            await send({"type": "websocket.close", "code": 1008, "reason": ""})
            return
        error = GatewayError(403, IP_NOT_ALLOWED, type="permission_error", code="ip_not_allowed")
        response = renderer_for(scope["path"])(error)
        await response(scope, receive, send)
