"""``docxy warm`` over HTTPS: ``--ca-file`` for a mirror whose certificate a private CA issued
(or its own self-signed one), ``--client-cert``/``--client-key`` for a mirror that takes only
clients with a certificate from its CA, the same verify flags on every Python, and clear
messages (exit 2 for a file warm cannot use, exit 1 naming the option for a refused handshake).

Every handshake is a real one: a small registry serving one image over TLS on 127.0.0.9x, a
port below 10000, with the mirror's own listener context (``ReloadableTLS``); ``docxy warm``
runs as from the command line (``main``).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import socket
import ssl
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from docxy.access.clientca import ClientCA
from docxy.cli.main import main
from docxy.cli.warmtls import mirror_ssl_context
from docxy.tls.context import ReloadableTLS, self_signed
from docxy.upstream.client import upstream_ssl_context
from lab.certs import Issued, issue
from lab.clients.background import Background
from lab.ports import bound_socket

pytestmark = pytest.mark.usefixtures("clean_docxy_env")

TIMEOUT = 5.0
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
STRICT_MESSAGE = "Missing Authority Key Identifier"


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


CONFIG = json.dumps({"architecture": "amd64", "os": "linux"}).encode()
LAYER = b"a layer of the image warm fetches over TLS"
MANIFEST = json.dumps(
    {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "x", "digest": sha(CONFIG), "size": len(CONFIG)},
        "layers": [{"mediaType": "x", "digest": sha(LAYER), "size": len(LAYER)}],
    }
).encode()
#: What the registry answers, by path: ``library/app:1``, its config and its layer.
ANSWERS = {
    "/v2/library/app/manifests/1": (MANIFEST, OCI_MANIFEST),
    f"/v2/library/app/blobs/{sha(CONFIG)}": (CONFIG, "application/octet-stream"),
    f"/v2/library/app/blobs/{sha(LAYER)}": (LAYER, "application/octet-stream"),
}
WARMED = "1 manifests, 2 blobs"


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        server, tls = self.server, self.connection
        assert isinstance(server, TLSRegistry) and isinstance(tls, ssl.SSLSocket)
        server.paths.append(self.path)
        server.presented.append(tls.getpeercert(binary_form=True))
        body, media_type = ANSWERS.get(self.path, (b"{}", "application/json"))
        self.send_response(200 if self.path in ANSWERS else 404)
        self.send_header("Content-Type", media_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Docker-Content-Digest", sha(body))
        self.send_header("Cache-Status", "Docxy; hit")  # cached: warm asks nothing more
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        return


class TLSRegistry(ThreadingHTTPServer):
    """A registry holding ``library/app:1``, served with ``context`` on a socket bound before.
    Each connection's handshake runs in its own thread; a failed one is kept in ``errors``."""

    daemon_threads = True

    def __init__(self, sock: socket.socket, context: ssl.SSLContext) -> None:
        super().__init__(sock.getsockname(), _Handler, bind_and_activate=False)
        self.socket.close()
        self.socket = sock
        self.context = context
        self.paths: list[str] = []
        self.presented: list[bytes | None] = []
        self.errors: list[BaseException] = []

    def finish_request(self, request: Any, client_address: Any) -> None:
        request.settimeout(TIMEOUT)
        with self.context.wrap_socket(request, server_side=True) as tls:
            super().finish_request(tls, client_address)

    def handle_error(self, request: Any, client_address: Any) -> None:
        import sys

        error = sys.exc_info()[1]
        if error is not None:
            self.errors.append(error)


@contextmanager
def serving(host: str, context: ssl.SSLContext) -> Iterator[tuple[str, TLSRegistry]]:
    """The registry on ``host`` over TLS with ``context``: its ``https://`` URL, and it."""
    sock = bound_socket(host)
    port = sock.getsockname()[1]
    sock.listen(8)
    server = TLSRegistry(sock, context)
    with Background(server):
        yield f"https://{host}:{port}", server


def warm(capsys: pytest.CaptureFixture[str], url: str, *options: str) -> tuple[int, str, str]:
    """``docxy warm --mirror url [options] app:1``: its exit code, stdout and stderr."""
    code = main(["warm", "--mirror", url, *options, "app:1"])
    out, err = capsys.readouterr()
    return code, out, err


def _ip_name(host: str) -> list[x509.GeneralName]:
    return [x509.IPAddress(IPv4Address(host))]


def _served(tmp_path: Path, *chain: Issued, client_ca: Path | None = None) -> ssl.SSLContext:
    """The mirror's own listener context (``ReloadableTLS``) serving ``chain`` (leaf first)."""
    cert, key = tmp_path / "served-cert.pem", tmp_path / "served-key.pem"
    cert.write_bytes(b"".join(issued.cert_pem for issued in chain))
    key.write_bytes(chain[0].key_pem)
    return ReloadableTLS(cert, key, client_ca=client_ca).context


def _write(path: Path, data: bytes) -> str:
    path.write_bytes(data)
    return str(path)


# --- --ca-file --------------------------------------------------------------------------------


def test_a_mirror_a_private_ca_vouches_for_needs_its_ca_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without ``--ca-file`` the handshake fails and warm says the certificate is not trusted
    and which option helps (before: "cannot reach the mirror ... is docxy serve running
    there?"), once, exit 1, and no request got through; with the CA's file it warms the image."""
    host = "127.0.0.90"
    root = issue("LAN mirror CA", ca=True)
    leaf = issue("mirror.lan", root, names=_ip_name(host))
    ca_file = _write(tmp_path / "lan-ca.pem", root.cert_pem)
    with serving(host, _served(tmp_path, leaf)) as (url, server):
        code, out, err = warm(capsys, url)
        assert code == 1
        assert "sent a certificate warm does not trust" in err, err
        assert "unable to get local issuer certificate" in err and "--ca-file" in err, err
        assert "is docxy serve running" not in err and "Traceback" not in err
        assert server.paths == []

        code, out, err = warm(capsys, url, "--ca-file", ca_file)
        assert code == 0, err
        assert WARMED in out
        assert server.paths[0] == "/v2/library/app/manifests/1"


def test_the_mirrors_own_self_signed_certificate_is_a_ca_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The bootstrap certificate ``docxy serve`` makes (``docxy-tls/selfsigned-cert.pem``, not a
    CA: a leaf that is its own issuer) given as ``--ca-file``; its name is still checked: the
    same certificate served for another address is refused."""
    host = "127.0.0.91"
    cert, key = self_signed(tmp_path / "docxy-tls", host)
    with serving(host, ReloadableTLS(cert, key).context) as (url, _):
        code, out, err = warm(capsys, url, "--ca-file", str(cert))
        assert code == 0, err
        assert WARMED in out
    other = "127.0.0.92"
    with serving(other, ReloadableTLS(cert, key).context) as (url, server):
        code, _, err = warm(capsys, url, "--ca-file", str(cert))
        assert code == 1
        assert "does not trust" in err and "IP address mismatch" in err, err
        assert server.paths == []


def _leaf_without_key_identifiers(issuer: Issued, host: str) -> Issued:
    """A mirror certificate made by hand (``openssl x509 -req`` with only a subjectAltName):
    no Authority Key Identifier; Docker's Go client takes it, a strict verifier does not."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)]))
        .issuer_name(issuer.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(_ip_name(host)), critical=False)
        .sign(issuer.key, hashes.SHA256())
    )
    return Issued(key, cert)


def _as_python_3_13(monkeypatch: pytest.MonkeyPatch) -> None:
    """``ssl.create_default_context`` (which httpx calls) setting the flags Python 3.13's sets,
    on any Python: the context itself, and its handshakes, stay real."""
    made = ssl.create_default_context

    def create_default_context(*args: Any, **kwargs: Any) -> ssl.SSLContext:
        context = made(*args, **kwargs)
        context.verify_flags |= ssl.VERIFY_X509_STRICT | ssl.VERIFY_X509_PARTIAL_CHAIN
        return context

    monkeypatch.setattr(ssl, "create_default_context", create_default_context)


@pytest.mark.parametrize("python", ["this one", "3.13's default"])
def test_a_mirror_certificate_without_key_identifiers_is_taken_on_every_python(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    python: str,
) -> None:
    """A leaf without an Authority Key Identifier from the ``--ca-file`` CA: warm takes it on
    every Python, as the mirror's upstream connections do (``upstream_ssl_context``).

    Before, warm used httpx's default context: strict on 3.13 ("Missing Authority Key
    Identifier"), lenient on 3.11 and 3.12. On 3.11 (where this was written) the "this one"
    case passes without the change too; on 3.13 it fails without it. The "3.13's default" case
    makes ``ssl.create_default_context`` set 3.13's flags, so it fails without the change on any
    Python; the control shows the certificate is one a strict verifier refuses."""
    if python != "this one":
        _as_python_3_13(monkeypatch)
    host = "127.0.0.93"
    root = issue("hand-made CA", ca=True)
    ca_file = _write(tmp_path / "ca.pem", root.cert_pem)
    context = _served(tmp_path, _leaf_without_key_identifiers(root, host))
    with serving(host, context) as (url, _):
        code, out, err = warm(capsys, url, "--ca-file", ca_file)
        assert code == 0, err
        assert WARMED in out

        strict = ssl.create_default_context(cafile=ca_file)
        strict.verify_flags |= ssl.VERIFY_X509_STRICT
        with pytest.raises(httpx.ConnectError, match=STRICT_MESSAGE):
            httpx.get(f"{url}/v2/", verify=strict)


def test_an_intermediate_ca_in_the_ca_file_is_enough(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Partial chains, as the upstream context (and Go) allow them: ``--ca-file`` holding the
    intermediate that issued the mirror's certificate, not its root, is trusted. Python 3.11's
    and 3.12's default context wanted the root (fails on 3.11 without the flag)."""
    host = "127.0.0.94"
    root = issue("company root", ca=True)
    intermediate = issue("company issuing CA", root, ca=True)
    leaf = issue("mirror.corp", intermediate, names=_ip_name(host))
    ca_file = _write(tmp_path / "intermediate.pem", intermediate.cert_pem)
    with serving(host, _served(tmp_path, leaf, intermediate)) as (url, _):
        code, out, err = warm(capsys, url, "--ca-file", ca_file)
        assert code == 0, err
        assert WARMED in out


def test_the_warm_context_verifies_as_the_upstream_one_does(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same verify flags as ``upstream_ssl_context`` (the same on every Python), hostnames
    checked, certificates required; ``--ca-file``'s CA added to certifi's, not in their place.
    Certifi's indeed: not the machine's SSL_CERT_FILE (which stands for them: this count was
    the system bundle's) or SSL_CERT_DIR (loaded lazily: 0 certificates, the test failed)."""
    for name in ("SSL_CERT_FILE", "SSL_CERT_DIR"):
        monkeypatch.delenv(name, raising=False)
    upstream = upstream_ssl_context()
    plain = mirror_ssl_context()
    assert plain.verify_flags == upstream.verify_flags
    assert not plain.verify_flags & ssl.VERIFY_X509_STRICT
    assert plain.verify_flags & ssl.VERIFY_X509_PARTIAL_CHAIN
    assert plain.verify_mode == ssl.CERT_REQUIRED and plain.check_hostname
    root = issue("private CA", ca=True)
    added = mirror_ssl_context(_write(tmp_path / "ca.pem", root.cert_pem))
    assert len(added.get_ca_certs()) == len(plain.get_ca_certs()) + 1 > 50
    assert added.verify_flags == upstream.verify_flags


# --- client certificates --------------------------------------------------------------------


def _requiring_a_client_certificate(tmp_path: Path, ca: ClientCA, host: str) -> tuple[Path, Any]:
    """The mirror's listener with its bootstrap pair and client CA ``ca``, made to require a
    certificate (the mirror asks without requiring; a server in front of it may require)."""
    cert, key = self_signed(tmp_path / "docxy-tls", host)
    context = ReloadableTLS(cert, key, client_ca=ca.cert_path).context
    context.verify_mode = ssl.CERT_REQUIRED
    return cert, context


#: What a server that requires a client certificate says to a client without one, by version.
NO_CERTIFICATE = {
    "TLSv1_3": "tlsv13 alert certificate required",
    "TLSv1_2": "sslv3 alert handshake failure",
}


@pytest.mark.parametrize("version", sorted(NO_CERTIFICATE))
def test_a_client_kit_from_docxy_clients_add_is_presented(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], version: str
) -> None:
    """A server that requires a client certificate from the mirror's CA takes warm with the kit
    ``docxy clients add`` writes (as two files, or as its directory) and refuses it without one,
    or with a kit of another mirror's CA; warm says so once, naming the options, exit 1 (before:
    "ReadError: [SSL: ...]" under TLS 1.3, "is docxy serve running there?" under TLS 1.2)."""
    host = "127.0.0.95"
    ca = ClientCA(tmp_path / "auth")
    ca.issue("warm-box", tmp_path / "kit")
    other = ClientCA(tmp_path / "other-auth")
    other.issue("stranger", tmp_path / "other-kit")
    cert, context = _requiring_a_client_certificate(tmp_path, ca, host)
    context.maximum_version = getattr(ssl.TLSVersion, version)
    trust = ("--ca-file", str(cert))
    kit = tmp_path / "kit"
    with serving(host, context) as (url, server):
        code, out, err = warm(capsys, url, *trust)
        assert code == 1
        assert f"refused warm's TLS connection ({NO_CERTIFICATE[version]})" in err, err
        assert "--client-cert CERT --client-key KEY" in err and "Traceback" not in err
        assert "is docxy serve running" not in err and err.count("\n") == 1, err
        assert server.paths == []

        files = ("--client-cert", str(kit / "client.cert"), "--client-key", str(kit / "client.key"))
        code, out, err = warm(capsys, url, *trust, *files)
        assert code == 0, err
        assert WARMED in out
        presented = server.presented[-1]
        assert presented is not None and ca.client_of(presented) == "warm-box"

        code, out, err = warm(capsys, url, *trust, "--client-cert", str(kit))
        assert code == 0, err
        assert WARMED in out

        before = len(server.paths)
        code, out, err = warm(capsys, url, *trust, "--client-cert", str(tmp_path / "other-kit"))
        assert code == 1
        assert "refused warm's TLS connection (tlsv1 alert unknown ca)" in err, err
        assert len(server.paths) == before


def test_the_mirrors_own_listener_asks_for_a_kit_without_requiring_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``auth.client_certs = true`` as the mirror serves it: warm's kit is presented (the
    mirror then knows the client by it), none is no refusal, another CA's is refused."""
    host = "127.0.0.98"
    ca = ClientCA(tmp_path / "auth")
    ca.issue("warm-box", tmp_path / "kit")
    ClientCA(tmp_path / "other-auth").issue("stranger", tmp_path / "other-kit")
    cert, key = self_signed(tmp_path / "docxy-tls", host)
    trust = ("--ca-file", str(cert))
    with serving(host, ReloadableTLS(cert, key, client_ca=ca.cert_path).context) as (url, server):
        code, out, err = warm(capsys, url, *trust, "--client-cert", str(tmp_path / "kit"))
        assert code == 0, err
        presented = server.presented[-1]
        assert presented is not None and ca.client_of(presented) == "warm-box"

        code, out, err = warm(capsys, url, *trust)
        assert code == 0, err
        assert server.presented[-1] is None

        code, out, err = warm(capsys, url, *trust, "--client-cert", str(tmp_path / "other-kit"))
        assert code == 1
        assert "refused warm's TLS connection (tlsv1 alert unknown ca)" in err, err


# --- files warm cannot use: exit 2, a line naming the file ------------------------------------


def _encrypted_key(issued: Issued) -> bytes:
    return issued.key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"passphrase"),
    )


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("ca-missing", "--ca-file {tmp}/nowhere.pem: cannot read it (No such file or directory)"),
        ("ca-directory", "--ca-file {tmp}: cannot read it (Is a directory)"),
        ("ca-not-pem", "--ca-file {tmp}/ca.der: not a PEM file"),
        ("ca-a-key", "--ca-file {tmp}/key.pem: no usable PEM certificate"),
        ("cert-alone", "--client-cert CERT and --client-key KEY go together"),
        ("key-alone", "--client-cert CERT and --client-key KEY go together"),
        ("key-missing", "--client-key {tmp}/nowhere.pem: cannot read it"),
        ("kit-without-key", "--client-key {tmp}/kit/client.key: cannot read it"),
        ("kit-and-key", "--client-cert {tmp}/kit is a kit directory: it holds the key too"),
        ("another-key", "not a certificate and its key"),
        ("encrypted-key", "--client-key {tmp}/encrypted.pem: the key is encrypted"),
    ],
)
def test_a_file_warm_cannot_use_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], case: str, message: str
) -> None:
    """Exit 2 (EXIT_CONFIG, as warm's other option errors) and one line saying which file and
    why, before any connection: no traceback, and no passphrase prompt for an encrypted key."""
    issued = issue("client", issue("CA", ca=True))
    cert = _write(tmp_path / "cert.pem", issued.cert_pem)
    key = _write(tmp_path / "key.pem", issued.key_pem)
    (tmp_path / "kit").mkdir()
    _write(tmp_path / "kit" / "client.cert", issued.cert_pem)
    options = {
        "ca-missing": ["--ca-file", f"{tmp_path}/nowhere.pem"],
        "ca-directory": ["--ca-file", str(tmp_path)],
        "ca-not-pem": [
            "--ca-file",
            _write(tmp_path / "ca.der", issued.cert.public_bytes(serialization.Encoding.DER)),
        ],
        "ca-a-key": ["--ca-file", key],
        "cert-alone": ["--client-cert", cert],
        "key-alone": ["--client-key", key],
        "key-missing": ["--client-cert", cert, "--client-key", f"{tmp_path}/nowhere.pem"],
        "kit-without-key": ["--client-cert", str(tmp_path / "kit")],
        "kit-and-key": ["--client-cert", str(tmp_path / "kit"), "--client-key", key],
        "another-key": [
            "--client-cert",
            cert,
            "--client-key",
            _write(tmp_path / "other.pem", issue("other").key_pem),
        ],
        "encrypted-key": [
            "--client-cert",
            cert,
            "--client-key",
            _write(tmp_path / "encrypted.pem", _encrypted_key(issued)),
        ],
    }[case]
    code, out, err = warm(capsys, "https://127.0.0.96:9", *options)
    assert code == 2
    assert message.format(tmp=tmp_path) in err, err
    assert err.startswith("docxy warm: ") and err.count("\n") == 1, err
    assert "Traceback" not in err and out == ""


@pytest.mark.parametrize(
    ("options", "named"),
    [
        (["--ca-file", "{cert}"], "--ca-file not used"),
        (["--client-cert", "{kit}"], "--client-cert not used"),
        (["--ca-file", "{cert}", "--client-cert", "{kit}"], "--ca-file and --client-cert not"),
    ],
)
def test_tls_options_with_a_plain_http_mirror_are_said_to_be_unused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], options: list[str], named: str
) -> None:
    """``--ca-file`` or a client kit with an ``http://`` mirror warm a plain-HTTP listener, not
    the TLS one the user most likely meant: warm says so (a warning: a redirect to https://
    would use them) and goes on (before: nothing said; the kit silently never presented)."""
    ca = ClientCA(tmp_path / "auth")
    ca.issue("warm-box", tmp_path / "kit")
    cert, _ = self_signed(tmp_path / "docxy-tls", "127.0.0.96")
    given = [option.format(cert=cert, kit=tmp_path / "kit") for option in options]
    sock = bound_socket("127.0.0.96")  # bound, not listening: the connection is refused
    with sock:
        url = f"http://127.0.0.96:{sock.getsockname()[1]}"
        code, _, err = warm(capsys, url, *given)
    assert code == 1  # unreachable, as without the options
    assert f"docxy warm: warning: {named}" in err and f"with {url}, a plain-HTTP URL" in err, err
    code, _, err = warm(capsys, url.replace("http://", "https://"), *given)
    assert "warning" not in err, err
