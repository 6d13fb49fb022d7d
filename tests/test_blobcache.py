"""The cache in the request path, against a MockTransport upstream: what a real registry can't
be made to show (a full disk) and what the bed does not model (the mirror's own account)."""

from __future__ import annotations

import base64
import errno
import hashlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest
from quart import Quart

from docxy.app import create_app
from docxy.cache import fill
from docxy.cache.errors import CacheError
from docxy.config import load_config

REGISTRY = "https://registry.test"
AUTH = "https://auth.test/token"
BLOB = bytes(range(256)) * 4096  # 1 MiB: past the writer's flush size
DIGEST = "sha256:" + hashlib.sha256(BLOB).hexdigest()


class Stream(httpx.AsyncByteStream):
    """A body as the network delivers it: not read yet (``content=`` would be pre-read)."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for start in range(0, len(self.data), 65536):
            yield self.data[start : start + 65536]


def reply(status: int, data: bytes, headers: dict[str, str] | None = None) -> httpx.Response:
    headers = {"Content-Length": str(len(data)), **(headers or {})}
    return httpx.Response(status, headers=headers, stream=Stream(data))


class Upstream:
    """A token-auth registry whose one repository, ``team/app``, needs an account."""

    def __init__(self) -> None:
        self.token_auth: list[str | None] = []
        self.blob_gets = 0
        self.refused: list[str | None] = []  # the Authorization of each refused blob GET
        self.ping_status = 401

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.url.host == "auth.test":
            self.token_auth.append(request.headers.get("authorization"))
            granted = request.headers.get("authorization") == basic("bot", "s3cret")
            token = b'{"token": "account"}' if granted else b'{"token": "anon"}'
            return reply(200, token, {"Content-Type": "application/json"})
        if request.url.path == "/v2/" and self.ping_status != 401:
            return reply(self.ping_status, b"{}")
        if request.url.path == "/v2/":
            challenge = f'Bearer realm="{AUTH}",service="registry.test"'
            return reply(401, b"{}", {"WWW-Authenticate": challenge})
        if request.headers.get("authorization") != "Bearer account":
            self.refused.append(request.headers.get("authorization"))
            return reply(401, b'{"errors": [{"code": "UNAUTHORIZED"}]}')
        self.blob_gets += 1
        return reply(200, BLOB)


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


@asynccontextmanager
async def mirror(tmp_path: Path, upstream: Upstream, **settings: str) -> AsyncIterator[Quart]:
    overrides = {
        "upstream.registry": REGISTRY,
        "cache.dir": str(tmp_path / "cache"),
        "server.public_url": "https://mirror.test",
        **{key.replace("__", "."): value for key, value in settings.items()},
    }
    app = create_app(
        load_config(overrides, environ={}), probe=False, transport=httpx.MockTransport(upstream)
    )
    async with app.test_app():
        yield app


def cached_blobs(tmp_path: Path) -> list[Path]:
    return [p for p in (tmp_path / "cache" / "blobs").rglob("*") if p.is_file()]


async def test_the_mirror_fetches_with_its_own_account(tmp_path: Path) -> None:
    upstream = Upstream()
    settings = {"upstream__username": "bot", "upstream__password": "s3cret"}
    async with mirror(tmp_path, upstream, **settings) as app:
        response = await app.test_client().get(f"/v2/team/app/blobs/{DIGEST}")
        assert response.status_code == 200
        assert await response.get_data() == BLOB
    assert upstream.token_auth == [basic("bot", "s3cret")]
    assert [p.name for p in cached_blobs(tmp_path)] == [DIGEST.split(":")[1]]


async def test_without_an_account_the_client_needs_its_own_token(tmp_path: Path) -> None:
    upstream = Upstream()
    async with mirror(tmp_path, upstream) as app:
        for _ in range(3):
            response = await app.test_client().get(f"/v2/team/app/blobs/{DIGEST}")
            assert response.status_code == 401  # passed through with the client's (no) token
    assert upstream.blob_gets == 0
    # The mirror tried its own token once, then passed the other requests straight through.
    assert upstream.refused == ["Bearer anon", None, None, None]
    assert cached_blobs(tmp_path) == []


async def test_a_full_disk_degrades_to_pass_through(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def disk_full(fd: int, chunks: list[bytes]) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(fill, "write_all", disk_full)
    upstream = Upstream()
    settings = {"upstream__username": "bot", "upstream__password": "s3cret"}
    async with mirror(tmp_path, upstream, **settings) as app:
        client = app.test_client()
        # The fill in progress fails: its client is cut off (or, at most, given the whole blob
        # some other way), never a short success.
        cut: CacheError | None = None
        try:
            first = await client.get(f"/v2/team/app/blobs/{DIGEST}")
            first_body = await first.get_data()
        except CacheError as exc:  # a cut stream surfaces as the body's error in the test client
            cut = exc
        if cut is None:
            assert (first.status_code, first_body == BLOB) == (200, True), "a short success"
        else:
            assert "No space left on device" in str(cut)
        second = await client.get(
            f"/v2/team/app/blobs/{DIGEST}", headers={"Authorization": "Bearer account"}
        )
        assert second.status_code == 200
        assert await second.get_data() == BLOB
    assert cached_blobs(tmp_path) == []
    assert "serving it uncached" in caplog.text


@pytest.mark.parametrize("status", [429, 500, 503])
async def test_ping_answers_with_the_mirrors_own_challenge_when_upstream_is_in_trouble(
    tmp_path: Path, status: int
) -> None:
    upstream = Upstream()
    upstream.ping_status = status
    async with mirror(tmp_path, upstream) as app:
        response = await app.test_client().get("/v2/")
        assert response.status_code == 401
        challenge = response.headers["WWW-Authenticate"]
        assert challenge.startswith('Bearer realm="https://mirror.test/auth/token"')


@pytest.mark.parametrize(
    ("range_header", "status"),
    [("bytes=" + "9" * 5000 + "-", 416), ("bytes=10-" + "9" * 5000, 206)],
    ids=["huge start", "huge end"],
)
async def test_a_huge_range_on_a_cached_blob_is_no_server_error(
    tmp_path: Path, range_header: str, status: int
) -> None:
    upstream = Upstream()
    settings = {"upstream__username": "bot", "upstream__password": "s3cret"}
    async with mirror(tmp_path, upstream, **settings) as app:
        client = app.test_client()
        assert await (await client.get(f"/v2/team/app/blobs/{DIGEST}")).get_data() == BLOB
        answer = await client.get(f"/v2/team/app/blobs/{DIGEST}", headers={"Range": range_header})
        assert answer.status_code == status
        if status == 206:
            assert await answer.get_data() == BLOB[10:]
            assert answer.headers["Content-Range"] == f"bytes 10-{len(BLOB) - 1}/{len(BLOB)}"
        else:
            assert answer.headers["Content-Range"] == f"bytes */{len(BLOB)}"
    assert upstream.blob_gets == 1
