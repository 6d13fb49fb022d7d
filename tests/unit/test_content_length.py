"""A ``Content-Length`` that ``str.isdigit`` takes and ``int`` refuses (``²``, a Latin-1 byte
the HTTP clients hand over as it is) read as no length, wherever an upstream's answer is read:
before, each place that checked ``isdigit()`` then called ``int()`` raised a ValueError (a
500 to the client, or a crashed task)."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from docxy.core.headers import content_length
from tests.unit.asgi import call_asgi
from tests.unit.test_pull_blobs import mirror
from tests.unit.test_pull_manifests import TAG, pulled_then_stale
from tests.unit.test_pull_scoped_blobs import AS_ANON, Hub, digest_of

SUPERSCRIPT_TWO = "²".encode("latin-1")


@pytest.mark.parametrize(
    ("value", "read"),
    [(None, None), ("", None), ("12", 12), ("0", 0), ("²", None), ("١٢", None), ("-1", None)],
)
def test_content_length_takes_ascii_digits_only(value: str | None, read: int | None) -> None:
    assert content_length(value) == read


class OddLength(Hub):
    """The hub, its manifest answers with ``Content-Length: ²`` (``method`` only)."""

    def __init__(self, method: str, digest: bool = True) -> None:
        super().__init__()
        self.method = method
        self.digest = digest

    def __call__(self, request: httpx.Request) -> httpx.Response:
        answer = super().__call__(request)
        if request.method == self.method and "/manifests/" in request.url.path:
            headers = [
                (k.encode(), v.encode())
                for k, v in answer.headers.items()
                if k != "content-length" and (self.digest or k != "docker-content-digest")
            ]
            headers.append((b"content-length", SUPERSCRIPT_TWO))
            return httpx.Response(answer.status_code, headers=headers, stream=answer.stream)
        return answer


async def test_a_head_with_an_odd_length_revalidates_a_tag_as_one_without_a_length(
    tmp_path: Path,
) -> None:
    hub = OddLength("HEAD")
    manifest = hub.repos["library/base"].manifests["1"]
    async with mirror(tmp_path, hub) as app:
        await pulled_then_stale(app, manifest)
        answer = await call_asgi(app, "GET", TAG, host="mirror.test", headers=AS_ANON.items())
        assert answer.status == 200
        assert answer.body == manifest
        assert answer.headers["Docker-Content-Digest"] == digest_of(manifest)


async def test_a_passed_through_manifest_with_an_odd_length_is_relayed(tmp_path: Path) -> None:
    hub = OddLength("GET", digest=False)
    async with mirror(tmp_path, hub, cache__enabled="false") as app:
        answer = await call_asgi(app, "GET", TAG, host="mirror.test", headers=AS_ANON.items())
        assert answer.status == 200
        assert "Docker-Content-Digest" not in answer.headers  # not held whole: no guess
