"""Review faults in the upstream client and the pull path (docxy.upstream, docxy.pull), each
shown failing first."""

from __future__ import annotations

import pytest

from docxy.core.errors import UpstreamUnavailable
from docxy.upstream import direct
from docxy.upstream.client import upstream_ssl_context
from docxy.upstream.direct import DirectSettings


@pytest.mark.parametrize("host", ["a..b", "a" * 64 + ".test"])
def test_a_direct_get_to_a_host_name_the_resolver_refuses_is_unreachable(host: str) -> None:
    """A fill's direct GET redirected to ``http://a..b/`` (an empty label; one over 63
    characters alike): the name lookup's IDNA codec raised UnicodeError, which no handler took
    for a failure to connect, so the fill's task crashed with a traceback in the log and the
    upstream's health heard nothing. It is an unreachable upstream (502), as on httpx's path.
    (The codec refuses the name before any lookup is sent.)"""
    settings = DirectSettings(upstream_ssl_context(), 5.0, 5.0)
    with pytest.raises(UpstreamUnavailable, match=r"cannot reach the upstream registry"):
        direct.get(settings, f"http://{host}:9000/blob", [])
