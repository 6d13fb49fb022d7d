"""ASGI layers: oversized targets refused, plain HTTP redirected to HTTPS, one access-log line."""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from docxy.config import load_config
from docxy.http.app import create_app
from docxy.http.middleware import MAX_PATH, MAX_QUERY, AccessLog, Guard, origin_form
from tests.unit.asgi import AsgiAnswer, call_asgi
from tests.unit.logs import AccessLines, access_lines

PUBLIC = "https://mirror.example.com"
DIGEST = "sha256:" + "d" * 64
MANIFEST = b'{"schemaVersion": 2}'
BEARER = "Bearer eyJhbGciOiJSUzI1NiJ9.SECRET-BEARER-TOKEN"
PASSWORD = "S3CRET-PASSWORD"
BASIC = "Basic " + base64.b64encode(f"bob:{PASSWORD}".encode()).decode()


Answer = AsgiAnswer


@dataclass
class Inner:
    """An ASGI app that answers 200 and records the paths it was called for."""

    paths: list[str] = field(default_factory=list)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        self.paths.append(scope["path"])
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"inner", "more_body": False})


async def call(
    asgi: Any,
    method: str,
    raw_path: str,
    *,
    scheme: str = "http",
    headers: Iterable[tuple[str, str]] = (),
) -> Answer:
    return await call_asgi(
        asgi, method, raw_path, host="evil.example", scheme=scheme, headers=headers
    )


def error_code(answer: Answer) -> str:
    assert answer.headers["Content-Type"] == "application/json"
    assert answer.headers["Content-Length"] == str(len(answer.body))
    # Every registry answer says its API version: the edge's own errors too (they did not).
    assert answer.headers["Docker-Distribution-API-Version"] == "registry/2.0"
    return str(json.loads(answer.body)["errors"][0]["code"])


# --- Guard: request limits --------------------------------------------------------------------


@pytest.mark.parametrize("https_url", [None, PUBLIC])
async def test_oversized_query_is_414(https_url: str | None) -> None:
    inner = Inner()
    answer = await call(Guard(inner, https_url), "GET", "/v2/?" + "a" * (MAX_QUERY + 1))
    assert answer.status == 414
    assert error_code(answer) == "SIZE_INVALID"
    assert inner.paths == []


async def test_oversized_path_is_414() -> None:
    inner = Inner()
    answer = await call(Guard(inner, None), "GET", "/v2/" + "a" * MAX_PATH + "/manifests/x")
    assert answer.status == 414
    assert error_code(answer) == "SIZE_INVALID"
    assert inner.paths == []


async def test_query_at_the_limit_passes() -> None:
    inner = Inner()
    answer = await call(Guard(inner, None), "GET", "/v2/?" + "a" * MAX_QUERY)
    assert answer.status == 200
    assert inner.paths == ["/v2/"]


# --- Guard: absolute-form request targets ----------------------------------------------------


@pytest.mark.parametrize(
    "target",
    [
        "/v2/",
        "/v2/redis/manifests/latest",
        "/v2/org/app/manifests/latest?ns=docker.io",
        "/v2/redis/blobs/" + DIGEST[:-1] + "X",
        "/auth/token?service=registry.example&scope=repository:redis:pull",
        "/health",
        "/nowhere",
    ],
)
async def test_absolute_form_is_answered_like_origin_form(target: str) -> None:
    async with logged_mirror() as asgi:
        plain = await call(asgi, "GET", target)
        absolute = await call(asgi, "GET", "http://mirror.example.com" + target)
    assert (absolute.status, absolute.body) == (plain.status, plain.body)


@pytest.mark.parametrize(
    ("target", "path", "raw_path", "host"),
    [
        ("http://mirror.example.com/v2/", "/v2/", b"/v2/", b"mirror.example.com"),
        (
            "HTTPS://m.example:8443/v2/a%2Fb/manifests/x",
            "/v2/a/b/manifests/x",
            b"/v2/a%2Fb/manifests/x",
            b"m.example:8443",
        ),
        ("http://mirror.example.com", "/", b"/", b"mirror.example.com"),
        ("http://u:p@mirror.example.com/v2/", "/v2/", b"/v2/", b"mirror.example.com"),
    ],
)
def test_origin_form_of_an_absolute_target(
    target: str, path: str, raw_path: bytes, host: bytes
) -> None:
    scope: Any = {
        "type": "http",
        "path": target.replace("%2F", "/"),  # as hypercorn decodes it
        "raw_path": target.encode(),
        "headers": [(b"host", b"evil.example"), (b"accept", b"*/*")],
    }
    normal = origin_form(scope)
    assert (normal["path"], normal["raw_path"]) == (path, raw_path)
    assert normal["headers"] == [(b"host", host), (b"accept", b"*/*")]


@pytest.mark.parametrize("cut", ["", "%2F", "%3F", "%23"])  # a password's /, ? or #
async def test_absolute_form_logs_the_path_without_the_authority(
    caplog: pytest.LogCaptureFixture, access_log: AccessLines, cut: str
) -> None:
    inner = Inner()
    target = f"http://bob:{cut}{PASSWORD}@mirror.example.com/v2/"
    await call(AccessLog(Guard(inner, None)), "GET", target)
    assert inner.paths == ["/v2/"]
    [line] = access_log()
    assert line.startswith("GET /v2/ 200 ")
    assert PASSWORD not in all_log_text(caplog)


@pytest.mark.parametrize("cut", ["#", "/", "?"])  # raw: not valid in a password, yet sent
async def test_absolute_form_with_a_raw_delimiter_in_the_password_logs_no_part_of_it(
    caplog: pytest.LogCaptureFixture, access_log: AccessLines, cut: str
) -> None:
    """The authority ends at a raw ``#``, ``/`` or ``?`` for the URL's parse: the rest of the
    password was logged as the path, or the whole target as it came (``#``)."""
    target = f"http://bob:x{cut}{PASSWORD}@mirror.example.com/v2/"
    await call(AccessLog(Guard(Inner(), None)), "GET", target)
    [line] = access_log()
    if cut != "?":  # a raw "?" starts the query, which the access line does not show
        assert line.startswith("GET /v2/ "), line
    assert PASSWORD not in all_log_text(caplog)


@pytest.mark.parametrize("cut", ["#", "/"])
async def test_absolute_form_with_a_raw_delimiter_in_the_password_redirects_without_it(
    cut: str,
) -> None:
    """The HTTPS redirect of such a target sent the rest of the password back in its
    Location (and took ``bob:x`` for the host)."""
    inner = Inner()
    target = f"http://bob:x{cut}{PASSWORD}@mirror.example.com/v2/?ns=docker.io"
    answer = await call(Guard(inner, PUBLIC), "GET", target)
    assert answer.status == 308
    assert answer.headers["Location"] == f"{PUBLIC}/v2/?ns=docker.io"


@pytest.mark.parametrize("https_url", [None, PUBLIC])
@pytest.mark.parametrize(
    "target",
    [
        f"http://bob:x?{PASSWORD}@mirror.example.com/v2/?ns=docker.io",
        f"http://bob:x/{PASSWORD}?{PASSWORD}@mirror.example.com/v2/",  # "/" before the "?"
        f"http://bob:x/a@{PASSWORD}?{PASSWORD}@mirror.example.com/v2/",  # and an "@"
        "http://mirror.example.com/v2/?who=a@b",  # a real query: no telling it apart
    ],
)
async def test_absolute_form_with_a_raw_question_mark_in_the_password_is_refused(
    caplog: pytest.LogCaptureFixture, access_log: AccessLines, https_url: str | None, target: str
) -> None:
    """A raw ``?`` cuts the target into a path and a query holding the rest of the password
    and the host: the HTTPS redirect sent that query back in its Location, and a ``/``
    before the ``?`` put the password's first part in the path, logged."""
    inner = Inner()
    answer = await call(AccessLog(Guard(inner, https_url)), "GET", target)
    assert answer.status == 400
    assert inner.paths == []
    assert PASSWORD not in str(answer.headers) + answer.body.decode()
    [line] = access_log()
    assert line.startswith("GET - 400 "), line
    assert PASSWORD not in all_log_text(caplog)


@pytest.mark.parametrize(
    "target",
    [
        f"ws://bob:{PASSWORD}@mirror.example.com/v2/",
        f"ftp://bob:{PASSWORD}@mirror.example.com/v2/",
        f"HTTPS:/bob:{PASSWORD}@mirror.example.com/v2/",
        f"ws://bob:x?{PASSWORD}@mirror.example.com/v2/",  # a raw "?" in the password
        f"bob_smith:{PASSWORD}@mirror.example.com/v2/",  # "_": no scheme
        f"@evil.example/v2/?{PASSWORD}",
    ],
)
async def test_a_target_of_another_scheme_is_refused_and_never_logged(
    caplog: pytest.LogCaptureFixture, access_log: AccessLines, target: str
) -> None:
    """h11 takes any target; only an http(s) URL was made a path, so these were answered as
    the path found in them, and logged whole, the password in it."""
    inner = Inner()
    answer = await call(AccessLog(Guard(inner, None)), "GET", target)
    assert answer.status == 400
    assert inner.paths == []
    [line] = access_log()
    assert line.startswith("GET - 400 "), line
    assert PASSWORD not in all_log_text(caplog)


async def test_an_at_sign_in_an_origin_form_query_is_no_login() -> None:
    inner = Inner()
    answer = await call(Guard(inner, None), "GET", "/v2/?who=a@b")
    assert answer.status == 200
    assert inner.paths == ["/v2/"]


async def test_absolute_form_redirects_to_the_same_https_path() -> None:
    inner = Inner()
    answer = await call(Guard(inner, PUBLIC), "GET", "http://evil.example/v2/?ns=docker.io")
    assert answer.status == 308
    assert answer.headers["Location"] == f"{PUBLIC}/v2/?ns=docker.io"


# --- Guard: plain HTTP → HTTPS ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("target", "location"),
    [
        ("/v2/", f"{PUBLIC}/v2/"),
        (
            "/v2/redis/manifests/latest?ns=docker.io",
            f"{PUBLIC}/v2/redis/manifests/latest?ns=docker.io",
        ),
        (
            "/auth/token?scope=repository:redis:pull",
            f"{PUBLIC}/auth/token?scope=repository:redis:pull",
        ),
        ("/v2/a%2Fb/manifests/x", f"{PUBLIC}/v2/a%2Fb/manifests/x"),
        ("/", f"{PUBLIC}/"),
        ("/healthz", f"{PUBLIC}/healthz"),
        ("/health/../v2/", f"{PUBLIC}/health/../v2/"),
        ("/.well-known/other", f"{PUBLIC}/.well-known/other"),
        # A target that is no path (h11 takes any visible ASCII) never extends the host:
        # appended as it was, these made https://mirror.example.com.evil.example/, a port, a
        # user name in front of evil.example.
        (".evil.example/v2/", f"{PUBLIC}/"),
        (":8443/v2/", f"{PUBLIC}/"),
        ("*", f"{PUBLIC}/"),  # ("@evil.example/v2/" is refused: see foreign_target)
    ],
)
async def test_plain_http_redirects_to_public_https_url(target: str, location: str) -> None:
    inner = Inner()
    answer = await call(
        Guard(inner, PUBLIC), "GET", target, headers=[("X-Forwarded-Host", "evil.example")]
    )
    assert answer.status == 308
    assert answer.headers["Location"] == location
    assert inner.paths == []


@pytest.mark.parametrize(
    "path", ["/health", "/.well-known/acme-challenge/tok-EN_123", "/.well-known/acme-challenge/x"]
)
async def test_health_and_acme_stay_on_plain_http(path: str) -> None:
    inner = Inner()
    answer = await call(Guard(inner, PUBLIC), "GET", path)
    assert answer.status == 200
    assert inner.paths == [path]


async def test_https_requests_pass() -> None:
    inner = Inner()
    answer = await call(Guard(inner, PUBLIC), "GET", "/v2/", scheme="https")
    assert (answer.status, answer.body) == (200, b"inner")


async def test_no_redirect_without_tls() -> None:
    inner = Inner()
    answer = await call(Guard(inner, None), "GET", "/v2/")
    assert answer.status == 200
    assert inner.paths == ["/v2/"]


# --- AccessLog -------------------------------------------------------------------------------


def upstream(request: httpx.Request) -> httpx.Response:
    if request.url.host == "auth.example":
        body = b'{"token": "UPSTREAM-ISSUED-TOKEN"}'
        return httpx.Response(200, headers={"Content-Type": "application/json"}, content=body)
    if request.url.path == "/v2/":
        challenge = 'Bearer realm="https://auth.example/token",service="registry.example"'
        return httpx.Response(401, headers={"WWW-Authenticate": challenge})
    headers = {"Content-Type": "application/json", "Docker-Content-Digest": DIGEST}
    if request.method == "HEAD":
        headers["Content-Length"] = str(len(MANIFEST))
        return httpx.Response(200, headers=headers, stream=httpx.ByteStream(b""))
    return httpx.Response(200, headers=headers, stream=_Stream(MANIFEST))


class _Stream(httpx.AsyncByteStream):
    def __init__(self, data: bytes) -> None:
        self.data = data

    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield self.data


@asynccontextmanager
async def logged_mirror() -> AsyncIterator[AccessLog]:
    config = load_config(
        {
            "server.public_url": PUBLIC,
            "upstream.registry": "https://registry.example",
            "upstream.auth_realm": "https://auth.example/token",
            "cache.enabled": "false",
        },
        environ={},
    )
    app = create_app(config, probe=False, transport=httpx.MockTransport(upstream))
    async with app.test_app():
        yield AccessLog(Guard(app, None))


def all_log_text(caplog: pytest.LogCaptureFixture) -> str:
    return "\n".join(r.getMessage() for r in caplog.records)


async def test_access_log_line_for_a_manifest(
    caplog: pytest.LogCaptureFixture, access_log: AccessLines
) -> None:
    async with logged_mirror() as asgi:
        answer = await call(
            asgi,
            "GET",
            "/v2/redis/manifests/latest?ns=docker.io",
            headers=[("Authorization", BEARER)],
        )
    assert answer.status == 200
    [line] = access_log()
    assert line.startswith(f"GET /v2/redis/manifests/latest 200 {len(MANIFEST)} bytes ")
    assert "cache=bypass" in line
    assert "upstream=" in line and "upstream=-" not in line
    assert "SECRET-BEARER-TOKEN" not in line
    assert [r.levelno for r in caplog.records if r.name == "docxy.access"] == [logging.INFO]


async def test_access_log_head_counts_no_bytes(access_log: AccessLines) -> None:
    async with logged_mirror() as asgi:
        answer = await call(asgi, "HEAD", "/v2/org/app/manifests/latest")
    assert answer.headers["Content-Length"] == str(len(MANIFEST))
    [line] = access_log()
    assert line.startswith("HEAD /v2/org/app/manifests/latest 200 0 bytes ")


async def test_access_log_never_shows_credentials_or_token_query(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    query = "service=registry.example&scope=repository:redis:pull&account=bob&password=QUERY-SECRET"
    async with logged_mirror() as asgi:
        token = await call(asgi, "GET", f"/auth/token?{query}", headers=[("Authorization", BASIC)])
        await call(asgi, "GET", "/v2/", headers=[("Authorization", BEARER)])
    assert token.status == 200
    assert b"UPSTREAM-ISSUED-TOKEN" in token.body
    lines = access_lines(caplog)
    assert len(lines) == 2
    assert lines[0].startswith(f"GET /auth/token 200 {len(token.body)} bytes ")
    assert lines[1].startswith("GET /v2/ 401 ")
    for line in lines:
        assert "?" not in line
        assert "repository:redis:pull" not in line
        assert "bob" not in line
    text = all_log_text(caplog)
    for secret in (PASSWORD, BASIC, "SECRET-BEARER-TOKEN", "UPSTREAM-ISSUED-TOKEN", "QUERY-SECRET"):
        assert secret not in text


async def test_refused_requests_are_logged_too(access_log: AccessLines) -> None:
    inner = Inner()
    answer = await call(AccessLog(Guard(inner, None)), "GET", "/v2/?" + "q" * (MAX_QUERY + 1))
    assert answer.status == 414
    [line] = access_log()
    assert line.startswith(f"GET /v2/ 414 {len(answer.body)} bytes ")
    assert "qqqq" not in line


async def test_errors_from_the_mirror_are_logged_with_their_status(
    access_log: AccessLines,
) -> None:
    async with logged_mirror() as asgi:
        answer = await call(asgi, "DELETE", "/v2/redis/manifests/latest")
    assert answer.status == 405
    [line] = access_log()
    assert line.startswith(f"DELETE /v2/redis/manifests/latest 405 {len(answer.body)} bytes ")


async def test_an_aborted_request_is_logged_and_reraised(
    access_log: AccessLines,
) -> None:

    async def broken(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"12345", "more_body": True})
        raise ConnectionResetError("client went away")

    with pytest.raises(ConnectionResetError):
        await call(AccessLog(broken), "GET", "/v2/redis/blobs/" + DIGEST)
    [line] = access_log()
    assert line.startswith(f"GET /v2/redis/blobs/{DIGEST} 200 5 bytes ")
    assert line.endswith("aborted")


@pytest.mark.parametrize(
    "path",
    [
        "/v2/x\nGET /v2/forged/manifests/latest 200 0 bytes cache=hit",
        "/v2/x\r\nforged",
        "/v2/x\x00nul",
        "/v2/x 404 0 bytes",
        "/v2/x\x1b[31mred\u2028next\x85line",
    ],
)
@pytest.mark.usefixtures("access_log")
async def test_access_log_lines_cannot_be_forged(
    caplog: pytest.LogCaptureFixture, path: str
) -> None:
    inner = Inner()
    await call(AccessLog(Guard(inner, None)), "GET", path)
    [record] = [r for r in caplog.records if r.name == "docxy.access"]
    line = record.getMessage()
    assert line.isprintable() and line.isascii()
    assert line.split(" ")[:3] == ["GET", line.split(" ")[1], "200"]
    assert line.split(" ")[1].startswith("/v2/x\\x")


async def test_access_log_escapes_the_method(access_log: AccessLines) -> None:
    await call(AccessLog(Inner()), "GET\nPUT", "/v2/")
    [line] = access_log()
    assert line.startswith("GET\\x0aPUT /v2/ 200 ")


async def test_non_http_scopes_pass_through() -> None:
    seen: list[str] = []

    async def lifespan_app(scope: Any, receive: Any, send: Any) -> None:
        seen.append(scope["type"])

    async def nothing() -> dict[str, Any]:
        raise AssertionError("not called")

    async def drop(message: Any) -> None:
        raise AssertionError("not called")

    await AccessLog(Guard(lifespan_app, PUBLIC))({"type": "lifespan"}, nothing, drop)  # type: ignore[arg-type]
    assert seen == ["lifespan"]
