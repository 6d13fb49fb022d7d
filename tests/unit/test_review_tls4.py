"""Faults in the served certificate's reload and checks (docxy.tls.context) found by the tls
review: what an operator whose renewals run unattended for a year is told, and when."""

from __future__ import annotations

import datetime as dt
import logging
import os
import shutil
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtensionOID, NameOID

from docxy.http.health import health_report
from docxy.tls import context
from docxy.tls.context import CertError, ReloadableTLS, self_signed
from tests.unit.test_observe_metrics import make_state


def _pair(tmp_path: Path, name: str) -> tuple[Path, Path]:
    return self_signed(tmp_path / name, "localhost")


def _served(tmp_path: Path) -> tuple[Path, Path]:
    """The mirror's pair at its served paths, the key 0600 as every installer writes it."""
    cert, key = _pair(tmp_path, "a")
    dst = (tmp_path / "fullchain.pem", tmp_path / "privkey.pem")
    shutil.copyfile(cert, dst[0])
    shutil.copyfile(key, dst[1])
    dst[1].chmod(0o600)
    return dst


def _health(tmp_path: Path, tls: ReloadableTLS) -> dict[str, object]:
    state = make_state(tmp_path / "state")
    state.extras["health"] = {"tls": tls.status}
    return health_report(state)


def _later(monkeypatch: pytest.MonkeyPatch, by: dt.timedelta) -> None:
    now = dt.datetime.now(dt.UTC) + by
    monkeypatch.setattr(context, "_utcnow", lambda: now)


def _refused_renewal(tmp_path: Path, served: tuple[Path, Path]) -> None:
    """A renewed certificate installed beside a key that is not its own (a key file restored
    from a backup, a hand copy of the wrong privkey.pem): the mirror refuses the pair."""
    new_cert, _ = _pair(tmp_path, "b")
    shutil.copyfile(new_cert, served[0])


def test_a_renewed_pair_the_mirror_keeps_refusing_degrades_health(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The renewer installs a renewed pair and reports success; the mirror refuses it and goes
    on serving the old certificate. That was said once in the log and as ``tls.last_error``,
    while ``status`` stayed ``ok``: a monitor of ``status`` saw nothing until the old
    certificate had 7 days left, three weeks later, and the expiry warning then pointed at the
    renewer, whose runs had all succeeded. Refused for longer than a passing moment, it is a
    ``tls.warning`` and ``status`` is ``degraded``."""
    served = _served(tmp_path)
    tls = ReloadableTLS(*served)
    _refused_renewal(tmp_path, served)
    with pytest.raises(CertError, match="does not match"):
        tls.reload()
    _later(monkeypatch, dt.timedelta(hours=2))  # past the grace of an hour
    with pytest.raises(CertError):
        tls.reload()  # the watch tries it again at each look
    report = _health(tmp_path, tls)
    shown = report["tls"]
    assert isinstance(shown, dict)
    assert report["status"] == "degraded", report
    warning = str(shown["warning"])
    assert "does not match" in warning and str(served[0]) in warning, warning
    assert shown.get("reload_failing_since") is not None


def test_a_pair_refused_for_a_moment_leaves_health_ok(tmp_path: Path) -> None:
    """A watch that reads the files between the installer's two renames (the new key beside
    the old certificate) is refused once, and served at the next look: no alarm for that."""
    served = _served(tmp_path)
    tls = ReloadableTLS(*served)
    _refused_renewal(tmp_path, served)
    with pytest.raises(CertError):
        tls.reload()
    report = _health(tmp_path, tls)
    assert report["status"] == "ok", report
    shutil.copyfile(tmp_path / "b" / "selfsigned-key.pem", served[1])
    assert tls.reload() is True
    shown = _health(tmp_path, tls)["tls"]
    assert isinstance(shown, dict) and shown.get("reload_failing_since") is None


def test_a_key_others_may_read_is_said_in_the_log(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A key copied by hand with ``cp`` (mode 0644 under the usual umask): every local user
    could read the private key, and the mirror served it without a word."""
    served = _served(tmp_path)
    served[1].chmod(0o644)
    with caplog.at_level(logging.WARNING, logger="docxy.tls.context"):
        ReloadableTLS(*served)
    said = [r.getMessage() for r in caplog.records if "0644" in r.getMessage()]
    assert said and str(served[1]) in said[0], caplog.text


def test_a_key_made_readable_while_serving_is_said_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """``chmod`` of the served key changes only its ctime: the watch reloads the same pair.
    It is said then (once), and not again at each later look, nor once fixed."""
    served = _served(tmp_path)
    tls = ReloadableTLS(*served)
    served[1].chmod(0o604)
    with caplog.at_level(logging.WARNING, logger="docxy.tls.context"):
        for _ in range(3):
            tls._watch_once()
        served[1].chmod(0o600)  # fixed: nothing more to say
        tls._watch_once()
    said = [r for r in caplog.records if str(served[1]) in r.getMessage()]
    assert len(said) == 1, caplog.text


def test_a_key_only_its_owner_and_group_may_read_is_not_held_against_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """0640 (Debian's ssl-cert group) and 0600 are the usual modes of a served key."""
    served = _served(tmp_path)
    served[1].chmod(0o640)
    with caplog.at_level(logging.WARNING, logger="docxy.tls.context"):
        ReloadableTLS(*served)
    assert not [r for r in caplog.records if str(served[1]) in r.getMessage()], caplog.text


def _unreadable_names(tmp_path: Path) -> tuple[Path, Path]:
    """A pair whose certificate OpenSSL loads but whose subject alternative name is no name: an
    IP address entry one byte long (a hand-made or broken certificate; clients refuse it)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mirror.test")])
    now = dt.datetime.now(dt.UTC)
    broken_san = x509.UnrecognizedExtension(
        ExtensionOID.SUBJECT_ALTERNATIVE_NAME, b"\x30\x03\x87\x01\x01"
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(broken_san, critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "broken" / "fullchain.pem", tmp_path / "broken" / "key.pem"
    cert_path.parent.mkdir()
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_path.chmod(0o600)
    return cert_path, key_path


def test_a_certificate_whose_names_cannot_be_read_is_a_refused_pair(tmp_path: Path) -> None:
    """cryptography's ValueError escaped the pair check: a reload raised it past the watch's
    CertError handling (``TLS watch failed``, no file named, ``tls.last_error`` null and /health
    silent however long it lasted), and at start it was a traceback instead of the one-line
    config error naming the file."""
    served = _served(tmp_path)
    tls = ReloadableTLS(*served)
    old = tls.status()["serial"]
    broken = _unreadable_names(tmp_path)
    shutil.copyfile(broken[0], served[0])
    shutil.copyfile(broken[1], served[1])
    with pytest.raises(CertError, match=str(served[0])):
        tls.reload()
    status = tls.status()
    assert status["serial"] == old
    assert str(served[0]) in str(status["last_error"]), status
    with pytest.raises(CertError, match=str(broken[0])):
        ReloadableTLS(*broken)


def test_a_look_between_an_installs_two_renames_serves_the_new_pair(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """An installer renames the new key into place, then the new certificate (write_pair,
    certbot's live/ links: privkey before fullchain). A look that read the certificate before
    the second rename and the key after the first was refused: a warning "TLS reload failed,
    still serving ...: key ... does not match" at a renewal that went well, and the renewed
    certificate unserved until the next look. The files changed while read: read again."""
    served = _served(tmp_path)
    tls = ReloadableTLS(*served)
    new_cert, new_key = _pair(tmp_path, "b")
    staged = tmp_path / ".fullchain.pem.pending"
    shutil.copyfile(new_cert, staged)
    shutil.copyfile(new_key, tmp_path / ".privkey.pem.pending")
    (tmp_path / ".privkey.pem.pending").chmod(0o600)
    os.replace(tmp_path / ".privkey.pem.pending", served[1])  # the first rename
    real_read = context._read

    def read(path: Path, what: str) -> bytes:
        data = real_read(path, what)
        if path == served[0] and staged.exists():
            os.replace(staged, served[0])  # the second rename, just after the watch read
        return data

    monkeypatch.setattr(context, "_read", read)
    with caplog.at_level(logging.WARNING, logger="docxy.tls.context"):
        tls._watch_once()
    assert not [r for r in caplog.records if "reload failed" in r.getMessage()], caplog.text
    status = tls.status()
    assert (status["serial"], status["last_error"]) == (_serial(new_cert), None)


def _serial(cert_path: Path) -> str:
    return format(x509.load_pem_x509_certificate(cert_path.read_bytes()).serial_number, "x")
