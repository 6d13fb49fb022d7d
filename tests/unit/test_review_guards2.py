"""Review faults in the guards on where the mirror connects for an upstream: the fills' direct
connect tried a name's addresses one after another, each with the whole connect timeout (an
address that never answers, broken IPv6, held every new fill connection that long), and the
token service a public upstream's ``/v2/`` challenge names was asked wherever it pointed (the
redirect rule judged only redirects). Each shown failing first.

Every server here listens on 127.0.0.238-241, ports 9900-9949. Names are resolved by the
lookups of test_review_lanredirect's ``names`` fixture: no DNS is asked. A "public" upstream
is ``registry.example``, which the rule is told is 8.8.8.8 (never contacted) while
connections to it go to a bed here."""

from __future__ import annotations

import socket
import time

import pytest

from docxy.upstream import direct
from docxy.upstream.client import Upstream
from tests.unit.test_review_lanredirect import Unanswering, _direct
from tests.unit.test_review_lanredirect import names as names  # the fixture
from tests.unit.test_review_redirects import BLOB, Bed, _client, _close, beds

HANG, CDN, REG, INSIDE = "127.0.0.238", "127.0.0.239", "127.0.0.240", "127.0.0.241"


# --- 1: the fills' direct connect races a name's addresses -----------------------------------


async def test_a_fills_connect_does_not_wait_out_an_address_that_never_answers(
    names: dict[str, list[str]],
) -> None:
    """A blob redirected to a CDN name whose first address never answers (broken IPv6): the
    fill's direct GET tried it for the whole connect timeout (5 s here) before the next one,
    on every new connection. The next address is tried after a short stagger now."""
    names["cdn.lan"] = [HANG, CDN]  # HANG never answers a connect
    hanging = Unanswering(HANG, 9901)
    try:
        with beds(lambda: Bed(CDN, 9901), lambda: Bed(REG, 9900)) as (cdn, reg):
            reg.location = "http://cdn.lan:9901/blob"
            registry = f"http://{REG}:9900"
            client = _client()
            try:
                started = time.monotonic()
                assert await _direct(client, Upstream(registry), registry + BLOB) == b"blob"
                waited = time.monotonic() - started
            finally:
                await _close(client)
            assert cdn.seen.snapshot() == ["/blob"]
    finally:
        hanging.close()
    assert waited < 2.0, f"waited {waited:.1f}s for an address that never answers"


def _entries(port: int, *addresses: str) -> list[tuple[object, ...]]:
    return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port)) for a in addresses]


def test_a_direct_connect_has_one_deadline_for_all_its_addresses(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Two addresses that never answer: the connect gives up after the connect timeout, not
    once per address; a refused one gives way to the next at once."""
    monkeypatch.setattr(direct, "RESOLVE", lambda *a: _entries(9902, HANG, INSIDE))
    first, second = Unanswering(HANG, 9902), Unanswering(INSIDE, 9902)
    try:
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            direct._connect(("two.lan", 9902), 1.0)
        waited = time.monotonic() - started
    finally:
        first.close()
        second.close()
    assert 0.9 <= waited < 1.6, f"gave up after {waited:.1f}s"

    # nothing listens at HANG:9903 (refused), a bed at CDN:9903
    monkeypatch.setattr(direct, "RESOLVE", lambda *a: _entries(9903, HANG, CDN))
    with beds(lambda: Bed(CDN, 9903)):
        started = time.monotonic()
        sock = direct._connect(("two.lan", 9903), 5.0)
        try:
            assert sock.getpeername() == (CDN, 9903)
            assert sock.gettimeout() == 5.0  # blocking, with the timeout, as create_connection's
        finally:
            sock.close()
    assert time.monotonic() - started < 0.2  # no stagger waited after a refusal


def test_a_direct_connect_to_a_name_that_resolves_to_nothing_says_so(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(direct, "RESOLVE", lambda *a: [])
    with pytest.raises(OSError, match="no address found for none.lan"):
        direct._connect(("none.lan", 9904), 1.0)
