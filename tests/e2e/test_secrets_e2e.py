"""No secret in the mirror's log or in any answer it sends, healthy or failing.

The mirror runs at debug level with the bed's account as its ``upstream.username``, a client
logs in with the same account (Basic to ``/auth/token``) and pulls with the token it got, then
the upstream fails (503 on everything, then refused connections, then a dead token service)
while the client keeps asking. The password, the Basic credential and the client's token must
appear in no log line, no response body and no response header.
"""

from __future__ import annotations

import base64
import socket

import httpx
import pytest

from lab.bed import Bed, Fault
from lab.mirror import Mirror
from tests.conftest import StartMirror

pytestmark = pytest.mark.e2e

PRIVATE = "docxytest/private"


def dead_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Client:
    """Asks the mirror and keeps every answer, headers included, as bytes."""

    def __init__(self, mirror: Mirror, bed: Bed) -> None:
        self.http = httpx.Client(base_url=mirror.url, timeout=60)
        self.bed = bed
        self.answers: list[tuple[str, bytes]] = []  # (path, headers and body)

    def ask(self, method: str, path: str, **options: object) -> httpx.Response:
        response = self.http.request(method, path, **options)  # type: ignore[arg-type]
        headers = "\n".join(f"{k}: {v}" for k, v in response.headers.multi_items())
        self.answers.append((path, headers.encode() + b"\n\n" + response.content))
        return response

    def login(self) -> httpx.Response:
        params = {"service": self.bed.service, "scope": f"repository:{PRIVATE}:pull"}
        return self.ask(
            "GET", "/auth/token", params=params, auth=(self.bed.user, self.bed.password)
        )

    def pull(self, token: str) -> list[int]:
        image = self.bed.images[PRIVATE]
        auth = {"Authorization": f"Bearer {token}"}
        paths = [f"/v2/{PRIVATE}/manifests/{image.tag}", f"/v2/{PRIVATE}/manifests/{image.digest}"]
        paths += [f"/v2/{PRIVATE}/blobs/{digest}" for digest in image.blobs]
        paths += [f"/v2/hello/blobs/{digest}" for digest in image.blobs]  # scoped: checked
        statuses = [self.ask("GET", "/v2/", headers=auth).status_code]
        for path in paths:
            for method in ("HEAD", "GET"):
                statuses.append(self.ask(method, path, headers=auth).status_code)
        return statuses

    def close(self) -> None:
        self.http.close()


def assert_nothing_leaked(secrets: list[str], token: str, client: Client, mirror: Mirror) -> None:
    """``secrets`` nowhere; the client's ``token`` nowhere but in the answers that issue tokens."""
    log = mirror.log_text(limit=10_000_000)
    assert " GET /v2/" in log, "the access log should be in the mirror's log"
    for secret in [*secrets, token]:
        assert secret not in log, f"a secret ({secret[:3]}...) is in the mirror's log"
        for path, answer in client.answers:
            if secret == token and path == "/auth/token":
                continue
            assert secret.encode() not in answer, f"a secret ({secret[:3]}...) was sent back"


def test_no_secret_in_the_log_or_any_answer_while_the_upstream_fails(
    bed: Bed, start_mirror: StartMirror
) -> None:
    account = {"DOCXY_UPSTREAM_USERNAME": bed.user, "DOCXY_UPSTREAM_PASSWORD": bed.password}
    mirror = start_mirror("--log-level", "debug", env=account)
    client = Client(mirror, bed)
    basic = base64.b64encode(f"{bed.user}:{bed.password}".encode()).decode()
    try:
        login = client.login()
        assert login.status_code == 200
        token = login.json()["token"]
        assert 200 in client.pull(token)

        bed.faults.add(Fault("front", "status", method=None, status=503, times=None))
        client.login()
        assert max(client.pull(token)) >= 500
        bed.faults.clear()
        bed.front.stop()
        client.login()
        assert max(client.pull(token)) >= 500
        bed.front.start()
        assert_nothing_leaked([bed.password, basic], token, client, mirror)
    finally:
        client.close()

    dead_realm = f"http://127.0.0.1:{dead_port()}/token"
    mirror = start_mirror("--log-level", "debug", "--auth-realm", dead_realm, env=account)
    client = Client(mirror, bed)
    try:
        offline = client.login()  # the token service is down: whatever it answers, no secret
        client.pull(token)
        client.pull(offline.json().get("token", "") if offline.status_code == 200 else "none")
        assert_nothing_leaked([bed.password, basic], token, client, mirror)
    finally:
        client.close()
