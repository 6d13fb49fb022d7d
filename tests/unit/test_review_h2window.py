"""Review findings on h2c's refusals (``docxy.edge.h2c.H2cChecked``, commit 649b150), each
reproduced before its mend: test_review_edge3's mirror and HTTP/2 client, on this review's own
loopback addresses and ports, against a loopback upstream."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import h2.events
import pytest
from h2.connection import ConnectionInputs, ConnectionState
from h2.errors import ErrorCodes

from docxy.edge import h2c
from tests.unit import test_review_edge2, test_review_edge3
from tests.unit.test_review_edge2 import mirror
from tests.unit.test_review_edge3 import own_range as own_range  # noqa: F401  (fixture)
from tests.unit.test_review_h2c import BLOB, DIGEST, H2Client
from tests.unit.test_review_h2c import h2c_allowed as h2c_allowed  # noqa: F401  (fixture)

MIRROR_HOST = "127.0.0.234"
UPSTREAM_HOST = "127.0.0.235"
PORTS = range(9850, 9900)


@pytest.fixture
def this_range(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """test_review_edge3's addresses and ports made this review's (before its ``own_range``
    hands them on)."""
    monkeypatch.setattr(test_review_edge3, "MIRROR_HOST", MIRROR_HOST)
    monkeypatch.setattr(test_review_edge3, "UPSTREAM_HOST", UPSTREAM_HOST)
    monkeypatch.setattr(test_review_edge3, "PORTS", PORTS)
    yield


@pytest.fixture
def h2window(this_range: None, own_range: None, h2c_allowed: None) -> Iterator[None]:
    """h2c allowed, the mirror and its upstream on this review's addresses and ports."""
    yield


def watch(client: H2Client) -> list[h2.events.Event]:
    """Every event the client's connection reads from the mirror, from now on."""
    seen: list[h2.events.Event] = []
    receive = client.conn.receive_data

    def recording(data: Any) -> list[h2.events.Event]:
        events = receive(data)
        seen.extend(events)
        return events

    client.conn.receive_data = recording  # type: ignore[method-assign]
    return seen


def refusals(monkeypatch: pytest.MonkeyPatch, by: list[h2c.H2cChecked] | None = None) -> list[int]:
    """The streams the mirror refuses from now on (its client, having reset each, hears of
    none): ``H2cChecked._refuse`` wrapped, still doing what it did; ``by``: the connections
    that refused them."""
    ids: list[int] = []
    refuse = h2c.H2cChecked._refuse

    def counted(self: h2c.H2cChecked, stream_id: int) -> bool:
        ids.append(stream_id)
        if by is not None and self not in by:
            by.append(self)
        return refuse(self, stream_id)

    monkeypatch.setattr(h2c.H2cChecked, "_refuse", counted)
    return ids


def goaways(seen: list[h2.events.Event]) -> list[h2.events.ConnectionTerminated]:
    return [e for e in seen if isinstance(e, h2.events.ConnectionTerminated)]


async def open_and_reset(client: H2Client, count: int, tag: str) -> None:
    """``count`` streams opened and reset at once, in one write (test_review_edge3's pairs)."""
    for number in range(count):
        stream_id = client.conn.get_next_available_stream_id()
        path = f"/v2/library/img/manifests/{tag}-{number}"
        headers = [(":method", "GET"), (":path", path), (":scheme", "http")]
        headers.append((":authority", "mirror.test"))
        client.conn.send_headers(stream_id, headers, end_stream=True)
        client.conn.reset_stream(stream_id)
    await client.flush()


# --- 1. a connection's refusals were counted for its whole life -------------------------------


async def test_refusals_spread_over_a_long_time_never_close_the_connection(
    tmp_path: Path, h2window: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reverse proxy holds one h2c connection for many downstream clients, some of whom
    cancel a pull now and then: a stream reset still counts under ``limits.h2_max_streams``
    until its request notices, so the proxy is refused a stream (``REFUSED_STREAM``) now and
    then. Those refusals were counted for the connection's life: at the 100th, however many
    hours apart, it got ``GOAWAY`` and was closed, cutting every download in flight on it.
    Here (a clock the test moves) 6 bursts of 30 streams opened and reset, 11 s apart, are
    refused well over 100 times in all, never 100 within 10 s: the connection stays open and
    serves, and keeps no record of its refusals beyond those of its last read."""
    now = [1000.0]
    monkeypatch.setattr(h2c, "clock", lambda: now[0])
    connections: list[h2c.H2cChecked] = []
    refused = refusals(monkeypatch, connections)
    async with mirror(tmp_path, {"limits.h2_max_streams": "4"}, h2_streams=4) as served:
        client = await H2Client.connect(served.port)
        seen = watch(client)
        try:
            await client.read(0.2)
            for burst in range(6):
                if goaways(seen):
                    break
                await open_and_reset(client, 30, f"t{burst}")
                await client.read(0.4)
                now[0] += 11.0
            assert not goaways(seen), f"GOAWAY after {len(refused)} refusals, 11 s apart"
            assert len(refused) > h2c.MAX_REFUSED, "too few refusals: nothing was shown"
            stream_id = await client.get("/v2/")
            await client.read(1.0)
            assert client.status == 200 and client.ended, f"stream {stream_id} not answered"
            assert len(connections) == 1
            assert len(connections[0]._refused or ()) <= 30
        finally:
            client.close()


async def test_a_burst_of_refusals_still_gets_goaway(
    tmp_path: Path, h2window: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rapid reset (test_review_edge3's first test) on the same clock: 4 bursts of 40 pairs
    0.1 s apart are refused over 100 times within 10 s, and the connection gets ``GOAWAY``
    (``ENHANCE_YOUR_CALM``) naming a stream the mirror started (not one it refused), and, no
    stream in flight, is closed."""
    now = [1000.0]
    monkeypatch.setattr(h2c, "clock", lambda: now[0])
    refused = refusals(monkeypatch)
    async with mirror(tmp_path, {"limits.h2_max_streams": "4"}, h2_streams=4) as served:
        client = await H2Client.connect(served.port)
        seen = watch(client)
        try:
            await client.read(0.2)
            for burst in range(4):
                if goaways(seen):
                    break
                await open_and_reset(client, 40, f"b{burst}")
                await client.read(0.4)
                now[0] += 0.1
            said = goaways(seen)
            assert said and said[0].error_code == ErrorCodes.ENHANCE_YOUR_CALM
            assert len(refused) > h2c.MAX_REFUSED
            assert said[0].last_stream_id not in refused
            started = time.monotonic()
            await client.read(3.0)  # returns when the mirror closes
            assert time.monotonic() - started < 2.0, "the connection was kept open"
        finally:
            client.close()


# --- 2. GOAWAY closed the connection at once, cutting the downloads in flight -----------------


def goaway_tolerant(client: H2Client) -> None:
    """The client goes on with its streams the ``GOAWAY`` names as processed (RFC 9113 6.8
    lets it; the h2 library closes its side at once)."""
    machine = client.conn.state_machine
    transitions = dict(machine._transitions)
    transitions[(ConnectionState.CLIENT_OPEN, ConnectionInputs.RECV_GOAWAY)] = (
        None,
        ConnectionState.CLIENT_OPEN,
    )
    machine._transitions = transitions


async def test_a_download_in_flight_at_goaway_finishes(
    tmp_path: Path, h2window: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A client downloads a blob (1 MiB here) on an h2c connection and, on other streams,
    opens and resets streams as fast as it can. At ``GOAWAY`` the connection was closed at
    once, and the download with it, though ``GOAWAY`` names it among the streams processed.
    Now ``GOAWAY`` (``ENHANCE_YOUR_CALM``, naming the last stream started) lets the
    download finish, and the connection is closed once it has."""
    monkeypatch.setattr(test_review_edge2, "BLOB_SIZE", 1 << 20)
    limits = {"limits.h2_max_streams": "4"}
    async with mirror(tmp_path, limits, send_timeout=30.0, h2_streams=4) as served:
        client = await H2Client.connect(served.port)
        goaway_tolerant(client)
        seen = watch(client)
        try:
            await client.read(0.2)
            # the blob the stand-in upstream sends (1 MiB of x), by its own digest: a
            # pass-through is verified to its last byte (ccd42c9)
            whole = "sha256:" + hashlib.sha256(test_review_edge2.CHUNK * 16).hexdigest()
            blob = await client.get(BLOB.replace(DIGEST, whole))
            await client.read(0.5)
            assert client.status == 200 and not client.ended  # its window shut: in flight
            for burst in range(5):
                if goaways(seen):
                    break
                await open_and_reset(client, 40, f"g{burst}")
                await client.read(0.4)
            said = goaways(seen)
            assert said and said[0].error_code == ErrorCodes.ENHANCE_YOUR_CALM
            assert (said[0].last_stream_id or 0) >= blob
            await client.open_window(blob, 2 << 20)
            started = time.monotonic()
            await client.read(5.0)  # returns when the mirror closes
            assert client.ended and client.received == 1 << 20, client.received
            assert time.monotonic() - started < 4.0, "kept open after its last stream"
        finally:
            client.close()


async def test_a_client_that_goes_on_after_goaway_is_closed_at_once(
    tmp_path: Path, h2window: None
) -> None:
    """The attacker ignores ``GOAWAY`` and opens and resets streams on: each is refused (none
    runs), and after :data:`~docxy.edge.h2c.MAX_REFUSED` more the connection is closed at
    once, its download in flight or not (a graceful end is for clients that stop)."""
    limits = {"limits.h2_max_streams": "4"}
    async with mirror(tmp_path, limits, send_timeout=30.0, h2_streams=4) as served:
        client = await H2Client.connect(served.port)
        goaway_tolerant(client)
        seen = watch(client)
        try:
            await client.read(0.2)
            await client.get(BLOB)
            await client.read(0.5)
            assert client.status == 200 and not client.ended
            for burst in range(5):
                if goaways(seen):
                    break
                await open_and_reset(client, 40, f"a{burst}")
                await client.read(0.4)
            assert goaways(seen)
            opened_after = 0
            for burst in range(4):
                if client.reader.at_eof():
                    break
                await open_and_reset(client, 40, f"c{burst}")
                opened_after += 40
                await client.read(0.5)
            assert client.reader.at_eof(), "still open"
            assert opened_after > h2c.MAX_REFUSED
            assert not client.ended  # the download was cut
        finally:
            client.close()
