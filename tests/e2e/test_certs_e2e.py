"""Certificates end to end: real certbot against a real ACME server (pebble) on loopback.

    pebble                `lab.acme`: ACME directory, with pebble-challtestsrv as its DNS;
                          validates HTTP-01 on the mirror's plain-HTTP port
    certbot               --webroot into the directory the mirror serves
    the mirror            `python -m docxy serve` (tests 1, 3, 4) or, for the streaming test, a
                          tiny ASGI app on hypercorn with the same ReloadableTLS (test 2)

Pebble's root CA is new at every start (`Pebble.root`), trusted by the clients here. certbot
trusts pebble's own HTTPS certificate (`Pebble.tls_ca`) through REQUESTS_CA_BUNDLE, which
docxy sets from --ca-bundle / certs.ca_bundle.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509
from hypercorn.asyncio import serve
from hypercorn.config import Config as HypercornConfig

from docxy.cli.main import config_from_args
from docxy.config import load_config
from docxy.edge import connections
from docxy.http.server import hypercorn_config
from docxy.tls import certs
from docxy.tls.context import ReloadableTLS, self_signed
from lab.acme import DOMAIN, EMAIL, Pebble, running_pebble
from lab.mirror import Mirror, launch_mirror, stop_mirror
from lab.ports import LOOPBACK, accepts, free_port
from lab.processes import pid_alive
from tests.e2e.waiting import poll
from tests.unavailable import need_binary

pytestmark = pytest.mark.e2e

REPO_ROOT = Path(__file__).resolve().parents[2]
DEAD_UPSTREAM = "http://127.0.0.1:9"  # the certificate tests never pull
DEADLINE = 60.0
STARTSECS = 30.0  # scripts/supervisord.conf: a program is RUNNING after that long


# --- what a client sees -------------------------------------------------------------------------


def served_cert(port: int, root: Path | None = None) -> x509.Certificate:
    """The certificate a new handshake gets; verified against `root` for DOMAIN when given."""
    if root is None:
        ctx = ssl._create_unverified_context()  # only to read a serial off the bootstrap cert
    else:
        ctx = ssl.create_default_context(cafile=root)
    with (
        socket.create_connection((LOOPBACK, port), timeout=10) as sock,
        ctx.wrap_socket(sock, server_hostname=DOMAIN) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der)


def serial_of(path: Path) -> int:
    return x509.load_pem_x509_certificate(path.read_bytes()).serial_number


def https_health(port: int, root: Path) -> dict[str, Any]:
    """GET /health over HTTPS, verifying the certificate for DOMAIN against `root`."""
    with httpx.Client(verify=ssl.create_default_context(cafile=root), timeout=10) as client:
        request = client.build_request(
            "GET", f"https://{LOOPBACK}:{port}/health", extensions={"sni_hostname": DOMAIN}
        )
        response = client.send(request)
    assert response.status_code == 200
    data: dict[str, Any] = response.json()
    return data


@dataclass
class Site:
    """Paths shared by the mirror, certbot and the renewer (one volume in the container)."""

    root: Path

    @property
    def cert(self) -> Path:
        return self.root / "tls" / "cert.pem"

    @property
    def key(self) -> Path:
        return self.root / "tls" / "key.pem"

    @property
    def webroot(self) -> Path:
        return self.root / "webroot"

    @property
    def config_dir(self) -> Path:
        return self.root / "letsencrypt"

    def bootstrap(self) -> None:
        self_signed(self.cert.parent, DOMAIN, cert_name="cert.pem", key_name="key.pem")

    def renewer_env(self, pebble: Pebble) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("DOCXY_")}
        return env | {
            "PYTHONPATH": str(REPO_ROOT),
            "DOCXY_CERTS_DOMAIN": DOMAIN,
            "DOCXY_CERTS_EMAIL": EMAIL,
            "DOCXY_CERTS_WEBROOT": str(self.webroot),
            "DOCXY_CERTS_CONFIG_DIR": str(self.config_dir),
            "DOCXY_CERTS_ACME_SERVER": pebble.directory,
            "DOCXY_CERTS_CA_BUNDLE": str(pebble.tls_ca),
            "DOCXY_TLS_CERT_PATH": str(self.cert),
            "DOCXY_TLS_KEY_PATH": str(self.key),
        }

    def status(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads((self.config_dir / "status.json").read_text())
        return data


def run_renewer_once(site: Site, pebble: Pebble, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "scheduler", "--once", *args],
        env=site.renewer_env(pebble),
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


@contextlib.contextmanager
def mirror_with_tls(site: Site, *, domain: bool = False) -> Iterator[tuple[Mirror, int]]:
    """The mirror on the bootstrap pair at the site's paths; with `domain`, certs.domain too
    (the appliance's: it then expects a CA's certificate for DOMAIN there)."""
    site.bootstrap()
    tls_port = free_port()
    mirror = launch_mirror(
        DEAD_UPSTREAM,
        site.root / "mirror",
        [
            "--tls-listen",
            f"{LOOPBACK}:{tls_port}",
            "--cert",
            str(site.cert),
            "--key",
            str(site.key),
        ],
        {"DOCXY_CERTS_WEBROOT": str(site.webroot)}
        | ({"DOCXY_CERTS_DOMAIN": DOMAIN} if domain else {}),
    )
    try:
        yield mirror, tls_port
    finally:
        stop_mirror(mirror)


def docxy_certs(*argv: str) -> int:
    """`docxy certs ...` as the CLI runs it: the registered handler with the CLI's loader."""
    parser = argparse.ArgumentParser(prog="docxy")
    certs.register_cli(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["certs", *argv])
    code: int = args.handler(args, config_from_args)
    return code


def obtain_through(site: Site, pebble: Pebble, mirror: Mirror, tls_port: int) -> int:
    """`docxy certs obtain` through the mirror's webroot, SIGHUP; the served serial after."""
    code = docxy_certs(
        "obtain",
        *("--domain", DOMAIN, "--email", EMAIL, "--acme-server", pebble.directory),
        *("--ca-bundle", str(pebble.tls_ca), "--webroot", str(site.webroot)),
        *("--config-dir", str(site.config_dir), "--cert", str(site.cert), "--key", str(site.key)),
    )
    assert code == 0, pebble.logs()
    live = site.config_dir / "live" / DOMAIN
    assert site.cert.read_bytes() == (live / "fullchain.pem").read_bytes()
    mirror.proc.send_signal(signal.SIGHUP)
    serial = serial_of(site.cert)
    poll(
        lambda: served_cert(tls_port).serial_number == serial,
        DEADLINE,
        "mirror serves the new cert",
    )
    return serial


# --- 1: obtain through the running mirror's webroot and serve it --------------------------------


def test_obtain_through_the_mirror_webroot_and_serve_it(tmp_path: Path) -> None:
    """Also what /health says of each: the bootstrap certificate, which every pull refuses
    (it said nothing of it), then the issued one. ``status`` is not looked at: the upstream
    here is dead, which degrades it anyway (the unit tests, test_tls_trust, look at it)."""
    site = Site(tmp_path)
    with mirror_with_tls(site, domain=True) as (mirror, tls_port):
        bootstrap = served_cert(tls_port).serial_number
        before = httpx.get(f"{mirror.url}/health", timeout=10).json()["tls"]
        with running_pebble(tmp_path / "pebble", mirror.port) as pebble:
            serial = obtain_through(site, pebble, mirror, tls_port)
            leaf = served_cert(tls_port, pebble.root)  # chain and name verified
            health = https_health(tls_port, pebble.root)
    assert serial != bootstrap and leaf.serial_number == serial
    assert "Pebble Intermediate CA" in leaf.issuer.rfc4514_string()
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == [DOMAIN]
    assert health["tls"]["serial"] == format(serial, "x")
    assert health["tls"]["sans"] == [DOMAIN]
    assert 0 < health["tls"]["days_left"] < 1  # pebble's one-hour certificate
    assert health["tls"]["reload_failing_since"] is None
    assert (before["served"], before["domain"]) == ("self-signed", DOMAIN)
    assert before["clients_refuse"] is True  # the public /health: why, not the sentence
    assert (health["tls"]["served"], health["tls"]["clients_refuse"]) == ("ca-issued", False)
    # pebble fetched the token from the mirror's plain-HTTP listener.
    assert "/.well-known/acme-challenge/" in mirror.log_text()


# --- 2: renewal by the scheduler under load, on hypercorn with the same ReloadableTLS -----------

BIG_CHUNK = 256 * 1024
BIG_CHUNKS = 128  # 32 MiB: far more than the socket buffers hold, so the server must keep writing


def big_chunk(index: int) -> bytes:
    return index.to_bytes(4, "big") * (BIG_CHUNK // 4)


def tiny_app(webroot: Path) -> Callable[..., Any]:
    """ASGI: the ACME webroot, /ping, and /big streamed in chunks."""

    async def app(
        scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]
    ) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        path: str = scope["path"]
        if path.startswith("/.well-known/acme-challenge/"):
            token = webroot / ".well-known" / "acme-challenge" / path.rsplit("/", 1)[1]
            body, status = (token.read_bytes(), 200) if token.is_file() else (b"", 404)
            await respond(send, status, body)
        elif path == "/big":
            length = str(BIG_CHUNK * BIG_CHUNKS).encode()
            headers = [(b"content-length", length)]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            for index in range(BIG_CHUNKS):
                await send(
                    {"type": "http.response.body", "body": big_chunk(index), "more_body": True}
                )
            await send({"type": "http.response.body", "body": b""})
        else:
            await respond(send, 200, b"pong")

    return app


async def respond(send: Callable[..., Any], status: int, body: bytes) -> None:
    headers = [(b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def mirror_tls_config(tls: ReloadableTLS, http_port: int, https_port: int) -> HypercornConfig:
    """hypercorn set up as the mirror sets it up: its edge does each TLS handshake with the
    newest certificate (``docxy.edge.connections``)."""
    connections.install()
    listen = {"server.listen": f"{LOOPBACK}:{http_port}"}
    settings = {**listen, "server.tls_listen": f"{LOOPBACK}:{https_port}"}
    config = hypercorn_config(load_config(settings, environ={}), tls)
    config.accesslog = None
    return config


async def open_tls(
    port: int, ctx: ssl.SSLContext, path: str
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, int]:
    reader, writer = await asyncio.open_connection(LOOPBACK, port, ssl=ctx, server_hostname=DOMAIN)
    der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: {DOMAIN}\r\nConnection: close\r\n\r\n".encode())
    await writer.drain()
    return reader, writer, x509.load_der_x509_certificate(der).serial_number


async def request_loop(
    port: int, ctx: ssl.SSLContext, done: asyncio.Event, seen: set[int]
) -> tuple[int, list[str]]:
    """New connection, GET /ping, until `done`: (answered, errors); serials served go to `seen`."""
    answered, errors = 0, []
    deadline = asyncio.get_running_loop().time() + 240
    while not done.is_set() and asyncio.get_running_loop().time() < deadline:
        try:
            reader, writer, serial = await open_tls(port, ctx, "/ping")
            reply = await asyncio.wait_for(reader.read(), 10)
            writer.close()
            assert reply.startswith(b"HTTP/1.1 200") and reply.endswith(b"pong"), reply[:200]
            seen.add(serial)
            answered += 1
        except (OSError, ssl.SSLError, AssertionError, TimeoutError) as exc:
            errors.append(repr(exc))
    return answered, errors


async def wait_async(predicate: Callable[[], object], what: str, timeout: float = DEADLINE) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        assert loop.time() < deadline, f"not before the deadline: {what}"
        await asyncio.sleep(0.05)


async def renewer_once(site: Site, pebble: Pebble) -> str:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "scheduler",
        "--once",
        env=site.renewer_env(pebble),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 180)
    text = out.decode(errors="replace")
    assert proc.returncode == 0, text
    return text


async def test_scheduler_renewal_swaps_cert_with_zero_errors_and_intact_download(
    tmp_path: Path,
) -> None:
    site = Site(tmp_path)
    site.bootstrap()
    tls = ReloadableTLS(site.cert, site.key)
    http_port, https_port = free_port(), free_port()
    config = mirror_tls_config(tls, http_port, https_port)
    with running_pebble(tmp_path / "pebble", http_port) as pebble:
        stop = asyncio.Event()
        async with asyncio.TaskGroup() as tg:
            serving = serve(tiny_app(site.webroot), config, shutdown_trigger=stop.wait)
            server = tg.create_task(serving, name="hypercorn")
            watcher = tg.create_task(tls.watch(0.05), name="tls-watch")
            try:
                await wait_async(lambda: accepts(https_port), "hypercorn listening")
                # First issuance: no lineage yet, so the renewer obtains through the webroot.
                out = await renewer_once(site, pebble)
                assert "new certificate installed; mirror told by file watch" in out
                first = serial_of(site.cert)
                await wait_async(lambda: tls.status()["serial"] == format(first, "x"), "first cert")
                ctx = ssl.create_default_context(cafile=pebble.root)

                # A download that starts on the first certificate...
                reader, writer, download_serial = await open_tls(https_port, ctx, "/big")
                head = await reader.readuntil(b"\r\n\r\n")
                assert head.startswith(b"HTTP/1.1 200")
                body = hashlib.sha256()
                got = 0
                part = await reader.readexactly(BIG_CHUNK)
                body.update(part)
                got += len(part)
                # ...and requests on new connections all through the renewal.
                done, seen = asyncio.Event(), set[int]()
                loop_task = tg.create_task(
                    request_loop(https_port, ctx, done, seen), name="request-loop"
                )
                await wait_async(lambda: loop_task.done() or seen, "the loop is answered")

                out = await renewer_once(site, pebble)
                assert "new certificate installed" in out
                second = serial_of(site.cert)
                assert second != first
                # The loop goes on until its own new handshakes get the new certificate.
                await wait_async(lambda: loop_task.done() or second in seen, "loop sees new cert")
                done.set()
                answered, errors = await loop_task

                while chunk := await reader.read(1 << 20):
                    body.update(chunk)
                    got += len(chunk)
                writer.close()
            finally:
                stop.set()
                watcher.cancel()
        assert server.done()
    expected = hashlib.sha256(b"".join(big_chunk(i) for i in range(BIG_CHUNKS))).hexdigest()
    assert download_serial == first
    assert got == BIG_CHUNK * BIG_CHUNKS and body.hexdigest() == expected
    assert errors == []
    assert answered > 0 and seen == {first, second}
    assert tls.status()["last_error"] is None


def test_scheduler_renews_the_running_mirror_with_zero_errors(tmp_path: Path) -> None:
    """The same renewal against `docxy serve`: installed, SIGHUP through a pidfile, switched."""
    site = Site(tmp_path)
    with mirror_with_tls(site) as (mirror, tls_port):
        with running_pebble(tmp_path / "pebble", mirror.port) as pebble:
            first = obtain_through(site, pebble, mirror, tls_port)
            pidfile = tmp_path / "docxy.pid"
            pidfile.write_text(f"{mirror.proc.pid}\n")
            stop, seen, errors = threading.Event(), set[int](), list[str]()
            loop = threading.Thread(
                target=https_loop, args=(tls_port, pebble.root, stop, seen, errors)
            )
            loop.start()
            try:
                poll(lambda: seen, DEADLINE, "the loop is answered")
                result = run_renewer_once(site, pebble, "--pidfile", str(pidfile))
                assert result.returncode == 0, result.stderr
                assert f"mirror told by SIGHUP to pid {mirror.proc.pid}" in result.stderr
                second = serial_of(site.cert)
                poll(lambda: second in seen, DEADLINE, "new handshakes get the renewed certificate")
            finally:
                stop.set()
                loop.join(timeout=30)
            health = https_health(tls_port, pebble.root)
    assert second != first and seen == {first, second}
    assert errors == []
    assert health["tls"]["serial"] == format(second, "x")
    assert health["tls"]["reload_failing_since"] is None


def https_loop(
    port: int, root: Path, stop: threading.Event, seen: set[int], errors: list[str]
) -> None:
    """Handshake and GET /health over new connections until `stop` (bounded by DEADLINE * 4)."""
    deadline = time.monotonic() + DEADLINE * 4
    while not stop.is_set() and time.monotonic() < deadline:
        try:
            seen.add(served_cert(port, root).serial_number)
            https_health(port, root)
        except (OSError, ssl.SSLError, httpx.HTTPError, AssertionError) as exc:
            errors.append(repr(exc))


# --- 3: broken renewals leave the old certificate served and say why ----------------------------


def test_broken_renewals_keep_the_old_cert_and_say_why(tmp_path: Path) -> None:
    site = Site(tmp_path)
    with mirror_with_tls(site) as (mirror, tls_port):
        with running_pebble(tmp_path / "pebble", mirror.port) as pebble:
            serial = obtain_through(site, pebble, mirror, tls_port)
            good = (site.cert.read_bytes(), site.key.read_bytes())

            # The ACME server is down: certbot's reason in the renewer's status, nothing changed.
            pebble.stop()
            result = run_renewer_once(site, pebble)
            assert result.returncode == 1, result.stderr
            status = site.status()
            assert "certbot renew failed" in status["last_error"]
            assert (
                "Connection refused" in status["last_error"]
                or "Max retries" in status["last_error"]
            )
            assert status["failures"] == 1
            assert status["certificate"]["serial"] == format(serial, "x")
            assert (site.cert.read_bytes(), site.key.read_bytes()) == good
            assert served_cert(tls_port, pebble.root).serial_number == serial

            # A key that does not match dropped in place: refused, the old pair keeps serving.
            _, stray_key = self_signed(tmp_path / "stray", DOMAIN)
            site.key.write_bytes(stray_key.read_bytes())
            mirror.proc.send_signal(signal.SIGHUP)
            poll(
                lambda: https_health(tls_port, pebble.root)["tls"]["reload_failing_since"],
                DEADLINE,
                "reload failing in /health",
            )
            tls_health = https_health(tls_port, pebble.root)["tls"]
            # the public /health says since when, not the error naming the key file: the
            # log (and the admin listener's /status.json) say that
            assert "last_error" not in tls_health and str(site.key) not in str(tls_health)
            said = mirror.log_text()
            assert "does not match" in said and str(site.key) in said
            assert tls_health["serial"] == format(serial, "x")
            assert served_cert(tls_port, pebble.root).serial_number == serial
            assert mirror.proc.poll() is None


# --- 4: under supervisord, a killed mirror or renewer comes back --------------------------------


def supervisorctl(conf: Path, env: Mapping[str, str], *args: str) -> str:
    proc = subprocess.run(
        ["supervisorctl", "-c", str(conf), *args],
        env=dict(env),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    return proc.stdout.strip()


def test_supervisor_restarts_mirror_and_renewer_and_stops_cleanly(tmp_path: Path) -> None:
    need_binary("supervisord")
    need_binary("supervisorctl")
    need_binary("certbot")
    conf = REPO_ROOT / "scripts" / "supervisord.conf"
    port = free_port()
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("DOCXY_")}
    env |= {
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}",
        "PYTHONPATH": str(REPO_ROOT),
        "DOCXY_RUN_DIR": str(run_dir),
        "DOCXY_SERVER_LISTEN": f"{LOOPBACK}:{port}",
        "DOCXY_UPSTREAM_REGISTRY": DEAD_UPSTREAM,
        "DOCXY_CACHE_DIR": str(tmp_path / "cache"),
        "DOCXY_CERTS_CONFIG_DIR": str(tmp_path / "letsencrypt"),
        "DOCXY_CERTS_WEBROOT": str(tmp_path / "webroot"),
        # What scripts/entrypoint.sh exports: where supervisor-fatal.sh is, and the renewer on
        # (without a domain it idles and never runs certbot; with one it would ask an ACME CA).
        "DOCXY_SCRIPTS_DIR": str(REPO_ROOT / "scripts"),
        "DOCXY_SUPERVISOR_RENEWER": "true",
    }
    # O_APPEND, like the pipe a container runtime gives: children reopen /dev/stdout.
    log = (tmp_path / "supervisord.log").open("ab")
    sup = subprocess.Popen(
        ["supervisord", "-c", str(conf)], env=env, stdout=log, stderr=subprocess.STDOUT
    )

    seen: set[int] = set()  # every child pid, so none outlives the test

    def pid(program: str) -> int:
        text = supervisorctl(conf, env, "pid", program)
        number = int(text) if text.isdigit() else 0
        seen.add(number)
        return number

    def healthy() -> bool:
        with contextlib.suppress(httpx.TransportError):
            return httpx.get(f"http://{LOOPBACK}:{port}/health", timeout=2).status_code == 200
        return False

    try:
        poll(lambda: healthy() and pid("docxy") and pid("scheduler"), DEADLINE, "both programs up")
        output_path = tmp_path / "supervisord.log"
        poll(lambda: "certbot is not run" in output_path.read_text(), DEADLINE, "renewer idle")
        for program in ("docxy", "scheduler"):
            old = pid(program)
            os.kill(old, signal.SIGKILL)

            def restarted(program: str = program, old: int = old) -> bool:
                running = "RUNNING" in supervisorctl(conf, env, "status", program)
                return running and pid(program) not in (0, old)

            # RUNNING once it has stayed up startsecs (30 s in supervisord.conf).
            poll(restarted, DEADLINE + STARTSECS, f"{program} restarted")
        poll(healthy, DEADLINE, "mirror healthy again")
        sup.send_signal(signal.SIGTERM)
        assert sup.wait(timeout=60) == 0
    finally:
        if sup.poll() is None:
            sup.terminate()  # supervisord stops its children on SIGTERM; SIGKILL would orphan them
            try:
                sup.wait(timeout=60)
            except subprocess.TimeoutExpired:
                sup.kill()
                sup.wait(timeout=10)
        log.close()
        left = [child for child in seen - {0} if pid_alive(child)]
        for child in left:
            os.kill(child, signal.SIGKILL)
    assert left == [], "children outlived supervisord"
    output = (tmp_path / "supervisord.log").read_text(errors="replace")
    # Both programs' own log lines reach supervisord's stdout.
    assert "docxy serving on" in output
    assert "no certs.domain set" in output
    assert "stopped: docxy (exit status 0)" in output
    assert "stopped: scheduler (exit status 0)" in output
