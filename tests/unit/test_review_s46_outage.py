"""Review s46 (outage): the upstream outage hold (docxy.upstream.outage) and its callers."""

from __future__ import annotations

import socket
import time
from collections.abc import Awaitable, Callable, Iterator

import httpx
import pytest

from docxy.core.errors import UpstreamError, UpstreamUnavailable
from docxy.upstream import direct, outage
from docxy.upstream.client import Upstream, UpstreamClient, upstream_ssl_context
from docxy.upstream.direct import DirectSettings

#: The direct GETs' connect timeout here: each attempt at the black-holed origin waits it.
CONNECT = 0.3


def test_a_request_sent_before_the_hold_failing_during_the_probe_does_not_double_it() -> None:
    """Black-holed with connect_timeout 10 s: requests sent at t=0..8 fail at t=10..18; the
    third failure (t=12) holds the origin until t=17, when a probe goes; the request sent at
    t=8 fails at t=18 while the probe waits. The docstring says such a request "changes
    nothing"; here it doubles the hold, and the probe's own failure doubles it again (20 s:
    an origin back at t=28 is still refused until t=47 instead of t=37)."""
    now = [1000.0]
    outages = outage.Outages(clock=lambda: now[0], wall=lambda: 0.0)
    url = "https://a.test/v2/x/manifests/1"

    def tell(said: str, kind: str) -> None:
        pass

    early = outages.attempt("a.test", url, tell)  # sent before the hold: not down yet
    for _ in range(outage.FAILURES_TO_HOLD):
        with outages.attempt("a.test", url, tell):
            outages.failed("a.test", url, "GET a.test ConnectTimeout", timeout=True)
    assert outages.down("a.test", url)
    now[0] += outage.FIRST_HOLD + 0.1
    probe = outages.attempt("a.test", url, tell)  # the hold is over: the probe goes
    with early:  # the early request's connect times out now, while the probe waits
        outages.failed("a.test", url, "GET a.test ConnectTimeout", timeout=True)
    with probe:  # the probe fails: held twice the first hold
        outages.failed("a.test", url, "GET a.test ConnectTimeout", timeout=True)
    now[0] += 2 * outage.FIRST_HOLD + 0.1
    with outages.attempt("a.test", url, tell):  # the next probe goes
        outages.answered("a.test", url)
    assert not outages.down("a.test", url)


@pytest.fixture
def black_hole() -> Iterator[str]:
    """An origin that takes no connection: a listener accepting nothing, its queue (of one)
    full, so the kernel drops the next SYN and a connect waits out its timeout."""
    with socket.socket() as listener:
        listener.bind(("127.0.170.1", 0))
        listener.listen(0)
        queued = [socket.create_connection(listener.getsockname(), timeout=5)]
        try:
            yield f"http://127.0.170.1:{listener.getsockname()[1]}"
        finally:
            for sock in queued:
                sock.close()


async def failing_waits(get: Callable[[], Awaitable[object]]) -> list[float]:
    """How long each of ``FAILURES_TO_HOLD + 2`` GETs took to fail (each must fail)."""
    waits = []
    for _ in range(outage.FAILURES_TO_HOLD + 2):
        started = time.monotonic()
        with pytest.raises(UpstreamError):
            await get()
        waits.append(time.monotonic() - started)
    return waits


async def test_direct_blob_gets_that_cannot_connect_take_the_registry_down(
    black_hole: str,
) -> None:
    settings = DirectSettings(upstream_ssl_context(), CONNECT, 5.0)
    client = UpstreamClient(httpx.AsyncClient(), settings)
    upstream = Upstream(black_hole)
    url = f"{black_hole}/v2/team/app/blobs/sha256:{'0' * 64}"
    try:
        waits = await failing_waits(lambda: direct.open_get(client, upstream, url, []))
    finally:
        settings.idle.close()
        await client.http.aclose()
    assert all(wait >= CONNECT * 0.9 for wait in waits[: outage.FAILURES_TO_HOLD])
    # Once three failed in a row the registry is held down: the next fail at once
    assert client.outages.down(upstream.host, url)
    assert all(wait < CONNECT / 3 for wait in waits[outage.FAILURES_TO_HOLD :]), waits


async def test_httpx_blob_gets_that_cannot_connect_take_the_registry_down(
    black_hole: str,
) -> None:
    """The same GETs through httpx (``send``: no direct settings) are held after three."""
    http = httpx.AsyncClient(timeout=httpx.Timeout(5.0, connect=CONNECT))
    client = UpstreamClient(http)
    upstream = Upstream(black_hole)
    url = f"{black_hole}/v2/team/app/blobs/sha256:{'0' * 64}"

    async def get() -> None:
        response = await client.send(upstream, "GET", url, [])
        await response.aclose()

    try:
        waits = await failing_waits(get)
    finally:
        await http.aclose()
    assert client.outages.down(upstream.host, url)
    assert all(wait < CONNECT / 3 for wait in waits[outage.FAILURES_TO_HOLD :]), waits


def test_a_hold_is_per_upstream_and_per_origin_with_its_port() -> None:
    """A hold from refusals (an IPv6 origin with a port) holds that origin of that upstream only."""
    outages = outage.Outages(clock=lambda: 0.0, wall=lambda: 0.0)
    url = "https://[::1]:5000/v2/"
    for _ in range(outage.FAILURES_TO_HOLD):
        outages.failed("h", url, "refused", timeout=False)
    with pytest.raises(UpstreamUnavailable, match="not tried"):
        outages.attempt("h", "https://[::1]:5000/v2/x/blobs/y", lambda said, kind: None)
    assert not outages.down("h", "https://[::1]/v2/")
    assert not outages.down("other", url)


async def test_a_probe_sent_through_the_client_that_fails_still_doubles_the_hold() -> None:
    """The probe is known by its task (a context variable): ``send``'s own failure, in the
    probe's task, doubles the hold; a request of another task failing meanwhile does not."""
    now = [1000.0]

    async def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    http = httpx.AsyncClient(transport=httpx.MockTransport(refuse))
    client = UpstreamClient(http)
    client.outages = outage.Outages(clock=lambda: now[0], wall=lambda: 0.0)
    upstream = Upstream("https://registry.test")
    url = "https://registry.test/v2/x/manifests/1"
    try:
        for _ in range(outage.FAILURES_TO_HOLD):
            with pytest.raises(UpstreamUnavailable, match="cannot reach"):
                await client.send(upstream, "GET", url, [])
        now[0] += outage.FIRST_HOLD + 0.1
        with pytest.raises(UpstreamUnavailable, match="cannot reach"):  # the probe, refused
            await client.send(upstream, "GET", url, [])
        now[0] += outage.FIRST_HOLD + 0.1  # past the first hold, not the doubled one
        with pytest.raises(UpstreamUnavailable, match="not tried"):
            await client.send(upstream, "GET", url, [])
        now[0] += outage.FIRST_HOLD
        with pytest.raises(UpstreamUnavailable, match="cannot reach"):  # the next probe
            await client.send(upstream, "GET", url, [])
    finally:
        await http.aclose()


async def test_a_direct_blob_get_as_the_probe_that_is_refused_doubles_the_hold() -> None:
    """Refused at once (nothing listens): three direct GETs take the registry down; once the
    hold is over a direct GET is the probe, and its refusal holds it down twice as long."""
    with socket.socket() as closed:
        closed.bind(("127.0.170.1", 0))
        registry = f"http://127.0.170.1:{closed.getsockname()[1]}"
    now = [1000.0]
    settings = DirectSettings(upstream_ssl_context(), 2.0, 5.0)
    client = UpstreamClient(httpx.AsyncClient(), settings)
    client.outages = outage.Outages(clock=lambda: now[0], wall=lambda: 0.0)
    upstream = Upstream(registry)
    url = f"{registry}/v2/team/app/blobs/sha256:{'0' * 64}"
    try:
        for _ in range(outage.FAILURES_TO_HOLD):
            with pytest.raises(UpstreamUnavailable, match="cannot reach"):
                await direct.open_get(client, upstream, url, [])
        with pytest.raises(UpstreamUnavailable, match="not tried"):
            await direct.open_get(client, upstream, url, [])
        now[0] += outage.FIRST_HOLD + 0.1
        with pytest.raises(UpstreamUnavailable, match="cannot reach"):  # the probe
            await direct.open_get(client, upstream, url, [])
        now[0] += outage.FIRST_HOLD + 0.1  # the first hold's length again: still held
        with pytest.raises(UpstreamUnavailable, match="not tried"):
            await direct.open_get(client, upstream, url, [])
    finally:
        settings.idle.close()
        await client.http.aclose()
