"""An upstream error body relayed to clients never repeats the mirror's own credentials.

The registry's 404 to the mirror's own GET (made with its upstream login, or a token got with
it) is relayed to clients without credentials of their own (``UpstreamAnswered``); so is the
answer to a pass-through the mirror sends with its own Basic login (an upstream without a
token service, ``--no-cache``). An upstream, or a proxy before it, that echoes the request's
headers in its error handed anyone asking for a missing tag the mirror's Bearer token, or its
``Basic base64(user:password)``. Real mirrors (``docxy serve``) against echoing upstreams on
127.0.142.1, ports 13750-13757; and ``relayable`` itself.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from docxy.core.echoes import Secrets
from docxy.core.errors import RELAYED_LIMIT, relayable
from docxy.upstream.client import Upstream
from docxy.upstream.tokens import login_secrets

HOST = "127.0.142.1"
LOGIN = ("evil", "EVILPASSWORD-0123456789")
BASIC = base64.b64encode(":".join(LOGIN).encode()).decode()
MIRROR_TOKEN = "MIRRORLOGINTOKEN-privatescope-0123456789"
ROOT = Path(__file__).resolve().parents[2]
SECRETS = (MIRROR_TOKEN, BASIC, LOGIN[1], ":".join(LOGIN))
CLEAN = {"code": "MANIFEST_UNKNOWN", "message": "manifest unknown", "detail": {"Tag": "latest"}}


class Echoing(BaseHTTPRequestHandler):
    """A token registry whose 404 repeats the request's headers (its message), and a run of
    its ``Authorization`` (its detail, nested): an echo cut short."""

    protocol_version = "HTTP/1.1"
    port = 0

    def log_message(self, *args: Any) -> None:
        pass

    def send(self, status: int, body: bytes, extra: tuple[tuple[str, str], ...] = ()) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for key, value in extra:
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def do_HEAD(self) -> None:
        self.do_GET()

    def allowed(self) -> bool:
        if self.path.startswith("/token"):
            mine = BASIC in self.headers.get("Authorization", "")
            token = MIRROR_TOKEN if mine else "ANON"
            self.send(200, json.dumps({"token": token, "expires_in": 300}).encode())
            return False
        if not self.headers.get("Authorization", "").startswith("Bearer "):
            challenge = f'Bearer realm="http://{HOST}:{self.port}/token",service="evil"'
            self.send(
                401, b'{"errors":[{"code":"UNAUTHORIZED"}]}', (("WWW-Authenticate", challenge),)
            )
            return False
        return True

    def do_GET(self) -> None:
        if not self.allowed():
            return
        if self.path == "/v2/":
            return self.send(200, b"{}")
        if "/clean/" in self.path:
            return self.send(404, json.dumps({"errors": [CLEAN]}).encode())
        if "/plain/" in self.path:  # no registry error: a proxy's page
            return self.send(404, f"denied: {self.headers}".encode(), (("X", "y"),))
        echo = "; ".join(f"{k}={v}" for k, v in self.headers.items())
        code = "MANIFEST_UNKNOWN" if "/manifests/" in self.path else "BLOB_UNKNOWN"
        run = self.headers.get("Authorization", "")[9:23]  # 14 characters of the credential
        detail = {"seen": [{"a": run}]}
        error = {"code": code, "message": "not found; you sent " + echo, "detail": detail}
        self.send(404, json.dumps({"errors": [error]}).encode())


class EchoingBasic(Echoing):
    """A registry with Basic auth and no token service."""

    def allowed(self) -> bool:
        if not self.headers.get("Authorization", "").startswith("Basic "):
            self.send(401, b"{}", (("WWW-Authenticate", 'Basic realm="r"'),))
            return False
        return True


def _mirror(tmp: Path, handler: type[Echoing], up: int, port: int, *extra: str) -> Iterator[str]:
    server = ThreadingHTTPServer((HOST, up), type("H", (handler,), {"port": up}))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    (tmp / "pw").write_text(LOGIN[1] + "\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("DOCXY_")}
    env |= {"PYTHONPATH": str(ROOT), "DOCXY_CACHE_DIR": str(tmp / "cache")}
    env["DOCXY_SERVER_ADMIN_LISTEN"] = ""
    args = ["--listen", f"{HOST}:{port}", "--upstream", f"http://{HOST}:{up}"]
    args += ["--set", f"upstream.username={LOGIN[0]}"]
    args += ["--set", f"upstream.password_file={tmp / 'pw'}", *extra]
    with open(tmp / "log", "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "docxy", "serve", *args],
            env=env,
            cwd=tmp,  # ``-m`` puts the working directory first: ROOT's docxy, not another
            stdout=log,
            stderr=log,
        )
    url = f"http://{HOST}:{port}"
    try:
        for _ in range(300):
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=15)
        server.shutdown()
        server.server_close()


MIRRORS: dict[str, tuple[type[Echoing], int, int, tuple[str, ...]]] = {
    "bearer": (Echoing, 13750, 13751, ()),
    "basic": (EchoingBasic, 13752, 13753, ()),
    "bearer-nocache": (Echoing, 13754, 13755, ("--no-cache",)),
    "basic-nocache": (EchoingBasic, 13756, 13757, ("--no-cache",)),
}


@pytest.fixture(scope="module", params=sorted(MIRRORS))
def mirror(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    handler, up, port, extra = MIRRORS[request.param]
    yield from _mirror(tmp_path_factory.mktemp(request.param), handler, up, port, *extra)


def _told(answer: httpx.Response) -> str:
    return answer.text + json.dumps(list(answer.headers.multi_items()))


PATHS = ["/v2/evil/nothere/manifests/latest", "/v2/evil/nothere/blobs/sha256:" + "ab" * 32]


@pytest.mark.parametrize("method", ["GET", "HEAD"])
@pytest.mark.parametrize("path", [*PATHS, "/v2/evil/plain/manifests/latest"])
def test_anonymous_clients_are_not_told_the_mirrors_credentials(
    mirror: str, path: str, method: str
) -> None:
    answer = httpx.request(method, mirror + path, timeout=20)
    # 401: a pass-through of the client's own (no) credentials to a token registry
    assert answer.status_code in (401, 404)
    told = _told(answer)
    assert not [s for s in SECRETS if s in told], told
    assert BASIC[:14] not in told and MIRROR_TOKEN[:14] not in told, told
    if method == "GET" and "/plain/" not in path and answer.status_code == 404:
        code = "MANIFEST_UNKNOWN" if "/manifests/" in path else "BLOB_UNKNOWN"
        assert answer.json()["errors"][0]["code"] == code


def test_two_authorizations_count_as_none_and_are_not_told_it(mirror: str) -> None:
    two = [("Authorization", "Bearer one"), ("Authorization", "Bearer two")]
    answer = httpx.get(mirror + PATHS[0], headers=two, timeout=20)
    told = _told(answer)
    assert not [s for s in SECRETS if s in told], told


def test_a_clean_registry_error_is_relayed_whole(mirror: str) -> None:
    answer = httpx.get(mirror + "/v2/evil/clean/manifests/latest", timeout=20)
    if answer.status_code != 401:  # the client's own (no) credentials: its pass-through's
        assert answer.status_code == 404
        assert answer.json() == {"errors": [CLEAN]}


SECRET_SET = login_secrets(Upstream("https://r.example", credentials=LOGIN), [MIRROR_TOKEN])


def _relayed(*errors: Any, secrets: Secrets = SECRET_SET) -> Any:
    said = relayable(json.dumps({"errors": list(errors)}).encode(), secrets, "BLOB_UNKNOWN")
    return None if said is None else json.loads(said)["errors"]


def test_docker_hubs_errors_are_kept() -> None:
    limit = {
        "code": "TOOMANYREQUESTS",
        "message": "You have reached your pull rate limit. You may increase the limit by "
        "authenticating and upgrading: https://www.docker.com/increase-rate-limit",
    }
    denied = {"code": "DENIED", "message": "requested access to the resource is denied"}
    assert _relayed(limit, denied, CLEAN) == [limit, denied, CLEAN]


@pytest.mark.parametrize(
    "echo",
    [
        "Bearer " + MIRROR_TOKEN,
        MIRROR_TOKEN[5:17],  # a run of 12: an echo cut short
        MIRROR_TOKEN.upper(),
        LOGIN[1],
        "evil%3AEVILPASSWORD-0123456789",  # percent-encoded
        BASIC,
    ],
)
def test_an_error_that_repeats_a_secret_keeps_its_code_only(echo: str) -> None:
    for error in (
        {"code": "MANIFEST_UNKNOWN", "message": f"sent {echo}"},
        {"code": "MANIFEST_UNKNOWN", "message": "x", "detail": {"h": [{"v": echo}]}},
        {"code": "MANIFEST_UNKNOWN", "message": "x", "detail": {echo: 1}},
    ):
        told = _relayed(error, CLEAN)
        assert told is not None
        assert told[1] == CLEAN
        assert told[0]["code"] == "MANIFEST_UNKNOWN"
        assert "manifest unknown" in told[0]["message"]
        assert "detail" not in told[0]
        assert echo.lower() not in json.dumps(told).lower()


def test_a_secret_in_the_code_or_under_a_first_duplicate_key() -> None:
    told = _relayed({"code": MIRROR_TOKEN, "message": "m"})
    assert told is not None and told[0]["code"] == "BLOB_UNKNOWN"
    body = b'{"errors":[{"code":"X","message":"%s"}],"errors":[]}' % MIRROR_TOKEN.encode()
    assert MIRROR_TOKEN.encode() not in (relayable(body, SECRET_SET, "X") or b"")


def test_a_run_shorter_than_twelve_is_no_echo_and_no_registry_error_is_none() -> None:
    short = {"code": "BLOB_UNKNOWN", "message": MIRROR_TOKEN[:11]}
    assert _relayed(short) == [short]
    assert relayable(b"Bearer " + MIRROR_TOKEN.encode(), SECRET_SET, "X") is None
    assert relayable(b'{"errors": ["a string"]}', SECRET_SET, "X") is None
    big = json.dumps({"errors": [{"code": "X", "message": "m" * RELAYED_LIMIT}]}).encode()
    assert relayable(big, SECRET_SET, "X") is None
    assert "EVIL" not in repr(SECRET_SET)
