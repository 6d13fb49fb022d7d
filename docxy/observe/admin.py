"""The admin listener: ``/metrics``, ``/status`` and ``/status.json`` on their own port.

A separate small Quart app served by its own hypercorn bind (``server.admin_listen``, loopback
by default), so the public listener cannot serve them whatever its routes. The routes live in
``blueprint``: when access control lands, the main app registers the same blueprint behind an
admin-user check (the seam is :func:`observer_of`, the one place the routes find their data).
"""

from __future__ import annotations

import ipaddress
import json
import logging
import socket
from collections.abc import Awaitable, Callable, Collection

from hypercorn.asyncio import serve
from hypercorn.config import Config as HypercornConfig
from prometheus_client.exposition import choose_encoder
from quart import Blueprint, Quart, Response, current_app, redirect, request
from werkzeug.exceptions import HTTPException

from docxy.config import HostPort
from docxy.core.errors import Denied
from docxy.http.middleware import Guard
from docxy.observe.observer import Observer
from docxy.observe.status import render_page, status_report

log = logging.getLogger(__name__)

blueprint = Blueprint("observe", __name__)
EXTENSION = "docxy.observe"


def observer_of(app: Quart | None = None) -> Observer:
    observer = (app or current_app).extensions[EXTENSION]
    assert isinstance(observer, Observer)
    return observer


def _no_store(response: Response) -> Response:
    response.headers["Cache-Control"] = "no-store"
    return response


@blueprint.route("/metrics", methods=["GET"])
async def metrics() -> Response:
    # Text format 0.0.4 by default; OpenMetrics or text 1.0.0 when the scraper asks for it.
    # On the event loop, never in a worker thread: the collectors read the blob store, the
    # upstreams' health and counters, which only the loop may touch (as /status.json does).
    # The one slow read, the kernel's socket tables, is done first in a worker thread.
    observer = observer_of()
    await observer.refresh()
    try:
        encode, content_type = choose_encoder(request.headers.get("Accept", ""))
    except (TypeError, ValueError):  # prometheus_client's parse of an odd ``version=``
        encode, content_type = choose_encoder("")  # the text format, as with no Accept
    body = encode(observer.registry)
    return _no_store(Response(body, content_type=content_type))


@blueprint.route("/status.json", methods=["GET"])
async def status_json() -> Response:
    observer = observer_of()
    await observer.refresh()
    body = json.dumps(status_report(observer), indent=1)
    return _no_store(Response(body, content_type="application/json"))


@blueprint.route("/status", methods=["GET"])
async def status_page() -> Response:
    observer = observer_of()
    await observer.refresh()
    page = render_page(status_report(observer))
    return _no_store(Response(page, content_type="text/html; charset=utf-8"))


@blueprint.route("/", methods=["GET"])
async def index() -> Response:
    return redirect("/status")  # type: ignore[return-value]


def _host_name(host: str) -> str:
    """``Host`` without its port, lower case; ``[::1]:9180`` → ``::1``."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1:].partition("]")[0]
    return host.rpartition(":")[0] if host.count(":") == 1 else host


def _is_address(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def host_allowed(host: str, listen: HostPort | None, names: Collection[str] = ()) -> bool:
    """Whether the admin listener answers a request carrying ``Host: host``.

    DNS rebinding (a page on evil.example re-resolving its name to 127.0.0.1 to read an
    ``ssh -L`` tunnel) always arrives with the attacker's DNS name in ``Host``: an address
    literal cannot be rebound, so any address is answered (the LAN address of a listener on
    0.0.0.0 too), and of names only ``localhost``, the listen address's own name and the
    operator's ``names`` (``server.admin_hosts``, lower case: a Compose service name a
    scraper uses), each exactly.
    """
    name = _host_name(host)
    if _is_address(name) or name == "localhost" or name in names:
        return True
    return listen is not None and name == listen.host.lower()


def create_admin_app(
    observer: Observer, listen: HostPort | None = None, names: Collection[str] = ()
) -> Quart:
    # No static folder: Quart's default one, for an app named after no module, is ./static of
    # the directory the mirror was started in, and /static/<path> served any file there.
    app = Quart("docxy-admin", static_folder=None)
    app.config["PROVIDE_AUTOMATIC_OPTIONS"] = False
    app.extensions[EXTENSION] = observer
    app.register_blueprint(blueprint)

    @app.before_request
    async def known_host() -> Response | None:
        host = request.headers.get("Host", "")
        if host_allowed(host, listen, names):
            return None
        error = Denied(
            "the admin listener answers only addresses, localhost, its listen name and "
            "the names in server.admin_hosts"
        )
        return Response(error.encoded(), status=error.status, content_type="application/json")

    @app.errorhandler(HTTPException)
    async def http_error(error: HTTPException) -> Response:
        body = json.dumps({"error": error.name, "paths": ["/metrics", "/status", "/status.json"]})
        return Response(body, status=error.code or 400, content_type="application/json")

    # The main listener's guard first: a Host werkzeug cannot read (a bare 500 and a
    # traceback a request, raised before the app's handlers), an oversized or foreign target.
    app.asgi_app = Guard(app.asgi_app, None)  # type: ignore[method-assign]
    return app


def _listening(listen: HostPort) -> socket.socket | OSError:
    """A socket listening on ``listen`` now, which hypercorn then serves (``fd://``): bound
    here, it cannot be taken between a check and hypercorn's own bind (the mirror's own
    listener on that port was, and the admin task crashed with a traceback). ``[::]`` takes
    IPv4 too, as hypercorn's own socket did."""
    family = socket.AF_INET6 if ":" in listen.host else socket.AF_INET
    both = listen.host == "::" and socket.has_dualstack_ipv6()
    try:
        return socket.create_server((listen.host, listen.port), family=family, dualstack_ipv6=both)
    except OSError as exc:
        return exc


async def serve_admin(
    app: Quart, listen: HostPort, shutdown_trigger: Callable[[], Awaitable[object]]
) -> None:
    """Serve the admin app until ``shutdown_trigger``; a port in use is logged, not fatal:
    the mirror's job is serving pulls, and its metrics are not worth refusing them for."""
    config = HypercornConfig()
    config.accesslog = None
    config.errorlog = logging.getLogger("hypercorn.error")
    config.graceful_timeout = 2
    listening = _listening(listen)  # before hypercorn starts the app, if the port is taken
    if isinstance(listening, OSError):
        log.error(
            "admin listener: cannot listen on %s (%s); /metrics and /status are not served "
            "(set server.admin_listen to another HOST:PORT, or empty to turn it off)",
            listen,
            listening.strerror or listening,
        )
        return
    config.bind = [f"fd://{listening.detach()}"]  # hypercorn's now: it closes it at the end
    log.info("admin listener (metrics, status page) on http://%s", listen)
    await serve(app, config, shutdown_trigger=shutdown_trigger)
