"""Who a request comes from: its address (behind trusted proxies) and the key its limits use."""

from __future__ import annotations

from typing import Any

from hypercorn.typing import HTTPScope

from docxy.config import ServerConfig
from docxy.core.cidr import Address, client_key, parse_address
from docxy.core.forwarded import client_address


def request_address(scope: HTTPScope, server: ServerConfig) -> Address | None:
    """The client's address: the peer's, or what a trusted proxy in front of it says."""
    client = scope.get("client")
    peer = parse_address(client[0]) if client else None
    if peer is None:
        return None
    headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in scope["headers"]]
    return client_address(peer, headers, server.trusted_proxies, server.forwarded_header)


def client_identity(scope: HTTPScope) -> str | None:
    """The user a request is known to come from, if an earlier layer established one.

    The one place limits read an identity: a layer outside the gate (a client certificate, a
    verified token) writes ``user`` into the request's facts (``scope["docxy"]``).
    """
    facts: Any = scope.get("docxy")
    user = facts.get("user") if isinstance(facts, dict) else None
    return user if isinstance(user, str) and user else None


def limit_key(scope: HTTPScope, address: Address | None) -> str:
    """The key per-client limits are kept under: ``user:NAME``, else the address (IPv6 /64)."""
    user = client_identity(scope)
    if user is not None:
        return f"user:{user}"
    return client_key(address) if address is not None else "unknown"
