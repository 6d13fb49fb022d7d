"""Users mode stays cheap per request and still sees its files change.

A request is checked once through the edge and the route (one token verification), the users
file and ``clients.json`` are parsed again only when they changed, a client certificate is
parsed once however many requests its connection makes; and ``docxy users add/rm``,
``docxy clients rm`` and ``docxy tokens rotate`` by another process take effect at the next
request.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from docxy.access import tokens, users
from docxy.access.clientca import ClientCA
from docxy.access.keys import KeyRing
from docxy.access.users import UsersFile
from docxy.edge.admission import Admission
from docxy.http.state import mirror_state
from tests.unit.asgi import call_asgi
from tests.unit.test_access_routes import CERTS, MANIFEST_PATH, presenting, token_for, users_mirror

HOST = "mirror.example.com"


def counting(monkeypatch: pytest.MonkeyPatch, owner: Any, name: str, calls: Counter[str]) -> None:
    """Count the calls of ``owner.name`` (still calling it) in ``calls[name]``."""
    real: Callable[..., Any] = getattr(owner, name)

    def counted(*args: Any, **kwargs: Any) -> Any:
        calls[name] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(owner, name, counted)


async def status(app: Any, token: str | None, path: str = MANIFEST_PATH) -> int:
    headers = [] if token is None else [("Authorization", f"Bearer {token}")]
    return (await call_asgi(app, "GET", path, host=HOST, headers=headers)).status


async def test_a_request_through_the_edge_verifies_its_token_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: Counter[str] = Counter()
    counting(monkeypatch, tokens, "verify", calls)  # gate looks it up there at each check
    async with users_mirror(tmp_path, **{"limits.requests_per_minute": "100"}) as m:
        token = await token_for(m, "repository:library/redis:pull")
        state = mirror_state(m.app)
        edge = Admission(m.app, state.config, state.access)  # as the server stacks them
        calls.clear()
        assert await status(edge, token) == 200
        assert calls["verify"] == 1
        # refusals too: a token for another repository (401 insufficient_scope), a forged one
        assert await status(edge, token, "/v2/library/nginx/manifests/1") == 401
        assert await status(edge, "forged") == 401
        assert calls["verify"] == 3


async def test_the_users_file_is_parsed_only_when_it_changed_and_changes_are_seen(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: Counter[str] = Counter()
    counting(monkeypatch, users, "parse_users", calls)
    async with users_mirror(tmp_path) as m:
        alice = await token_for(m, "repository:library/redis:pull")
        calls.clear()
        for _ in range(5):
            assert await status(m.app, alice) == 200
        assert calls["parse_users"] == 0  # read once already, unchanged since
        another = UsersFile(tmp_path / "users")  # `docxy users add/rm`, another process
        another.add("bob", "pw")
        calls.clear()
        bob = await token_for(m, "repository:library/redis:pull", "bob", "pw")
        assert await status(m.app, bob) == 200
        assert calls["parse_users"] == 1  # read again once for the change
        another.remove("alice")
        calls.clear()
        assert await status(m.app, alice) == 401  # at the next request
        assert await status(m.app, bob) == 200
        assert calls["parse_users"] == 1


async def test_a_key_rotation_is_seen_at_the_next_request(tmp_path: Path) -> None:
    async with users_mirror(tmp_path) as m:
        before = await token_for(m, "repository:library/redis:pull")
        kid = KeyRing(tmp_path, grace=3600).rotate()  # `docxy tokens rotate`
        after = await token_for(m, "repository:library/redis:pull")
        access = mirror_state(m.app).access
        assert access is not None and access.keys.signing().kid == kid
        assert await status(m.app, after) == 200
        assert await status(m.app, before) == 200  # the grace: nobody is logged out at once
        KeyRing(tmp_path, grace=3600).rotate()  # a second rotation retires the first key
        assert await status(m.app, before) == 401


async def test_a_client_certificate_is_parsed_once_and_a_revocation_is_seen(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cryptography import x509

    calls: Counter[str] = Counter()
    async with users_mirror(tmp_path, **CERTS) as m, presenting(tmp_path, "laptop"):
        counting(monkeypatch, x509, "load_der_x509_certificate", calls)
        for _ in range(5):
            assert await status(m.app, None) == 200
        assert calls["load_der_x509_certificate"] == 1
        assert ClientCA(tmp_path).revoke("laptop")  # `docxy clients rm`, another process
        assert await status(m.app, None) == 401
