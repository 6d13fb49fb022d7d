"""Every URL the mirror hands out is built from ``server.public_url``, whatever the request says.

A client (or a proxy in front) controls ``Host``, ``X-Forwarded-*`` and ``Forwarded``; if any of
them reached a realm, a redirect or the set-up script, one crafted request could send other
clients' credentials elsewhere. Each route that emits a URL is called through the whole ASGI
stack with hostile headers, and every URL in the answer must start with the public URL.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from quart import Quart

from docxy.config import load_config
from docxy.http.app import create_app
from docxy.http.middleware import AccessLog, Guard
from tests.unit import fakes
from tests.unit.asgi import AsgiAnswer, call_asgi

PUBLIC = "https://mirror.test"
REGISTRY = "https://registry.test"
AUTH = "https://auth.test/token"
EVIL = "evil.example"
DIGEST = "sha256:" + "ab" * 32
HOSTILE = [
    ("X-Forwarded-Host", EVIL),
    ("X-Forwarded-Proto", "http"),
    ("X-Forwarded-For", "203.0.113.9"),
    ("X-Forwarded-Port", "8443"),
    ("X-Forwarded-Prefix", f"//{EVIL}/"),
    ("X-Original-URL", f"https://{EVIL}/"),
    ("Forwarded", f"for=203.0.113.9;host={EVIL};proto=http"),
]
#: The public URL, and the upstream's own (in relayed error bodies).
ALLOWED = (PUBLIC + "/", AUTH, REGISTRY)
URL = re.compile(r"""(?:https?:)?//[^\s"'<>,]+""")


def upstream(request: httpx.Request) -> httpx.Response:
    """A token-auth registry that refuses everything without a token (so challenges flow)."""
    if request.url.host == "auth.test":
        return fakes.reply(200, b'{"token": "t"}', {"Content-Type": "application/json"})
    challenge = f'Bearer realm="{AUTH}",service="registry.test",scope="repository:x:pull"'
    if request.headers.get("authorization") == "Bearer t" and "/blobs/" in request.url.path:
        return fakes.reply(404, b'{"errors": [{"code": "BLOB_UNKNOWN"}]}')
    return fakes.reply(401, b'{"errors": []}', {"WWW-Authenticate": challenge})


@asynccontextmanager
async def mirror(tmp_path: Path, handler: fakes.Handler) -> AsyncIterator[Quart]:
    overrides = {
        "upstream.registry": REGISTRY,
        "cache.dir": str(tmp_path / "cache"),
        "server.public_url": PUBLIC,
    }
    app = create_app(
        load_config(overrides, environ={}), probe=False, transport=httpx.MockTransport(handler)
    )
    async with app.test_app():
        yield app


def urls_in(answer: AsgiAnswer) -> list[str]:
    found = []
    for name, value in answer.headers.items():
        if name.lower() in ("location", "www-authenticate", "link", "content-location"):
            found += URL.findall(value)
    if "shellscript" in answer.headers.get("content-type", ""):  # checked by its default
        return found
    return found + URL.findall(answer.body.decode("latin-1"))


def assert_only_public(answer: AsgiAnswer) -> None:
    everything = "\n".join(f"{k}: {v}" for k, v in answer.headers.items())
    everything += "\n" + answer.body.decode("latin-1")
    assert EVIL not in everything
    for url in urls_in(answer):
        assert url.startswith(ALLOWED) or url == PUBLIC, url
    for name in ("location", "www-authenticate"):
        for value in answer.headers.getlist(name):
            realm = re.search(r'realm="([^"]*)"', value)
            target = realm.group(1) if realm else value
            assert target.startswith(PUBLIC + "/"), f"{name}: {value}"


ROUTES = [
    ("GET", "/v2/", []),
    ("GET", "/v2/library/x/manifests/latest", []),
    ("HEAD", "/v2/library/x/manifests/latest", []),
    ("GET", f"/v2/library/x/blobs/{DIGEST}", []),
    ("GET", f"/v2/library/x/blobs/{DIGEST}", [("Authorization", "Bearer t")]),
    ("GET", "/setup.sh", []),
    ("GET", "/auth/token?service=registry.test&scope=repository:x:pull", []),
]


@pytest.mark.parametrize("host", [EVIL, f"{EVIL}:443", "mirror.test@evil.example"])
@pytest.mark.parametrize(("method", "path", "extra"), ROUTES)
async def test_hostile_host_headers_never_reach_a_url(
    tmp_path: Path, host: str, method: str, path: str, extra: list[tuple[str, str]]
) -> None:
    async with mirror(tmp_path, upstream) as app:
        stack = AccessLog(Guard(app, None))
        answer = await call_asgi(stack, method, path, host=host, headers=HOSTILE + extra)
    assert answer.status < 500
    assert_only_public(answer)
    if path == "/setup.sh":
        assert f'MIRROR_DEFAULT="{PUBLIC}"' in answer.body.decode()


async def test_the_offline_challenge_uses_the_public_url(tmp_path: Path) -> None:
    def down(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    async with mirror(tmp_path, down) as app:
        answer = await call_asgi(
            AccessLog(Guard(app, None)), "GET", "/v2/", host=EVIL, headers=HOSTILE
        )
    assert answer.status == 401
    assert_only_public(answer)


@pytest.mark.parametrize(
    "target", ["/v2/", f"//{EVIL}/v2/", f"http://{EVIL}/setup.sh", "/v2/?next=//evil.example"]
)
async def test_the_https_redirect_goes_to_the_public_url(tmp_path: Path, target: str) -> None:
    async with mirror(tmp_path, upstream) as app:
        stack = AccessLog(Guard(app, PUBLIC))
        answer = await call_asgi(stack, "GET", target, host=EVIL, headers=HOSTILE)
    assert answer.status in (301, 302, 307, 308)
    location = answer.headers["Location"]
    assert location.startswith(PUBLIC + "/"), location
    assert urlsplit(location).netloc == urlsplit(PUBLIC).netloc, location


@pytest.mark.parametrize("host", ["a" * 64 + ".example", "mirror..example", "a" * 64 + ":443"])
@pytest.mark.parametrize(
    "target", ["/v2/", "/v2/library/x/manifests/latest", "/auth/token", "/setup.sh"]
)
async def test_a_host_header_werkzeug_cannot_read_is_a_400_not_a_500(
    tmp_path: Path, host: str, target: str
) -> None:
    """A ``Host`` with a label over 63 characters or an empty one made werkzeug raise
    ``BadHost`` while Quart built the request context, outside its error handling: hypercorn
    answered ``500`` with no body and logged a 70-line traceback at ERROR, one per request
    (a log flood for anyone; found with ``Host: aaaa...`` against a running mirror). Now it is
    a ``400`` in the registry's error format, before the app, for a ``Host`` header and for
    an absolute-form target alike."""
    async with mirror(tmp_path, upstream) as app:
        stack = AccessLog(Guard(app, None))
        for path, header in ((target, host), (f"http://{host}{target}", "mirror.test")):
            answer = await call_asgi(stack, "GET", path, host=header)
            assert answer.status == 400, (path, answer.status)
            assert answer.headers["Content-Type"] == "application/json"
            assert answer.body.startswith(b'{"errors": [{"code": ')
