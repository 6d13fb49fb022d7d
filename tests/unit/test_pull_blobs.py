"""The cache in the request path, against a MockTransport upstream: what a real registry can't
be made to show (a full disk) and what the bed does not model (the mirror's own account)."""

from __future__ import annotations

import asyncio
import base64
import errno
import gzip
import hashlib
import logging
import os
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from quart import Quart

from docxy.cache import fill
from docxy.cache.files import BlobFile
from docxy.config import load_config
from docxy.core.digests import parse_digest
from docxy.http.app import create_app
from docxy.http.middleware import AccessLog, Guard
from docxy.http.state import mirror_state
from tests.unit import fakes
from tests.unit.asgi import AsgiAnswer, call_asgi
from tests.unit.turns import until

REGISTRY = "https://registry.test"
AUTH = "https://auth.test/token"
BLOB = bytes(range(256)) * 4096  # 1 MiB: past the writer's flush size
DIGEST = "sha256:" + hashlib.sha256(BLOB).hexdigest()


def reply(status: int, data: bytes, headers: dict[str, str] | None = None) -> httpx.Response:
    return fakes.reply(status, data, headers or {}, length=True)


class Upstream:
    """A token-auth registry whose one repository, ``team/app``, needs an account."""

    def __init__(self) -> None:
        self.token_auth: list[str | None] = []
        self.blob_gets = 0
        self.ranges: list[str | None] = []  # the Range of each blob GET made with the account
        self.rest: bytes | None = None  # what a ranged GET answers past its offset (None: BLOB)
        self.rest_status = 206
        self.cut_after: int | None = None  # each blob body breaks off after this many bytes
        self.refused: list[str | None] = []  # the Authorization of each refused blob GET
        self.ping_status = 401
        self.service = "registry.test"
        self.token_queries: list[str] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.url.host == "auth.test":
            self.token_auth.append(request.headers.get("authorization"))
            self.token_queries.append(request.url.query.decode())
            granted = request.headers.get("authorization") == basic("bot", "s3cret")
            token = b'{"token": "account"}' if granted else b'{"token": "anon"}'
            return reply(200, token, {"Content-Type": "application/json"})
        if request.url.path == "/v2/" and self.ping_status != 401:
            return reply(self.ping_status, b"{}")
        if request.url.path == "/v2/":
            challenge = f'Bearer realm="{AUTH}",service="{self.service}"'
            return reply(401, b"{}", {"WWW-Authenticate": challenge})
        if request.headers.get("authorization") != "Bearer account":
            self.refused.append(request.headers.get("authorization"))
            return reply(401, b'{"errors": [{"code": "UNAUTHORIZED"}]}')
        self.blob_gets += 1
        ranged = request.headers.get("range")
        self.ranges.append(ranged)
        start = 0 if ranged is None else int(ranged.removeprefix("bytes=").removesuffix("-"))
        rest = BLOB[start:] if self.rest is None or ranged is None else self.rest
        headers = {}
        if ranged is not None:
            headers["Content-Range"] = f"bytes {start}-{len(BLOB) - 1}/{len(BLOB)}"
        if self.cut_after is not None:
            headers["Content-Length"] = str(len(rest))
            body = CutAfter(rest, self.cut_after)
            return httpx.Response(200 if ranged is None else 206, headers=headers, stream=body)
        return reply(200 if ranged is None else self.rest_status, rest, headers)


class CutAfter(httpx.AsyncByteStream):
    """A body that breaks off after its first ``nbytes`` (in 64 KiB chunks)."""

    def __init__(self, data: bytes, nbytes: int) -> None:
        self.data, self.nbytes = data, nbytes

    async def __aiter__(self) -> AsyncIterator[bytes]:
        sent = min(self.nbytes, len(self.data))
        for start in range(0, sent, 65536):
            yield self.data[start : min(start + 65536, sent)]
        if sent < len(self.data):
            raise httpx.ReadError("connection reset by peer")


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


@asynccontextmanager
async def mirror(
    tmp_path: Path, upstream: Callable[[httpx.Request], httpx.Response], **settings: str
) -> AsyncIterator[Quart]:
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


async def committed(app: Quart) -> None:
    """Wait (bounded) for the mirror's fills that verified to be committed: a client has its
    last byte before the commit's sync is done."""
    cache = app.extensions["docxy"].cache
    await asyncio.wait_for(cache.blobs.commits_done(), 10.0)


def cached_blobs(tmp_path: Path) -> list[Path]:
    return [p for p in (tmp_path / "cache" / "blobs").rglob("*") if p.is_file()]


async def test_the_mirror_fetches_with_its_own_account(tmp_path: Path) -> None:
    upstream = Upstream()
    settings = {"upstream__username": "bot", "upstream__password": "s3cret"}
    async with mirror(tmp_path, upstream, **settings) as app:
        response = await app.test_client().get(f"/v2/team/app/blobs/{DIGEST}")
        assert response.status_code == 200
        assert await response.get_data() == BLOB
        assert response.headers.getlist("Cache-Status") == ["Docxy; fwd=miss"]
        await committed(app)
        client = app.test_client()
        for ask in (client.get, client.head):  # HEAD: what `docxy warm` asks after a miss
            again = await ask(f"/v2/team/app/blobs/{DIGEST}")
            assert again.headers.getlist("Cache-Status") == ["Docxy; hit"]
    # the login checked first (no scope, as docker login: test_review_tokens3), then the token
    assert upstream.token_auth == [basic("bot", "s3cret")] * 2
    assert [p.name for p in cached_blobs(tmp_path)] == [DIGEST.split(":")[1]]


async def test_without_an_account_the_client_needs_its_own_token(tmp_path: Path) -> None:
    upstream = Upstream()
    async with mirror(tmp_path, upstream) as app:
        for _ in range(3):
            response = await app.test_client().get(f"/v2/team/app/blobs/{DIGEST}")
            assert response.status_code == 401  # passed through with the client's (no) token
            status = response.headers.getlist("Cache-Status")
            assert status == ["Docxy; fwd=bypass; detail=private"]
    assert upstream.blob_gets == 0
    # The mirror tried its own token, refreshed once, then passed the requests straight through.
    assert upstream.refused == ["Bearer anon", "Bearer anon", None, None, None]
    assert cached_blobs(tmp_path) == []


HALF = len(BLOB) // 2  # the writer's first flush (WRITE_BUFFER)


async def test_a_disk_that_fails_mid_fill_gives_its_client_the_rest_from_the_upstream(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The disk fails after the fill wrote half the blob: its client is not cut but gets the
    first half from the temp file and the rest from the upstream (a Range GET from there on,
    with the mirror's account, counted as upstream bytes); nothing is cached, and the next
    miss passes through."""
    monkeypatch.setattr(fill, "write_all", fakes.DiskFullAfter(HALF))
    upstream = Upstream()
    settings = {"upstream__username": "bot", "upstream__password": "s3cret"}
    async with mirror(tmp_path, upstream, **settings) as app:
        path, auth = f"/v2/team/app/blobs/{DIGEST}", [("Authorization", "Bearer account")]
        logged = AccessLog(Guard(app, None))
        with caplog.at_level(logging.INFO, logger="docxy.access"):
            first = await call_asgi(logged, "GET", path, headers=auth, host="mirror.test")
        assert first.status == 200
        assert first.complete and first.body == BLOB
        assert upstream.ranges == [None, f"bytes={HALF}-"]
        [line] = [r.getMessage() for r in caplog.records if r.name == "docxy.access"]
        assert f"cache=miss upstream_bytes={len(BLOB) - HALF} " in line, line
        second = await call_asgi(app, "GET", path, headers=auth, host="mirror.test")
        assert second.complete and second.body == BLOB
    assert cached_blobs(tmp_path) == []


async def test_an_upstream_that_breaks_off_midway_is_resumed_and_the_blob_cached(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The upstream's body breaks off after 300 KB each time: the fill goes on from there with
    a Range GET (each giving 300 KB more), so its client gets the whole blob, uncut, and the
    blob is cached; one INFO line per resume says so, no WARNING."""
    upstream = Upstream()
    upstream.cut_after = 300_000  # 1 MiB in four tries: the first and three resumes
    settings = {"upstream__username": "bot", "upstream__password": "s3cret"}
    async with mirror(tmp_path, upstream, **settings) as app:
        with caplog.at_level(logging.INFO, logger="docxy"):
            path, auth = f"/v2/team/app/blobs/{DIGEST}", [("Authorization", "Bearer account")]
            answer = await call_asgi(app, "GET", path, headers=auth, host="mirror.test")
    assert answer.status == 200 and answer.complete and answer.body == BLOB
    assert upstream.ranges == [None, "bytes=300000-", "bytes=600000-", "bytes=900000-"]
    assert [p.name for p in cached_blobs(tmp_path)] == [DIGEST.split(":")[1]]
    resumed = [r for r in caplog.records if "broke off after" in r.getMessage()]
    assert [r.levelno for r in resumed] == [logging.INFO] * 3
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text


async def test_an_upstream_that_keeps_breaking_off_fails_the_fill_after_three_resumes(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    upstream = Upstream()
    upstream.cut_after = 100_000  # four tries give 400 KB of the 1 MiB
    settings = {"upstream__username": "bot", "upstream__password": "s3cret"}
    async with mirror(tmp_path, upstream, **settings) as app:
        path, auth = f"/v2/team/app/blobs/{DIGEST}", [("Authorization", "Bearer account")]
        answer = await call_asgi(app, "GET", path, headers=auth, host="mirror.test")
    assert answer.status == 200 and not answer.complete
    assert len(answer.body) < 400_000 and answer.body == BLOB[: len(answer.body)]
    assert len(upstream.ranges) == 4 and cached_blobs(tmp_path) == []
    warned = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warned) == 1 and "(3 resumes, the last gave 100000 bytes)" in warned[0]


@pytest.mark.parametrize(
    ("rest", "status"),
    [(BLOB[HALF:-1] + b"x", 206), (BLOB[HALF:-1], 206), (b"", 503)],
    ids=["wrong-bytes", "short", "refused"],
)
async def test_a_rest_that_is_not_the_blob_cuts_the_client_before_its_last_byte(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    rest: bytes,
    status: int,
) -> None:
    """The rest from the upstream is verified with the kept half: a wrong byte, a short rest
    or an upstream that will not send it cuts the client, which never has the whole length
    (so never a wrong blob that looks complete), with one WARNING saying so."""
    monkeypatch.setattr(fill, "write_all", fakes.DiskFullAfter(HALF))
    upstream = Upstream()
    upstream.rest, upstream.rest_status = rest, status
    settings = {"upstream__username": "bot", "upstream__password": "s3cret"}
    async with mirror(tmp_path, upstream, **settings) as app:
        with caplog.at_level(logging.WARNING, logger="docxy"):
            path, auth = f"/v2/team/app/blobs/{DIGEST}", [("Authorization", "Bearer account")]
            answer = await call_asgi(app, "GET", path, headers=auth, host="mirror.test")
    assert answer.status == 200
    assert not answer.complete
    assert len(answer.body) < len(BLOB)
    assert answer.body == BLOB[: len(answer.body)]  # the wrong last byte never went out
    said = [r.getMessage() for r in caplog.records if "the client is cut" in r.getMessage()]
    said += [r.getMessage() for r in caplog.records if "cannot get the rest" in r.getMessage()]
    assert len(said) == 1, caplog.text
    assert cached_blobs(tmp_path) == []


class WrongRest(Upstream):
    """Answers a Range GET with ``status``, ``headers`` and ``body`` (what another blob's rest,
    or a part of this one's, would be), counting the bytes of it the mirror reads."""

    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        super().__init__()
        self.answer, self.headers, self.body = status, headers, body
        self.read = 0

    def __call__(self, request: httpx.Request) -> httpx.Response:
        ranged = request.headers.get("range")
        if ranged is None or request.url.host == "auth.test":
            return super().__call__(request)
        self.ranges.append(ranged)
        return httpx.Response(self.answer, headers=self.headers, stream=Counted(self))


class Counted(httpx.AsyncByteStream):
    def __init__(self, upstream: WrongRest) -> None:
        self.upstream = upstream

    async def __aiter__(self) -> AsyncIterator[bytes]:
        body = self.upstream.body
        for start in range(0, len(body), 65536):
            self.upstream.read += len(body[start : start + 65536])
            yield body[start : start + 65536]


OTHER = 2 * len(BLOB)  # the length of another blob, whose rest an upstream answers


def wrong_rest(offset: int, case: str) -> WrongRest:
    if case == "other-total":  # the rest of a longer blob
        size = OTHER - offset
        headers = {"Content-Range": f"bytes {offset}-{OTHER - 1}/{OTHER}"}
    elif case == "not-to-the-end":  # a part of the rest only
        size = 1000
        headers = {"Content-Range": f"bytes {offset}-{offset + size - 1}/{len(BLOB)}"}
    else:  # "200-other-length": the Range ignored, and a whole blob of another length
        size = OTHER
        headers = {}
    headers["Content-Length"] = str(size)
    return WrongRest(206 if headers.get("Content-Range") else 200, headers, b"y" * size)


@pytest.mark.parametrize("case", ["other-total", "not-to-the-end", "200-other-length"])
@pytest.mark.parametrize("why", ["broke-off", "disk-failed"])
async def test_an_answer_that_is_not_the_rest_fails_at_once_unread(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    case: str,
    why: str,
) -> None:
    """The rest is asked for (the upstream's body broke off, or the disk failed under the
    fill) and the answer's headers say it is not this blob's rest: another blob's length, a
    part only. Nothing of it is read (it used to be downloaded whole, to fail at the commit or
    at the verify); the client is cut, with one WARNING naming the answer."""
    offset = 300_000 if why == "broke-off" else HALF
    upstream = wrong_rest(offset, case)
    if why == "broke-off":
        upstream.cut_after = offset
    else:
        monkeypatch.setattr(fill, "write_all", fakes.DiskFullAfter(HALF))
    settings = {"upstream__username": "bot", "upstream__password": "s3cret"}
    async with mirror(tmp_path, upstream, **settings) as app:
        with caplog.at_level(logging.INFO, logger="docxy"):
            path, auth = f"/v2/team/app/blobs/{DIGEST}", [("Authorization", "Bearer account")]
            answer = await call_asgi(app, "GET", path, headers=auth, host="mirror.test")
    assert answer.status == 200 and not answer.complete
    assert answer.body == BLOB[: len(answer.body)]
    assert upstream.ranges == [None, f"bytes={offset}-"] and upstream.read == 0
    warned = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    warned = [w for w in warned if "cannot write" not in w]  # the disk's own line
    assert len(warned) == 1, warned
    assert f"registry.test answered bytes={offset}- with " in warned[0], warned
    assert cached_blobs(tmp_path) == []


class RestBreaksOff(Upstream):
    """Answers a Range GET with the rest asked for, which breaks off after ``every`` bytes."""

    def __init__(self, every: int = 100_000) -> None:
        super().__init__()
        self.every = every

    def __call__(self, request: httpx.Request) -> httpx.Response:
        ranged = request.headers.get("range")
        if ranged is None or request.url.host == "auth.test":
            return super().__call__(request)
        self.ranges.append(ranged)
        start = int(ranged.removeprefix("bytes=").removesuffix("-"))
        headers = {
            "Content-Range": f"bytes {start}-{len(BLOB) - 1}/{len(BLOB)}",
            "Content-Length": str(len(BLOB) - start),
        }
        return httpx.Response(206, headers=headers, stream=CutAfter(BLOB[start:], self.every))


async def test_a_followers_rest_that_breaks_off_goes_on_from_there(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The disk failed under the fill and the client's rest from the upstream breaks off every
    200 KB: the client's rest goes on from there, as a fill's download does (two resumes, an
    INFO line each), and the client gets the whole blob."""
    monkeypatch.setattr(fill, "write_all", fakes.DiskFullAfter(HALF))
    upstream = RestBreaksOff(every=200_000)
    settings = {"upstream__username": "bot", "upstream__password": "s3cret"}
    async with mirror(tmp_path, upstream, **settings) as app:
        path, auth = f"/v2/team/app/blobs/{DIGEST}", [("Authorization", "Bearer account")]
        with caplog.at_level(logging.INFO, logger="docxy"):
            answer = await call_asgi(app, "GET", path, headers=auth, host="mirror.test")
    assert answer.status == 200 and answer.complete and answer.body == BLOB
    starts = [HALF, HALF + 200_000, HALF + 400_000]
    assert upstream.ranges == [None, *[f"bytes={start}-" for start in starts]]
    went_on = [r for r in caplog.records if "going on from there" in r.getMessage()]
    assert [r.levelno for r in went_on] == [logging.INFO] * 2
    warned = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert [r for r in warned if "cannot write" not in r.getMessage()] == [], caplog.text


async def test_a_followers_rest_that_keeps_breaking_off_cuts_its_client_with_one_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The disk failed under the fill and the client's rest from the upstream breaks off every
    100 KB: after three resumes (400 KB of the 512 KiB left) the client is cut as for any
    failed download (its access line ``cut``), with one WARNING saying so, not an error
    escaping the response's body (``aborted``, a traceback); and one upstream error of kind
    ``broke_off``, as a fill's download that keeps breaking off is."""
    monkeypatch.setattr(fill, "write_all", fakes.DiskFullAfter(HALF))
    upstream = RestBreaksOff()
    settings = {"upstream__username": "bot", "upstream__password": "s3cret"}
    async with mirror(tmp_path, upstream, **settings) as app:
        path, auth = f"/v2/team/app/blobs/{DIGEST}", [("Authorization", "Bearer account")]
        logged = AccessLog(Guard(app, None))
        with caplog.at_level(logging.INFO, logger="docxy"):
            answer = await call_asgi(logged, "GET", path, headers=auth, host="mirror.test")
        state = mirror_state(app)
        failures = state.client.health_of(state.upstream).failures
    assert answer.status == 200 and not answer.complete
    assert answer.body == BLOB[: len(answer.body)]
    starts = [HALF + n * 100_000 for n in range(4)]
    assert upstream.ranges == [None, *[f"bytes={start}-" for start in starts]]
    [line] = [r.getMessage() for r in caplog.records if r.name == "docxy.access"]
    assert line.endswith(" cut"), line
    warned = [r for r in caplog.records if r.levelno >= logging.WARNING]
    warned = [r for r in warned if "cannot write" not in r.getMessage()]  # the disk's own line
    assert [r.levelno for r in warned] == [logging.WARNING], caplog.text
    assert "ReadError: connection reset by peer" in warned[0].getMessage()
    assert failures == {"broke_off": 1}, failures


class Gated(Upstream):
    """The blob's first GET flows once ``flowing`` is set; a Range GET gets the rest (a ``206``),
    or with ``ignores_range`` the whole blob (a ``200``), once ``rests_flowing`` is set. Counts
    the blob bodies open at once (from the answer to its close), the most in ``most_open``."""

    def __init__(self, ignores_range: bool = False) -> None:
        super().__init__()
        self.flowing, self.rests_flowing = asyncio.Event(), asyncio.Event()
        self.ignores_range = ignores_range
        self.open = self.most_open = 0

    def __call__(self, request: httpx.Request) -> httpx.Response:
        answer = super().__call__(request)
        if request.url.host == "auth.test" or answer.status_code not in (200, 206):
            return answer
        if request.url.path == "/v2/":
            return answer
        ranged = request.headers.get("range")
        start = 0 if ranged is None else int(ranged.removeprefix("bytes=").removesuffix("-"))
        headers = {}
        if ranged is not None and not self.ignores_range:
            headers["Content-Range"] = f"bytes {start}-{len(BLOB) - 1}/{len(BLOB)}"
        else:
            start = 0
        headers["Content-Length"] = str(len(BLOB) - start)
        self.open += 1
        self.most_open = max(self.most_open, self.open)
        gate = self.flowing if ranged is None else self.rests_flowing
        body = OpenBody(self, BLOB[start:], gate)
        return httpx.Response(
            206 if "Content-Range" in headers else 200, headers=headers, stream=body
        )


class OpenBody(httpx.AsyncByteStream):
    """A body of ``data`` (once ``gate`` is set) that tells its upstream when it is closed."""

    def __init__(self, upstream: Gated, data: bytes, gate: asyncio.Event) -> None:
        self.upstream, self.data, self.gate = upstream, data, gate
        self.closed = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        await self.gate.wait()
        for start in range(0, len(self.data), 65536):
            yield self.data[start : start + 65536]

    async def aclose(self) -> None:
        if not self.closed:
            self.closed = True
            self.upstream.open -= 1


@pytest.mark.parametrize("ranges", ["honoured", "ignored"])
async def test_the_clients_of_a_given_up_fill_get_their_rests_under_the_fill_cap(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ranges: str
) -> None:
    """Two clients follow one fill, whose disk fails after half the blob; with
    ``limits.fills_total = 1`` their two rests from the upstream count as fills: the second
    waits for the first (and the first for the fill's own download) instead of a third
    download at once, and neither client is refused or cut. An upstream that ignores Range
    sends each rest as the whole blob, read past the kept half: both clients still get the
    blob, verified."""
    monkeypatch.setattr(fill, "write_all", fakes.DiskFullAfter(HALF))
    upstream = Gated(ignores_range=ranges == "ignored")
    settings = {
        "upstream__username": "bot",
        "upstream__password": "s3cret",
        "limits__fills_total": "1",
    }
    async with mirror(tmp_path, upstream, **settings) as app:
        path, auth = f"/v2/team/app/blobs/{DIGEST}", [("Authorization", "Bearer account")]
        store = mirror_state(app).running.blobs.store
        assert store is not None
        permits = mirror_state(app).running.blobs.permits

        def get() -> Coroutine[Any, Any, AsgiAnswer]:
            return call_asgi(app, "GET", path, headers=auth, host="mirror.test")

        async with asyncio.TaskGroup() as tasks:
            first = tasks.create_task(get())
            await until(lambda: upstream.blob_gets == 1)
            joined = tasks.create_task(get())
            await until(lambda: store.followers_joined == 1)
            upstream.flowing.set()
            # The rests flow once both are asked for upstream (no cap), or one waits (the cap).
            await until(lambda: len(upstream.ranges) == 3 or permits.waiting > 0)
            upstream.rests_flowing.set()
        assert not permits.running and not permits.refused
    for answer in (first.result(), joined.result()):
        assert answer.status == 200 and answer.complete and answer.body == BLOB
    assert upstream.ranges == [None, f"bytes={HALF}-", f"bytes={HALF}-"]
    assert upstream.most_open == 1 and upstream.open == 0
    assert cached_blobs(tmp_path) == []


class NoLength(Upstream):
    """Sends the blob without a Content-Length (its length unknown until its end)."""

    def __call__(self, request: httpx.Request) -> httpx.Response:
        answer = super().__call__(request)
        if request.url.host == "auth.test" or request.headers.get("range") is not None:
            return answer
        if answer.status_code != 200 or request.url.path == "/v2/":
            return answer
        return httpx.Response(200, stream=fakes.Body.of(BLOB))


@pytest.mark.parametrize("length", ["known", "unknown"])
async def test_a_sync_that_fails_after_the_verify_leaves_the_client_the_whole_kept_blob(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, length: str
) -> None:
    """The fill has every byte and they verified; only the commit's sync fails (EIO). The
    client gets the whole blob from the temp file, nothing hashed again: no Range GET. (It used
    to ask for the rest from the blob's end: a 1-byte Range GET for a known length, and for an
    unknown one a Range past the end, which cut it.)"""

    def sync_fails(fd: int) -> None:
        os.close(fd)
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(fill, "_sync_and_close", sync_fails)
    rehashed: list[int] = []  # the whole is verified with the fill's own hash, not read again
    monkeypatch.setattr(fill.BlobFollower, "_hashed", lambda _, nbytes: rehashed.append(nbytes))
    upstream = Upstream() if length == "known" else NoLength()
    settings = {"upstream__username": "bot", "upstream__password": "s3cret"}
    async with mirror(tmp_path, upstream, **settings) as app:
        path, auth = f"/v2/team/app/blobs/{DIGEST}", [("Authorization", "Bearer account")]
        answer = await call_asgi(app, "GET", path, headers=auth, host="mirror.test")
    assert answer.status == 200 and answer.complete and answer.body == BLOB
    assert upstream.ranges == [None] and rehashed == []
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
        # The fill fails at its first write: its client gets the blob from the upstream.
        first = await call_asgi(app, "GET", f"/v2/team/app/blobs/{DIGEST}", host="mirror.test")
        assert first.status == 200
        assert first.complete and first.body == BLOB
        assert upstream.ranges == [None, "bytes=0-"]
        # Said before the fill was given up, a miss; a HEAD then shows it was not kept (what
        # `docxy warm` asks), and the next GET why.
        assert first.headers.getlist("Cache-Status") == ["Docxy; fwd=miss"]
        head = await client.head(
            f"/v2/team/app/blobs/{DIGEST}", headers={"Authorization": "Bearer account"}
        )
        assert head.headers.getlist("Cache-Status") == ["Docxy; fwd=bypass; detail=not-cacheable"]
        second = await client.get(
            f"/v2/team/app/blobs/{DIGEST}", headers={"Authorization": "Bearer account"}
        )
        assert second.status_code == 200
        assert await second.get_data() == BLOB
        said = second.headers.getlist("Cache-Status")
        assert said == ["Docxy; fwd=bypass; detail=cache-unwritable"]
    assert cached_blobs(tmp_path) == []
    assert "its clients get the rest from the upstream, uncached" in caplog.text


async def test_a_disk_that_fails_mid_fill_is_one_warning_saying_why_and_what_now(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The disk fills up under a download: one WARNING names the blob and the error, and says
    what follows (its clients get the rest upstream, other misses go uncached a while); no
    second line for the fill's abort, none for the retry passed through."""

    def disk_full(fd: int, chunks: list[bytes]) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(fill, "write_all", disk_full)
    settings = {"upstream__username": "bot", "upstream__password": "s3cret"}
    async with mirror(tmp_path, Upstream(), **settings) as app:
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="docxy"):
            path, auth = f"/v2/team/app/blobs/{DIGEST}", [("Authorization", "Bearer account")]
            answers = [
                await call_asgi(logged, "GET", path, headers=auth, host="mirror.test")
                for logged in (AccessLog(Guard(app, None)), AccessLog(Guard(app, None)))
            ]
    assert answers[1].complete and answers[1].body == BLOB  # the retry, passed through
    lines = [r for r in caplog.records if r.name.startswith("docxy") and r.levelno >= logging.INFO]
    assert [r.name for r in lines if r.levelno == logging.INFO] == ["docxy.access"] * 2
    [warned] = [r.getMessage() for r in lines if r.levelno >= logging.WARNING]
    assert warned.startswith(f"cache: cannot write {DIGEST} (No space left on device, ENOSPC)")
    assert "clients get the rest from the upstream" in warned and "uncached for 60 s" in warned


async def test_a_blob_larger_than_the_cache_passes_through_with_its_reason(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="docxy")
    upstream = Upstream()
    settings = {"upstream__username": "bot", "upstream__password": "s3cret"}
    async with mirror(tmp_path, upstream, cache__max_size="512K", **settings) as app:
        path, auth = f"/v2/team/app/blobs/{DIGEST}", [("Authorization", "Bearer account")]
        for _ in range(2):
            logged = AccessLog(Guard(app, None))
            answer = await call_asgi(logged, "GET", path, headers=auth, host="mirror.test")
            assert answer.status == 200
            assert answer.complete and answer.body == BLOB  # 1 MiB, through, whole
    assert cached_blobs(tmp_path) == []
    assert list((tmp_path / "cache" / "tmp").iterdir()) == []
    # The mirror's own fetch learned the length, then let go: the second request went
    # straight through (1 + 2 GETs, not 2 + 2).
    assert upstream.blob_gets == 3
    lines = [r.getMessage() for r in caplog.records if r.name == "docxy.access"]
    assert len(lines) == 2 and all("cache=uncached reason=cache-full" in line for line in lines)
    assert "larger than the whole cache (524288)" in caplog.text


@pytest.mark.parametrize("status", [429, 500, 503, 522, 530])
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


async def test_an_answer_of_trouble_is_not_remembered_as_no_token_auth(tmp_path: Path) -> None:
    upstream = Upstream()
    upstream.ping_status = 503
    async with mirror(tmp_path, upstream) as app:
        client = app.test_client()
        during = await client.get("/auth/token?service=registry.test&scope=repository:a/b:pull")
        upstream.ping_status = 401
        after = await client.get("/auth/token?service=registry.test&scope=repository:a/b:pull")
        assert during.status_code == 200  # the offline token, not "no token auth" (404)
        assert after.status_code == 200
        assert await after.get_json() == {"token": "anon"}  # the upstream's own, once back
    assert upstream.token_auth == [None]


async def test_a_mirror_started_in_an_outage_advertises_no_made_up_service(
    tmp_path: Path,
) -> None:
    upstream = Upstream()
    upstream.service = "auth-service.test"
    upstream.ping_status = 503
    async with mirror(tmp_path, upstream) as app:
        client = app.test_client()
        during = await client.get("/v2/")
        assert during.status_code == 401
        assert "service=" not in during.headers["WWW-Authenticate"]
        upstream.ping_status = 401
        after = await client.get("/v2/")
        assert 'service="auth-service.test"' in after.headers["WWW-Authenticate"]
        # A client that got the challenge without a service still gets a token for the right one.
        token = await client.get("/auth/token?scope=repository:a/b:pull")
        assert token.status_code == 200
    assert upstream.token_queries and "service=auth-service.test" in upstream.token_queries[-1]


class Expiring:
    """A token-auth registry whose first token to the mirror has already expired upstream."""

    def __init__(self, missing: str = "") -> None:
        self.issued = 0
        self.missing = missing  # a digest this registry does not have
        self.blob_auth: list[str | None] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.url.host == "auth.test":
            self.issued += 1
            return reply(200, b'{"token": "t%d"}' % self.issued, {"Content-Type": "a/json"})
        if request.url.path == "/v2/":
            challenge = f'Bearer realm="{AUTH}",service="registry.test"'
            return reply(401, b"{}", {"WWW-Authenticate": challenge})
        self.blob_auth.append(request.headers.get("authorization"))
        if request.headers.get("authorization") == "Bearer t1" and not self.missing:
            return reply(401, b'{"errors": [{"code": "UNAUTHORIZED"}]}')
        if self.missing and request.url.path.endswith(self.missing):
            return reply(404, b'{"errors": [{"code": "BLOB_UNKNOWN"}]}')
        return reply(200, BLOB)


async def test_a_401_on_the_mirrors_own_token_refreshes_it_once(tmp_path: Path) -> None:
    upstream = Expiring()
    async with mirror(tmp_path, upstream) as app:
        response = await app.test_client().get(f"/v2/team/app/blobs/{DIGEST}")
        assert response.status_code == 200
        assert await response.get_data() == BLOB
    assert upstream.blob_auth == ["Bearer t1", "Bearer t2"]
    assert [p.name for p in cached_blobs(tmp_path)] == [DIGEST.split(":")[1]]


async def test_a_missing_blob_says_nothing_about_its_repository(tmp_path: Path) -> None:
    missing = "sha256:" + "e" * 64
    upstream = Expiring(missing=missing)
    async with mirror(tmp_path, upstream) as app:
        client = app.test_client()
        gone = await client.get(f"/v2/team/app/blobs/{missing}")
        assert gone.status_code == 404
        found = await client.get(f"/v2/team/app/blobs/{DIGEST}")
        assert found.status_code == 200
        assert await found.get_data() == BLOB
    assert [p.name for p in cached_blobs(tmp_path)] == [DIGEST.split(":")[1]]


async def test_no_temp_file_means_one_download_and_no_cached_claim(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    upstream = Upstream()
    settings = {"upstream__username": "bot", "upstream__password": "s3cret"}
    async with mirror(tmp_path, upstream, **settings) as app:
        tmp = tmp_path / "cache" / "tmp"
        tmp.rmdir()
        tmp.write_text("not a directory: the cache cannot create temp files")
        response = await app.test_client().get(
            f"/v2/team/app/blobs/{DIGEST}", headers={"Authorization": "Bearer account"}
        )
        assert response.status_code == 200
        assert await response.get_data() == BLOB
    assert upstream.blob_gets == 1  # the client's pass-through, no second fetch for the cache
    assert cached_blobs(tmp_path) == []
    assert " cached (" not in caplog.text


class Cut(httpx.AsyncByteStream):
    """A blob body that breaks off after its first chunks."""

    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield BLOB[: len(BLOB) // 2]
        raise httpx.ReadError("connection reset by peer")


async def test_a_client_cut_off_from_a_failed_fill_is_one_warning_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    def upstream(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v2/":
            return reply(200, b"{}")
        return httpx.Response(200, headers={"Content-Length": str(len(BLOB))}, stream=Cut())

    async with mirror(tmp_path, upstream) as app:
        caplog.clear()
        answer = await call_asgi(app, "GET", f"/v2/team/app/blobs/{DIGEST}", host="mirror.test")
    assert answer.status == 200
    assert not answer.complete  # cut: the client sees a broken download, never a short success
    assert len(answer.body) < len(BLOB)
    assert not [r for r in caplog.records if r.exc_info]
    # One line for the failed download, said by the fill (why, and where from); the client's
    # cut adds no second warning. It went on from where it broke once, with a Range GET, which
    # broke off again with nothing new (this upstream ignores Range and always breaks there).
    warned = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert warned == [
        f"blob {DIGEST}: fill failed (from upstream): ReadError: connection reset by peer "
        "(1 resume, the last gave 0 bytes)"
    ]


@pytest.mark.parametrize(
    ("status", "said"),
    [
        (503, "registry.test answered 503 to the mirror's token"),
        (0, "cannot reach the upstream registry (registry.test): ConnectError"),
    ],
)
async def test_a_fill_that_cannot_start_is_one_warning_naming_blob_upstream_and_answer(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, status: int, said: str
) -> None:
    """The upstream answers 5xx to the mirror's blob GET, or cannot be reached: the client gets
    an error, and the operator one WARNING naming the blob, the upstream and what it answered
    (besides the request's access line)."""

    def upstream(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v2/":
            return reply(200, b"{}")
        if not status:
            raise httpx.ConnectError("connection refused")
        return reply(status, b'{"errors": []}')

    async with mirror(tmp_path, upstream) as app:
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="docxy"):
            logged = AccessLog(Guard(app, None))
            path = f"/v2/team/app/blobs/{DIGEST}"
            answer = await call_asgi(logged, "GET", path, host="mirror.test")
    assert answer.status >= 500
    lines = [r for r in caplog.records if r.name.startswith("docxy") and r.levelno >= logging.INFO]
    warned = [r.getMessage() for r in lines if r.levelno >= logging.WARNING]
    assert warned == [f"blob {DIGEST}: fill failed (from upstream): {said}"]
    assert [r.name for r in lines if r.levelno == logging.INFO] == ["docxy.access"]


async def test_a_fill_refused_by_the_upstream_is_one_info_line_naming_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A 401 to the mirror's own token is a repository private to it: the request passes
    through with the client's credentials (as designed), so one INFO line says so, no WARNING."""

    async with mirror(tmp_path, Upstream()) as app:
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="docxy"):
            logged = AccessLog(Guard(app, None))
            path = f"/v2/team/app/blobs/{DIGEST}"
            answer = await call_asgi(logged, "GET", path, host="mirror.test")
    assert answer.status == 401
    lines = [r for r in caplog.records if r.name.startswith("docxy") and r.levelno >= logging.INFO]
    assert not [r for r in lines if r.levelno >= logging.WARNING]
    [fill_line] = [r.getMessage() for r in lines if r.name != "docxy.access"]
    assert fill_line == (
        f"cache fill of {DIGEST} aborted: registry.test answered 401 to the mirror's token"
    )


async def test_a_blob_that_does_not_verify_is_one_warning_saying_what_and_from_where(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Bytes of the right length that hash to another digest: the client is cut and the log
    says so once, as a warning naming both digests and where the bytes came from, and the
    access line marks the request as cut; no second line for the fill's abort or the cut."""
    wrong = bytes(reversed(BLOB))
    got = "sha256:" + hashlib.sha256(wrong).hexdigest()

    def upstream(request: httpx.Request) -> httpx.Response:
        return reply(200, b"{}" if request.url.path == "/v2/" else wrong)

    async with mirror(tmp_path, upstream) as app:
        caplog.clear()
        with caplog.at_level(logging.INFO):
            logged = AccessLog(Guard(app, None))
            path = f"/v2/team/app/blobs/{DIGEST}"
            answer = await call_asgi(logged, "GET", path, host="mirror.test")
    assert not answer.complete and len(answer.body) < len(BLOB)
    lines = [
        r
        for r in caplog.records
        if r.name.startswith("docxy") and r.levelno >= logging.INFO and DIGEST[7:] in r.message
    ]
    warnings = [r.getMessage() for r in lines if r.levelno >= logging.WARNING]
    assert len(warnings) == 1, warnings
    assert f"expected {DIGEST}, got {got}" in warnings[0] and "from upstream" in warnings[0]
    [access] = [r.getMessage() for r in lines if r.levelno == logging.INFO]
    assert access.startswith(f"GET /v2/team/app/blobs/{DIGEST} 200 ") and access.endswith(" cut")


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


@pytest.mark.parametrize("status", [401, 403])
async def test_a_cdns_refusal_is_a_failed_fetch_not_the_registrys(
    tmp_path: Path, status: int
) -> None:
    """The registry took the mirror's token and redirected the blob's GET; where it sent it
    (an expired signed URL, a CDN rule) refused: the fill fails, and the repository's other
    blobs are still fetched and cached with that token, not passed through for REFUSED_TTL."""
    other = b"another layer " * 80000
    contents = {"sha256:" + hashlib.sha256(data).hexdigest(): data for data in (BLOB, other)}
    cdn_answers = [status] * (2 if status == 401 else 1)  # a 401: asked again, new token

    def upstream(request: httpx.Request) -> httpx.Response:
        if request.url.host == "auth.test":
            return reply(200, b'{"token": "t"}', {"Content-Type": "application/json"})
        if request.url.host == "cdn.test":
            refused = cdn_answers.pop(0) if cdn_answers else None
            if refused is not None:
                return reply(refused, b"<Error>Request has expired</Error>")
            return reply(200, contents["sha256:" + request.url.path.rsplit("/", 1)[1]])
        if request.url.path == "/v2/":
            challenge = f'Bearer realm="{AUTH}",service="registry.test"'
            return reply(401, b"{}", {"WWW-Authenticate": challenge})
        if request.headers.get("authorization") != "Bearer t":
            return reply(401, b'{"errors": [{"code": "UNAUTHORIZED"}]}')
        hexpart = request.url.path.rsplit(":", 1)[1]
        return reply(307, b"", {"Location": f"https://cdn.test/blob/{hexpart}"})

    async with mirror(tmp_path, upstream) as app:
        client = app.test_client()
        for digest, data in contents.items():
            headers = {"Authorization": "Bearer t"}  # the client's own, from the token dance
            response = await client.get(f"/v2/team/app/blobs/{digest}", headers=headers)
            assert (response.status_code, await response.get_data()) == (200, data)
        await committed(app)
        store = app.extensions["docxy"].cache.blobs
        second = parse_digest(list(contents)[1])
        assert store.holds(second), "the repository's next blob was passed through uncached"


async def test_a_cdns_refusal_of_a_pairing_head_is_not_the_registrys(tmp_path: Path) -> None:
    """A cached blob asked under another repository is checked with a HEAD, which follows the
    registry's redirect; a CDN that refuses HEAD (a URL signed for GET only) is no refusal of
    the mirror's token: that repository's blobs are not passed through for REFUSED_TTL."""

    def upstream(request: httpx.Request) -> httpx.Response:
        if request.url.host == "auth.test":
            return reply(200, b'{"token": "t"}', {"Content-Type": "application/json"})
        if request.url.host == "cdn.test":
            if request.method == "HEAD":
                return reply(403, b"<Error>SignatureDoesNotMatch</Error>")
            return reply(200, BLOB)
        if request.url.path == "/v2/":
            challenge = f'Bearer realm="{AUTH}",service="registry.test"'
            return reply(401, b"{}", {"WWW-Authenticate": challenge})
        if request.headers.get("authorization") != "Bearer t":
            return reply(401, b'{"errors": [{"code": "UNAUTHORIZED"}]}')
        return reply(307, b"", {"Location": "https://cdn.test/blob/x"})

    async with mirror(tmp_path, upstream) as app:
        client = app.test_client()
        headers = {"Authorization": "Bearer t"}
        assert (
            await client.get(f"/v2/team/app/blobs/{DIGEST}", headers=headers)
        ).status_code == 200
        await committed(app)
        answer = await client.get(f"/v2/team/other/blobs/{DIGEST}", headers=headers)
        assert answer.status_code == 200
        state = mirror_state(app)
        assert not state.running.tokens.refused(state.upstreams.default, "team/other")


async def test_a_cached_blob_that_cannot_be_read_is_fetched_again_at_the_next_pull(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A read of a cached blob fails (EIO: a bad sector under it). That client's download is
    cut (its headers are out), and the blob is dropped from the cache: the next pull fetches it
    again. It stayed cached, and every pull of that layer failed the same way."""
    upstream = Upstream()
    settings = {"upstream__username": "bot", "upstream__password": "s3cret"}
    async with mirror(tmp_path, upstream, **settings) as app:
        client = app.test_client()
        first = await client.get(f"/v2/team/app/blobs/{DIGEST}")
        assert await first.get_data() == BLOB
        await committed(app)
        real = BlobFile.pread

        def pread(self: BlobFile, length: int, offset: int) -> bytes:
            raise OSError(errno.EIO, os.strerror(errno.EIO))

        monkeypatch.setattr(BlobFile, "pread", pread)
        caplog.set_level(logging.WARNING, logger="docxy.cache.blobs")
        # Cut, not an exception out of the app (hypercorn's traceback for each client).
        broken = await call_asgi(app, "GET", f"/v2/team/app/blobs/{DIGEST}", host="mirror.test")
        assert (broken.status, broken.complete) == (200, False)
        assert "dropped from the cache" in caplog.text
        monkeypatch.setattr(BlobFile, "pread", real)  # the new fill writes new blocks
        again = await client.get(f"/v2/team/app/blobs/{DIGEST}")
        assert (again.status_code, await again.get_data()) == (200, BLOB)
        await committed(app)
        assert upstream.blob_gets == 2
        assert app.extensions["docxy"].cache.blobs.holds(parse_digest(DIGEST))


async def test_a_fills_gets_ask_for_the_blobs_own_bytes(tmp_path: Path) -> None:
    """httpx asks for gzip by default and unzips: behind a proxy that zips what it may, the
    fill's GET and its resume got the zipped length announced and more bytes than that, and
    the fill failed ('upstream sent more than the ... bytes it announced'), every time."""
    asked: list[tuple[str | None, str | None]] = []

    def upstream(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v2/":
            return fakes.reply(200, b"{}", {}, length=True)
        ranged, encoding = request.headers.get("range"), request.headers.get("accept-encoding")
        asked.append((ranged, encoding))
        start = int(ranged.removeprefix("bytes=").rstrip("-")) if ranged else 0
        rest, status = BLOB[start:], 206 if ranged else 200
        headers = {"Content-Range": f"bytes {start}-{len(BLOB) - 1}/{len(BLOB)}"} if ranged else {}
        if "gzip" in (encoding or ""):  # the proxy zips
            zipped = gzip.compress(rest)
            headers |= {"Content-Encoding": "gzip", "Content-Length": str(len(zipped))}
            return httpx.Response(status, headers=headers, content=zipped)
        headers["Content-Length"] = str(len(rest))
        body = CutAfter(rest, 300_000 if not ranged else len(rest))  # the first GET breaks off
        return httpx.Response(status, headers=headers, stream=body)

    async with mirror(tmp_path, upstream) as app:
        path = f"/v2/team/app/blobs/{DIGEST}"
        answer = await call_asgi(app, "GET", path, host="mirror.test")
    assert answer.status == 200 and answer.complete and answer.body == BLOB
    assert asked == [(None, "identity"), ("bytes=300000-", "identity")]
    assert [p.name for p in cached_blobs(tmp_path)] == [DIGEST.split(":")[1]]


@pytest.mark.parametrize("asks", [None, "gzip"])
async def test_a_blob_passed_through_comes_in_the_encoding_its_client_asked_for(
    tmp_path: Path, asks: str | None
) -> None:
    """httpx adds ``Accept-Encoding: gzip, deflate`` to a request without one, and a pass-through
    relays the body as it comes: behind a proxy that zips, a client that asked for no encoding
    (curl, a script) got zipped bytes for the blob. A blob by digest is asked ``identity``
    whatever the client offers (since 362ff51): its bytes are checked as relayed."""
    asked: list[str | None] = []

    def upstream(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v2/":
            return fakes.reply(200, b"{}", {}, length=True)
        encoding = request.headers.get("accept-encoding")
        asked.append(encoding)
        if "gzip" in (encoding or ""):  # the proxy zips
            zipped = gzip.compress(BLOB)
            headers = {"Content-Encoding": "gzip", "Content-Length": str(len(zipped))}
            return httpx.Response(200, headers=headers, stream=fakes.Body(zipped))
        return fakes.reply(200, BLOB, {}, length=True)

    headers = [("Range", "bytes=0-")] + ([("Accept-Encoding", asks)] if asks else [])
    async with mirror(tmp_path, upstream) as app:
        path = f"/v2/team/app/blobs/{DIGEST}"
        answer = await call_asgi(app, "GET", path, host="mirror.test", headers=headers)
    assert answer.status == 200 and answer.complete
    assert asked == ["identity"] and answer.body == BLOB
    assert "content-encoding" not in answer.headers


class YieldingClose(httpx.AsyncByteStream):
    """A blob body whose close yields to the loop once, as httpcore's does (its lock, the
    socket): MockTransport's never yields."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for start in range(0, len(self.data), 65536):
            yield self.data[start : start + 65536]

    async def aclose(self) -> None:
        await asyncio.sleep(0)


@pytest.mark.parametrize("cap", ["fills_per_client", "fills_total"])
async def test_a_blob_too_big_for_the_cache_passes_through_under_a_cap_of_one(
    tmp_path: Path, cap: str
) -> None:
    """The fill took the client's permit, found no room and stopped; its pass-through asked
    for a permit of its own while the fill's was not given back yet (that waits for the
    upstream body's close): 429, from the client's own dying fill."""
    upstream = Upstream()

    def answer(request: httpx.Request) -> httpx.Response:
        reply = upstream(request)
        if "/blobs/" in request.url.path and reply.status_code == 200:
            headers = {"Content-Length": str(len(BLOB))}
            return httpx.Response(200, headers=headers, stream=YieldingClose(BLOB))
        return reply

    settings = {"upstream__username": "bot", "upstream__password": "s3cret", f"limits__{cap}": "1"}
    async with mirror(tmp_path, answer, cache__max_size="512K", **settings) as app:
        path, auth = f"/v2/team/app/blobs/{DIGEST}", [("Authorization", "Bearer account")]
        got = await call_asgi(app, "GET", path, headers=auth, host="mirror.test")
        assert got.status == 200 and got.body == BLOB, got.body[:200]
        assert not mirror_state(app).running.blobs.permits.running


async def test_a_login_in_a_redirect_the_mirror_cannot_follow_is_never_echoed(
    tmp_path: Path,
) -> None:
    """A Location with a login (``user:pw@cdn``) that cannot be reached: the 502's body and
    ``/health``'s last error named the host with the password in it."""

    def upstream(request: httpx.Request) -> httpx.Response:
        if request.url.host == "cdn.test":
            raise httpx.ConnectError("connection refused", request=request)
        if request.url.path == "/v2/":
            return fakes.reply(200, b"{}", length=True)
        location = "https://cdnuser:cdn-s3cret@cdn.test/blob?sig=abc"
        return fakes.reply(307, b"", {"Location": location}, length=True)

    async with mirror(tmp_path, upstream, cache__enabled="false") as app:
        response = await app.test_client().get(f"/v2/library/a/blobs/sha256:{'a' * 64}")
        body = await response.get_data()
        health = await (await app.test_client().get("/health")).get_data()
    assert response.status_code == 502
    assert b"cdn.test" in body and b"cdn-s3cret" not in body
    assert b"cdn.test" in health and b"cdn-s3cret" not in health


RANGE_SETTINGS = {"upstream__username": "bot", "upstream__password": "s3cret"}


@pytest.mark.parametrize(
    ("method", "headers", "status", "body"),
    [
        ("HEAD", [("Range", "bytes=0-9")], 200, b""),  # Range is for GET only (RFC 9110 14.2)
        ("HEAD", [("Range", f"bytes={len(BLOB)}-")], 200, b""),  # was a 416 for a blob held
        ("GET", [("Range", "bytes=10-"), ("If-Range", '"other"')], 200, BLOB),  # 13.1.5
        ("GET", [("Range", "bytes=10-"), ("If-Range", "Wed, 02 Dec 2026 20:00:00 GMT")], 200, BLOB),
        ("GET", [("Range", "bytes=10-"), ("If-Range", f'"{DIGEST}"')], 206, BLOB[10:]),
    ],
    ids=["head", "head-past-end", "if-range-other", "if-range-date", "if-range-ours"],
)
async def test_a_cached_blobs_range_is_honoured_only_where_http_says(
    tmp_path: Path, method: str, headers: list[tuple[str, str]], status: int, body: bytes
) -> None:
    """A HEAD with a Range got 206 (Content-Length 10: a size probe read 10) or 416; an
    If-Range that was not the blob's ETag still got the part, not the whole."""
    async with mirror(tmp_path, Upstream(), **RANGE_SETTINGS) as app:
        path = f"/v2/team/app/blobs/{DIGEST}"
        assert await (await app.test_client().get(path)).get_data() == BLOB
        await committed(app)
        answer = await call_asgi(app, method, path, host="mirror.test", headers=headers)
    assert (answer.status, answer.body) == (status, body)
    length = len(BLOB) if status == 200 else len(BLOB) - 10
    assert answer.headers["Content-Length"] == str(length)
