"""``docxy warm`` against a mirror that is briefly unavailable (``503`` with ``Retry-After``:
every connection to the upstream in use, too many open connections, a restart's drain) and
against a server that is not a Docxy mirror (no ``Cache-Status`` member of the mirror's)."""

from __future__ import annotations

import io

import httpx
import pytest

from docxy.cli.warm import WarmError, warm_all
from docxy.core.names import parse_image_ref
from tests.unit.test_warm import FakeRegistry, warmer

pytestmark = pytest.mark.usefixtures("clean_docxy_env")


class Busy(FakeRegistry):
    """The first ``busy`` requests are ``503`` (with ``Retry-After`` when ``retry_after``)."""

    def __init__(self, busy: int, retry_after: str | None) -> None:
        super().__init__()
        self.busy = busy
        self.retry_after = retry_after
        self.refused = 0

    def handler(self, request: httpx.Request) -> httpx.Response:
        if self.refused < self.busy:
            self.refused += 1
            body = {"errors": [{"code": "UNAVAILABLE", "message": "upstream busy"}]}
            headers = {} if self.retry_after is None else {"Retry-After": self.retry_after}
            return httpx.Response(503, json=body, headers=headers)
        return super().handler(request)


def test_a_503_with_retry_after_is_waited_out() -> None:
    """The mirror's 503s (UpstreamBusy, too many connections, drain) all name Retry-After:
    warm failed the image there, where waiting as the mirror said would do."""
    registry = Busy(busy=2, retry_after="2")
    registry.add_image("library/app", "1", [b"one"])
    warm, _ = warmer(registry)
    sleeps: list[float] = []
    warm.sleep = sleeps.append
    tally = warm.warm(parse_image_ref("app:1"))
    assert tally.blobs == 2
    assert sleeps == [2.0, 2.0]


def test_a_503_without_retry_after_is_the_answer() -> None:
    """No Retry-After: nothing says the mirror will be back soon; failed at once."""
    registry = Busy(busy=1, retry_after=None)
    registry.add_image("library/app", "1", [b"one"])
    warm, _ = warmer(registry)
    sleeps: list[float] = []
    warm.sleep = sleeps.append
    with pytest.raises(WarmError, match="503"):
        warm.warm(parse_image_ref("app:1"))
    assert sleeps == []
    assert registry.refused == 1


def test_retries_after_a_503_are_bounded() -> None:
    registry = Busy(busy=100, retry_after="1")
    registry.add_image("library/app", "1", [b"one"])
    warm, _ = warmer(registry)
    sleeps: list[float] = []
    warm.sleep = sleeps.append
    with pytest.raises(WarmError, match="503"):
        warm.warm(parse_image_ref("app:1"))
    assert sleeps == [1.0] * 5


class Plain(FakeRegistry):
    """A registry that sends no ``Cache-Status`` at all (Distribution, or another mirror)."""

    def handler(self, request: httpx.Request) -> httpx.Response:
        answer = super().handler(request)
        answer.headers.pop("cache-status", None)
        return answer


def test_a_server_that_never_says_what_it_cached_is_not_reported_as_cached(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """``--mirror`` pointed at a plain registry (or another mirror): nothing says what was
    cached, and warm reported the images cached without a word."""
    registry = Plain()
    registry.add_image("library/app", "1", [b"one"])
    warm, _ = warmer(registry)
    out = io.StringIO()
    assert warm_all(warm, [parse_image_ref("app:1")], out) == 0
    err = capsys.readouterr().err
    assert "Cache-Status" in err
    assert "not a Docxy mirror" in err


def test_a_docxy_mirror_gets_no_such_warning(capsys: pytest.CaptureFixture[str]) -> None:
    registry = FakeRegistry()
    registry.add_image("library/app", "1", [b"one"])
    for digest in list(registry.blobs):
        registry.cache_status[digest] = "Docxy; hit"
    registry.cache_status["library/app:1"] = "Docxy; hit"
    warm, _ = warmer(registry)
    assert warm_all(warm, [parse_image_ref("app:1")], io.StringIO()) == 0
    assert "Cache-Status" not in capsys.readouterr().err
