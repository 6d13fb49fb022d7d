"""Serving the app with hypercorn: listeners, TLS with a live-reloadable context, signals."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import signal
import socket
import ssl
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from hypercorn.asyncio import serve
from hypercorn.config import Config as HypercornConfig
from hypercorn.config import Sockets

from docxy.access.gate import refuse_plain_http, warn_unnamed_proxy
from docxy.config import Config
from docxy.core.errors import ConfigError
from docxy.edge import connections, framing, h2c
from docxy.edge.admission import Admission
from docxy.heap import tune_malloc
from docxy.http.app import create_app
from docxy.http.drain import CUT_MARGIN, Drain
from docxy.http.middleware import AccessLog, Guard
from docxy.http.rest import TrimAtRest
from docxy.http.state import MirrorState, mirror_state
from docxy.observe import Observer, create_admin_app, serve_admin
from docxy.tasks import cancel_all, spawn
from docxy.tls.certs import public_renewal, renewal_status
from docxy.upstream.settings import SECTION
from docxy.upstream.startup import warn_about_upstreams

if TYPE_CHECKING:
    from docxy.tls.context import ReloadableTLS

log = logging.getLogger(__name__)

CERT_WATCH_INTERVAL = 30.0


class _HypercornConfig(HypercornConfig):
    """Listening sockets opened once, before the app starts (:meth:`create_sockets`); the TLS
    listener's are served plain to hypercorn, the edge doing each handshake with the newest
    certificate (``docxy.edge.connections.TLSListeners``)."""

    def __init__(self, tls: ReloadableTLS | None) -> None:
        super().__init__()
        self._tls = tls
        self._sockets: Sockets | None = None
        self._opened: list[socket.socket] = []
        #: bind address → "key: ... (source)" words for an error naming the setting
        self.bind_keys: dict[str, tuple[str, str]] = {}
        #: the connection cap and stall timeout (docxy.edge.connections); None: hypercorn's own
        self.edge: connections.ConnectionGuard | None = None

    @property
    def ssl_enabled(self) -> bool:
        return self._tls is not None

    def create_ssl_context(self) -> ssl.SSLContext | None:
        if self._tls is None or self.edge is not None:
            return None  # the edge does each handshake, counted, with the newest certificate
        return self._tls.context  # (without the edge, reloads would not reach new handshakes)

    def create_sockets(self) -> Sockets:
        """Bind every listener (once); one that cannot bind is a :class:`ConfigError` naming
        its setting, so the mirror exits 2 with one line instead of a traceback."""
        if self._sockets is None:
            try:
                self._sockets = super().create_sockets()
            except ConfigError:
                for sock in self._opened:  # the listeners bound before the one that failed
                    sock.close()
                raise
            if self.edge is not None and self._tls is not None:
                tls = self._tls
                self.edge.tls = connections.TLSListeners.of(
                    lambda: tls.context, self._sockets.secure_sockets, self.keep_alive_timeout
                )
        return self._sockets

    def _create_sockets(
        self, binds: list[str], type_: int = socket.SOCK_STREAM
    ) -> list[socket.socket]:
        sockets: list[socket.socket] = []
        try:
            for bind in binds:
                sockets.append(self._listen_socket(bind, type_))
        except ConfigError:
            for sock in sockets:
                sock.close()
            raise
        self._opened += sockets
        return sockets

    def _listen_socket(self, bind: str, type_: int) -> socket.socket:
        """One socket as hypercorn makes it for ``HOST:PORT``, closed again if it cannot bind."""
        key, source = self.bind_keys.get(bind, ("server.listen", "default"))
        host, _, port = bind.rpartition(":")
        host = host.strip("[]")
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock: socket.socket | None = None
        try:
            sock = connections.Listener(family, type_)  # EAFNOSUPPORT: a kernel without IPv6
            if type_ == socket.SOCK_STREAM:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if host == "::":  # both families whatever net.ipv6.bindv6only says (IPv4 mapped)
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            sock.bind((host, int(port)))
            if type_ == socket.SOCK_STREAM:
                # Listening now, not at hypercorn's start: with SO_REUSEADDR Linux lets two
                # sockets bind one port while neither listens (server.listen and tls_listen on
                # the same port, or a wildcard beside an address), and the second's listen()
                # was then an OSError traceback after the app had started.
                sock.listen(self.backlog)
            sock.setblocking(False)
            sock.set_inheritable(True)
        except OSError as exc:
            if sock is not None:
                sock.close()
            reason = exc.strerror or str(exc)
            raise ConfigError(f"{key}: cannot listen on {bind}: {reason} ({source})") from None
        return sock


def load_tls(config: Config) -> ReloadableTLS | None:
    """The TLS context for ``server.tls_listen``; a bad pair is a config error (exit 2)."""
    if config.server.tls_listen is None:
        return None
    from docxy.tls.context import (
        SELF_SIGNED_DAYS,
        CertError,
        ReloadableTLS,
        SelfSignedPair,
        ServedBootstrap,
    )

    cert, key = config.tls.cert_path, config.tls.key_path
    host = config.certs.domain or _public_host(config.server.public_url)
    if cert is not None and key is not None:
        from docxy.tls.recover import finish_install

        finish_install(cert, key)  # a renewer's install cut short between its two renames
    own: SelfSignedPair | ServedBootstrap | None = None  # the mirror's own, renewed while it runs
    if cert is None or key is None:
        own = SelfSignedPair(config.cache.dir.parent / "docxy-tls", host, SELF_SIGNED_DAYS)
        with _unwritable("cache.dir", config, f"the bootstrap certificate in {own.dir}"):
            cert, key = own.kept()
        _warn_bootstrap(host, cert)
    elif config.certs.domain is not None:
        # Until the first issuance: the renewer obtains the certificate through this mirror's
        # webroot and installs it at these paths (the watcher then switches over); meanwhile a
        # pair of the mirror's own stands in there, for this domain, renewed like the one above.
        own = ServedBootstrap(cert, key, host, SELF_SIGNED_DAYS)
        with _unwritable("tls.cert_path", config, f"a bootstrap certificate at {cert}"):
            made = own.kept()  # not over the renewer's install, nor any pair not the mirror's
        if made:
            _warn_bootstrap(host, cert)
    client_ca = None
    if config.auth.client_certs:
        from docxy.access import peer
        from docxy.access.clientca import ClientCA

        ca = ClientCA(config.auth.dir)
        with _unwritable("auth.dir", config, f"the client CA in {config.auth.dir}"):
            ca.ensure()
        client_ca = ca.cert_path
        peer.install()
    try:
        # The renewer's certificate is expected at the configured paths; the own pair is kept
        # self-signed on purpose (docxy.tls.trust).
        domain = None if isinstance(own, SelfSignedPair) else config.certs.domain
        return ReloadableTLS(Path(cert), Path(key), client_ca, own, domain, _routed_hosts(config))
    except CertError as exc:
        raise ConfigError(
            f"tls.cert_path/tls.key_path: {exc} ({config.sources['tls.cert_path']})"
        ) from exc


def _routed_hosts(config: Config) -> dict[str, tuple[str, ...]]:
    """Each upstream's ``hosts`` by its setting: names clients reach the mirror by over TLS,
    which the served certificate must name too (``docxy.tls.trust.uncovered``)."""
    return {f"{SECTION}.{u.name}.hosts": u.hosts for u in config.upstreams if u.hosts}


def _public_host(public_url: str) -> str:
    """The host clients reach the mirror at, which its own certificate must name (an address
    as its SAN writes it back: ``2001:db8::7``, so the pair is kept at the next start)."""
    host = urlsplit(public_url).hostname or "localhost"
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return host


@contextmanager
def _unwritable(key: str, config: Config, what: str) -> Iterator[None]:
    """An OSError writing ``what`` becomes a :class:`ConfigError` naming ``key`` (exit 2 with
    one line, as for a cache directory the mirror may not write), not a traceback."""
    try:
        yield
    except OSError as exc:
        where = f": {exc.filename}" if exc.filename else ""
        source = config.sources.get(key, "default")
        raise ConfigError(
            f"{key}: cannot write {what}: {exc.strerror or exc}{where} ({source})"
        ) from None


def _warn_bootstrap(host: str, cert: Path) -> None:
    log.warning(
        "TLS: no certificate yet; serving a self-signed bootstrap certificate for %s (%s). "
        "Clients will not trust it until a real one is installed there (certs.domain with the "
        "renewer, or tls.cert_path/tls.key_path).",
        host,
        cert,
    )


def hypercorn_config(config: Config, tls: ReloadableTLS | None) -> _HypercornConfig:
    hc = _HypercornConfig(tls)
    if tls is not None and config.server.tls_listen is not None:
        hc.bind = [str(config.server.tls_listen)]
        hc.insecure_bind = [str(config.server.listen)]
    else:
        hc.bind = [str(config.server.listen)]
    for key in ("server.listen", "server.tls_listen"):
        listener = getattr(config.server, key.partition(".")[2])
        if listener is not None:
            hc.bind_keys[str(listener)] = (key, config.sources.get(key, "default"))
    hc.alpn_protocols = ["http/1.1"]  # Docker clients never use h2 with a mirror
    hc.accesslog = None
    hc.errorlog = logging.getLogger("hypercorn.error")
    hc.graceful_timeout = 10
    hc.h11_max_incomplete_size = 16 * 1024  # request head; larger is a 431 from h11
    limits = config.limits
    hc.keep_alive_timeout = limits.idle_timeout  # also bounds a slow request head
    # TLS handshakes are the edge's, each once its connection is counted and bounded by
    # idle_timeout (docxy.edge.connections.TLSListeners); asyncio's server does none, and
    # refuses a timeout for one.
    hc.ssl_handshake_timeout = None  # type: ignore[assignment]
    hc.read_timeout = None  # would cut long downloads (docxy.edge.connections)
    hc.backlog = limits.backlog or 100
    # h2c: each stream is a request on a connection the connection cap counts once; 0: h2c is
    # refused altogether (docxy.edge.h2c, installed by run())
    hc.h2_max_concurrent_streams = max(limits.h2_max_streams, 1)
    fd_limit = connections.raise_fd_limit()
    cap = connections.connection_cap(limits.max_connections, fd_limit)
    hc.edge = connections.ConnectionGuard(
        cap if limits.max_connections else 1 << 62,
        limits.send_timeout,
        per_client=limits.connections_per_client,
        min_send_rate=limits.send_min_rate,
        trusted=config.server.trusted_proxies,
        exempt=limits.exempt,
    )
    return hc


def register_health(state: MirrorState, config: Config, tls: ReloadableTLS | None) -> None:
    """The ``tls`` and ``renewal`` parts of ``/status.json``, and of the public ``/health``
    without what names the server's files (the certificate's path, reload and certbot errors,
    the refused settings): an ``open`` mirror with no ``access.allow`` shows it to anyone."""
    health, public = (
        state.extras.setdefault("health", {}),
        state.extras.setdefault("health_public", {}),
    )
    if tls is not None:
        from docxy.tls.context import public_status  # loaded already, with tls

        health["tls"], public["tls"] = tls.status, public_status
    renewal = renewal_provider(config)
    if renewal is not None:
        health["renewal"], public["renewal"] = renewal, public_renewal


async def run(config: Config) -> None:
    refuse_plain_http(config)  # before anything listens
    tune_malloc()
    tls = load_tls(config)
    hc = hypercorn_config(config, tls)
    hc.create_sockets()  # before anything starts: a listener that cannot bind stops here
    app = create_app(config)
    state = mirror_state(app)
    register_health(state, config, tls)
    https_url = config.server.public_url if tls is not None else None
    observer = Observer(state)
    observer.attach(app)
    admission = Admission(app, config, state.access)
    if hc.edge is not None:
        observer.refusers.append(hc.edge)
        edge = hc.edge
        observer.evicted = lambda: edge.evicted
    observer.refusers.append(admission)
    drain = Drain(framing.Framing(Guard(admission, https_url, admission.upstreams)))
    asgi = TrimAtRest(AccessLog(drain, observer))
    asgi.arm()  # the imports' garbage, once serving
    connections.install()
    h2c.install(refuse=config.limits.h2_max_streams == 0)
    framing.install()  # what h11 refuses itself is answered with the registry's JSON error
    stop = asyncio.Event()

    def stopping() -> None:
        if not stop.is_set():  # hypercorn's drain starts; the requests left are cut before it ends
            stop.set()
            drain.stop(hc.graceful_timeout - CUT_MARGIN)
            if hc.edge is not None:
                hc.edge.stop(hc.graceful_timeout)

    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stopping)
    loop.add_signal_handler(signal.SIGINT, stopping)
    if tls is not None:
        loop.add_signal_handler(signal.SIGHUP, lambda: _reload(tls))
        spawn("tls-watch", tls.watch(CERT_WATCH_INTERVAL))
    else:
        loop.add_signal_handler(signal.SIGHUP, _nothing_to_reload)
    listeners = [f"http://{config.server.listen}"]
    if config.server.tls_listen is not None:
        listeners.append(f"https://{config.server.tls_listen}")
    log.info(
        "docxy serving on %s, public URL %s, upstream %s",
        ", ".join(listeners),
        config.server.public_url,
        config.upstream.registry,
    )
    warn_about_upstreams(config)
    warn_unnamed_proxy(config)  # every mode: its relayed logins are limited by address too
    if config.server.admin_listen is not None:
        admin = create_admin_app(observer, config.server.admin_listen, config.server.admin_hosts)
        spawn("admin-listener", serve_admin(admin, config.server.admin_listen, stop.wait))
    try:
        await serve(asgi, hc, shutdown_trigger=stop.wait)
    finally:
        await cancel_all()


def renewal_provider(config: Config) -> Callable[[], dict[str, object] | None] | None:
    """/health's ``renewal``: the renewer's status file (in ``certs.config_dir``; none set:
    nothing). Without ``certs.domain`` the renewer renews nothing (it idles, writing no
    status), so nothing is said, but for a refusal of its own settings (``refused``: it holds,
    ``scheduler.main.hold``), shown as with a domain (/health ``degraded``): it was in the
    renewer's log alone. Only from a file that says it was written without a domain too
    (``domain``: null): one a held renewer wrote with a domain stayed there once the domain
    was gone (the appliance then starts no renewer to drop it), and /health stayed
    ``degraded`` for ever. A file from before ``domain`` was written is not shown either:
    a renewer without a domain that still holds writes it anew at its start."""
    renewal_dir = config.certs.config_dir
    if renewal_dir is None:
        return None
    if config.certs.domain is not None:
        return lambda: renewal_status(renewal_dir)

    def refusal_only() -> dict[str, object] | None:
        status = renewal_status(renewal_dir)
        if not status.get("refused") or "domain" not in status or status["domain"] is not None:
            return None
        # No certbot runs without a domain: whether it could write there is not a trouble.
        status.pop("config_dir_unwritable", None)
        return status

    return refusal_only


def _nothing_to_reload() -> None:
    log.info("SIGHUP: no TLS listener, no certificate to reload")


def _reload(tls: ReloadableTLS) -> None:
    from docxy.tls.context import CertError

    try:
        changed = tls.reload()
    except CertError as exc:
        log.error("TLS reload failed, still serving the previous certificate: %s", exc)
        return
    waiting = tls.waiting
    if waiting is not None:  # said (a warning) by the reload
        log.info(
            "TLS reload: the new certificate (serial %s) waits for its notBefore", waiting.serial
        )
        return
    log.info("TLS reload: %s", "new certificate loaded" if changed else "certificate unchanged")
