"""Review of ``docxy warm`` over HTTPS (f967ec4): the hints of its TLS failures, real
handshakes on 127.0.0.9x with the mirror's own listener context, as in ``test_warm_tls``."""

from __future__ import annotations

import json
import socket
import ssl
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from docxy.access.clientca import ClientCA
from docxy.tls.context import ReloadableTLS, self_signed
from lab.certs import issue
from lab.clients.background import Background
from lab.ports import bound_socket
from tests.unit.test_warm_tls import _ip_name, _served, _write, serving, warm

pytestmark = pytest.mark.usefixtures("clean_docxy_env")


# --- an untrusted certificate: --ca-file is the hint only where a CA is what is missing -----


def test_a_certificate_for_another_name_is_not_a_ca_file_problem(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Its CA given and trusted, the certificate is for another address: warm says so and does
    not send the user to --ca-file, which they gave (before: "--ca-file PEM adds the CA")."""
    root = issue("LAN mirror CA", ca=True)
    leaf = issue("mirror.lan", root, names=_ip_name("127.0.0.90"))
    ca_file = _write(tmp_path / "ca.pem", root.cert_pem)
    with serving("127.0.0.91", _served(tmp_path, leaf)) as (url, server):
        code, _, err = warm(capsys, url, "--ca-file", ca_file)
    assert code == 1 and server.paths == []
    assert "IP address mismatch" in err, err
    assert "--ca-file" not in err, err
    assert "not for 127.0.0.91" in err and "--mirror" in err, err


def test_an_expired_certificate_is_not_a_ca_file_problem(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A certificate of the trusted CA that has expired: the mirror's certificate is to be
    renewed (or this machine's clock is wrong); --ca-file cannot help."""
    host = "127.0.0.92"
    root = issue("LAN mirror CA", ca=True)
    leaf = issue("mirror.lan", root, names=_ip_name(host), days=-0.001)  # ended 86 s ago
    ca_file = _write(tmp_path / "ca.pem", root.cert_pem)
    with serving(host, _served(tmp_path, leaf)) as (url, server):
        code, _, err = warm(capsys, url, "--ca-file", ca_file)
    assert code == 1 and server.paths == []
    assert "certificate has expired" in err, err
    assert "--ca-file" not in err, err
    assert "renew" in err and "clock" in err, err


def test_a_certificate_of_an_unknown_issuer_still_names_ca_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The case --ca-file is for keeps its hint: the mirror's self-signed certificate."""
    host = "127.0.0.93"
    cert, key = self_signed(tmp_path / "docxy-tls", host)
    with serving(host, ReloadableTLS(cert, key).context) as (url, _):
        code, _, err = warm(capsys, url)
    assert code == 1
    assert "does not trust" in err and "--ca-file PEM adds the CA" in err, err


# --- users mode: a mirror that asked for a client certificate and got none answers 401 -------


class _UsersModeHandler(BaseHTTPRequestHandler):
    """The mirror in ``auth.mode = users``: every ``/v2/`` request without a token is ``401``
    with its Bearer challenge, and its token service refuses an anonymous ask."""

    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        scheme = "https" if isinstance(self.connection, ssl.SSLSocket) else "http"
        here = self.headers.get("Host", "")
        if self.path.startswith("/token"):
            body = json.dumps(
                {"errors": [{"code": "UNAUTHORIZED", "message": "authentication required"}]}
            ).encode()
        else:
            body = b'{"errors": [{"code": "UNAUTHORIZED"}]}'
        self.send_response(401)
        if not self.path.startswith("/token"):
            realm = f'Bearer realm="{scheme}://{here}/token",service="docxy"'
            self.send_header("WWW-Authenticate", realm)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        return


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(
        self, sock: socket.socket, context: ssl.SSLContext | None, handler: type[Any]
    ) -> None:
        super().__init__(sock.getsockname(), handler, bind_and_activate=False)
        self.socket.close()
        self.socket = sock
        self.context = context

    def finish_request(self, request: Any, client_address: Any) -> None:
        request.settimeout(5.0)
        if self.context is None:
            super().finish_request(request, client_address)
            return
        with self.context.wrap_socket(request, server_side=True) as tls:
            super().finish_request(tls, client_address)


@contextmanager
def users_mode(
    host: str, context: ssl.SSLContext | None, handler: type[Any] = _UsersModeHandler
) -> Iterator[str]:
    """The users-mode mirror (or ``handler``) on ``host``, over TLS with ``context`` (None:
    plain HTTP)."""
    sock = bound_socket(host)
    port = sock.getsockname()[1]
    sock.listen(8)
    with Background(_Server(sock, context, handler)):
        yield f"{'http' if context is None else 'https'}://{host}:{port}"


def test_a_401_over_https_names_client_cert_too(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``auth.mode = users`` with ``auth.client_certs``: the mirror asks for a certificate
    without requiring one, so a client without one gets through the handshake and is then
    ``401``. The hint named only --username and --password-stdin; a kit is the other way in."""
    host = "127.0.0.94"
    cert, key = self_signed(tmp_path / "docxy-tls", host)
    ca = ClientCA(tmp_path / "auth")
    ca.issue("warm-box", tmp_path / "kit")  # the CA is made with its first kit
    context = ReloadableTLS(cert, key, client_ca=ca.cert_path).context
    with users_mode(host, context) as url:
        code, _, err = warm(capsys, url, "--ca-file", str(cert))
    assert code == 1
    assert "unauthorized" in err and "authentication required" in err, err
    assert "--username and --password-stdin" in err, err
    assert "--client-cert" in err, err


def test_a_401_with_a_client_certificate_given_names_that_one_not_the_option(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The kit passed the handshake (the mirror's CA issued it) and the mirror still answered
    401: telling the user to give --client-cert, which they did, was wrong; the hint names the
    certificate presented instead."""
    host = "127.0.0.94"
    cert, key = self_signed(tmp_path / "docxy-tls", host)
    ca = ClientCA(tmp_path / "auth")
    ca.issue("warm-box", tmp_path / "kit")
    context = ReloadableTLS(cert, key, client_ca=ca.cert_path).context
    with users_mode(host, context) as url:
        code, _, err = warm(
            capsys, url, "--ca-file", str(cert), "--client-cert", str(tmp_path / "kit")
        )
    assert code == 1
    assert "unauthorized" in err, err
    assert "--client-cert DIR" not in err, err
    assert f"the client certificate warm presented ({tmp_path / 'kit' / 'client.cert'})" in err


def test_a_401_over_plain_http_does_not_name_client_cert(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Without TLS there is no client certificate to give: the hint stays as it was."""
    with users_mode("127.0.0.95", None) as url:
        code, _, err = warm(capsys, url)
    assert code == 1
    assert "--username and --password-stdin" in err, err
    assert "--client-cert" not in err, err


# --- SSL_CERT_FILE / SSL_CERT_DIR (httpx's trust_env): honoured, and a bad one is exit 2 -----


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("SSL_CERT_FILE", "{tmp}/nowhere.pem", "SSL_CERT_FILE={tmp}/nowhere.pem: cannot read it"),
        ("SSL_CERT_FILE", "{tmp}/not.pem", "SSL_CERT_FILE={tmp}/not.pem: no usable PEM"),
        ("SSL_CERT_DIR", "{tmp}/nowhere", "SSL_CERT_DIR={tmp}/nowhere: not a directory"),
    ],
)
def test_a_bad_ssl_cert_variable_is_a_usage_error(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    variable: str,
    value: str,
    message: str,
) -> None:
    """httpx's context reads SSL_CERT_FILE (else SSL_CERT_DIR) in certifi's place: one that
    cannot be used was a traceback (FileNotFoundError, ssl.SSLError) before any connection,
    or (a missing directory) no CA at all and '--ca-file PEM adds the CA' for every mirror."""
    _write(tmp_path / "not.pem", b"not a certificate\n")
    for name in ("SSL_CERT_FILE", "SSL_CERT_DIR"):  # a machine's own (this one sets both)
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv(variable, value.format(tmp=tmp_path))
    code, out, err = warm(capsys, "https://127.0.0.96:9")
    assert code == 2, err
    assert message.format(tmp=tmp_path) in err, err
    assert err.startswith("docxy warm: ") and err.count("\n") == 1, err
    assert "Traceback" not in err and out == ""


def test_ssl_cert_file_stands_for_certifi(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """As the README says: SSL_CERT_FILE's CAs are trusted in certifi's place."""
    host = "127.0.0.97"
    root = issue("LAN mirror CA", ca=True)
    leaf = issue("mirror.lan", root, names=_ip_name(host))
    monkeypatch.setenv("SSL_CERT_FILE", _write(tmp_path / "bundle.pem", root.cert_pem))
    with serving(host, _served(tmp_path, leaf)) as (url, _):
        code, out, err = warm(capsys, url)
    assert code == 0, err


# --- a refused handshake: what was refused, and a handshake failure that is not about it ------


def _no_shared_cipher(tmp_path: Path, host: str) -> tuple[Path, ssl.SSLContext]:
    """A TLS 1.2 server whose only cipher suite its EC key cannot serve: a handshake failure
    alert for every client, certificate or none."""
    cert, key = self_signed(tmp_path / "docxy-tls", host)
    context = ReloadableTLS(cert, key).context
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers("ECDHE-RSA-AES128-GCM-SHA256")
    return cert, context


def test_a_handshake_failure_may_be_no_shared_cipher(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """TLS 1.2's handshake_failure alert is also what a server sharing no cipher suite (or
    version) with warm sends: the message says so beside the client certificate, and, given
    one, does not ask for one (before: 'give one: --client-cert', with one given)."""
    host = "127.0.0.98"
    ca = ClientCA(tmp_path / "auth")
    ca.issue("warm-box", tmp_path / "kit")
    cert, context = _no_shared_cipher(tmp_path, host)
    with serving(host, context) as (url, server):
        code, _, err = warm(capsys, url, "--ca-file", str(cert))
        assert code == 1 and server.paths == []
        assert "(sslv3 alert handshake failure)" in err, err
        assert "cipher" in err and "--client-cert" in err, err

        kit = str(tmp_path / "kit")
        code, _, err = warm(capsys, url, "--ca-file", str(cert), "--client-cert", kit)
        assert code == 1 and server.paths == []
        assert "cipher" in err and "give one" not in err, err


def test_a_client_certificate_refused_is_named_not_asked_for(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A kit of another mirror's CA presented: warm says the certificate it presented (which
    one) was refused, not 'give one: --client-cert' (before, to a user who gave one)."""
    host = "127.0.0.99"
    ca = ClientCA(tmp_path / "auth")
    ca.issue("warm-box", tmp_path / "kit")
    ClientCA(tmp_path / "other-auth").issue("stranger", tmp_path / "other-kit")
    cert, key = self_signed(tmp_path / "docxy-tls", host)
    context = ReloadableTLS(cert, key, client_ca=ca.cert_path).context
    other = tmp_path / "other-kit"
    with serving(host, context) as (url, server):
        code, _, err = warm(capsys, url, "--ca-file", str(cert), "--client-cert", str(other))
    assert code == 1 and server.paths == []
    assert "(tlsv1 alert unknown ca)" in err, err
    assert "give one" not in err, err
    assert f"the client certificate warm presented ({other / 'client.cert'})" in err, err


# --- --client-cert naming nothing there -------------------------------------------------------


def test_a_client_cert_path_that_is_not_there_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--client-cert DIR`` with a mistyped directory: warm says nothing is there (before:
    '--client-cert CERT and --client-key KEY go together', as if a file had been given)."""
    code, out, err = warm(capsys, "https://127.0.0.96:9", "--client-cert", f"{tmp_path}/kti")
    assert code == 2
    assert f"--client-cert {tmp_path}/kti: cannot read it (No such file or directory)" in err, err
    assert err.count("\n") == 1 and "Traceback" not in err and out == ""


# --- https:// to a port that speaks plain HTTP --------------------------------------------------


def test_https_to_a_plain_http_port_says_it_answers_without_tls(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A mirror listening without TLS named with https://: its answer to the TLS hello is plain
    HTTP ('wrong version number'). Not a client-certificate problem, and the mirror is running
    there: warm says it does not speak TLS there (before: 'is docxy serve running there?')."""
    with users_mode("127.0.0.95", None) as url:
        code, _, err = warm(capsys, url.replace("http://", "https://"))
    assert code == 1
    assert "--client-cert" not in err and "is docxy serve running" not in err, err
    assert "not TLS" in err and url in err, err


# --- the client certificate goes to any server on warm's way that asks (README says so) -------


def test_the_client_certificate_goes_to_a_server_the_mirror_redirects_to(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """One TLS context for every connection: a server the mirror redirects warm to (a CDN, a
    token realm on another host) that asks for a client certificate gets it (the certificate,
    never the key). Pinned because the README says so; not a fault."""
    mirror_host, other_host = "127.0.0.90", "127.0.0.91"
    ca = ClientCA(tmp_path / "auth")
    ca.issue("warm-box", tmp_path / "kit")
    other_cert, other_key = self_signed(tmp_path / "other-tls", other_host)
    mirror_cert, mirror_key = self_signed(tmp_path / "mirror-tls", mirror_host)
    both = _write(tmp_path / "both.pem", other_cert.read_bytes() + mirror_cert.read_bytes())
    asking = ReloadableTLS(other_cert, other_key, client_ca=ca.cert_path).context
    with serving(other_host, asking) as (other_url, other):

        class Redirect(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                self.send_response(307)
                self.send_header("Location", other_url + self.path)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                return

        plain = ReloadableTLS(mirror_cert, mirror_key).context
        with users_mode(mirror_host, plain, Redirect) as url:
            code, _, err = warm(
                capsys, url, "--ca-file", both, "--client-cert", str(tmp_path / "kit")
            )
    assert code == 0, err
    presented = other.presented[-1]
    assert presented is not None and ca.client_of(presented) == "warm-box"
