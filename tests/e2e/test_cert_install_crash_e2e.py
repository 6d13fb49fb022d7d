"""An install of a renewed pair cut short between its two renames, then `docxy serve`.

The renewer (``docxy.tls.certs.install``) puts a new key and certificate at ``tls.key_path`` and
``tls.cert_path``. A crash or power loss between the two renames leaves one new file beside one
old one. The mirror starting next must still come up with a matching pair: it refuses a
mismatched one (exit 2), which under supervisord means FATAL and the container down, with the
renewer that would repair it down too. Real certificates, a real install in a child process
killed at that moment, a real `python -m docxy serve` on 127.0.0.1.
"""

from __future__ import annotations

import socket
import ssl
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509

from docxy.tls.context import CertError, inspect_pair
from lab import REPO_ROOT
from lab.certs import CertPair, loopback_cert
from lab.mirror import launch_mirror, stop_mirror
from lab.ports import LOOPBACK, free_port

pytestmark = pytest.mark.e2e

DEAD_UPSTREAM = "http://127.0.0.1:9"  # nothing is pulled

#: Runs certs.install(live, cert, key) and dies (exit 9, no clean-up: os._exit) as the second of
#: the served paths is about to be renamed into place, however the install names its renames.
CRASHING_INSTALL = """
import os, sys
from pathlib import Path
from docxy.tls import certs
live, cert, key = (Path(arg) for arg in sys.argv[1:4])
served, renamed = {str(cert), str(key)}, []
def crashing(real):
    def rename(src, dst, *args, **kwargs):
        if os.fspath(dst) in served:
            if renamed:
                os._exit(9)
            renamed.append(dst)
        return real(src, dst, *args, **kwargs)
    return rename
os.replace, os.rename = crashing(os.replace), crashing(os.rename)
certs.install(live, cert, key)
sys.exit(0)
"""


def serial(path: Path) -> int:
    return x509.load_pem_x509_certificate(path.read_bytes()).serial_number


def served_serial(port: int, trusted: CertPair) -> int:
    """The serial of the certificate a new handshake gets, verified against `trusted`."""
    ctx = ssl.create_default_context(cafile=trusted.cert)
    with (
        socket.create_connection((LOOPBACK, port), timeout=10) as sock,
        ctx.wrap_socket(sock, server_hostname="localhost") as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


def matches(cert: Path, key: Path) -> bool:
    try:
        inspect_pair(cert.read_bytes(), key.read_bytes(), cert, key)
    except CertError:
        return False
    return True


def test_a_mirror_starts_after_an_install_cut_between_its_renames(tmp_path: Path) -> None:
    old = loopback_cert(tmp_path / "pairs", "old")
    new = loopback_cert(tmp_path / "pairs", "new")
    live = tmp_path / "letsencrypt" / "live" / "localhost"  # the renewed lineage
    live.mkdir(parents=True)
    (live / "fullchain.pem").write_bytes(new.cert.read_bytes())
    (live / "privkey.pem").write_bytes(new.key.read_bytes())
    cert, key = tmp_path / "tls" / "cert.pem", tmp_path / "tls" / "key.pem"
    cert.parent.mkdir()
    cert.write_bytes(old.cert.read_bytes())  # what the mirror served until now
    key.write_bytes(old.key.read_bytes())
    key.chmod(0o600)

    crashed = subprocess.run(
        [sys.executable, "-c", CRASHING_INSTALL, str(live), str(cert), str(key)],
        env={"PYTHONPATH": str(REPO_ROOT), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert crashed.returncode == 9, crashed.stderr  # died with one of the two in place
    assert not matches(cert, key)  # the served paths now hold half an install

    tls_port = free_port()
    mirror = launch_mirror(
        DEAD_UPSTREAM,
        tmp_path / "mirror",
        ["--tls-listen", f"{LOOPBACK}:{tls_port}", "--cert", str(cert), "--key", str(key)],
    )
    try:
        assert served_serial(tls_port, new) == serial(new.cert)  # the install, completed
        assert matches(cert, key)
        assert (cert.read_bytes(), key.read_bytes()) == (
            new.cert.read_bytes(),
            new.key.read_bytes(),
        )
        assert key.stat().st_mode & 0o777 == 0o600
    finally:
        stop_mirror(mirror)
