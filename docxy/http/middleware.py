"""ASGI layers around the app: request limits, plain-HTTP → HTTPS redirect, one access-log line.

They sit outside Quart so they see every request, including the ones they refuse, and so the
access log can count the bytes that really went out, after a streamed body ends.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from hypercorn.typing import ASGIFramework, ASGIReceiveCallable, ASGISendCallable, Scope

from docxy.core.errors import RegistryError, RequestTooLarge

log = logging.getLogger("docxy.access")

MAX_QUERY = 8 * 1024
MAX_PATH = 4 * 1024
# Served on plain HTTP too: the health check, and ACME HTTP-01 tokens (certbot needs port 80).
HTTPS_EXEMPT_PATHS = frozenset({"/health"})
HTTPS_EXEMPT_PREFIXES = ("/.well-known/acme-challenge/",)


async def _send_error(
    send: ASGISendCallable, error: RegistryError, extra: list[tuple[bytes, bytes]]
) -> None:
    status = error.status
    body = json.dumps(error.body()).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        *extra,
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


class UseHttps(RegistryError):
    status = 308
    code = "MOVED"


class Guard:
    """Refuses oversized request targets and redirects plain HTTP to HTTPS when TLS is on."""

    def __init__(self, app: ASGIFramework, https_url: str | None) -> None:
        self.app = app
        self.https_url = https_url

    async def __call__(
        self, scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable
    ) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if len(scope["query_string"]) > MAX_QUERY or len(scope["raw_path"] or b"") > MAX_PATH:
            await _send_error(send, RequestTooLarge("request target too long"), [])
            return
        path = scope["path"]
        if (
            self.https_url is not None
            and scope["scheme"] == "http"
            and path not in HTTPS_EXEMPT_PATHS
            and not path.startswith(HTTPS_EXEMPT_PREFIXES)
        ):
            target = self.https_url + (scope["raw_path"] or b"/").decode("latin-1")
            if scope["query_string"]:
                target += "?" + scope["query_string"].decode("latin-1")
            location = [(b"location", target.encode("latin-1"))]
            await _send_error(send, UseHttps("this mirror is served over HTTPS"), location)
            return
        await self.app(scope, receive, send)


class AccessLog:
    """One INFO line per request: method, path, status, bytes, cache, upstream and total time."""

    def __init__(self, app: ASGIFramework) -> None:
        self.app = app

    async def __call__(
        self, scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable
    ) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.monotonic()
        facts: dict[str, Any] = {}
        scope["docxy"] = facts  # type: ignore[typeddict-unknown-key]
        status = 0
        sent = 0

        async def counting_send(message: Any) -> None:
            nonlocal status, sent
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body":
                sent += len(message.get("body", b""))
            await send(message)

        outcome = "done"
        try:
            await self.app(scope, receive, counting_send)
        except BaseException:
            outcome = "aborted"
            raise
        finally:
            upstream_ms = facts.get("upstream_ms")
            log.info(
                "%s %s %s %d bytes cache=%s upstream=%s total=%.0fms %s",
                scope["method"],
                scope["path"],
                status,
                sent,
                facts.get("cache", "-"),
                "-" if upstream_ms is None else f"{upstream_ms:.0f}ms",
                (time.monotonic() - started) * 1000,
                outcome,
            )
