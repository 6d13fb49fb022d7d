"""An install of a certificate and key cut short at each step: what the mirror starts with.

The crash is an exception from the rename that would come next (what is on disk is the same as
after a crash there: every file written so far was synced). The real `docxy serve` after a crash
between the two renames is in tests/e2e/test_cert_install_crash_e2e.py.
"""

from __future__ import annotations

import errno
import fcntl
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from docxy.config import Config, load_config
from docxy.core.errors import ConfigError
from docxy.http.server import load_tls
from docxy.tls import certs, context
from docxy.tls.context import CertError, ReloadableTLS, self_signed
from docxy.tls.files import pending_path, write_pair
from docxy.tls.recover import finish_install, matching


class Crash(Exception):
    """The power went out."""


def crash_after(monkeypatch: pytest.MonkeyPatch, served: set[Path], renames: int) -> None:
    """Make the install die as it is about to rename a file onto a served path after
    `renames` such renames (0: before the first)."""
    real: Callable[..., None] = os.replace
    done: list[object] = []

    def replace(src: object, dst: object) -> None:
        if Path(str(dst)) in served:
            if len(done) == renames:
                raise Crash
            done.append(dst)
        real(src, dst)

    monkeypatch.setattr(os, "replace", replace)  # as docxy.tls.files calls it


def install_cut(
    monkeypatch: pytest.MonkeyPatch, live: Path, cert: Path, key: Path, renames: int
) -> None:
    """The renewer's install of `live` at `cert` and `key`, cut short after `renames` of its
    renames onto them."""
    crash_after(monkeypatch, {cert, key}, renames)
    with pytest.raises(Crash):
        certs.install(live, cert, key)
    monkeypatch.undo()


@pytest.fixture
def site(tmp_path: Path) -> tuple[Path, Path, Path]:
    """(live lineage, served cert, served key): the old pair served, a renewed one issued."""
    live = tmp_path / "live"
    self_signed(live, "mirror.test", cert_name="fullchain.pem", key_name="privkey.pem")
    cert, key = self_signed(tmp_path / "tls", "mirror.test", cert_name="c.pem", key_name="k.pem")
    return live, cert, key


def contents(*paths: Path) -> tuple[bytes, ...]:
    return tuple(path.read_bytes() for path in paths)


def serving(cert: Path, key: Path, tmp_path: Path) -> Config:
    """A mirror's config serving TLS from `cert` and `key` (what ``load_tls`` starts with)."""
    return load_config(
        {
            "server.tls_listen": "127.0.0.1:8443",
            "tls.cert_path": str(cert),
            "tls.key_path": str(key),
            "cache.dir": str(tmp_path / "cache"),
        },
        None,
        {},
    )


def test_cut_between_the_renames_is_completed(
    site: tuple[Path, Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    live, cert, key = site
    install_cut(monkeypatch, live, cert, key, 1)
    assert not matching(cert, key)
    with pytest.raises(CertError, match="does not match"):
        ReloadableTLS(cert, key)  # what the mirror refused to start with

    assert finish_install(cert, key) is True
    assert contents(cert, key) == contents(live / "fullchain.pem", live / "privkey.pem")
    assert not pending_path(cert).exists() and not pending_path(key).exists()
    assert key.stat().st_mode & 0o777 == 0o600
    assert finish_install(cert, key) is False  # done: nothing more to do


def test_cut_before_the_first_rename_keeps_the_old_pair(
    site: tuple[Path, Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    live, cert, key = site
    before = contents(cert, key)
    install_cut(monkeypatch, live, cert, key, 0)
    assert finish_install(cert, key) is False
    assert contents(cert, key) == before
    # The renewer's next install puts the new pair in place over the pending one.
    assert certs.install(live, cert, key) is True
    assert contents(cert, key) == contents(live / "fullchain.pem", live / "privkey.pem")


def test_a_mismatch_no_install_left_is_still_refused(tmp_path: Path) -> None:
    cert, _ = self_signed(tmp_path / "a", "mirror.test")
    _, key = self_signed(tmp_path / "b", "mirror.test")
    before = contents(cert, key)
    assert finish_install(cert, key) is False
    assert contents(cert, key) == before
    with pytest.raises(ConfigError, match="does not match"):
        load_tls(serving(cert, key, tmp_path))


def test_a_live_reload_of_a_half_install_is_refused(
    site: tuple[Path, Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A running mirror does not complete anything: it keeps serving the pair it has (the
    renewer's next run, or the mirror's next start, completes the install)."""
    live, cert, key = site
    tls = ReloadableTLS(cert, key)
    serial = tls.status()["serial"]
    install_cut(monkeypatch, live, cert, key, 1)
    with pytest.raises(CertError, match="does not match"):
        tls.reload()
    assert tls.status()["serial"] == serial
    assert not matching(cert, key)  # left for the start-up or the renewer


def test_the_mirror_starts_with_the_completed_pair(
    site: tuple[Path, Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    live, cert, key = site
    install_cut(monkeypatch, live, cert, key, 1)
    tls = load_tls(serving(cert, key, tmp_path))
    assert tls is not None
    assert contents(cert, key) == contents(live / "fullchain.pem", live / "privkey.pem")
    assert tls.status()["last_error"] is None


def test_an_interrupted_bootstrap_pair_is_completed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The bootstrap certificate is written the same way (first start with a domain)."""
    cert, key = tmp_path / "tls" / "cert.pem", tmp_path / "tls" / "key.pem"
    crash_after(monkeypatch, {cert, key}, 1)
    with pytest.raises(Crash):
        self_signed(cert.parent, "mirror.test", cert_name=cert.name, key_name=key.name)
    monkeypatch.undo()
    assert key.exists() and not cert.exists()
    assert finish_install(cert, key) is True
    assert matching(cert, key)


def test_a_mirror_starting_mid_install_and_the_install_both_finish(
    site: tuple[Path, Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The mirror starts (and completes the install) just between the renewer's two renames:
    the renewer's own second rename then finds its pending file gone, and must not fail."""
    live, cert, key = site
    real: Callable[..., None] = os.replace
    started: list[bool] = []

    def replace(src: object, dst: object) -> None:
        if Path(str(dst)) == cert and not started:
            started.append(True)
            assert finish_install(cert, key) is True  # the mirror, starting now
        real(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    assert certs.install(live, cert, key) is True
    monkeypatch.undo()
    assert contents(cert, key) == contents(live / "fullchain.pem", live / "privkey.pem")


def test_two_installs_at_once_leave_one_whole_pair(
    site: tuple[Path, Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The renewer's first install runs its whole course while the mirror's bootstrap has
    staged its key but not yet its certificate (the two share the pending names): the
    bootstrap must neither fail nor leave one's key beside the other's certificate."""
    live, cert, key = site
    cert.unlink()
    key.unlink()  # a first start: nothing served yet
    real: Callable[..., None] = os.replace
    renewer: list[threading.Thread] = []

    def replace(src: object, dst: object) -> None:
        if Path(str(dst)) == pending_path(cert) and not renewer:
            renewer.append(threading.Thread(target=certs.install, args=(live, cert, key)))
            renewer[0].start()
            renewer[0].join(timeout=0.5)  # old code: done by now; under the lock: waiting
        real(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    self_signed(cert.parent, "mirror.test", cert_name=cert.name, key_name=key.name)
    renewer[0].join(timeout=10)
    monkeypatch.undo()
    assert not renewer[0].is_alive()
    assert matching(cert, key)
    assert contents(cert, key) == contents(live / "fullchain.pem", live / "privkey.pem")


def test_the_bootstrap_keeps_a_pair_installed_meanwhile(
    site: tuple[Path, Path, Path], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A first start with a domain finds no served pair, and the renewer installs one before
    the bootstrap pair is written: the mirror serves the installed pair, not a self-signed one
    over it."""
    live, cert, key = site
    cert.unlink()
    key.unlink()
    real = write_pair

    def renewer_first(*args: Any, **kwargs: Any) -> bool:
        certs.install(live, cert, key)
        return real(*args, **kwargs)

    monkeypatch.setattr(f"{context.__name__}.write_pair", renewer_first)
    config = load_config(
        {
            "server.tls_listen": "127.0.0.1:8443",
            "tls.cert_path": str(cert),
            "tls.key_path": str(key),
            "certs.domain": "mirror.test",
            "cache.dir": str(tmp_path / "cache"),
        },
        None,
        {},
    )
    tls = load_tls(config)
    assert tls is not None
    assert contents(cert, key) == contents(live / "fullchain.pem", live / "privkey.pem")


def test_a_file_system_without_directory_locks_still_takes_the_pair(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """NFS emulates flock with a POSIX lock, which an exclusive one needs a descriptor open
    for writing for: on a directory, EBADF. The pair is written unlocked then, as before the
    lock, not refused (users add, the renewer's install, the bootstrap all go through it)."""

    def no_lock(fd: int, operation: int) -> None:
        raise OSError(errno.EBADF, os.strerror(errno.EBADF))

    monkeypatch.setattr(fcntl, "flock", no_lock)
    cert, key = tmp_path / "tls" / "c.pem", tmp_path / "tls" / "k.pem"
    assert write_pair(cert, key, b"cert", b"key") is True
    assert (cert.read_bytes(), key.read_bytes()) == (b"cert", b"key")
