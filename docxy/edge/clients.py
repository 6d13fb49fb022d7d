"""Who a request comes from: its address (behind trusted proxies) and the key its limits use."""

from __future__ import annotations

from typing import TYPE_CHECKING

from hypercorn.typing import HTTPScope, WebsocketScope

from docxy.access.gate import remember
from docxy.config import ServerConfig
from docxy.core.cidr import Address, client_key, parse_address
from docxy.core.forwarded import client_address

if TYPE_CHECKING:
    from docxy.access.gate import AccessControl


def request_address(scope: HTTPScope | WebsocketScope, server: ServerConfig) -> Address | None:
    """The client's address: the peer's, or what a trusted proxy in front of it says."""
    client = scope.get("client")
    peer = parse_address(client[0]) if client else None
    if peer is None:
        return None
    headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in scope["headers"]]
    return client_address(peer, headers, server.trusted_proxies, server.forwarded_header)


def client_identity(scope: HTTPScope | WebsocketScope, access: AccessControl | None) -> str | None:
    """The user (``user:NAME``) or certificate client (``cert:NAME``) a request comes from,
    when ``docxy.access`` knows it; None for an anonymous client (open mode, no credentials,
    or credentials the check refuses, which the route then refuses too).

    The one place limits learn an identity. It runs before the routes, so it asks the access
    check itself (a token's signature, or the connection's client certificate; never a
    password), as ``docxy.access.identity`` says a layer before the app must, and leaves what it
    found in the scope for the route's check (``gate.remember``): one verification a request.
    """
    if access is None:
        return None
    authorization = next(
        (v.decode("latin-1") for k, v in scope["headers"] if k.lower() == b"authorization"),
        None,
    )
    decision = access.check(authorization, None)
    remember(scope, decision)  # type: ignore[arg-type]
    identity = decision.identity
    return identity.label() if identity.name is not None else None


def limit_key(identity: str | None, address: Address | None) -> str:
    """The key per-client limits are kept under: the identity, else the address (IPv6 /64)."""
    if identity is not None:
        return identity
    return client_key(address) if address is not None else "unknown"
