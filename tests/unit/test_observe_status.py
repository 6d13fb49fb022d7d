"""The status page's HTML: self-contained, escaped, and readable with nothing to show."""

from __future__ import annotations

import re
from typing import Any

from docxy.observe.status import REFRESH_SECONDS, render_page

FULL: dict[str, Any] = {
    "status": "ok",
    "version": "0.1.0",
    "generated_at": "2026-11-30T12:00:00Z",
    "uptime_seconds": 7200,
    "upstream": {
        "registry": "https://registry-1.docker.io",
        "reachable": True,
        "last_ok": "2026-11-30T11:59:00Z",
        "ratelimit_remaining": "76;w=21600",
        "ratelimit_limit": "100;w=21600",
    },
    "cache": {
        "blobs": 3,
        "bytes": 3 * 1024**3,
        "max_size": 20 * 1024**3,
        "fills_in_flight": 1,
        "reserved_bytes": 512 * 1024**2,
        "freeing_bytes": 3 * 1024**2,
        "requests": {"hit": 9, "miss": 1, "stale": 0},
        "hit_ratio": 0.9,
        "byte_hit_ratio": 0.5,
        "coalesced_followers": 4,
        "evictions": 0,
    },
    "traffic": {"requests": 10, "open_requests": 1, "errors_5xx": 0, "sent_bytes": {}},
    "tls": {"not_after": "2027-02-28T10:00:00+00:00", "days_left": 90.0, "subject": "CN=m"},
    "renewal": {"last_run": "2026-11-30T10:00:00Z", "last_error": None, "next_run": None},
    "top_images": [{"image": "library/redis:7", "pulls": 12}],
    "recent_errors": [{"at": "2026-11-30T11:00:00Z", "kind": "timeout", "message": "slow"}],
}


def test_the_page_is_self_contained_and_refreshes_itself() -> None:
    page = render_page(FULL)
    assert f'<meta http-equiv=refresh content="{REFRESH_SECONDS}">' in page
    assert "width=device-width" in page
    assert "<script" not in page
    # Nothing loaded from anywhere: no src attributes, no remote stylesheet or font.
    assert not re.search(r"\bsrc=|<link|@import|url\(", page)
    assert not re.search(r'href="?https?:', page)


def test_the_page_shows_the_figures() -> None:
    page = render_page(FULL)
    assert "512.0 MiB" in page  # reserved by fills in flight
    assert "3.0 MiB" in page  # removed files being freed, still counted under the cap
    for text in ("3.0 GiB", "20.0 GiB", "90.0%", "76 of 100", "library/redis:7", "slow"):
        assert text in page, text
    assert "2027-02-28 10:00:00Z (in " in page  # the certificate's expiry, and how soon


def test_every_value_is_escaped() -> None:
    evil = "<img src=x onerror=alert(1)>"
    report = dict(FULL, status=evil, top_images=[{"image": evil, "pulls": 1}])
    report["recent_errors"] = [{"at": None, "kind": evil, "message": evil}]
    report["upstream"] = dict(
        FULL["upstream"], registry=evil, last_error="x", last_error_message=evil
    )
    page = render_page(report)
    assert "<img" not in page
    assert "&lt;img src=x onerror=alert(1)&gt;" in page


def test_an_empty_report_still_renders() -> None:
    page = render_page({})
    assert "No pulls yet." in page
    assert "not tried yet" in page
    assert "None." in page


def test_every_other_upstream_has_a_section() -> None:
    upstreams = {
        "docker.io": FULL["upstream"],
        "ghcr.io": {"registry": "https://ghcr.io", "reachable": False, "last_error_message": "x"},
        "<b>.test": {"registry": "<i>", "reachable": None},
    }
    page = render_page(dict(FULL, upstreams=upstreams))
    assert page.count("<section id=upstream") == 3  # [upstream] once, then the two others
    assert '<h2>Upstream ghcr.io<span id=upstream-2-state class="badge bad">unreachable' in page
    assert "<b>" not in page and "&lt;b&gt;.test" in page


def test_a_renewal_failing_for_a_while_says_since_when() -> None:
    renewal = {
        "last_run": "2026-11-30T10:00:00Z",
        "last_error": "certbot renew failed: the CA is down",
        "failures": 5,
        "failing_since": "2026-11-27T22:00:00Z",
        "next_run": None,
    }
    page = render_page(dict(FULL, renewal=renewal))
    assert "5 run(s) in a row since 2026-11-27 22:00:00Z (" in page
    assert "run(s) in a row" not in render_page(FULL)  # nothing failing, nothing said


def test_the_mirrors_rate_limit_says_until_when_then_when_it_was() -> None:
    limited = {"registry": "r", "reachable": True, "rate_limited_until": "2999-01-01T00:00:00Z"}
    limited["last_rate_limited"] = "2026-11-30T11:00:00Z"
    page = render_page({"upstream": limited})
    assert "rate limited until" in page and "2999-01-01 00:00:00Z (in " in page
    over = {**limited, "rate_limited_until": None}
    page = render_page({"upstream": over})
    assert "rate limited until" not in page
    assert "last rate limited" in page and "2026-11-30 11:00:00Z (" in page


def test_a_certificate_near_its_end_is_called_out() -> None:
    """The page showed the expiry date of a certificate 5 days from its end like any other:
    nothing said renewals had been failing for weeks."""
    tls = {"not_after": "2026-12-05T10:00:00+00:00", "days_left": 5.0, "expires_soon": True}
    page = render_page(dict(FULL, status="degraded", tls=tls))
    assert "not been renewed" in page
    assert "not been renewed" not in render_page(FULL)
