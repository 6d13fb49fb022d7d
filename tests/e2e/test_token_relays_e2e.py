"""A real dockerd pulls within two token relays; the third from its address is refused.

``limits.token_relays_per_minute`` (``docxy.edge.relays``) counts the ``/v2/`` and
``/auth/token`` requests the mirror passes upstream per client address. Its default must be one
a real pull never reaches: dockerd sends one of each per image, however many layers (its
``/v2/``, without credentials, is answered from the challenge the mirror's probe keeps). With
the limit at 2, a cold pull of a multi-layer image still succeeds through the mirror (a failed
one would show as dockerd falling back to the egress guard), and the next relay is ``429``;
``/v2/`` is still answered with the challenge.
"""

from __future__ import annotations

import httpx
import pytest

from lab.bed import Bed
from lab.clients.dockerd import running_dockerd
from lab.clients.egress import EgressGuard
from tests.conftest import StartMirror
from tests.unavailable import DOCKER, need_binaries

pytestmark = pytest.mark.e2e


def test_a_docker_pull_fits_in_two_relays_and_a_third_is_refused(
    bed: Bed, start_mirror: StartMirror, egress: EgressGuard
) -> None:
    need_binaries(*DOCKER)
    mirror = start_mirror(env={"DOCXY_LIMITS_TOKEN_RELAYS_PER_MINUTE": "2"})
    image = bed.images["docxytest/multi"]
    with running_dockerd(mirror_url=mirror.url, egress_proxy=egress.url) as daemon:
        result = daemon.docker("pull", f"{image.short_repo}:{image.tag}")
        assert result.returncode == 0, f"{result.stderr}\n{daemon.log()[-4000:]}"
        assert egress.attempts == [], "dockerd fell back: the pull through the mirror failed"
    log = mirror.log_text(10**6)
    assert " 429 " not in log, log
    relayed = len(bed.token_log)
    # The bucket holds 2 and refills one every 30 s: of three at once, one is refused.
    with httpx.Client(base_url=mirror.url, timeout=30) as client:
        answers = [
            client.get("/auth/token", params={"scope": "repository:x/y:pull"}) for _ in "abc"
        ]
    refused = [a for a in answers if a.status_code == 429]
    assert refused, [a.status_code for a in answers]
    assert refused[0].json()["errors"][0]["code"] == "TOOMANYREQUESTS"
    assert int(refused[0].headers["Retry-After"]) >= 1
    assert len(bed.token_log) == relayed + len(answers) - len(refused)  # nothing sent for it
    # Out of relays, a client still learns where to log in (the next pull's first request).
    with httpx.Client(base_url=mirror.url, timeout=30) as client:
        ping = client.get("/v2/")
    assert ping.status_code == 401, ping.text
    challenge = ping.headers["WWW-Authenticate"]
    assert challenge.startswith("Bearer ") and '/auth/token"' in challenge, challenge
