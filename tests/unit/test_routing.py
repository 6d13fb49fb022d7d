"""Choosing the upstream: ``?ns=``, the mirror host name, a path prefix, or ``[upstream]``."""

from __future__ import annotations

import pytest

from docxy.core.errors import ClientError
from docxy.upstream.client import Upstream
from docxy.upstream.routing import Route, Upstreams, UpstreamUnknown

HUB = Upstream("https://registry-1.docker.io")
GHCR = Upstream(
    "https://ghcr.io", library_prefix=False, name="ghcr.io", hosts=("ghcr.mirror.test",)
)
LAB = Upstream(
    "http://127.0.0.1:5000", library_prefix=False, name="lab.test", hosts=("127.0.0.2:8080",)
)
TABLE = Upstreams(HUB, [GHCR, LAB])


@pytest.mark.parametrize(
    ("name", "ns", "host", "expected"),
    [
        ("library/redis", None, None, Route(HUB, "library/redis")),
        ("redis", None, None, Route(HUB, "redis")),
        ("ghcr.io/owner/img", None, None, Route(GHCR, "owner/img", "ghcr.io")),
        ("lab.test/a/b/c", None, "mirror.example.com", Route(LAB, "a/b/c", "lab.test")),
        ("docker.io/library/redis", None, None, Route(HUB, "library/redis", "docker.io")),
        ("owner/img", "ghcr.io", None, Route(GHCR, "owner/img")),
        ("library/redis", "docker.io", None, Route(HUB, "library/redis")),
        ("owner/img", None, "ghcr.mirror.test", Route(GHCR, "owner/img")),
        ("owner/img", None, "GHCR.Mirror.Test:443", Route(GHCR, "owner/img")),
        ("owner/img", None, "127.0.0.2:8080", Route(LAB, "owner/img")),
        ("owner/img", None, "127.0.0.2:9999", Route(HUB, "owner/img")),  # another port
        ("owner/img", "ghcr.io", "127.0.0.2:8080", Route(GHCR, "owner/img")),  # ns first
        ("ghcr.io", None, None, Route(HUB, "ghcr.io")),  # one component is never a prefix
        ("", "lab.test", None, Route(LAB, "")),  # /v2/ itself
        ("", None, None, Route(HUB, "")),
    ],
)
def test_route(name: str, ns: str | None, host: str | None, expected: Route) -> None:
    assert TABLE.route(name, ns=ns, host=host) == expected


@pytest.mark.parametrize(
    ("name", "ns"),
    [
        ("evil.com/x/y", None),  # a host-like prefix nobody configured
        ("quay.io/owner/img", None),  # a preset that is not enabled
        ("owner/img", "evil.com"),
        ("owner/img", "quay.io"),
        ("owner/img", ""),
        ("owner/img", "ghcr.io@evil.com"),
        ("owner/img", "ghcr.io:8443"),  # a port of its own is another registry
        ("owner/img", "ghcr.io:5000"),
        ("owner/img", "https://ghcr.io"),
        ("owner/img", "ghcr.io/x"),
    ],
)
def test_unknown_upstreams_are_refused(name: str, ns: str | None) -> None:
    with pytest.raises(UpstreamUnknown) as caught:
        TABLE.route(name, ns=ns, host="ghcr.io")  # a Host that is not in `hosts` picks nothing
    assert caught.value.status == 404
    assert caught.value.code == "NAME_UNKNOWN"


@pytest.mark.parametrize("ns", ["ghcr.io:443", "GHCR.IO", "Ghcr.io:443", "ghcr.io."])
def test_an_ns_is_compared_as_a_host(ns: str) -> None:
    """containerd names the registry of the image reference, which may carry its port: the
    default port of the upstream's scheme is no port, and case does not matter
    (``docxy.core.hosts``), as for ``hosts`` (on 00eccfd ``?ns=ghcr.io:443`` was refused
    while ``ghcr.io`` was taken). ``ghcr.io:80``, HTTPS's other port, is another registry:
    ``test_review_routing1``."""
    assert TABLE.route("owner/img", ns=ns) == Route(GHCR, "owner/img")
    assert TABLE.for_token(ns, []) is GHCR


def test_the_request_host_is_never_an_upstream_by_itself() -> None:
    """Host: ghcr.io is not one of the configured mirror host names: the default answers."""
    assert TABLE.route("owner/img", host="ghcr.io").upstream is HUB
    assert TABLE.route("owner/img", host="evil.example").upstream is HUB


@pytest.mark.parametrize("entry", ["ghcr.mirror.test", "ghcr.mirror.test:443"])
@pytest.mark.parametrize(
    "host", ["ghcr.mirror.test", "ghcr.mirror.test:443", "GHCR.mirror.test:80"]
)
def test_a_default_port_is_no_port_in_hosts_and_requests(entry: str, host: str) -> None:
    """``HOST`` and ``HOST:443`` are one host, whichever the entry says and the client
    writes."""
    ghcr = Upstream("https://ghcr.io", library_prefix=False, name="ghcr.io", hosts=(entry,))
    table = Upstreams(HUB, [ghcr])
    assert table.route("owner/img", host=host) == Route(ghcr, "owner/img")
    assert table.route("owner/img", host="other.mirror.test:443").upstream is HUB
    # Another port: an entry that names no port takes it, one that names :443 does not.
    other_port = table.route("owner/img", host="ghcr.mirror.test:5000").upstream
    assert other_port is (ghcr if entry == "ghcr.mirror.test" else HUB)


def test_a_port_of_its_own_is_taken_before_the_host_on_any_port() -> None:
    lab = Upstream("http://127.0.0.1:5000", name="lab.test", hosts=("mirror.test:5000",))
    ghcr = Upstream("https://ghcr.io", name="ghcr.io", hosts=("mirror.test",))
    table = Upstreams(HUB, [lab, ghcr])
    assert table.route("a/b", host="mirror.test:5000").upstream is lab
    assert table.route("a/b", host="mirror.test:443").upstream is ghcr
    assert table.route("a/b", host="mirror.test:8443").upstream is ghcr


@pytest.mark.parametrize(
    ("named", "scopes", "expected"),
    [
        (None, [], HUB),
        (None, ["repository:library/redis:pull"], HUB),
        (None, ["repository:ghcr.io/owner/img:pull"], GHCR),
        (None, ["repository:ghcr.io/a/b:pull repository:ghcr.io/c/d:pull"], GHCR),
        (None, ["registry:catalog:*", "repository:lab.test/x/y:pull"], LAB),
        ("ghcr.io", ["repository:owner/img:pull"], GHCR),
        ("lab.test", [], LAB),
    ],
)
def test_token_upstream(named: str | None, scopes: list[str], expected: Upstream) -> None:
    assert TABLE.for_token(named, scopes) is expected


def test_token_request_for_two_upstreams_is_refused() -> None:
    with pytest.raises(ClientError):
        TABLE.for_token(None, ["repository:ghcr.io/a/b:pull", "repository:library/redis:pull"])


@pytest.mark.parametrize(
    ("named", "scopes"),
    [("evil.com", []), ("quay.io", []), (None, ["repository:evil.com/a/b:pull"])],
)
def test_token_for_unknown_upstream_is_refused(named: str | None, scopes: list[str]) -> None:
    with pytest.raises(UpstreamUnknown):
        TABLE.for_token(named, scopes)
