"""The mirror's client CA: issuing, listing, revoking, and mapping a certificate to a client;
and the TLS listener asking for (not requiring) a certificate from it."""

from __future__ import annotations

import fcntl
import os
import socket
import ssl
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from docxy.access.clientca import CA_KEY, ClientCA, ClientsFileError
from docxy.tls.context import ReloadableTLS, self_signed
from docxy.tls.files import pending_path
from docxy.tls.recover import finish_install, matching


def der_of(path: Path) -> bytes:
    cert = x509.load_pem_x509_certificate(path.read_bytes())
    return cert.public_bytes(serialization.Encoding.DER)


def test_issue_list_revoke(tmp_path: Path) -> None:
    ca = ClientCA(tmp_path / "ca")
    entry = ca.issue("laptop", tmp_path / "kit")
    kit = tmp_path / "kit"
    assert (kit / "client.key").stat().st_mode & 0o777 == 0o600
    assert (kit / "ca.crt").read_bytes() == ca.cert_path.read_bytes()
    cert = x509.load_pem_x509_certificate((kit / "client.cert").read_bytes())
    assert format(cert.serial_number, "x") == entry.serial
    issuer = x509.load_pem_x509_certificate(ca.cert_path.read_bytes())
    cert.verify_directly_issued_by(issuer)
    assert list(ca.entries()) == ["laptop"]
    running = ClientCA(tmp_path / "ca")  # the server's view, told only by the files
    assert running.client_of(der_of(kit / "client.cert")) == "laptop"
    assert ClientCA(tmp_path / "ca").revoke("laptop")
    assert running.client_of(der_of(kit / "client.cert")) is None
    assert not ca.revoke("laptop")


def test_a_new_certificate_for_a_name_revokes_the_old_one(tmp_path: Path) -> None:
    ca = ClientCA(tmp_path / "ca")
    ca.issue("ci", tmp_path / "old")
    ca.issue("ci", tmp_path / "new")
    assert ca.client_of(der_of(tmp_path / "old" / "client.cert")) is None
    assert ca.client_of(der_of(tmp_path / "new" / "client.cert")) == "ci"


def test_certificates_of_another_ca_or_garbage_map_to_nobody(tmp_path: Path) -> None:
    ours, theirs = ClientCA(tmp_path / "ours"), ClientCA(tmp_path / "theirs")
    ours.issue("a", tmp_path / "a")
    entry = theirs.issue("a", tmp_path / "b")
    # the same serial listed under the same name in ours would be a forgery; it is not listed
    assert entry.serial not in {e.serial for e in ours.entries().values()}
    assert ours.client_of(der_of(tmp_path / "b" / "client.cert")) is None
    assert ours.client_of(b"not a certificate") is None


@pytest.mark.parametrize("text", ["{not json", '{"laptop": {"serial": 1}}', "[]"])
def test_a_broken_client_list_lets_no_certificate_in(
    tmp_path: Path, text: str, caplog: pytest.LogCaptureFixture
) -> None:
    """clients.json edited by hand into something unreadable: no certificate is honoured, and
    the caller is told why (``ClientsFileError``, which the access check answers with a 503
    naming the file), with a log line once, never an internal error."""
    ca = ClientCA(tmp_path / "ca")
    ca.issue("laptop", tmp_path / "kit")
    running = ClientCA(tmp_path / "ca")
    assert running.client_of(der_of(tmp_path / "kit" / "client.cert")) == "laptop"
    ca.clients_path.write_text(text)
    for _ in range(2):
        with pytest.raises(ClientsFileError, match="clients.json"):
            running.client_of(der_of(tmp_path / "kit" / "client.cert"))
    assert [r.levelname for r in caplog.records] == ["ERROR"]  # once, not per request
    assert "clients.json" in caplog.records[0].getMessage()
    ca.clients_path.write_text("{}")  # fixed: read again, and a list again
    assert running.client_of(der_of(tmp_path / "kit" / "client.cert")) is None
    ca.issue("laptop", tmp_path / "kit")
    assert running.client_of(der_of(tmp_path / "kit" / "client.cert")) == "laptop"


@pytest.mark.parametrize("name", ["", "UPPER", "../x", "a/b"])
def test_bad_client_names(tmp_path: Path, name: str) -> None:
    with pytest.raises(ValueError):
        ClientCA(tmp_path).issue(name, tmp_path / "kit")


def handshake(server: ssl.SSLContext, client: ssl.SSLContext) -> bytes | None:
    """One TLS handshake over a socket pair: the client certificate the server saw."""
    left, right = socket.socketpair()
    seen: list[bytes | None] = []
    failed: list[BaseException] = []

    def serve() -> None:
        try:
            with server.wrap_socket(left, server_side=True) as tls:
                seen.append(tls.getpeercert(binary_form=True))
                tls.sendall(b"x")
        except (ssl.SSLError, OSError) as exc:
            failed.append(exc)

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        with client.wrap_socket(right, server_hostname="localhost") as tls:
            tls.recv(1)
    except (ssl.SSLError, OSError):
        pass
    thread.join(timeout=30)
    if failed:
        raise failed[0]
    return seen[0] if seen else None


def test_the_listener_asks_for_a_certificate_from_the_ca_but_needs_none(tmp_path: Path) -> None:
    ca = ClientCA(tmp_path / "ca")
    ca.issue("laptop", tmp_path / "kit")
    cert, key = self_signed(tmp_path / "tls", "localhost")
    tls = ReloadableTLS(cert, key, client_ca=ca.cert_path)
    client = ssl.create_default_context(cafile=str(cert))
    assert handshake(tls.context, client) is None  # no certificate: still served
    client.load_cert_chain(tmp_path / "kit" / "client.cert", tmp_path / "kit" / "client.key")
    der = handshake(tls.context, client)
    assert der is not None and ca.client_of(der) == "laptop"
    stranger = ClientCA(tmp_path / "other")
    stranger.issue("x", tmp_path / "other-kit")
    foreign = ssl.create_default_context(cafile=str(cert))
    foreign.load_cert_chain(
        tmp_path / "other-kit" / "client.cert", tmp_path / "other-kit" / "client.key"
    )
    with pytest.raises(ssl.SSLError):
        handshake(tls.context, foreign)


class Crash(Exception):
    """The power went out."""


def before_rename_onto(
    monkeypatch: pytest.MonkeyPatch, target: Path, act: Callable[[], None]
) -> None:
    """Run `act` once, as the CA is about to be renamed onto `target`."""
    real: Callable[..., None] = os.replace

    def replace(src: object, dst: object) -> None:
        if Path(str(dst)) == target:
            monkeypatch.setattr(os, "replace", real)
            act()
        real(src, dst)

    monkeypatch.setattr(os, "replace", replace)  # as docxy.tls.files calls it


def honoured(tmp_path: Path, ca: ClientCA) -> bool:
    """Whether a certificate the CA issues now gets through the mirror's TLS listener."""
    ca.issue("laptop", tmp_path / "kit")
    cert, key = self_signed(tmp_path / "tls", "localhost")
    client = ssl.create_default_context(cafile=str(cert))
    client.load_cert_chain(tmp_path / "kit" / "client.cert", tmp_path / "kit" / "client.key")
    try:
        der = handshake(ReloadableTLS(cert, key, client_ca=ca.cert_path).context, client)
    except ssl.SSLError:
        return False
    return der is not None and ca.client_of(der) == "laptop"


@pytest.mark.parametrize("onto", [CA_KEY, "ca.crt"])
def test_a_second_start_while_the_ca_is_written_keeps_one_pair(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, onto: str
) -> None:
    """The mirror starting while ``docxy clients add`` creates the CA (or two of them at
    once): the second finds no ``ca.crt`` yet and must not make a CA of its own in between."""
    ca = ClientCA(tmp_path / "ca")
    before_rename_onto(monkeypatch, ca.dir / onto, ClientCA(ca.dir).ensure)
    ca.ensure()
    monkeypatch.undo()
    assert honoured(tmp_path, ClientCA(ca.dir))


def test_a_ca_cut_between_its_renames_is_whole_at_the_next_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ca = ClientCA(tmp_path / "ca")

    def crash() -> None:
        raise Crash

    before_rename_onto(monkeypatch, ca.cert_path, crash)
    with pytest.raises(Crash):
        ca.ensure()
    monkeypatch.undo()
    assert (ca.dir / CA_KEY).exists() and not ca.cert_path.exists()
    ClientCA(ca.dir).ensure()
    assert honoured(tmp_path, ClientCA(ca.dir))


#: Bounds a hang only (a thread that never gets going on a loaded machine): no speed test.
HANG = 120.0


def test_a_second_ensure_while_the_first_writes_its_files_takes_the_first_ones_ca(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two ``ensure()`` at once (the mirror starting while ``docxy clients add`` makes the CA),
    the second arriving while the first still writes its files: the second used to make a CA
    of its own and rename it in, and the first then failed with FileNotFoundError (its pending
    key was gone). The second now waits for the first's CA and takes it; neither fails."""
    ca = ClientCA(tmp_path / "ca")
    second = ClientCA(ca.dir)
    waiting_or_done = threading.Event()
    failed: list[BaseException] = []
    real_flock = fcntl.flock

    def flock(fd: int, operation: int) -> None:
        if threading.current_thread() is rival:
            waiting_or_done.set()  # about to wait for the first writer's lock
        real_flock(fd, operation)

    def run_second() -> None:
        try:
            second.ensure()
        except BaseException as exc:  # handed to the test thread
            failed.append(exc)
        finally:
            waiting_or_done.set()

    rival = threading.Thread(target=run_second)

    def start_the_second() -> None:
        rival.start()
        assert waiting_or_done.wait(HANG)

    monkeypatch.setattr(fcntl, "flock", flock)
    # the first has its key pending and is writing its certificate's temporary file
    before_rename_onto(monkeypatch, pending_path(ca.cert_path), start_the_second)
    ca.ensure()
    rival.join(HANG)
    monkeypatch.undo()

    assert not rival.is_alive() and failed == []
    assert matching(ca.cert_path, ca.dir / CA_KEY)
    assert honoured(tmp_path, second), "what the second issues is signed by the CA in place"


def test_a_kit_cut_between_key_and_certificate_keeps_the_new_certificate_beside_its_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``docxy clients add`` over an earlier kit, cut after client.key and before client.cert:
    the new key sat beside the old certificate with nothing to tell. Now the new certificate
    waits whole beside it (.client.cert.pending), the pair completes from there, and a rerun
    leaves a whole kit and no pending file."""
    ca = ClientCA(tmp_path / "ca")
    kit = tmp_path / "kit"
    ca.issue("laptop", kit)
    cert, key = kit / "client.cert", kit / "client.key"
    old_key = key.read_bytes()

    def crash() -> None:
        raise Crash

    before_rename_onto(monkeypatch, cert, crash)
    with pytest.raises(Crash):
        ca.issue("laptop", kit)
    monkeypatch.undo()

    assert key.read_bytes() != old_key, "cut after the key was renamed"
    assert not matching(cert, key)
    assert matching(pending_path(cert), key), "the key's own certificate is whole beside it"
    assert finish_install(cert, key) and matching(cert, key)

    ca.issue("laptop", kit)
    assert matching(cert, key)
    assert sorted(p.name for p in kit.iterdir()) == ["ca.crt", "client.cert", "client.key"]
    assert ca.client_of(der_of(cert)) == "laptop"


def test_clients_issued_at_once_are_all_listed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`docxy clients add` run at once: each read clients.json and wrote back what it had
    read plus its own; a client told "issued" was missing, its certificate then refused as
    if revoked. (The write is slowed here, to meet the other command in the middle.)"""
    ClientCA(tmp_path / "ca").ensure()
    save = ClientCA._save

    def slow_save(self: ClientCA, entries: dict[str, Any]) -> None:
        time.sleep(0.05)
        save(self, entries)

    monkeypatch.setattr(ClientCA, "_save", slow_save)
    names = [f"node-{n}" for n in range(4)]
    start = threading.Barrier(len(names))

    def issue(name: str) -> None:
        ca = ClientCA(tmp_path / "ca")  # one command's own
        start.wait()
        ca.issue(name, tmp_path / name)

    threads = [threading.Thread(target=issue, args=(name,)) for name in names]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(ClientCA(tmp_path / "ca").entries()) == names
