"""Fifth review of access control (review r6 of the relayed-login limit): right logins held a
failed-login place while the upstream was asked, the unnamed-proxy warning was users mode's
only, a Basic-password registry behind the mirror took unlimited guesses, the empty-users-file
warning told a certificate-only mirror to add a user, and the relayed-login 429 could be
cached.

Each fault is a test asserting the right behaviour; it was seen failing (strict xfail)
before the code was mended.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
from pathlib import Path

import httpx
import pytest
from quart import Response
from quart.typing import TestClientProtocol as QuartClient

from docxy.access.gate import AccessControl
from docxy.access.users import UsersFile, UsersFileError
from docxy.config import load_config
from tests.unit.fakes import reply
from tests.unit.test_access_routes import basic, code_of
from tests.unit.test_review_access4 import TOKEN_PATH, HubLogins, started, warnings_of
from tests.unit.test_routes import PUBLIC, REGISTRY, hub, mirror

CLIENT = "127.0.110.9"
NEIGHBOUR = "127.0.110.10"


def at(address: str) -> dict[str, object]:
    return {"client": (address, 40000)}


# --- 1. right logins held a failed-login place while the upstream was asked ---------------


async def test_concurrent_right_upstream_logins_are_never_refused() -> None:
    """docker compose pull of a dozen images (or a CI farm behind one NAT), right password,
    a token service taking 0.5 s: each login held a place of the ten while it was asked, and
    the eleventh and twelfth got 429 "too many failed logins"."""

    async def slow(request: httpx.Request) -> httpx.Response:
        if request.url.host == "auth.example":
            await asyncio.sleep(0.5)
            return httpx.Response(200, json={"token": "t0ken"})
        return hub(request)

    async with mirror(transport=httpx.MockTransport(slow)) as m:
        answers = await asyncio.gather(
            *(
                m.client.get(TOKEN_PATH, headers=basic("victim", "right"), scope_base=at(CLIENT))
                for _ in range(12)
            )
        )
    assert [a.status_code for a in answers] == [200] * 12


async def test_concurrent_wrong_upstream_logins_still_use_up_the_bucket() -> None:
    """Charged after the upstream's 401, wrong guesses sent at once may pass the limit by
    those in flight, and then the address is refused before anything is sent."""
    upstream = HubLogins()
    async with mirror(upstream, {"limits.failed_logins_per_minute": "3"}) as m:
        answers = await asyncio.gather(
            *(
                m.client.get(TOKEN_PATH, headers=basic("victim", f"g{i}"), scope_base=at(CLIENT))
                for i in range(5)
            )
        )
        assert {a.status_code for a in answers} <= {401, 429}
        asked = len(upstream.asked)
        refused = await m.client.get(
            TOKEN_PATH, headers=basic("victim", "right"), scope_base=at(CLIENT)
        )
        assert refused.status_code == 429
        assert len(upstream.asked) == asked  # nothing sent once the bucket is empty


# --- 5. the relayed-login 429 lacked Cache-Control: no-store -----------------------------


async def test_the_relayed_login_429_is_not_stored() -> None:
    async with mirror(HubLogins(), {"limits.failed_logins_per_minute": "1"}) as m:
        first = await m.client.get(TOKEN_PATH, headers=basic("v", "w"), scope_base=at(CLIENT))
        assert first.status_code == 401
        refused = await m.client.get(TOKEN_PATH, headers=basic("v", "w"), scope_base=at(CLIENT))
    assert refused.status_code == 429
    assert refused.headers.get("Cache-Control") == "no-store"


# --- 3. a registry that checks Basic passwords itself took unlimited guesses ---------------

LAB_SETTINGS: dict[str, object] = {
    "limits.failed_logins_per_minute": "2",
    "upstreams": "lab.example=https://lab.example",
    "upstreams.lab.example.hosts": "lab.mirror.example.com",
}


class BasicLab:
    """A private registry with Basic passwords and no token service: ``u:right`` holds."""

    def __init__(self) -> None:
        self.asked: list[str] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.url.host != "lab.example":
            return hub(request)
        login = request.headers.get("Authorization")
        if login is not None:
            self.asked.append(login)
        if login != basic("u", "right")["Authorization"]:
            body = b'{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}'
            headers = {"WWW-Authenticate": 'Basic realm="lab"', "Content-Type": "application/json"}
            return reply(401, body, headers)
        if request.url.path == "/v2/":
            return reply(200, b"{}", {"Content-Type": "application/json"})
        return reply(404, b'{"errors":[{"code":"MANIFEST_UNKNOWN","message":"no"}]}')


async def lab_get(client: QuartClient, path: str, password: str, address: str) -> Response:
    return await client.get(path, headers=basic("u", password), scope_base=at(address))


MANIFEST = "/v2/team/app/manifests/latest?ns=lab.example"


async def test_wrong_basic_passwords_passed_through_are_limited() -> None:
    """Pulls with the client's Basic login passed through: every wrong password went to the
    registry, from the mirror's address, without end."""
    lab = BasicLab()
    async with mirror(lab, LAB_SETTINGS) as m:
        codes = [(await lab_get(m.client, MANIFEST, f"g{i}", CLIENT)).status_code for i in range(2)]
        assert codes == [401, 401]
        sent = len(lab.asked)
        refused = await lab_get(m.client, MANIFEST, "g2", CLIENT)
        assert refused.status_code == 429
        assert await code_of(refused) == "TOOMANYREQUESTS"
        assert int(refused.headers["Retry-After"]) >= 1
        assert len(lab.asked) == sent  # refused before anything was sent
        # by address: a neighbour's right login still goes through
        other = await lab_get(m.client, MANIFEST, "right", NEIGHBOUR)
        assert other.status_code == 404


async def test_wrong_basic_passwords_at_v2_are_limited() -> None:
    """``docker login lab.mirror.example.com``: the /v2/ check with the client's Basic login,
    the upstream its judge."""
    lab = BasicLab()
    async with mirror(lab, LAB_SETTINGS) as m:
        ping = "/v2/?ns=lab.example"
        codes = [(await lab_get(m.client, ping, f"g{i}", CLIENT)).status_code for i in range(2)]
        assert codes == [401, 401]
        refused = await lab_get(m.client, ping, "g2", CLIENT)
        assert refused.status_code == 429


async def test_right_basic_passwords_passed_through_spend_nothing() -> None:
    lab = BasicLab()
    async with mirror(lab, LAB_SETTINGS) as m:
        for _ in range(5):
            answer = await lab_get(m.client, MANIFEST, "right", CLIENT)
            assert answer.status_code == 404
        assert (await lab_get(m.client, "/v2/?ns=lab.example", "right", CLIENT)).status_code == 200


async def test_basic_logins_a_token_upstream_challenges_spend_nothing() -> None:
    """A token upstream (Docker Hub) answers any Basic login at /v2/ with its Bearer
    challenge: no word on the password, so no place is spent."""
    async with mirror(hub, {"limits.failed_logins_per_minute": "1"}) as m:
        for _ in range(3):
            answer = await m.client.get("/v2/", headers=basic("u", "p"), scope_base=at(CLIENT))
            assert answer.status_code == 401


# --- 2. open mode behind a proxy not in server.trusted_proxies ----------------------------


def test_open_mode_behind_an_unnamed_proxy_is_warned_of(caplog: pytest.LogCaptureFixture) -> None:
    """Open mode has a per-address lock-out of relayed logins too: behind an unnamed proxy one
    client's stale password locks every client's logins out."""
    caplog.set_level(logging.INFO)
    started({})
    [said] = warnings_of(caplog, "server.trusted_proxies")
    assert "https://mirror.example.com" in said
    assert "auth.mode = open" in said and "upstream logins" in said


def test_open_mode_with_its_proxy_named_or_its_own_tls_is_not_warned_of(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    started({"server.trusted_proxies": "::1"})
    started({"server.public_url": "http://mirror.example.com"})
    assert warnings_of(caplog, "server.trusted_proxies") == []


# --- 4. users-mode start-up warnings ------------------------------------------------------


async def test_a_certificate_only_mirror_is_not_told_to_add_users(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """auth.client_certs with no users file: its clients come by certificate, and "every login
    is refused ... docxy users add makes one" at every start was wrong advice."""
    caplog.set_level(logging.INFO)
    settings: dict[str, object] = {
        "auth.mode": "users",
        "auth.dir": str(tmp_path),
        "auth.client_certs": "true",
        "server.tls_listen": "127.0.110.1:13010",
    }
    config = load_config(
        {
            "server.public_url": PUBLIC,
            "upstream.registry": REGISTRY,
            "cache.enabled": "false",
            **settings,
        },
        environ={},
    )
    AccessControl(config).prepare()
    assert warnings_of(caplog, "docxy users add") == []


def test_a_users_file_turning_unreadable_after_its_read_does_not_abort_start_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """prepare() read the file, then _warn_no_users read it again outside the ``try``: a file
    turning unreadable in between aborted start-up with UsersFileError."""
    (tmp_path / "users").write_text("# nobody yet\n")
    config = load_config(
        {
            "server.public_url": PUBLIC,
            "upstream.registry": REGISTRY,
            "cache.enabled": "false",
            "auth.mode": "users",
            "auth.dir": str(tmp_path),
        },
        environ={},
    )
    access = AccessControl(config)
    reads = 0
    real = UsersFile.users

    def flaky(self: UsersFile) -> dict[str, str]:
        nonlocal reads
        reads += 1
        if reads > 1:
            raise UsersFileError(f"{self.path}: unreadable (Permission denied)")
        return real(self)

    monkeypatch.setattr(UsersFile, "users", flaky)
    caplog.set_level(logging.INFO)
    access.prepare()  # must not raise
    assert warnings_of(caplog, "every login is refused") != []


# --- review r8: a cache hit sends no password, and is never refused for one ---------------------

BODY = b'{"schemaVersion": 2, "mediaType": "application/vnd.docker.distribution.manifest.v2+json"}'
DIGEST = "sha256:" + hashlib.sha256(BODY).hexdigest()


def caching_lab_settings(cache: Path) -> dict[str, object]:
    """LAB_SETTINGS with the mirror's own login for the lab and a cache in ``cache``."""
    return {
        **LAB_SETTINGS,
        "upstreams.lab.example.username": "mirror",
        "upstreams.lab.example.password": "secret",
        "cache.enabled": "true",
        "cache.dir": str(cache),
    }


class CachingLab:
    """A Basic-only private registry: the mirror's own login and ``u:right`` read ``team/app``,
    only ``u:right`` reads ``team/secret``."""

    def __init__(self) -> None:
        self.asked: list[tuple[str, str | None]] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.url.host != "lab.example":
            return hub(request)
        login = request.headers.get("Authorization")
        self.asked.append((request.url.path, login))
        readers = {basic("u", "right")["Authorization"]}
        if "/secret/" not in request.url.path:
            readers.add(basic("mirror", "secret")["Authorization"])
        if login not in readers:
            body = b'{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}'
            headers = {"WWW-Authenticate": 'Basic realm="lab"', "Content-Type": "application/json"}
            return reply(401, body, headers)
        if request.url.path == "/v2/":
            return reply(200, b"{}", {"Content-Type": "application/json"})
        media = "application/vnd.docker.distribution.manifest.v2+json"
        headers = {"Content-Type": media, "Docker-Content-Digest": DIGEST}
        return reply(200, b"" if request.method == "HEAD" else BODY, headers)


async def test_a_cache_hit_is_never_refused_for_a_neighbours_wrong_passwords(
    tmp_path: Path,
) -> None:
    """A colleague behind the same address emptied the bucket with a stale password: the
    right password's cache hit (nothing sent upstream) got 429, the same hit without
    credentials 200."""
    lab = CachingLab()
    settings = caching_lab_settings(tmp_path)
    async with mirror(lab, settings) as m:
        path = f"/v2/team/app/manifests/{DIGEST}?ns=lab.example"
        assert (await lab_get(m.client, path, "right", CLIENT)).status_code == 200  # filled
        for n in range(3):  # the colleague's stale password, a private repository
            secret = "/v2/team/secret/manifests/latest?ns=lab.example"
            await lab_get(m.client, secret, f"stale{n}", CLIENT)
        asked = len(lab.asked)
        hit = await lab_get(m.client, path, "right", CLIENT)
        assert hit.status_code == 200, hit.status_code
        assert len(lab.asked) == asked  # served from the cache, nothing sent


async def test_wrong_passwords_in_a_cached_blobs_or_manifests_check_are_limited(
    tmp_path: Path,
) -> None:
    """A manifest cached for one repository, asked by digest under another (``team/secret``,
    which the mirror's login may not read): the mirror's HEAD with the client's own login
    (``head_as_client``) sent every guess to the registry, outside the limit, and answered a
    right password 200 past it, a wrong one 429: an oracle without bound (review r9)."""
    lab = CachingLab()
    settings = caching_lab_settings(tmp_path)
    own = {basic("mirror", "secret")["Authorization"], basic("u", "right")["Authorization"]}
    async with mirror(lab, settings) as m:
        cached = f"/v2/team/app/manifests/{DIGEST}?ns=lab.example"
        assert (await lab_get(m.client, cached, "right", CLIENT)).status_code == 200
        secret = f"/v2/team/secret/manifests/{DIGEST}?ns=lab.example"
        codes = [(await lab_get(m.client, secret, f"g{n}", CLIENT)).status_code for n in range(6)]
        guesses = [login for path, login in lab.asked if "/secret/" in path and login not in own]
        assert len(guesses) <= 3, (codes, guesses)  # the limit's 2, and one in flight at most
        assert codes[-1] == 429, codes
        right = await lab_get(m.client, secret, "right", CLIENT)
        assert right.status_code == 429, right.status_code  # no oracle: the right one waits too


async def test_basic_logins_the_mirror_cannot_decode_are_limited_too() -> None:
    """base64 without its `=` padding (nginx's auth_basic and Go's BasicAuth take it) is no
    Basic login to the mirror's decoder, yet it went upstream as it was: every guess reached
    the registry outside the limit (review r10)."""
    lab = BasicLab()
    async with mirror(lab, LAB_SETTINGS) as m:
        codes = []
        for n in range(6):
            unpadded = base64.b64encode(f"u:g{n}".encode()).decode().rstrip("=")
            assert len(unpadded) % 4  # really without its padding
            headers = {"Authorization": f"Basic {unpadded}"}
            got = await m.client.get(MANIFEST, headers=headers, scope_base=at(CLIENT))
            codes.append(got.status_code)
        assert len(lab.asked) <= 3, (codes, lab.asked)
        assert codes[-1] == 429, codes
