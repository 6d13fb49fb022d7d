"""ReloadableTLS: validation before a reload, live swap, status, file watching, bootstrap cert."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import errno
import json
import os
import re
import shutil
import ssl
import stat
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from docxy.tls import context
from docxy.tls.context import CertError, ReloadableTLS, self_signed


def pair(tmp_path: Path, name: str, host: str = "localhost") -> tuple[Path, Path]:
    return self_signed(tmp_path / name, host)


def serial_of(cert_path: Path) -> str:
    return format(x509.load_pem_x509_certificate(cert_path.read_bytes()).serial_number, "x")


def install(src: tuple[Path, Path], dst: tuple[Path, Path]) -> None:
    shutil.copyfile(src[0], dst[0])
    shutil.copyfile(src[1], dst[1])


@pytest.fixture
def served(tmp_path: Path) -> tuple[Path, Path]:
    cert, key = pair(tmp_path, "a")
    dst = (tmp_path / "cert.pem", tmp_path / "key.pem")
    install((cert, key), dst)
    return dst


def test_loads_and_describes(served: tuple[Path, Path]) -> None:
    tls = ReloadableTLS(*served)
    status = tls.status()
    json.dumps(status)
    assert status["serial"] == serial_of(served[0])
    assert status["sans"] == ["localhost"]
    assert status["subject"] == "CN=localhost"
    assert 89 < float(str(status["days_left"])) <= 90
    assert status["last_error"] is None
    assert tls.context.minimum_version == ssl.TLSVersion.TLSv1_2


@pytest.mark.parametrize("fmt", ["pkcs1", "pkcs8"])
def test_rsa_keys_load(tmp_path: Path, fmt: str) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    cert, _ = pair(tmp_path, "ec")
    # Re-sign a certificate for the RSA key, reusing the subject of the bootstrap one.
    ref = x509.load_pem_x509_certificate(cert.read_bytes())
    rsa_cert = (
        x509.CertificateBuilder()
        .subject_name(ref.subject)
        .issuer_name(ref.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(ref.not_valid_before_utc)
        .not_valid_after(ref.not_valid_after_utc)
        .sign(key, hashes.SHA256())
    )
    private_format = {
        "pkcs1": serialization.PrivateFormat.TraditionalOpenSSL,
        "pkcs8": serialization.PrivateFormat.PKCS8,
    }[fmt]
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, private_format, serialization.NoEncryption()
    )
    marker = b"RSA PRIVATE KEY" if fmt == "pkcs1" else b"BEGIN PRIVATE KEY"
    assert marker in key_pem
    (tmp_path / "rsa.crt").write_bytes(rsa_cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "rsa.key").write_bytes(key_pem)
    tls = ReloadableTLS(tmp_path / "rsa.crt", tmp_path / "rsa.key")
    assert tls.status()["sans"] == []


def test_bootstrap_key_is_private_sec1(tmp_path: Path) -> None:
    _, key = pair(tmp_path, "a")
    assert b"BEGIN EC PRIVATE KEY" in key.read_bytes()
    assert stat.S_IMODE(key.stat().st_mode) == 0o600


@pytest.mark.parametrize(
    ("breakage", "message"),
    [
        ("mismatch", "does not match certificate"),
        ("missing_cert", "unreadable"),
        ("missing_key", "unreadable"),
        ("garbage_cert", "not a PEM certificate"),
        ("garbage_key", "not an unencrypted PEM private key"),
    ],
)
def test_bad_pairs_are_refused_by_name(tmp_path: Path, breakage: str, message: str) -> None:
    cert, key = pair(tmp_path, "a")
    other_cert, other_key = pair(tmp_path, "b")
    if breakage == "mismatch":
        key = other_key
    elif breakage == "missing_cert":
        cert = tmp_path / "nope.pem"
    elif breakage == "missing_key":
        key = tmp_path / "nope.key"
    elif breakage == "garbage_cert":
        cert.write_text("hello\n")
    else:
        key.write_text("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
    with pytest.raises(CertError, match=message) as err:
        ReloadableTLS(cert, key)
    named = cert if breakage in ("missing_cert", "garbage_cert") else key
    assert str(named) in str(err.value)


def test_reload_unchanged_is_false(served: tuple[Path, Path]) -> None:
    tls = ReloadableTLS(*served)
    assert tls.reload() is False


def test_failed_reload_keeps_old_and_reports(tmp_path: Path, served: tuple[Path, Path]) -> None:
    tls = ReloadableTLS(*served)
    old = tls.status()["serial"]
    _, other_key = pair(tmp_path, "b")
    shutil.copyfile(other_key, served[1])
    with pytest.raises(CertError, match="does not match"):
        tls.reload()
    status = tls.status()
    assert status["serial"] == old
    assert "does not match" in str(status["last_error"])
    # The old pair is restored: the error clears and nothing changed.
    install(pair(tmp_path, "a2"), served)
    assert tls.reload() is True
    assert tls.status()["last_error"] is None


# --- against a real TLS server using the live context -------------------------------------------


@contextlib.asynccontextmanager
async def tls_echo_server(tls: ReloadableTLS) -> AsyncIterator[int]:
    """Each connection's handshake with the context of the moment, as the edge does it."""

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, ssl.SSLError):
            await writer.start_tls(tls.context)
            while line := await reader.readline():
                writer.write(line)
                await writer.drain()
        writer.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield port
    finally:
        server.close()
        await server.wait_closed()


def client_context(*cas: Path) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    for ca in cas:
        ctx.load_verify_locations(ca)
    ctx.set_alpn_protocols(["h2", "http/1.1"])
    return ctx


async def connect(
    port: int, ctx: ssl.SSLContext
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, str]:
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", port, ssl=ctx, server_hostname="localhost"
    )
    sslobj = writer.get_extra_info("ssl_object")
    assert sslobj.selected_alpn_protocol() == "http/1.1"
    der = sslobj.getpeercert(binary_form=True)
    serial = format(x509.load_der_x509_certificate(der).serial_number, "x")
    return reader, writer, serial


async def test_reload_swaps_cert_for_new_handshakes_only(
    tmp_path: Path, served: tuple[Path, Path]
) -> None:
    first = served[0].read_bytes()
    (tmp_path / "first-ca.pem").write_bytes(first)
    tls = ReloadableTLS(*served)
    new = pair(tmp_path, "b")
    # Both certificates are named CN=localhost, so each client trusts only one of them.
    async with tls_echo_server(tls) as port:
        reader, writer, before = await connect(port, client_context(tmp_path / "first-ca.pem"))
        assert before == serial_of(tmp_path / "first-ca.pem")
        install(new, served)
        assert tls.reload() is True
        # The open connection carries on with its certificate...
        writer.write(b"still here\n")
        assert await reader.readline() == b"still here\n"
        writer.close()
        # ...and the next handshake presents the new one.
        _, writer2, after = await connect(port, client_context(new[0]))
        writer2.close()
        assert after == serial_of(new[0]) != before


async def test_failed_reload_keeps_serving(tmp_path: Path, served: tuple[Path, Path]) -> None:
    tls = ReloadableTLS(*served)
    ca = tmp_path / "ca.pem"
    shutil.copyfile(served[0], ca)
    shutil.copyfile(pair(tmp_path, "b")[1], served[1])
    with pytest.raises(CertError):
        tls.reload()
    async with tls_echo_server(tls) as port:
        _, writer, serial = await connect(port, client_context(ca))
        writer.close()
    assert serial == serial_of(ca)


async def poll(predicate: object, timeout: float = 10.0) -> None:
    assert callable(predicate)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        assert loop.time() < deadline, "condition not met before the deadline"
        await asyncio.sleep(0.02)


async def test_watch_reloads_on_change_and_survives_bad_files(
    tmp_path: Path, served: tuple[Path, Path]
) -> None:
    tls = ReloadableTLS(*served)
    async with asyncio.TaskGroup() as tg:
        watcher = tg.create_task(tls.watch(0.02), name="tls-watch")
        # A mismatched key: reported, old certificate kept, the watcher keeps going.
        shutil.copyfile(pair(tmp_path, "b")[1], served[1])
        await poll(lambda: tls.status()["last_error"] is not None)
        assert tls.status()["serial"] == serial_of(tmp_path / "a" / "selfsigned-cert.pem")
        # A good pair, written in place: picked up.
        new = pair(tmp_path, "c")
        install(new, served)
        await poll(lambda: tls.status()["serial"] == serial_of(new[0]))
        assert tls.status()["last_error"] is None
        assert not watcher.done()
        watcher.cancel()


def test_a_reload_that_failed_for_a_passing_reason_is_tried_again(
    tmp_path: Path,
    served: tuple[Path, Path],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Out of descriptors, a network volume's EIO: the files had counted as seen, so the
    renewed pair stayed unserved until the old one expired (or a restart). Said once."""
    tls = ReloadableTLS(*served)
    new = pair(tmp_path, "renewed")
    install(new, served)
    load = context._load
    failures = [CertError("certificate: cannot be loaded (Too many open files)")] * 3

    def passing_trouble(*args: Any, **kwargs: Any) -> None:
        if failures:
            raise failures.pop()
        load(*args, **kwargs)

    monkeypatch.setattr(context, "_load", passing_trouble)
    for _ in range(3):
        tls._watch_once()
        assert tls.status()["serial"] == serial_of(tmp_path / "a" / "selfsigned-cert.pem")
    tls._watch_once()  # the trouble has passed
    assert tls.status()["serial"] == serial_of(new[0])
    assert tls.status()["last_error"] is None
    said = [r for r in caplog.records if "TLS reload failed" in r.getMessage()]
    assert len(said) == 1


async def test_the_watch_outlives_an_unexpected_error(
    tmp_path: Path, served: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """An error nothing expected in one look (here the expiry warning's) is logged once, and
    the watch goes on: a renewed pair is still picked up."""
    tls = ReloadableTLS(*served)
    failures: list[int] = []

    def broken(*_: object, **__: object) -> None:
        failures.append(1)
        if len(failures) <= 3:
            raise RuntimeError("unexpected")

    monkeypatch.setattr(tls, "warn_if_expiring", broken)
    async with asyncio.TaskGroup() as tg:
        watcher = tg.create_task(tls.watch(0.02), name="tls-watch")
        await poll(lambda: len(failures) > 3)
        new = pair(tmp_path, "d")
        install(new, served)
        await poll(lambda: tls.status()["serial"] == serial_of(new[0]))
        assert not watcher.done()
        watcher.cancel()


def test_self_signed_ip_host(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path, "127.0.0.1", cert_name="c.pem", key_name="k.pem")
    assert (cert.name, key.name) == ("c.pem", "k.pem")
    assert ReloadableTLS(cert, key).status()["sans"] == ["127.0.0.1"]


@pytest.mark.parametrize("first", ["AES128", "AES256", "CHACHA20"])
def test_the_client_chooses_among_the_strong_suites(served: tuple[Path, Path], first: str) -> None:
    """A Go client (docker) lists AES-128-GCM first; the mirror must not override it with
    its own order. TLS 1.2 here, where a client's cipher order can be set from Python."""
    cert, key = served
    server = ReloadableTLS(cert, key).context
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.load_verify_locations(cert)
    client.maximum_version = ssl.TLSVersion.TLSv1_2
    suites = {
        "AES128": "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256",
        "AES256": "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384",
        "CHACHA20": "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305",
    }
    client.set_ciphers(":".join([suites[first], *(v for k, v in suites.items() if k != first)]))
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    back_in, back_out = ssl.MemoryBIO(), ssl.MemoryBIO()
    talker = client.wrap_bio(incoming, outgoing, server_hostname="localhost")
    listener = server.wrap_bio(back_in, back_out, server_side=True)
    for _ in range(10):  # a handshake is a few round trips of memory buffers
        for side in (talker, listener):
            with contextlib.suppress(ssl.SSLWantReadError):
                side.do_handshake()
        back_in.write(outgoing.read())
        incoming.write(back_out.read())
    negotiated = talker.cipher()
    assert negotiated is not None and first in negotiated[0]


async def test_watch_serves_a_new_pair_once_its_permissions_are_fixed(
    tmp_path: Path, served: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A renewed key the mirror may not read (installed by another user, 0600): the reload fails
    and the old certificate stays, as it should. The operator fixes it with chmod or chown,
    which changes neither mtime, size nor inode: the watcher never tried again, the mirror kept
    the old certificate until its expiry (the renewer, its files in place, sends no reload)."""
    tls = ReloadableTLS(*served)
    unreadable = {served[1]}
    real_read = Path.read_bytes

    def read_bytes(self: Path) -> bytes:
        if self in unreadable:
            raise PermissionError(13, "Permission denied", str(self))
        return real_read(self)

    monkeypatch.setattr(Path, "read_bytes", read_bytes)
    new = pair(tmp_path, "b")
    async with asyncio.TaskGroup() as tg:
        watcher = tg.create_task(tls.watch(0.02), name="tls-watch")
        install(new, served)
        await poll(lambda: "unreadable" in str(tls.status()["last_error"]))
        unreadable.clear()
        served[1].chmod(0o640)  # the fix: only the inode's ctime changes
        await poll(lambda: tls.status()["serial"] == serial_of(new[0]))
        watcher.cancel()


def test_its_times_are_told_in_utc_with_z_as_the_rest_of_health(
    served: tuple[Path, Path],
) -> None:
    """``not_after`` and ``last_reload`` were ``2027-02-28T10:00:00+00:00`` (and the reload
    with microseconds) beside /health's ``last_ok`` of ``2026-11-30T12:00:00Z``: one report,
    two forms of time. Both are that ``Z`` form now, to the second."""
    before = dt.datetime.now(dt.UTC).replace(microsecond=0)
    status = ReloadableTLS(*served).status()
    stamp = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")
    assert stamp.match(str(status["not_after"])), status
    assert stamp.match(str(status["last_reload"])), status
    reloaded = dt.datetime.fromisoformat(str(status["last_reload"]))
    assert before <= reloaded <= dt.datetime.now(dt.UTC), status
    cert = x509.load_pem_x509_certificate(served[0].read_bytes())
    assert dt.datetime.fromisoformat(str(status["not_after"])) == cert.not_valid_after_utc


def test_a_reload_that_cannot_make_its_temp_file_keeps_the_old_and_reports(
    tmp_path: Path, served: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """No memfd here and a full temp directory: the reload is a CertError like any other (the
    old certificate served, the error in status), never a bare OSError past the SIGHUP
    handler that only /health's silence would have told."""
    tls = ReloadableTLS(*served)
    old = tls.status()["serial"]
    install(pair(tmp_path, "a2"), served)

    def no_memfd(*args: object) -> int:
        raise OSError(errno.ENOSYS, "Function not implemented")

    def full(*args: object, **kwargs: object) -> tuple[int, str]:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "memfd_create", no_memfd)
    monkeypatch.setattr(tempfile, "mkstemp", full)
    with pytest.raises(CertError, match="No space left on device"):
        tls.reload()
    status = tls.status()
    assert status["serial"] == old
    assert "cannot be loaded (No space left on device)" in str(status["last_error"])


def test_a_chain_caught_mid_copy_is_refused_not_served_short(
    tmp_path: Path, served: tuple[Path, Path]
) -> None:
    """The leaf whole, its intermediate cut off (``cp`` still writing as the watch looks): the
    parser would drop the unfinished block and serve the leaf alone."""
    tls = ReloadableTLS(*served)
    cert, key = pair(tmp_path, "a2")
    leaf = cert.read_bytes()
    served[1].write_bytes(key.read_bytes())
    served[0].write_bytes(leaf + leaf[: len(leaf) // 2])
    with pytest.raises(CertError, match="1 of its 2 certificates are whole"):
        tls.reload()
    served[0].write_bytes(leaf + leaf)  # the copy done: two whole blocks
    assert tls.reload() is True
