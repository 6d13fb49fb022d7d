"""Review of ``docxy warm`` and ``docxy health`` (third round): a real mirror in front of a
real ``docker-registry`` (``lab.registry``, ``lab.mirror``), both on 127.0.0.179, ports
8500-8599 (this review's range; lab's own parts pick 127.0.0.1 and any free port)."""

from __future__ import annotations

import asyncio
import errno
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from docxy.cache import parse_digest
from docxy.cli.main import main
from docxy.cli.warm import Warmer, WarmError, retry_after_seconds
from docxy.core.names import parse_image_ref
from lab.bed.images import Pusher, build_image, text_layer
from lab.health import health_server
from lab.mirror import Mirror, launch_mirror, stop_mirror
from lab.registry import RegistryProcess
from tests.unit.asgi import AsgiAnswer, call_asgi
from tests.unit.test_cache_blobs import HeldSync
from tests.unit.test_fill_sync import AUTH as SYNC_AUTH
from tests.unit.test_fill_sync import PATH as SYNC_PATH
from tests.unit.test_fill_sync import SETTINGS as SYNC_SETTINGS
from tests.unit.test_fill_sync import held_sync as held_sync  # noqa: F401  (fixture)
from tests.unit.test_pull_blobs import BLOB, DIGEST, Upstream, mirror
from tests.unit.test_pull_blobs import cached_blobs as sync_cached_blobs
from tests.unit.test_warm import FakeRegistry, cached_blobs, warmer
from tests.unit.test_warm import sha as sha256

pytestmark = pytest.mark.usefixtures("clean_docxy_env")

HOST = "127.0.0.179"
PORTS = range(8500, 8600)
_handed: set[int] = set()


def my_port(host: str = HOST) -> int:
    """A port of this review's range that binds on HOST now, never one handed out before."""
    for port in PORTS:
        if port in _handed:
            continue
        with socket.socket() as sock:
            try:
                sock.bind((HOST, port))
            except OSError:
                continue
        _handed.add(port)
        return port
    raise RuntimeError(f"no free port left in {PORTS}")


@pytest.fixture
def in_my_range(monkeypatch: pytest.MonkeyPatch) -> None:
    """lab's registry, mirror and readiness polls on HOST and this review's ports."""
    for module in ("lab.registry", "lab.mirror", "lab.service", "lab.bed.httpserver"):
        monkeypatch.setattr(f"{module}.LOOPBACK", HOST)
    for module in ("lab.registry", "lab.mirror", "lab.bed.httpserver"):
        monkeypatch.setattr(f"{module}.free_port", my_port)


@dataclass
class Lab:
    registry: RegistryProcess
    pusher: Pusher
    workdir: Path


@pytest.fixture
def lab(tmp_path: Path, in_my_range: None) -> Iterator[Lab]:
    registry = RegistryProcess("/usr/bin/docker-registry", tmp_path / "registry")
    (tmp_path / "registry").mkdir()
    registry.start()
    pusher = Pusher(registry.url, lambda repo: "none")  # no auth: the header is ignored
    try:
        yield Lab(registry, pusher, tmp_path)
    finally:
        pusher.close()
        registry.stop()


@pytest.fixture
def mirror_of(lab: Lab) -> Iterator[list[Mirror]]:
    """Mirrors started by a test (``launch_mirror(lab.registry.url, ...)``), stopped after it."""
    started: list[Mirror] = []
    try:
        yield started
    finally:
        for mirror in started:
            stop_mirror(mirror)


def blobs_of(image: object) -> set[str]:
    return {image.config.digest, *(layer.blob.digest for layer in image.layers)}  # type: ignore[attr-defined]


# --- 1. the mirror's own 429 (limits.*) -----------------------------------------------------


def test_a_429_from_the_mirrors_limits_is_waited_out_not_a_failure(
    lab: Lab, mirror_of: list[Mirror], capsys: pytest.CaptureFixture[str]
) -> None:
    """A cron job warming a list against a mirror with ``limits.requests_per_minute``: the
    mirror answers ``429`` with ``Retry-After: 1`` once this client's bucket is empty. warm
    failed the image there ("the mirror answered 429"), where waiting a second would do."""
    image = build_image([text_layer("limited", oci=True)], "amd64", oci=True)
    lab.pusher.push_image("team/limited", image, "1")
    mirror = launch_mirror(
        lab.registry.url,
        lab.workdir / "mirror",
        ["--set", "limits.requests_per_minute=60"],  # a bucket of 60, one more a second
    )
    mirror_of.append(mirror)
    with httpx.Client(trust_env=False, timeout=5) as client:
        refused = 0
        for _ in range(70):  # empty this client's bucket (warm comes from the same address)
            refused += client.get(f"{mirror.url}/v2/").status_code == 429
        assert refused, "the bucket never ran dry"
    code = main(["warm", "--mirror", mirror.url, "team/limited:1"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert blobs_of(image) <= cached_blobs(mirror, capsys, blobs_of(image))


class Throttled(FakeRegistry):
    """Every request is ``429`` with ``Retry-After: <retry_after>``."""

    def __init__(self, retry_after: str) -> None:
        super().__init__()
        self.retry_after = retry_after
        self.asked = 0

    def handler(self, request: httpx.Request) -> httpx.Response:
        self.asked += 1
        body = {"errors": [{"code": "TOOMANYREQUESTS", "message": "too many requests"}]}
        return httpx.Response(429, json=body, headers={"Retry-After": self.retry_after})


@pytest.mark.parametrize(
    ("retry_after", "slept"),
    [
        ("1", [1.0] * 5),  # bounded retries: five waits, then the 429 is the answer
        ("3600", []),  # longer than warm waits at once: not waited at all
        ("soon", [1.0] * 5),  # not a number: a second
    ],
)
def test_retries_after_a_429_are_bounded(retry_after: str, slept: list[float]) -> None:
    registry = Throttled(retry_after)
    registry.add_image("library/app", "1", [b"one"])
    warm, _ = warmer(registry)
    sleeps: list[float] = []
    warm.sleep = sleeps.append
    with pytest.raises(WarmError, match="429") as raised:
        warm.warm(parse_image_ref("app:1"))
    assert sleeps == slept
    assert registry.asked == len(slept) + 1
    assert "limits" in str(raised.value)


def test_the_total_wait_for_429s_is_bounded_over_a_whole_run(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A long list against a mirror that stays throttled: warm's waits add up to at most
    RETRY_WAIT_TOTAL over the run, then every 429 is an answer at once."""
    monkeypatch.setattr("docxy.cli.warm.RETRY_WAIT_TOTAL", 7.0)
    registry = Throttled("2")
    warm, _ = warmer(registry)
    sleeps: list[float] = []
    warm.sleep = sleeps.append
    for name in ("a", "b", "c"):
        with pytest.raises(WarmError, match="429"):
            warm.warm(parse_image_ref(f"{name}:1"))
    assert sleeps == [2.0, 2.0, 2.0]


def test_warmer_waits_with_time_sleep_by_default() -> None:
    import time

    assert Warmer(httpx.Client()).sleep is time.sleep


# --- 3. docxy health: a 200 that is not Docxy's ----------------------------------------------


@pytest.mark.parametrize(
    "body",
    [b'{"status": "UP"}', b"<html>It works!</html>", b"{}", b"[1]"],
)
@pytest.mark.usefixtures("in_my_range")
def test_a_200_that_is_not_docxys_health_report_is_unhealthy(
    body: bytes, capsys: pytest.CaptureFixture[str]
) -> None:
    """The image's HEALTHCHECK: with host networking (compose.host.yaml) or a moved listener,
    another service on that port answers ``/health`` while Docxy never bound it; a 200 from
    it counted as healthy, so a mirror that is not running was reported healthy."""
    with health_server(200, body) as server:
        listen = f"{HOST}:{server.port}"
        assert main(["health", "--listen", listen]) == 1
    out, err = capsys.readouterr()
    assert "not Docxy's health report" in err, (out, err)
    assert "Traceback" not in err


@pytest.mark.usefixtures("in_my_range")
@pytest.mark.parametrize(
    ("body", "said"),
    [
        (b'{"status": "degraded", "version": "0.1.0"}', "degraded"),
        (b'{"status": "ok", "version": "0.1.0"}', "ok"),
    ],
)
def test_docxys_own_health_report_is_healthy(
    body: bytes, said: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with health_server(200, body) as server:
        assert main(["health", "--listen", f"{HOST}:{server.port}"]) == 0
    assert capsys.readouterr().out == f"http://{HOST}:{server.port}/health: {said}\n"


@pytest.mark.parametrize(
    ("value", "seconds"),
    [(None, 1.0), ("7", 7.0), (" 0 ", 0.0), ("-3", 1.0), ("1.5", 1.0), ("later", 1.0)],
)
def test_retry_after_as_seconds(value: str | None, seconds: float) -> None:
    assert retry_after_seconds(value) == seconds


def test_retry_after_as_a_date() -> None:
    import email.utils
    import time

    soon = email.utils.formatdate(time.time() + 30, usegmt=True)
    assert 25 <= retry_after_seconds(soon) <= 31
    assert retry_after_seconds("Thu, 01 Jan 1970 00:00:00 GMT") == 0.0


def test_health_of_a_real_mirror_is_healthy(
    lab: Lab, mirror_of: list[Mirror], capsys: pytest.CaptureFixture[str]
) -> None:
    """The real /health carries what the probe now asks for (status and version)."""
    mirror = launch_mirror(lab.registry.url, lab.workdir / "mirror")
    mirror_of.append(mirror)
    assert main(["health", "--listen", f"{HOST}:{mirror.port}"]) == 0
    assert capsys.readouterr().out == f"http://{HOST}:{mirror.port}/health: ok\n"


# --- 2. a blob still syncing is not yet warm --------------------------------------------------


def warm_finds_kept(answer: AsgiAnswer, digest: str) -> bool:
    """Whether warm's check (its ``HEAD`` after a blob sent on a miss) takes the mirror's
    ``answer`` to that HEAD for the blob kept."""
    said = list(answer.headers.items())
    client = httpx.Client(
        base_url="http://mirror.test",
        transport=httpx.MockTransport(lambda request: httpx.Response(answer.status, headers=said)),
    )
    with client:
        return Warmer(client)._kept("team/app", parse_digest(digest)) is True


async def test_a_blob_whose_commit_then_fails_is_not_taken_for_warm(
    tmp_path: Path, held_sync: HeldSync
) -> None:
    """The last byte goes out once the blob is verified, before its commit syncs and renames
    it in; a HEAD meanwhile is served from the verified temp file as ``Docxy; hit``. warm's
    check of a blob sent on a miss took that for kept, and a commit that then failed (EIO on
    the sync) left the image reported warm with the blob not in the cache: the next pull a
    miss."""
    async with mirror(tmp_path, Upstream(), **SYNC_SETTINGS) as app:
        first = await call_asgi(app, "GET", SYNC_PATH, headers=SYNC_AUTH, host="mirror.test")
        assert (first.status, first.body == BLOB) == (200, True)
        assert held_sync.started.wait(5)  # verified, its commit's sync under way
        head = await call_asgi(app, "HEAD", SYNC_PATH, headers=SYNC_AUTH, host="mirror.test")
        assert head.status == 200  # still answered from the temp file, upstream not asked
        during = warm_finds_kept(head, DIGEST)
        held_sync.error = OSError(errno.EIO, "I/O error")
        held_sync.release()
        await asyncio.sleep(0.2)
        assert sync_cached_blobs(tmp_path) == []  # not kept
        after = await call_asgi(app, "HEAD", SYNC_PATH, headers=SYNC_AUTH, host="mirror.test")
    assert not warm_finds_kept(after, DIGEST)
    assert not during, head.headers.get("cache-status")


async def test_a_blob_whose_commit_ends_well_is_kept_for_warm(
    tmp_path: Path, held_sync: HeldSync
) -> None:
    async with mirror(tmp_path, Upstream(), **SYNC_SETTINGS) as app:
        first = await call_asgi(app, "GET", SYNC_PATH, headers=SYNC_AUTH, host="mirror.test")
        assert first.status == 200 and held_sync.started.wait(5)
        held_sync.release()
        for _ in range(100):  # bounded: 5 s
            if sync_cached_blobs(tmp_path):
                break
            await asyncio.sleep(0.05)
        head = await call_asgi(app, "HEAD", SYNC_PATH, headers=SYNC_AUTH, host="mirror.test")
    assert warm_finds_kept(head, DIGEST), head.headers.get("cache-status")


def test_a_blob_got_while_its_commit_runs_is_asked_for_until_kept(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A GET another client's fill answers from its verified temp file says ``Docxy; hit;
    committing``: warm asks again (HEAD) until a plain hit; one that stays committing past
    COMMIT_WAIT is not kept; one that commits after KEPT_WAIT but within COMMIT_WAIT is kept."""
    monkeypatch.setattr("docxy.cli.warm.KEPT_WAIT", 0.1)
    monkeypatch.setattr("docxy.cli.warm.COMMIT_WAIT", 1.0)
    registry = FakeRegistry()
    registry.add_image("library/app", "1", [b"late", b"stuck"])
    for layer in (b"late", b"stuck"):
        registry.cache_status[sha256(layer)] = "Docxy; hit; committing"
    # 0.05 + 0.1 + 0.2 s of waits: past KEPT_WAIT, within COMMIT_WAIT
    registry.head_status[sha256(b"late")] = ["Docxy; hit; committing"] * 3 + ["Docxy; hit"]
    registry.head_status[sha256(b"stuck")] = ["Docxy; hit; committing"]
    warm, _ = warmer(registry)
    with pytest.raises(WarmError, match="1 not cached: the mirror sent it but did not keep it"):
        warm.warm(parse_image_ref("app:1"))
    assert registry.heads.count(sha256(b"late")) == 4


def test_a_blob_not_kept_beside_one_that_was_committing_waits_kept_wait_only(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """COMMIT_WAIT is for blobs whose latest answer says ``committing``: once a blob that was
    committing is kept, one the mirror plainly did not keep is given up after KEPT_WAIT, not
    COMMIT_WAIT (the flag stuck for the whole image: a run waited 300 s for a blob never kept,
    found by the regression read of this change)."""
    monkeypatch.setattr("docxy.cli.warm.KEPT_WAIT", 0.1)
    monkeypatch.setattr("docxy.cli.warm.COMMIT_WAIT", 3.0)
    registry = FakeRegistry()
    registry.add_image("library/app", "1", [b"late", b"gone"])
    registry.cache_status[sha256(b"late")] = "Docxy; hit; committing"
    registry.cache_status[sha256(b"gone")] = "Docxy; fwd=miss"
    registry.head_status[sha256(b"late")] = ["Docxy; hit; committing", "Docxy; hit"]
    registry.head_status[sha256(b"gone")] = ["Docxy; fwd=bypass; detail=not-cacheable"]
    warm, _ = warmer(registry)
    with pytest.raises(WarmError, match="1 not cached: the mirror sent it but did not keep it"):
        warm.warm(parse_image_ref("app:1"))
    # KEPT_WAIT's 0.1 s: waits of 0.05 and 0.1 s (COMMIT_WAIT's 3 s: six more)
    assert registry.heads.count(sha256(b"gone")) <= 3, registry.heads
