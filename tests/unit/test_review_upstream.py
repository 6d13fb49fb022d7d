"""Review faults in the routing of several upstreams (docxy.upstream), each shown failing first."""

from __future__ import annotations

import pytest

from docxy.upstream.client import Upstream
from docxy.upstream.routing import Upstreams

DEFAULT = Upstream("https://registry-1.docker.io")
GHCR = Upstream(
    "https://ghcr.io", name="ghcr.io", library_prefix=False, hosts=("ghcr.mirror.test:443",)
)
LAB = Upstream("http://10.0.0.5:5000", name="lab.example", hosts=("lab.mirror.test:80",))


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("ghcr.mirror.test", GHCR),  # https on 443: clients leave the default port out
        ("GHCR.mirror.test", GHCR),
        ("ghcr.mirror.test:443", GHCR),
        ("lab.mirror.test", LAB),  # plain HTTP on 80, the same
        ("lab.mirror.test:80", LAB),
        ("ghcr.mirror.test:8443", DEFAULT),  # another port is another name
        ("other.test", DEFAULT),
    ],
)
def test_a_hosts_entry_with_the_default_port_picks_requests_that_leave_it_out(
    host: str, expected: Upstream
) -> None:
    """``hosts = ["ghcr.mirror.test:443"]`` (HOST:PORT, as the README allows) never matched:
    Docker and containerd send ``Host: ghcr.mirror.test`` for https://ghcr.mirror.test, as
    HTTP clients leave a scheme's default port out. The request then went to [upstream]:
    ``docker pull ghcr.mirror.test/owner/img`` got Docker Hub's owner/img, another image."""
    upstreams = Upstreams(DEFAULT, [GHCR, LAB])
    assert upstreams.route("owner/img", host=host).upstream is expected
