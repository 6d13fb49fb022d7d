"""Review of the mirror's own access control (``docxy.access`` and the token endpoint).

Each fault found is a test asserting the right behaviour, marked ``xfail(strict=True)`` until
the code is mended; the tests without the mark guard what no other test pins down.
"""

from __future__ import annotations

import base64
import datetime as dt
import functools
from collections import Counter
from pathlib import Path
from typing import Any

import argon2
import argon2._password_hasher
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from docxy.access import users as users_module
from docxy.access.clientca import ClientCA, ClientEntry
from docxy.access.gate import AccessControl
from docxy.access.users import UsersFile
from docxy.config import load_config
from tests.unit.test_access_routes import CERTS, presenting, token_for, users_mirror

#: users mode, client certificates, and a certificate client's own Docker Hub login let through
UPSTREAM_LOGINS: dict[str, object] = {"auth.upstream_logins": "true", **CERTS}
TOKEN_PATH = "/auth/token?scope=repository:library/redis:pull"


def basic(user: str, password: str) -> dict[str, str]:
    value = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {value}"}


async def test_a_mirror_users_login_stays_here_while_the_users_file_is_missing(
    tmp_path: Path,
) -> None:
    """``auth.upstream_logins``: a certificate client's Basic login goes to the upstream's
    token service unless it names one of the mirror's users. The README: "while the users file
    cannot be read, a 503: nothing is sent on a guess" (an unparsable file is 503,
    test_auth_faults). A users file that is missing (moved, a secret not mounted, a typo in
    ``auth.users_file``) is read as no users at all, so alice's password for the mirror went
    to Docker Hub's token service."""
    async with users_mirror(tmp_path, **UPSTREAM_LOGINS) as m, presenting(tmp_path, "laptop"):
        kept = (tmp_path / "users").read_bytes()
        (tmp_path / "users").unlink()
        answer = await m.client.get(TOKEN_PATH, headers=basic("alice", "right"))
        sent = [r.headers.get("Authorization") for r in m.upstream.requests]
        assert basic("alice", "right")["Authorization"] not in sent
        assert answer.status_code == 503  # no token the upstream handed out for it
        said = (await answer.get_json())["errors"][0]["message"]
        assert "users file" in said, said
        (tmp_path / "users").write_bytes(kept)  # back: alice is the mirror's user again
        again = await m.client.get(TOKEN_PATH, headers=basic("alice", "right"))
        assert again.status_code == 200 and "token" in await again.get_json()
        (tmp_path / "users").write_bytes(b"")  # emptied on purpose: no users, logins go up
        await m.client.get(TOKEN_PATH, headers=basic("alice", "right"))
    sent = [r.headers.get("Authorization") for r in m.upstream.requests]
    assert basic("alice", "right")["Authorization"] in sent


async def test_the_mirrors_own_token_as_a_refresh_token_never_goes_upstream(
    tmp_path: Path,
) -> None:
    """``_is_mirror_token`` looks only at ``Authorization: Bearer``: the same token in the
    OAuth2 refresh grant's form (``refresh_token=...``) is taken for an upstream login and
    POSTed to Docker Hub's token service, where it is a credential for this mirror (the
    threat model: never a token the mirror issued goes upstream)."""
    async with users_mirror(tmp_path, **UPSTREAM_LOGINS) as m, presenting(tmp_path, "laptop"):
        token = await token_for(m, "repository:library/redis:pull")
        form = {"grant_type": "refresh_token", "refresh_token": token, "service": "s"}
        answer = await m.client.post("/auth/token", form=form)
    assert all(token.encode() not in r.content for r in m.upstream.requests)
    assert all(token not in str(r.url) for r in m.upstream.requests)
    assert answer.status_code == 401  # as to a Bearer of it: docker login again


def _expired_certificate(ca: ClientCA, name: str) -> x509.Certificate:
    """A certificate for ``name`` signed by the mirror's CA whose validity ended yesterday."""
    ca_cert, ca_key = ca._ca()
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=10))
        .not_valid_after(now - dt.timedelta(days=1))
        .sign(ca_key, hashes.SHA256())
    )


def test_an_expired_certificate_still_listed_names_nobody(tmp_path: Path) -> None:
    """Guard (no other test has it): the TLS layer checks a certificate's dates only at the
    handshake, so a connection opened before its expiry goes on after it; ``client_of``,
    asked on every request, must refuse it then even while ``clients.json`` still lists it."""
    ca = ClientCA(tmp_path)
    ca.issue("laptop", tmp_path / "kit")
    kit = x509.load_pem_x509_certificate((tmp_path / "kit" / "client.cert").read_bytes())
    assert ca.client_of(kit.public_bytes(serialization.Encoding.DER)) == "laptop"
    cert = _expired_certificate(ca, "laptop")
    serial = format(cert.serial_number, "x")
    ca._save({"laptop": ClientEntry("laptop", serial, cert.not_valid_after_utc.isoformat())})
    assert ca.client_of(cert.public_bytes(serialization.Encoding.DER)) is None


def _counting_argon2(monkeypatch: pytest.MonkeyPatch, runs: Counter[str]) -> None:
    """Count every argon2 computation (a hash or a verification: each costs the same)."""
    for name in ("hash_secret", "verify_secret"):
        real = getattr(argon2._password_hasher, name)

        def counted(*args: Any, _real: Any = real, **kwargs: Any) -> Any:
            runs["argon2"] += 1
            return _real(*args, **kwargs)

        monkeypatch.setattr(argon2._password_hasher, name, counted)


def test_the_first_unknown_name_after_a_start_costs_what_a_known_one_does(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """README: a login is "as slow for an unknown name as for a known one". The dummy hash an
    unknown name is checked against is made on first use (``functools.cache``), not when the
    mirror starts (``AccessControl.prepare``): the first unknown name after each start (and
    after each change of the file's usual cost) costs two argon2 hashes more than a known
    one, ~3x the time (measured here: 650 ms against 200 ms), which tells that name apart."""
    UsersFile(tmp_path / "users").add("alice", "right")
    # a freshly started mirror: no dummy made yet in this process (a cache of its own)
    fresh = functools.cache(users_module._dummy_hash.__wrapped__)
    monkeypatch.setattr(users_module, "_dummy_hash", fresh)
    config = load_config(
        {"auth.mode": "users", "auth.dir": str(tmp_path), "server.listen": "127.0.0.1:5000"},
        environ={},
    )
    access = AccessControl(config)
    access.prepare()  # what the mirror does at start-up
    runs: Counter[str] = Counter()
    _counting_argon2(monkeypatch, runs)
    assert access.users.checked("alice", "wrong") is None
    known, runs["argon2"] = runs["argon2"], 0
    assert access.users.checked("nobody", "wrong") is None
    assert (known, runs["argon2"]) == (1, 1)
    # The file changes its usual cost: reading it on the event loop (a token's fingerprint,
    # an upstream login's name) hashes nothing; its first check, in a worker thread, makes
    # the new unknown-name hash (two argon2 runs) whatever the name, then checks (one).
    cheaper = argon2.PasswordHasher(time_cost=1, memory_cost=8192).hash("right")
    (tmp_path / "users").write_text(f"alice:{cheaper}\n")
    runs["argon2"] = 0
    assert access.users.fingerprint("alice") is not None
    assert runs["argon2"] == 0
    assert access.users.checked("alice", "wrong") is None
    known, runs["argon2"] = runs["argon2"], 0
    assert access.users.checked("nobody", "wrong") is None
    assert (known, runs["argon2"]) == (3, 1)


async def test_a_mirror_users_login_in_another_case_stays_here(tmp_path: Path) -> None:
    """``auth.upstream_logins``: alice logging in as ``Alice`` (user names are lower case)
    still gives alice's password: the mirror refuses it, it never goes upstream (before: not
    a mirror user by exact name, so sent to the upstream's token service)."""
    async with users_mirror(tmp_path, **UPSTREAM_LOGINS) as m, presenting(tmp_path, "laptop"):
        answer = await m.client.get(TOKEN_PATH, headers=basic("Alice", "right"))
    sent = [r.headers.get("Authorization") for r in m.upstream.requests]
    assert basic("Alice", "right")["Authorization"] not in sent
    assert answer.status_code == 401


def test_hashes_with_a_cost_bcrypt_has_not_leave_the_file_readable(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Most hashes ``$2b$xx$...`` (a cost that is no number): the warning about the rarer
    costs said how to fix them with ``int(cost)``, a ValueError, so reading the file raised
    and the first request after the change was a 500. The file is read (those users cannot
    log in, as the library refuses their hashes), the warning names ``docxy users add``."""
    UsersFile(tmp_path / "users").add("alice", "right")
    bad = "$2b$xx$" + "a" * 53
    with (tmp_path / "users").open("a") as users:
        users.write(f"bob:{bad}\ncarol:{bad}\n")
    served = UsersFile(tmp_path / "users")
    assert set(served.users()) == {"alice", "bob", "carol"}
    assert served.checked("bob", "right") is None
    warned = [r.getMessage() for r in caplog.records if "another cost" in r.getMessage()]
    assert warned and "`docxy users add NAME`" in warned[0], warned
