"""Review findings on the HTTP edge (sixth round): an answer passed through carried the
upstream's (or its CDN's) browser policy for its own origin, which a browser takes for the
mirror's: a Content-Security-Policy or X-Frame-Options of the upstream's, reports about the
mirror's origin sent to the upstream's collector (NEL, Report-To, Reporting-Endpoints, the
report-only policies), cross-origin isolation and permissions the mirror never chose. Each
fault is a test asserting the right behaviour; it was seen failing (strict xfail) before its
mend. In-process only: the app called as hypercorn calls it, over a mock upstream.
"""

from __future__ import annotations

import hashlib

import httpx
import pytest

from docxy.core.headers import response_headers
from tests.unit.fakes import reply
from tests.unit.test_routes import mirror

BLOB = b"abcdefghij" * 100
BLOB_DIGEST = "sha256:" + hashlib.sha256(BLOB).hexdigest()
COLLECTOR = "https://reports.registry.example/nel"

#: Browser policy an upstream or its CDN sets for its own origin: relayed, a browser applies
#: it to the mirror's origin (and reports on it to the upstream's collector).
BROWSER_POLICY = [
    ("Content-Security-Policy", "default-src 'none'; report-uri " + COLLECTOR),
    ("Content-Security-Policy-Report-Only", "default-src 'self'; report-to csp"),
    ("NEL", '{"report_to": "nel", "max_age": 86400, "include_subdomains": true}'),
    ("Report-To", f'{{"group": "nel", "max_age": 86400, "endpoints": [{{"url": "{COLLECTOR}"}}]}}'),
    ("Reporting-Endpoints", f'csp="{COLLECTOR}"'),
    ("X-Frame-Options", "DENY"),
    ("Permissions-Policy", "interest-cohort=()"),
    ("Feature-Policy", "camera 'none'"),
    ("Cross-Origin-Opener-Policy", "same-origin"),
    ("Cross-Origin-Opener-Policy-Report-Only", 'same-origin; report-to="csp"'),
    ("Cross-Origin-Embedder-Policy", "require-corp"),
    ("Cross-Origin-Embedder-Policy-Report-Only", 'require-corp; report-to="csp"'),
    ("Cross-Origin-Resource-Policy", "same-site"),
    ("Origin-Agent-Cluster", "?1"),
]
#: What a client needs of an answer passed through, and what says how to read its body.
KEPT = [
    ("Docker-Content-Digest", BLOB_DIGEST),
    ("ETag", f'"{BLOB_DIGEST}"'),
    ("Content-Type", "application/octet-stream"),
    ("X-Content-Type-Options", "nosniff"),  # this answer's own: read it as its type says
    ("Cache-Control", "max-age=60"),
    ("Content-Length", str(len(BLOB))),
]


def test_browser_policy_headers_are_not_relayed() -> None:
    assert response_headers([*BROWSER_POLICY, *KEPT]) == KEPT


def _with_browser_policy(request: httpx.Request) -> httpx.Response:
    if request.url.path == "/v2/":
        return reply(200, b"{}")
    return reply(200, BLOB, [*KEPT[:-1], *BROWSER_POLICY], length=True)


@pytest.mark.parametrize("method", ["GET", "HEAD"])
async def test_a_blob_passed_through_carries_no_upstream_browser_policy(method: str) -> None:
    async with mirror(_with_browser_policy) as m:
        answer = await m.raw(method, f"/v2/x/blobs/{BLOB_DIGEST}")
    assert answer.status == 200
    assert answer.body == (BLOB if method == "GET" else b"")
    relayed = [name for name, _ in BROWSER_POLICY if name in answer.headers]
    assert relayed == []
    for name, value in KEPT:
        assert answer.headers[name] == value
