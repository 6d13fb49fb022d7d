"""The status page: one report (``/status.json``) and its HTML rendering (``/status``).

The page is plain server-rendered HTML with its style inline: no script, font or image from
anywhere (mirrors run where the internet is filtered). It reloads itself every
``REFRESH_SECONDS`` and reads on a phone (one column, large figures).
"""

from __future__ import annotations

import math
import time
from html import escape
from typing import Any

from docxy.cli.cache import human_size
from docxy.core.stamps import utc_stamp
from docxy.http.health import health_report
from docxy.observe.metrics import OUTCOMES, SENT_SOURCES, timestamp
from docxy.observe.observer import Observer, Samples, total

REFRESH_SECONDS = 10
TOP_IMAGES = 10
#: Answers that cost the upstream no download: this replica's cache (a fill another request
#: started included), or the shared bucket.
FROM_CACHE = ("hit", "joined", "stale", "revalidated", "shared")


def status_report(observer: Observer) -> dict[str, Any]:
    """What ``/status.json`` answers and ``/status`` shows."""
    now = time.time()
    report: dict[str, Any] = dict(health_report(observer.state))
    samples = observer.samples()
    report["generated_at"] = utc_stamp(now)
    report["uptime_seconds"] = round(time.monotonic() - observer.started)
    sent = {
        source: int(total(samples, "docxy_sent_bytes_total", source=source))
        for source in SENT_SOURCES
    }
    served = sent["cache"] + sent["shared"] + sent["upstream"] + sent["passthrough"]
    report["traffic"] = {
        "requests": int(total(samples, "docxy_http_requests_total")),
        "errors_5xx": int(total(samples, "docxy_http_requests_total", status_class="5xx")),
        # answers the mirror cut short (the download behind them failed): the client retries
        "cut": int(total(samples, "docxy_http_requests_unfinished_total", outcome="cut")),
        "open_requests": int(total(samples, "docxy_open_requests")),
        "open_connections": _number(samples, "docxy_open_connections"),
        "sent_bytes": sent,
    }
    outcomes = {
        outcome: int(total(samples, "docxy_cache_requests_total", outcome=outcome))
        for outcome in OUTCOMES
    }
    asked = sum(outcomes.values())
    effect: dict[str, Any] = {
        "requests": outcomes,
        "hit_ratio": _ratio(sum(outcomes[o] for o in FROM_CACHE), asked),
        "byte_hit_ratio": _ratio(sent["cache"] + sent["shared"], served),
    }
    cache = report.get("cache")
    if isinstance(cache, dict):
        effect["coalesced_followers"] = int(total(samples, "docxy_cache_coalesced_followers_total"))
        effect["evictions"] = int(total(samples, "docxy_cache_evictions_total"))
        cache["fills_in_flight"] = int(total(samples, "docxy_cache_fills_in_flight"))
        cache["fill_bytes_in_flight"] = int(total(samples, "docxy_cache_fill_bytes_in_flight"))
        cache["reserved_bytes"] = int(total(samples, "docxy_cache_reserved_bytes"))
        cache.update(effect)
    else:
        report["cache"] = {"enabled": False, **effect}
    report["top_images"] = [
        {"image": image, "pulls": count} for image, count in observer.pulls.top(TOP_IMAGES)
    ]
    report["recent_errors"] = [event.as_dict() for event in observer.recent_errors()]
    return report


def _number(samples: Samples, name: str) -> int | None:
    value = total(samples, name)
    return None if math.isnan(value) else int(value)


def _ratio(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


# --- HTML -----------------------------------------------------------------------------------

STYLE = """
:root{color-scheme:light dark;--fg:#1b1f24;--muted:#5b6470;--card:#fff;--bg:#eef1f4;
--ok:#1a7f37;--bad:#c62828;--warn:#9a6700;--bar:#d0d7de;--fill:#2f6fdd}
@media (prefers-color-scheme:dark){:root{--fg:#e6edf3;--muted:#9aa5b1;--card:#161b22;
--bg:#0d1117;--bar:#30363d}}
*{box-sizing:border-box}
body{margin:0;padding:12px;background:var(--bg);color:var(--fg);
font:16px/1.4 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif}
main{max-width:760px;margin:0 auto}
h1{font-size:1.3rem;margin:4px 0 12px;display:flex;gap:8px;align-items:center;flex-wrap:wrap}
h2{font-size:1rem;margin:0 0 8px;color:var(--muted);text-transform:uppercase;letter-spacing:.04em;
display:flex;justify-content:space-between;align-items:center}
h2 .badge{text-transform:none;letter-spacing:0}
section{background:var(--card);border-radius:10px;padding:12px 14px;margin:0 0 12px;
box-shadow:0 1px 2px rgba(0,0,0,.08)}
.badge{font-size:.85rem;padding:2px 10px;border-radius:999px;color:#fff}
.ok{background:var(--ok)}.bad{background:var(--bad)}.warn{background:var(--warn)}
dl{display:grid;grid-template-columns:auto 1fr;gap:4px 12px;margin:0}
dt{color:var(--muted)}dd{margin:0;font-weight:600;overflow-wrap:anywhere}
.big{font-size:1.6rem;font-weight:700;margin:0}
.bar{height:10px;background:var(--bar);border-radius:5px;overflow:hidden;margin:6px 0 10px}
.bar>span{display:block;height:100%;min-width:3px;background:var(--fill)}
table{width:100%;border-collapse:collapse;font-size:.95rem}
td,th{text-align:left;padding:4px 0;border-bottom:1px solid var(--bar);vertical-align:top}
td.n,th.n{text-align:right;white-space:nowrap;padding-left:8px}
.when{color:var(--muted);font-size:.85rem}
.empty{color:var(--muted);margin:0}
footer{color:var(--muted);font-size:.8rem;text-align:center;margin:8px 0}
"""


def render_page(report: dict[str, Any]) -> str:
    """The status page for ``report`` (from :func:`status_report`); every value escaped."""
    status = str(report.get("status", "unknown"))
    sections = [
        _upstream(report.get("upstream", {})),
        *_other_upstreams(report.get("upstreams", {})),
        _cache(report.get("cache", {})),
        *_shared(report.get("shared")),
        _traffic(report.get("traffic", {})),
        _certificate(report.get("tls"), report.get("renewal")),
        _top_images(report.get("top_images", [])),
        _errors(report.get("recent_errors", [])),
    ]
    badge = "ok" if status == "ok" else "bad"
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        '<meta name=viewport content="width=device-width,initial-scale=1">'
        f'<meta http-equiv=refresh content="{REFRESH_SECONDS}">'
        f"<title>Docxy {escape(status)}</title><style>{STYLE}</style></head><body><main>"
        f'<h1>Docxy mirror <span id=status class="badge {badge}">{escape(status)}</span></h1>'
        + "".join(sections)
        + f"<footer>version {escape(str(report.get('version', '?')))} · "
        f"up {_duration(report.get('uptime_seconds'))} · "
        f"{escape(str(report.get('generated_at', '')))} · "
        f"refreshes every {REFRESH_SECONDS} s · "
        '<a href="/status.json">JSON</a> · <a href="/metrics">metrics</a></footer>'
        "</main></body></html>"
    )


def _section(ident: str, title: str, body: str, badge: str = "") -> str:
    return f"<section id={ident}><h2>{escape(title)}{badge}</h2>{body}</section>"


def _rows(rows: list[tuple[str, str]]) -> str:
    return "<dl>" + "".join(f"<dt>{escape(k)}</dt><dd>{escape(v)}</dd>" for k, v in rows) + "</dl>"


def _other_upstreams(upstreams: dict[str, Any]) -> list[str]:
    """A section per upstream beside ``[upstream]`` (the first section), by name."""
    others = [(n, u) for n, u in sorted(upstreams.items()) if n != "docker.io" and u]
    return [
        _upstream(upstream, f"upstream-{index}", f"Upstream {name}")
        for index, (name, upstream) in enumerate(others, start=1)
    ]


def _upstream(upstream: dict[str, Any], ident: str = "upstream", title: str = "Upstream") -> str:
    reachable = upstream.get("reachable")
    state = ("not tried yet", "warn")
    if reachable is False:
        state = ("unreachable", "bad")
    elif upstream.get("login") == "refused":  # answering, but the mirror's login refused
        state = ("login refused", "bad")
    elif upstream.get("healthy") is False:  # answering, but 429s or 5xx (or as no registry)
        state = ("rate limited" if upstream.get("rate_limited_until") else "failing", "bad")
    elif reachable:
        state = ("reachable", "ok")
    remaining = upstream.get("ratelimit_remaining")
    limit = upstream.get("ratelimit_limit")
    quota = "not reported" if remaining is None else str(remaining).split(";")[0]
    if remaining is not None and limit is not None:
        quota += f" of {str(limit).split(';')[0]}"
    rows = [
        ("registry", str(upstream.get("registry", "?"))),
        ("last answer", _when(upstream.get("last_ok"))),
        ("pulls left", quota),
    ]
    if upstream.get("last_error"):
        message = upstream.get("last_error_message") or ""
        rows.append(("last error", f"{_when(upstream['last_error'])}: {message}"))
    if upstream.get("rate_limited_until"):
        rows.append(("rate limited until", _when(upstream["rate_limited_until"])))
    elif upstream.get("last_rate_limited"):
        rows.append(("last rate limited", _when(upstream["last_rate_limited"])))
    if upstream.get("stale_served"):
        last = _when(upstream.get("last_stale"))
        rows.append(("served stale", f"{upstream['stale_served']} (last {last})"))
    badge = f'<span id={ident}-state class="badge {state[1]}">{state[0]}</span>'
    return _section(ident, title, _rows(rows), badge)


def _cache(cache: dict[str, Any]) -> str:
    rows = [
        ("hit ratio (requests)", _percent(cache.get("hit_ratio"))),
        ("hit ratio (bytes)", _percent(cache.get("byte_hit_ratio"))),
    ]
    asked = cache.get("requests", {})
    rows.append(
        (
            "hits · joined · misses · stale",
            " · ".join(str(asked.get(o, 0)) for o in ("hit", "joined", "miss", "stale")),
        )
    )
    if cache.get("enabled") is False:
        return _section("cache", "Cache", "<p class=big>off</p>" + _rows(rows))
    counted = cache.get("index_ready") is not False  # False: the index read at start
    blobs = str(cache.get("blobs", 0))
    rows += [
        ("blobs", blobs if counted else f"counting… ({blobs} found so far)"),
        ("fills in flight", str(cache.get("fills_in_flight", 0))),
        ("reserved by fills", human_size(int(cache.get("reserved_bytes", 0)))),
        ("being freed", human_size(int(cache.get("freeing_bytes", 0)))),
        ("coalesced followers", str(cache.get("coalesced_followers", 0))),
        ("evictions", str(cache.get("evictions", 0))),
    ]
    head = _cache_size(cache) if counted else _cache_counting(cache)
    return _section("cache", "Cache", head + _rows(rows))


def _cache_size(cache: dict[str, Any]) -> str:
    """The cache's size against its cap, figure and bar."""
    used, cap = int(cache.get("bytes", 0)), int(cache.get("max_size", 0)) or 1
    share = min(100.0, used * 100 / cap)
    empty = ";min-width:0" if used == 0 else ""
    return (
        f"<p class=big id=cache-size>{escape(human_size(used))} "
        f"<small>of {escape(human_size(cap))}</small></p>"
        f'<div class=bar title="{share:.1f}%"><span style="width:{share:.1f}%{empty}"></span></div>'
    )


def _cache_counting(cache: dict[str, Any]) -> str:
    """While the blob index is read at start: the blobs found so far are no size to show
    (each restart would show a cache near empty), so no figure and no bar."""
    cap = int(cache.get("max_size", 0)) or 1
    return f"<p class=big id=cache-size>counting… <small>of {escape(human_size(cap))}</small></p>"


COUNTED = ("hits", "misses", "corrupt")
UPLOADS = ("uploaded", "upload_skipped", "upload_failed")


def _shared(shared: object) -> list[str]:
    """The shared bucket (``[shared]``), where it is and how it is doing; none without it."""
    if not isinstance(shared, dict):
        return []
    said = str(shared.get("state", "not asked yet"))
    state = (said, {"reachable": "ok", "unreachable": "bad"}.get(said, "warn"))
    rows = [
        ("bucket", f"{shared.get('endpoint', '?')} {shared.get('bucket', '?')}"),
        ("last answer", _when(shared.get("last_ok"))),
        ("hits · misses · corrupt", " · ".join(str(shared.get(k, 0)) for k in COUNTED)),
        ("uploaded · skipped · failed", " · ".join(str(shared.get(k, 0)) for k in UPLOADS)),
        (
            "uploads waiting · dropped",
            f"{shared.get('uploads_waiting', 0)} · {shared.get('uploads_dropped', 0)}",
        ),
        ("errors", str(shared.get("errors", 0))),
    ]
    if shared.get("uploads") == "off":  # shared.uploads = 0: meant so, not a fault
        rows.insert(0, ("uploads", "off: a read-only replica (shared.uploads = 0)"))
    if shared.get("reason"):  # why it is degraded
        rows.insert(0, ("degraded", str(shared["reason"])))
    if shared.get("last_error"):  # kept once the store answers again: when says how old
        rows.append(("last error", f"{_when(shared.get('last_error_at'))}: {shared['last_error']}"))
    badge = f'<span id=shared-state class="badge {state[1]}">{state[0]}</span>'
    return [_section("shared", "Shared bucket", _rows(rows), badge)]


def _traffic(traffic: dict[str, Any]) -> str:
    sent = traffic.get("sent_bytes", {})
    rows = [
        ("requests", str(traffic.get("requests", 0))),
        ("open connections", _count(traffic.get("open_connections"))),
        ("requests in progress", str(traffic.get("open_requests", 0))),
        ("5xx answers", str(traffic.get("errors_5xx", 0))),
        ("answers cut (download failed)", str(traffic.get("cut", 0))),
        ("sent from cache", human_size(int(sent.get("cache", 0)))),
        ("sent from upstream", human_size(int(sent.get("upstream", 0)))),
        ("passed through", human_size(int(sent.get("passthrough", 0)))),
    ]
    if sent.get("shared"):  # a replica with [shared]: what the bucket spared the upstream
        rows.insert(6, ("sent from the shared bucket", human_size(int(sent["shared"]))))
    return _section("traffic", "Traffic since start", _rows(rows))


def _certificate(tls: object, renewal: object) -> str:
    rows: list[tuple[str, str]] = []
    if isinstance(tls, dict):
        if tls.get("served"):
            rows.append(("served", _served(tls)))
        if tls.get("warning"):  # docxy.tls.trust.refusal: clients refuse it now
            rows.append(("warning", str(tls["warning"])))
        if tls.get("hosts_warning"):  # docxy.tls.trust.hosts_refusal: by those names
            rows.append(("upstream host names", str(tls["hosts_warning"])))
        rows.append(("expires", _when(tls.get("not_after"))))
        waiting = tls.get("waiting")  # docxy.tls.context.ReloadableTLS._wait_for
        if tls.get("expires_soon") is True:  # docxy.tls.context.CertInfo.expires_soon
            if isinstance(waiting, dict):  # renewed: the new pair is not valid yet
                said = "expires soon; the next certificate is in place and waits for its start"
            else:
                said = "expires soon and has not been renewed: see the renewal"
            rows.append(("warning", said))
        rows.append(("subject", str(tls.get("subject", "?"))))
        if isinstance(waiting, dict):
            when = _when(waiting.get("not_before"))
            rows.append(("next certificate", f"serial {waiting.get('serial', '?')}, from {when}"))
    else:
        rows.append(("served", "no TLS listener"))
    if isinstance(renewal, dict):
        stuck = renewal.get("config_dir_unwritable")  # docxy.tls.certs.stranded_config_dir
        if stuck:  # neither certbot nor its status can write there
            # a sentence of its own, naming the setting and the trouble (not repeated here)
            rows.append(("renewer", str(stuck)))
        if "error" in renewal:
            rows.append(("renewal", str(renewal["error"])))
        else:
            outcome = "failed: " + str(renewal["last_error"]) if renewal.get("last_error") else "ok"
            if renewal.get("refused"):  # scheduler.main.hold: no run is scheduled
                rows.append(("renewer", f"settings refused: {renewal['refused']}"))
            rows.append(("last renewal", f"{_when(renewal.get('last_run'))}: {outcome}"))
            stop = renewal.get("interrupted")  # a one-off run stopped by a signal since
            if isinstance(stop, dict):
                said = f"{_when(stop.get('at'))}, by {stop.get('signal', '?')}"
                rows.append(("interrupted", f"one-off run stopped {said} (not counted)"))
            failures, since = renewal.get("failures"), renewal.get("failing_since")
            if isinstance(failures, int) and failures > 0:
                began = f" since {_when(since)}" if since else ""
                rows.append(("failing", f"{failures} run(s) in a row{began}"))
            next_run = renewal.get("next_run")
            rows.append(("next renewal", _when(next_run) if next_run else "not scheduled"))
    return _section("certificate", "Certificate", _rows(rows))


def _served(tls: dict[str, Any]) -> str:
    """``tls.served`` (:func:`docxy.tls.trust.served_kind`) in words."""
    served, domain = tls.get("served"), tls.get("domain")
    if served == "self-signed":
        return "self-signed"
    if served == "staging-ca":
        return "from Let's Encrypt's staging CA (untrusted)"
    if served == "other-name":
        names = ", ".join(str(name) for name in tls.get("sans") or []) or "no name"
        return f"for {names}, not {domain}"
    return "issued by a CA" + (f" for {domain}" if domain else "")


def _top_images(images: list[dict[str, Any]]) -> str:
    if not images:
        return _section("images", "Most pulled", "<p class=empty>No pulls yet.</p>")
    body = "".join(
        f"<tr><td>{escape(str(item['image']))}</td><td class=n>{int(item['pulls'])}</td></tr>"
        for item in images
    )
    head = "<tr><th>image</th><th class=n>pulls</th></tr>"
    return _section("images", "Most pulled", f"<table>{head}{body}</table>")


def _errors(errors: list[dict[str, Any]]) -> str:
    if not errors:
        return _section("errors", "Recent upstream errors", "<p class=empty>None.</p>")
    body = "".join(
        f"<tr><td><span class=when>{escape(_when(item.get('at')))}</span><br>"
        f"{escape(str(item.get('kind', '')))}: {escape(str(item.get('message', '')))}</td></tr>"
        for item in errors
    )
    return _section("errors", "Recent upstream errors", f"<table>{body}</table>")


def _when(value: object) -> str:
    """``2026-11-30T12:00:00Z`` → ``12:00:00Z (3 min ago)``; ``never`` for none."""
    stamp = timestamp(value)
    if stamp is None:
        return "never"
    delta = stamp - time.time()
    shown = utc_stamp(stamp).replace("T", " ")
    phrase = f"in {_duration(delta)}" if delta > 0 else f"{_duration(-delta)} ago"
    return f"{shown} ({phrase})"


def _duration(seconds: object) -> str:
    if not isinstance(seconds, int | float):
        return "?"
    seconds = int(seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds // size} {unit}"
    return f"{seconds} s"


def _count(value: object) -> str:
    return str(value) if isinstance(value, int) else "–"


def _percent(ratio: object) -> str:
    return "–" if not isinstance(ratio, int | float) else f"{ratio * 100:.1f}%"
