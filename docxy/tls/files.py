"""Files written atomically, with the standard library only (the idle renewer imports this
without loading cryptography)."""

from __future__ import annotations

import errno
import fcntl
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path


class CertError(Exception):
    """A certificate/key pair that cannot be served; the message names the file and the problem."""


def write_files_atomic(files: list[tuple[Path, bytes, int]]) -> None:
    """Write each (path, data, mode) beside its target, then rename them all in a row.

    Readers see old or new files, never half-written ones; staging every file before the first
    rename keeps the moment where a new certificate sits beside an old key as short as possible.
    A certificate and its key go through :func:`write_pair` instead, which a crash between the
    renames cannot leave mismatched for good.
    """
    staged: list[tuple[str, Path]] = []
    try:
        for path, data, mode in files:
            staged.append((_staged(path, data, mode), path))
        for tmp, path in staged:
            os.replace(tmp, path)
    finally:
        for tmp, _ in staged:
            Path(tmp).unlink(missing_ok=True)


def pending_path(path: Path) -> Path:
    """Where :func:`write_pair` keeps the new `path` until it is renamed into place."""
    return path.with_name(f".{path.name}.pending")


def write_pair(
    cert_path: Path,
    key_path: Path,
    cert_pem: bytes,
    key_pem: bytes,
    *,
    keep: bool = False,
    only_if: Callable[[], bool] | None = None,
) -> bool:
    """Put a certificate and its key in place so that a crash at any moment leaves either the
    old pair, the new pair, or a half-done install that :func:`docxy.tls.recover.finish_install`
    completes; True if it wrote them.

    Both new files are first made whole beside their targets, under :func:`pending_path` names
    (written, synced, renamed, the directory synced); then the key is renamed into place, then
    the certificate. A crash between those two renames leaves the new key beside the old
    certificate, with the new certificate still pending next to it.

    Two writers of one pair (the mirror's bootstrap at start, the renewer's first install)
    take turns under a lock on the certificate's directory: the pending names are shared, and a key
    staged by one renamed beside a certificate staged by the other would be served. With
    `keep` (a bootstrap pair), nothing is written when both files exist by the time the lock
    is held: the pair that came first is kept. With `only_if`, nothing is written unless it
    says yes under that lock (the mirror's bootstrap pair renewed in place only while the files
    still hold it: an issued pair installed meanwhile is kept).
    """
    with directory_lock(cert_path):
        if keep and cert_path.exists() and key_path.exists():
            return False
        if only_if is not None and not only_if():
            return False
        pairs = [(key_path, key_pem, 0o600), (cert_path, cert_pem, 0o644)]
        for path, data, mode in pairs:
            tmp = _staged(path, data, mode)
            try:
                os.replace(tmp, pending_path(path))
            finally:
                Path(tmp).unlink(missing_ok=True)
        _sync_dirs(path for path, _, _ in pairs)
        for path, data, _ in pairs:
            try:
                os.replace(pending_path(path), path)
            except FileNotFoundError:
                if not _holds(path, data):
                    raise
                # a mirror starting just now completed this install (docxy.tls.recover)
        _sync_dirs(path for path, _, _ in pairs)
    return True


@contextmanager
def directory_lock(path: Path) -> Iterator[None]:
    """An exclusive flock on the directory holding `path`, held for the block: one writer of
    the files there at a time, across processes and threads (on the directory itself: no lock
    file is left among the certificates, in a client's kit, or beside a users file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError as exc:
            # NFS emulates flock with a POSIX lock, which an exclusive one needs a descriptor
            # open for writing for (EBADF: a directory has none): written unlocked, as before.
            if exc.errno not in _NO_DIRECTORY_LOCKS:
                raise
        yield
    finally:
        os.close(fd)


#: What flock says on a file system that cannot lock a directory (NFS: EBADF, ENOLCK).
#: What a public ``/health`` shows of a certificate (the mirror's served one under ``tls``, the
#: renewer's under ``renewal``): its names and validity, never where its files are.
PUBLIC_CERTIFICATE = (
    "served",
    "domain",
    "subject",
    "sans",
    "serial",
    "not_before",
    "not_after",
    "days_left",
    "expires_soon",
)
_NO_DIRECTORY_LOCKS = frozenset({errno.EBADF, errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL})


def _holds(path: Path, data: bytes) -> bool:
    try:
        return path.read_bytes() == data
    except OSError:
        return False


def _staged(path: Path, data: bytes, mode: int) -> str:
    """A temp file beside `path` holding `data` with `mode`, synced; its name."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return tmp


def _sync_dirs(paths: Iterable[Path]) -> None:
    """fsync the directories holding `paths`, so their renames survive a power loss in order."""
    for parent in {path.parent for path in paths}:
        try:
            fd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY)
        except OSError:
            continue  # a directory that cannot be opened to sync (some filesystems)
        try:
            os.fsync(fd)
        except OSError:
            pass
        finally:
            os.close(fd)
