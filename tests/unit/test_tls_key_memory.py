"""Loading a certificate never puts its private key on a filesystem.

``ssl.SSLContext.load_cert_chain`` takes only paths, and the mirror loads exactly the bytes it
checked (not whatever the files hold by then), so it hands OpenSSL a copy. The copy is an
anonymous memory file (memfd, opened through ``/proc/self/fd``); only where there is none a
0600 temp file, removed at once. Each test looks at the moment of the load itself: the path
OpenSSL gets, and the temp directory (an empty one of the test's own) while it reads it.
"""

from __future__ import annotations

import os
import ssl
import tempfile
from pathlib import Path

import pytest

from docxy.tls.context import ReloadableTLS
from tests.unit.test_tls import client_context, connect, pair, serial_of, tls_echo_server

Seen = list[tuple[str, str, list[Path]]]


def open_memory_files() -> list[str]:
    """What this process holds open as a memfd of the mirror's (``/memfd:docxy-tls``)."""
    found = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:  # the listing's own fd, gone by now
            continue
        if target.startswith("/memfd:docxy"):
            found.append(target)
    return found


@pytest.fixture
def empty_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty temp directory standing for TMPDIR (and tempfile's cached choice of it)."""
    directory = tmp_path / "tmp"
    directory.mkdir()
    monkeypatch.setenv("TMPDIR", str(directory))
    monkeypatch.setattr(tempfile, "tempdir", str(directory))
    return directory


@pytest.fixture
def loads(monkeypatch: pytest.MonkeyPatch, empty_tmp: Path) -> Seen:
    """Every ``load_cert_chain`` call: the path OpenSSL was given, what it is (the link's
    target for a ``/proc/self/fd`` path), and what the temp directory held at that moment."""
    seen: Seen = []
    original = ssl.SSLContext.load_cert_chain

    def watched(self: ssl.SSLContext, certfile: str, *args: object, **kwargs: object) -> None:
        path = str(certfile)
        target = os.readlink(path) if path.startswith("/proc/self/fd/") else path
        seen.append((path, target, sorted(empty_tmp.rglob("*"))))
        original(self, certfile, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(ssl.SSLContext, "load_cert_chain", watched)
    return seen


async def handshake_serial(tls: ReloadableTLS, ca: Path) -> str:
    async with tls_echo_server(tls) as port:
        _, writer, serial = await connect(port, client_context(ca))
        writer.close()
    return serial


@pytest.mark.skipif(not hasattr(os, "memfd_create"), reason="no memfd_create on this system")
async def test_the_key_is_loaded_from_memory_and_tls_works(
    tmp_path: Path, loads: Seen, empty_tmp: Path
) -> None:
    cert, key = pair(tmp_path, "served", host="localhost")
    tls = ReloadableTLS(cert, key)
    new = pair(tmp_path, "next", host="localhost")
    cert.write_bytes(new[0].read_bytes())
    key.write_bytes(new[1].read_bytes())
    assert tls.reload() is True
    assert len(loads) == 2  # the first load and the reload
    for path, target, in_tmp in loads:
        assert in_tmp == [], f"a file in the temp directory during the load: {in_tmp}"
        assert path.startswith("/proc/self/fd/"), path
        assert target.startswith("/memfd:docxy"), target  # anonymous memory, on no filesystem
    assert open_memory_files() == []  # each closed after its load
    assert list(empty_tmp.iterdir()) == []
    assert await handshake_serial(tls, new[0]) == serial_of(new[0])


async def test_without_memfd_a_private_temp_file_is_removed_at_once(
    tmp_path: Path, loads: Seen, empty_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delattr(os, "memfd_create", raising=False)
    cert, key = pair(tmp_path, "served", host="localhost")
    tls = ReloadableTLS(cert, key)
    [(path, _, in_tmp)] = loads
    assert in_tmp == [Path(path)] and Path(path).parent == empty_tmp
    assert list(empty_tmp.iterdir()) == []  # gone once loaded
    assert await handshake_serial(tls, cert) == serial_of(cert)
