"""Review r3 of the echo mends: header fields, and secrets that were no secrets.

A pass-through the mirror sends with its own Basic login (an upstream without a token
service) had its error body told without the mirror's credentials, but every header field of
the answer was kept: an upstream whose ``4xx`` repeats the request's ``Authorization`` in a
header (``X-Request-Authorization``), or in its challenge's ``error_description``, handed it
to any client, ``GET`` and ``HEAD``, ``--no-cache`` and with the cache (a repository private
to the mirror's fetch passes through). And any 12 characters of ``user:password`` counted as
a secret: a username of 12 or more (``mycompanyrobot``) named in a tag was one, and a short
password (``docker``) was looked for whole: Docker Hub's rate-limit message names
``docker.com``. Real mirrors (``docxy serve``) against a Basic-only upstream on 127.0.146.1,
ports 13870-13872; and the matcher itself.
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

from docxy.core.echoes import told_headers
from docxy.core.errors import relayable
from docxy.upstream.client import Upstream
from docxy.upstream.tokens import basic_authorization, login_secrets

HOST = "127.0.146.1"
UP = 13870
LOGIN = ("mycompanyrobot", "docker")  # a long username, a short password
CREDENTIAL = base64.b64encode(":".join(LOGIN).encode()).decode()
ROOT = Path(__file__).resolve().parents[2]
LIMIT = {
    "code": "TOOMANYREQUESTS",
    "message": "You have reached your pull rate limit. You may increase the limit by "
    "authenticating and upgrading: https://www.docker.com/increase-rate-limit",
}
RATE_HEADERS = {
    "Retry-After": "7",
    "RateLimit-Limit": "100;w=21600",
    "RateLimit-Remaining": "0;w=21600",
    "Docker-RateLimit-Source": "192.0.2.7",
}


class Repeating(BaseHTTPRequestHandler):
    """A Basic-only registry whose errors repeat the request's ``Authorization`` in header
    fields: one of its own, a cookie, a challenge's ``error_description``."""

    protocol_version = "HTTP/1.1"

    def log_message(self, *args: Any) -> None:
        pass

    def send(self, status: int, body: Any, extra: dict[str, str] | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for key, value in (extra or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def do_HEAD(self) -> None:
        self.do_GET()

    def do_GET(self) -> None:
        auth = self.headers.get("Authorization", "")
        if not auth.startswith("Basic "):
            return self.send(401, {}, {"WWW-Authenticate": 'Basic realm="r"'})
        if self.path == "/v2/":
            return self.send(200, {})
        tag = self.path.rsplit("/", 1)[-1]
        unknown: dict[str, Any] = {"code": "MANIFEST_UNKNOWN", "message": "manifest unknown"}
        unknown["detail"] = {"Tag": tag}
        if "/hdr/" in self.path:
            echo = {"X-Request-Authorization": auth, "Set-Cookie": "d=" + auth, "X-Clean": "1"}
            return self.send(404, {"errors": [unknown]}, echo)
        if "/wwwa/" in self.path:
            challenge = (
                f'Bearer realm="http://{HOST}:{UP}/t",service="s",error="insufficient_scope",'
                f'error_description="{auth}"'
            )
            denied = {"code": "DENIED", "message": "denied"}
            return self.send(403, {"errors": [denied]}, {"WWW-Authenticate": challenge})
        if "/late/" in self.path:  # a Retry-After the date parser reads, the login after it
            late = {"Retry-After": "Sun, 06 Nov 2095 08:49:37 GMT " + auth}
            return self.send(429, {"errors": [LIMIT]}, late)
        if "/rate/" in self.path:
            return self.send(429, {"errors": [LIMIT]}, RATE_HEADERS)
        return self.send(404, {"errors": [unknown]})


def _serve(tmp: Path, port: int, *extra: str) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DOCXY_")}
    env |= {"PYTHONPATH": str(ROOT), "DOCXY_CACHE_DIR": str(tmp / "cache")}
    env["DOCXY_SERVER_ADMIN_LISTEN"] = ""
    args = ["--listen", f"{HOST}:{port}", "--upstream", f"http://{HOST}:{UP}"]
    args += ["--set", f"upstream.username={LOGIN[0]}"]
    args += ["--set", f"upstream.password_file={tmp.parent / 'pw'}", *extra]
    with open(tmp / "log", "wb") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "docxy", "serve", *args],
            env=env,
            cwd=tmp,  # ``-m`` puts the working directory first: ROOT's docxy, not another
            stdout=log,
            stderr=log,
        )


@pytest.fixture(scope="module")
def mirrors(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    tmp = tmp_path_factory.mktemp("echo-headers")
    (tmp / "pw").write_text(LOGIN[1] + "\n")
    server = ThreadingHTTPServer((HOST, UP), Repeating)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    procs: list[subprocess.Popen[bytes]] = []
    urls: dict[str, str] = {}
    try:
        for name, port, extra in (("nocache", 13871, ("--no-cache",)), ("cache", 13872, ())):
            (tmp / name).mkdir()
            procs.append(_serve(tmp / name, port, *extra))
            urls[name] = f"http://{HOST}:{port}"
        for url in urls.values():
            for _ in range(300):
                try:
                    if httpx.get(url + "/health", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                time.sleep(0.1)
        yield urls
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(timeout=15)
        server.shutdown()
        server.server_close()


def _told(answer: httpx.Response) -> str:
    return answer.text + json.dumps(list(answer.headers.multi_items()))


@pytest.mark.parametrize("method", ["GET", "HEAD"])
def test_a_header_repeating_the_mirrors_login_is_not_relayed(
    mirrors: dict[str, str], method: str
) -> None:
    answer = httpx.request(method, mirrors["nocache"] + "/v2/hdr/a/manifests/x", timeout=20)
    assert answer.status_code == 404
    assert CREDENTIAL[:12] not in _told(answer), _told(answer)
    assert "x-request-authorization" not in answer.headers
    assert answer.headers.get("x-clean") == "1"  # a clean field of the same answer is kept


@pytest.mark.parametrize("which", ["nocache", "cache"])
def test_a_challenge_repeating_the_mirrors_login_loses_that_parameter_only(
    mirrors: dict[str, str], which: str
) -> None:
    answer = httpx.get(mirrors[which] + "/v2/wwwa/a/manifests/x", timeout=20)
    assert answer.status_code == 403
    assert CREDENTIAL[:12] not in _told(answer), _told(answer)
    challenge = answer.headers["www-authenticate"]
    assert challenge.startswith("Bearer ") and 'error="insufficient_scope"' in challenge
    assert f"{HOST}:{UP}" not in challenge  # pointed at the mirror, as before
    assert "error_description" not in challenge


def test_a_rate_limit_keeps_its_message_and_its_fields(mirrors: dict[str, str]) -> None:
    answer = httpx.get(mirrors["nocache"] + "/v2/rate/a/manifests/x", timeout=20)
    assert answer.status_code == 429
    assert answer.json() == {"errors": [LIMIT]}  # the password "docker" is no echo of it
    for key, value in RATE_HEADERS.items():
        assert answer.headers.get(key) == value, key
    cached = httpx.get(mirrors["cache"] + "/v2/rate/a/manifests/x", timeout=20)
    assert cached.status_code == 429 and cached.headers.get("retry-after") == "7"


@pytest.mark.parametrize("which", ["nocache", "cache"])
def test_a_retry_after_is_said_again_not_as_it_came(mirrors: dict[str, str], which: str) -> None:
    answer = httpx.get(mirrors[which] + "/v2/late/a/manifests/x", timeout=20)
    assert answer.status_code == 429
    assert CREDENTIAL[:12] not in _told(answer), _told(answer)
    assert answer.headers.get("retry-after") in ("Sun, 06 Nov 2095 08:49:37 GMT", None)


@pytest.mark.parametrize("which", ["nocache", "cache"])
def test_a_tag_named_like_the_upstream_username_is_told_whole(
    mirrors: dict[str, str], which: str
) -> None:
    path = "/v2/mycompanyrobot/app/manifests/mycompanyrobot-v2"
    answer = httpx.get(mirrors[which] + path, timeout=20)
    assert answer.status_code == 404
    unknown = {"code": "MANIFEST_UNKNOWN", "message": "manifest unknown"}
    assert answer.json() == {"errors": [{**unknown, "detail": {"Tag": "mycompanyrobot-v2"}}]}


def test_told_headers_drop_a_field_or_a_challenges_parameter_that_repeats_one() -> None:
    secrets = login_secrets(Upstream("https://r.example", credentials=LOGIN))
    basic = "Basic " + CREDENTIAL
    challenges = (
        f'Basic realm="r", Bearer realm="https://a/t",error="x",error_description="{basic}"'
    )
    came = [
        ("X-Echo", "you sent " + CREDENTIAL[3:17]),
        ("WWW-Authenticate", challenges),
        ("WWW-Authenticate", f"Negotiate {CREDENTIAL}"),  # its token68 read as a challenge
        ("RateLimit-Limit", "100;w=21600"),
        ("Docker-RateLimit-Source", "192.0.2.7"),
    ]
    assert told_headers(came, secrets) == [
        ("WWW-Authenticate", 'Basic realm="r", Bearer realm="https://a/t",error="x"'),
        ("WWW-Authenticate", "Negotiate"),
        ("RateLimit-Limit", "100;w=21600"),
        ("Docker-RateLimit-Source", "192.0.2.7"),
    ]


def _kept(user: str, password: str, error: dict[str, Any]) -> bool:
    upstream = Upstream("https://r.example", credentials=(user, password))
    secrets = login_secrets(upstream, [basic_authorization(user, password)])
    told = relayable(json.dumps({"errors": [error]}).encode(), secrets, "MANIFEST_UNKNOWN")
    return told is not None and json.loads(told) == {"errors": [error]}


def test_the_username_alone_and_a_short_password_are_no_secrets() -> None:
    tag = {"code": "MANIFEST_UNKNOWN", "message": "m", "detail": {"Tag": "mycompanyrobot-v2"}}
    assert _kept("mycompanyrobot", "Xq7-long-random-passw0rd-9931", tag)
    assert _kept("bob", "docker", LIMIT)
    assert _kept("bob", "docker", {"code": "DENIED", "message": "docker"})


@pytest.mark.parametrize(
    "echo",
    [
        basic_authorization("bob", "docker"),  # what a header echo repeats
        basic_authorization("bob", "docker")[8:20],  # 12 characters of it
        "bob:docker",  # the pair, whole
        "bob%3Adocker",
    ],
)
def test_what_a_short_passwords_login_sends_is_still_one(echo: str) -> None:
    assert not _kept("bob", "docker", {"code": "DENIED", "message": f"you sent {echo}"})


def test_a_long_password_whole_is_one() -> None:
    password = "Xq7-long-random-passw0rd-9931"
    assert not _kept("mycompanyrobot", password, {"code": "DENIED", "message": password})
