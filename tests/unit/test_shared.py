"""The shared tier's pure parts: object keys, the [shared] settings, signing, the upload queue."""

from __future__ import annotations

import asyncio
import importlib
import json
from pathlib import Path

import pytest

from docxy.cli.main import main
from docxy.config import load_config
from docxy.core.digests import Digest
from docxy.core.errors import ConfigError
from docxy.shared.keys import blob_key, object_url, parse_bucket, parse_prefix
from docxy.shared.objects import EMPTY_SHA256, Bucket, require_signer, signed_headers
from docxy.shared.uploads import UploadQueue
from tests.unit.test_imports import MIRROR, loaded

pytestmark = pytest.mark.usefixtures("clean_docxy_env")

HEX = "ab" * 32
DIGEST = Digest("sha256", HEX)
SECRET = "s3-secret-never-shown-0123456789"
ON = {
    "shared.endpoint": "http://127.0.0.1:8333/",
    "shared.bucket": "docxy-cache",
    "shared.access_key": "docxy",
    "shared.secret_key": SECRET,
}

# --- keys ------------------------------------------------------------------------------------


def test_blob_keys_are_content_addresses_under_the_prefix() -> None:
    assert blob_key("docxy", DIGEST) == f"docxy/blobs/sha256/{HEX}"
    assert blob_key("team/mirror", DIGEST) == f"team/mirror/blobs/sha256/{HEX}"
    assert blob_key("", DIGEST) == f"blobs/sha256/{HEX}"
    assert object_url("http://h:1/", "b-1", blob_key("p", DIGEST)) == (
        f"http://h:1/b-1/p/blobs/sha256/{HEX}"
    )


@pytest.mark.parametrize(
    ("raw", "prefix"), [("docxy", "docxy"), ("/a/b/", "a/b"), ("", ""), (" x.y_z-1 ", "x.y_z-1")]
)
def test_good_prefixes(raw: str, prefix: str) -> None:
    assert parse_prefix(raw) == prefix


@pytest.mark.parametrize("raw", ["a//b", "a/../b", "..", "a b", "a?b", "é", "a/%2f"])
def test_bad_prefixes(raw: str) -> None:
    with pytest.raises(ValueError):
        parse_prefix(raw)


@pytest.mark.parametrize("raw", ["docxy", "my.bucket-1", "abc"])
def test_good_buckets(raw: str) -> None:
    assert parse_bucket(raw) == raw


@pytest.mark.parametrize("raw", ["ab", "Docxy", "-abc", "abc-", "a..b", "a_b", "x" * 64, "a/b"])
def test_bad_buckets(raw: str) -> None:
    with pytest.raises(ValueError):
        parse_bucket(raw)


# --- settings --------------------------------------------------------------------------------


def test_shared_tier_is_off_by_default() -> None:
    config = load_config(environ={})
    assert not config.shared.enabled
    assert config.shared.prefix == "docxy" and config.shared.uploads == 2


def test_shared_settings_load_from_flags_and_env() -> None:
    config = load_config(
        {k: v for k, v in ON.items() if k != "shared.secret_key"},
        environ={"DOCXY_SHARED_SECRET_KEY": SECRET, "DOCXY_SHARED_UPLOADS": "4"},
    )
    shared = config.shared
    assert shared.enabled and shared.endpoint == "http://127.0.0.1:8333"
    assert (shared.bucket, shared.access_key, shared.secret_key) == ("docxy-cache", "docxy", SECRET)
    assert shared.uploads == 4 and shared.region == "us-east-1"
    assert SECRET not in repr(config)


@pytest.mark.parametrize("missing", ["shared.bucket", "shared.access_key", "shared.secret_key"])
def test_an_endpoint_needs_bucket_and_keys(missing: str) -> None:
    with pytest.raises(ConfigError, match=missing.replace(".", r"\.")):
        load_config({k: v for k, v in ON.items() if k != missing}, environ={})


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("shared.endpoint", "s3://bucket"),
        ("shared.bucket", "Not_A_Bucket"),
        ("shared.uploads", "-1"),  # 0 is taken: a read-only replica (test_review_shared5)
        ("shared.uploads", "65"),
        ("shared.prefix", "../up"),
        ("shared.region", " "),
    ],
)
def test_bad_shared_values_name_the_key(key: str, value: str) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config({**ON, key: value}, environ={})


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("shared.access_key", "d\u043ecxy"),  # a Cyrillic o pasted in
        ("shared.access_key", "doc xy"),
        ("shared.region", "eu-w\u0435st-3"),
    ],
)
def test_keys_signed_into_headers_must_be_ascii(key: str, value: str) -> None:
    """They go into every request's signed headers: a non-ASCII character was accepted, then
    crashed the fill of every miss (UnicodeEncodeError), nothing ever cached."""
    with pytest.raises(ConfigError, match=key.replace(".", r"\.") + ": must be printable ASCII"):
        load_config({**ON, key: value}, environ={})


@pytest.mark.parametrize("secret", ["correct horse battery staple", "p\u00e4sswort-geheim"])
def test_any_secret_key_is_taken_and_signs(secret: str) -> None:
    """The secret is HMAC key material (UTF-8), never a header: a MinIO password with a space
    or an umlaut works, and was refused for a while."""
    shared = load_config({**ON, "shared.secret_key": secret}, environ={}).shared
    assert shared.secret_key == secret
    bucket = Bucket("http://127.0.0.1:8333", "docxy-cache", "us-east-1", "docxy", secret)
    signed = signed_headers(bucket, "GET", bucket.url(DIGEST), "UNSIGNED-PAYLOAD")
    assert signed["Authorization"].startswith("AWS4-HMAC-SHA256 Credential=docxy/")


def test_a_bad_secret_key_is_not_echoed() -> None:
    with pytest.raises(ConfigError) as failure:
        load_config({**ON, "shared.secret_key": 12345}, environ={})
    assert "expected a string" in str(failure.value) and "12345" not in str(failure.value)


def test_show_config_masks_the_secret_key(capsys: pytest.CaptureFixture[str]) -> None:
    args = [arg for key, value in ON.items() for arg in ("--set", f"{key}={value}")]
    assert main(["serve", "--show-config", *args]) == 0
    out = capsys.readouterr().out
    assert SECRET not in out
    assert "shared.secret_key = (set)  (flag)" in out.splitlines()
    assert "shared.access_key = docxy  (flag)" in out.splitlines()


# --- signing ---------------------------------------------------------------------------------


def test_requests_are_signed_for_the_given_payload_hash_without_the_secret() -> None:
    bucket = Bucket("http://127.0.0.1:8333", "b-1", "eu-west-3", "AKEY", SECRET)
    url = bucket.url(DIGEST)
    put = signed_headers(bucket, "PUT", url, HEX, {"Content-Length": "5"})
    assert put["X-Amz-Content-SHA256"] == HEX  # the blob's digest: nothing is read or hashed
    auth = put["Authorization"]
    assert auth.startswith("AWS4-HMAC-SHA256 Credential=AKEY/")
    assert "/eu-west-3/s3/aws4_request" in auth and "x-amz-content-sha256" in auth
    assert SECRET not in " ".join(put.values())
    get = signed_headers(bucket, "GET", url, EMPTY_SHA256)
    assert get["Authorization"] != auth  # method, payload and headers are all signed


# --- the upload queue ------------------------------------------------------------------------


def digest(n: int) -> Digest:
    return Digest("sha256", f"{n:064x}")


class HeldUploads:
    """Uploads that wait until the test releases them; records what ran and the most at once."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.started: list[Digest] = []
        self.running = 0
        self.most = 0

    async def upload(self, item: Digest) -> None:
        self.started.append(item)
        self.running += 1
        self.most = max(self.most, self.running)
        try:
            await self.release.wait()
        finally:
            self.running -= 1


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_uploads_at_once_are_bounded_and_every_queued_blob_is_uploaded() -> None:
    held = HeldUploads()
    queue = UploadQueue(held.upload, concurrency=2, max_waiting=10)
    assert all(queue.offer(digest(n)) for n in range(6))
    await settle()
    assert held.running == 2 and queue.running == 2 and queue.waiting == 4
    held.release.set()
    await asyncio.wait_for(queue.drained(), 10)
    assert sorted(held.started, key=str) == sorted((digest(n) for n in range(6)), key=str)
    assert held.most == 2 and queue.running == 0


async def test_a_full_queue_drops_and_counts_and_a_queued_blob_is_not_queued_twice() -> None:
    held = HeldUploads()
    queue = UploadQueue(held.upload, concurrency=1, max_waiting=3)
    assert queue.offer(digest(0))
    await settle()  # 0 is being uploaded; the queue is empty again
    assert [queue.offer(digest(n)) for n in (1, 2, 3)] == [True, True, True]
    assert not queue.offer(digest(4)) and queue.dropped == 1  # full
    assert not queue.offer(digest(0)) and not queue.offer(digest(2))  # running, waiting
    assert queue.dropped == 1 and queue.waiting == 3
    held.release.set()
    await asyncio.wait_for(queue.drained(), 10)
    assert held.started == [digest(n) for n in range(4)]
    assert queue.offer(digest(0))  # done: it may be offered again
    await asyncio.wait_for(queue.drained(), 10)


async def test_an_offer_right_after_the_workers_emptied_the_queue_is_not_lost() -> None:
    done: list[Digest] = []

    async def upload(item: Digest) -> None:
        done.append(item)

    queue = UploadQueue(upload, concurrency=1)
    for n in range(20):  # each offer lands while the previous worker may be ending
        queue.offer(digest(n))
        await asyncio.sleep(0)
    await asyncio.wait_for(queue.drained(), 10)
    assert done == [digest(n) for n in range(20)]


async def test_cancel_stops_the_uploads_and_forgets_what_waited() -> None:
    held = HeldUploads()
    queue = UploadQueue(held.upload, concurrency=1)
    for n in range(3):
        queue.offer(digest(n))
    await settle()
    queue.cancel()
    await asyncio.wait_for(queue.drained(), 10)
    assert held.started == [digest(0)] and held.running == 0 and queue.waiting == 0


def test_a_queue_needs_room() -> None:
    async def upload(item: Digest) -> None:
        del item

    with pytest.raises(ValueError):  # 0 is a queue that takes none (test_review_shared5)
        UploadQueue(upload, concurrency=-1)
    with pytest.raises(ValueError):
        UploadQueue(upload, concurrency=1, max_waiting=0)


def test_without_botocore_the_shared_tier_refuses_to_start(monkeypatch: pytest.MonkeyPatch) -> None:
    require_signer()  # installed here (the test extra)

    def missing(name: str) -> None:
        raise ImportError(f"No module named {name!r}")

    monkeypatch.setattr(importlib, "import_module", missing)
    with pytest.raises(ConfigError, match=r"shared\.endpoint: .*botocore"):
        require_signer()


@pytest.mark.parametrize(("on", "imported"), [(False, []), (True, ["botocore"])])
def test_botocore_is_imported_only_when_the_tier_is_on(
    tmp_path: Path, on: bool, imported: list[str]
) -> None:
    """The container image always carries botocore: a mirror without [shared] must not pay
    for it in memory (it is imported at start-up, and only then, when the tier is on)."""
    settings = {"upstream.registry": "http://127.0.0.1:9", "cache.dir": str(tmp_path / "cache")}
    if on:
        settings |= ON
    assert loaded(MIRROR, json.dumps(settings), "botocore") == imported
