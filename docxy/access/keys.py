"""The token signing keys, kept in ``auth.dir`` (on the certificate volume in the container).

``token-key.pem`` signs new tokens. ``docxy tokens rotate`` copies it to
``token-key.previous.pem`` and writes a new one over it; tokens signed with the previous key are
still accepted for ``auth.key_grace`` seconds after the rotation, so nobody is logged out at
once: clients pick up tokens from the new key as their old ones expire. Only the tokens the
previous key signed before the rotation, though (``docxy.access.tokens.verify``): the retired
key may have leaked, and what it signs after its rotation is not the mirror's.

The rotation time is written in the previous key file, on a line before its PEM block
(``Retired: 2026-12-04T16:08:45.123456+00:00``; RFC 7468 lets text stand there, and PEM loaders,
an older docxy's and openssl's, skip it): a running mirror and one started after the rotation
read the same time from the disk (a restart keeps it, unlike a time the running mirror noted),
and a copy of ``auth.dir`` keeps it whether or not it keeps mtimes (``cp`` without ``-p``, a
volume migration: the file's mtime is then the copy's time, which would lengthen the retired
key's life). A previous file without that line, written by a version before it, is taken as
retired at its mtime. Of the two, the earlier counts: a copy only makes the mtime later, and a
line that claims a time after the file was written claims too much.
The running mirror notices both files changing on its own: it stats them on each use, and reads
and parses them again only when their (mtime, size, inode) changed.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from docxy.tls.files import write_files_atomic

CURRENT = "token-key.pem"
PREVIOUS = "token-key.previous.pem"
#: How the line before the previous key's PEM block starts: the time of its rotation follows.
RETIRED = b"Retired: "


class TokenKeyError(Exception):
    """A key file that cannot be read; the message names it."""


def key_id(key: ec.EllipticCurvePublicKey) -> str:
    der = key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(der).hexdigest()[:16]


def new_key_pem() -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def load_key(path: Path) -> ec.EllipticCurvePrivateKey:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise TokenKeyError(f"token key {path}: unreadable or not a PEM key ({exc})") from exc
    return _parse_key(path, data)


def _parse_key(path: Path, data: bytes) -> ec.EllipticCurvePrivateKey:
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise TokenKeyError(f"token key {path}: unreadable or not a PEM key ({exc})") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise TokenKeyError(f"token key {path}: not an EC key")
    return key


def retired_pem(pem: bytes, when: float) -> bytes:
    """The previous key file's content: `pem` after a line saying it was retired at `when`
    (a line `pem` had already is replaced: a previous key restored as the current one)."""
    if pem.startswith(RETIRED):
        pem = pem.partition(b"\n")[2]
    stamp = datetime.fromtimestamp(when, UTC).isoformat(timespec="microseconds")
    return RETIRED + stamp.encode() + b"\n" + pem


def load_retired(path: Path) -> tuple[ec.EllipticCurvePrivateKey, float | None]:
    """The previous key, and the time of its rotation written in its file (None: a file
    written before docxy wrote one); :class:`TokenKeyError` naming `path`, never its
    content, for a file that cannot be read or a line that holds no time."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise TokenKeyError(f"token key {path}: unreadable or not a PEM key ({exc})") from exc
    key = _parse_key(path, data)
    if not data.startswith(RETIRED):
        return key, None
    line = data.partition(b"\n")[0][len(RETIRED) :]
    try:
        when = datetime.fromisoformat(line.decode("ascii").strip())
    except ValueError:  # UnicodeDecodeError is one
        when = None
    if when is None or when.tzinfo is None:
        raise TokenKeyError(
            f"token key {path}: its 'Retired:' line holds no time with a UTC offset (remove "
            "the file to retire the previous key at once)"
        )
    return key, when.timestamp()


@dataclass(frozen=True)
class SigningKey:
    kid: str
    key: ec.EllipticCurvePrivateKey
    public: ec.EllipticCurvePublicKey

    @classmethod
    def of(cls, key: ec.EllipticCurvePrivateKey) -> SigningKey:
        public = key.public_key()
        return cls(key_id(public), key, public)


@dataclass(frozen=True)
class VerifyingKey:
    public: ec.EllipticCurvePublicKey
    #: when the key was retired (written in the previous key file, else its mtime); None: the
    #: current key
    retired: float | None = None


def _stat(path: Path) -> tuple[int, int, int]:
    """(mtime, size, inode) of ``path``; size -1 when there is none; any other ``OSError``
    (``auth.dir`` unsearchable or not a directory, a link loop) is :class:`TokenKeyError`."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return (0, -1, 0)
    except OSError as exc:
        raise TokenKeyError(f"token key {path}: cannot be looked up ({_why(exc)})") from exc
    return (st.st_mtime_ns, st.st_size, st.st_ino)


def _why(exc: OSError) -> str:
    """What went wrong, without the path (the message names it once)."""
    return exc.strerror or type(exc).__name__


def _write(files: list[tuple[Path, bytes, int]]) -> None:
    """:func:`write_files_atomic`, an ``OSError`` (a read-only ``auth.dir``) being
    :class:`TokenKeyError` naming the files (never their content)."""
    try:
        write_files_atomic(files)
    except OSError as exc:
        paths = " and ".join(str(path) for path, _, _ in files)
        raise TokenKeyError(f"token key {paths}: cannot be written ({_why(exc)})") from exc


class KeyRing:
    """The current key (created if missing) and, during its grace, the previous one."""

    def __init__(self, dir: Path, grace: float) -> None:
        self.dir = Path(dir)
        self.grace = grace
        self._signature: tuple[tuple[int, int, int], ...] = ()
        self._current: SigningKey | None = None
        self._previous: SigningKey | None = None
        self._previous_since = 0.0

    @property
    def current_path(self) -> Path:
        return self.dir / CURRENT

    @property
    def previous_path(self) -> Path:
        return self.dir / PREVIOUS

    def ensure(self) -> None:
        """Write a first key if there is none."""
        if _stat(self.current_path)[1] == -1:
            _write([(self.current_path, new_key_pem(), 0o600)])

    def rotate(self) -> str:
        """Retire the current key (verifying only, for the grace) and sign with a new one; a
        current key that cannot be read is :class:`TokenKeyError`, and nothing is changed."""
        self.ensure()
        try:
            retired = self.current_path.read_bytes()
        except OSError as exc:
            raise TokenKeyError(f"token key {self.current_path}: unreadable ({_why(exc)})") from exc
        load_key(self.current_path)  # TokenKeyError, nothing changed: none retired unread
        # A copy, renamed into place before the new key is renamed over the current one: a
        # running mirror never finds the current key missing (it would write one of its own)
        # and never the previous key with an old rotation time (the file holds the new one).
        previous = retired_pem(retired, time.time())
        _write([(self.previous_path, previous, 0o600), (self.current_path, new_key_pem(), 0o600)])
        return self.signing().kid

    def _refresh(self) -> None:
        signature = (_stat(self.current_path), _stat(self.previous_path))
        if signature == self._signature and self._current is not None:
            return
        self.ensure()
        # Taken before the files are read: a rotation while they are read changes the files
        # after it, and the next use reads them again (one taken after the reads would match
        # the new files and keep the old key in memory for good).
        signature = (_stat(self.current_path), _stat(self.previous_path))
        self._current = SigningKey.of(load_key(self.current_path))
        self._previous = None
        previous = _stat(self.previous_path)
        if previous[1] != -1:
            key, written = load_retired(self.previous_path)
            self._previous = SigningKey.of(key)
            mtime = previous[0] / 1e9  # a copy's time, or earlier: rotate() wrote the file
            self._previous_since = mtime if written is None else min(written, mtime)
        self._signature = signature

    def signing(self) -> SigningKey:
        self._refresh()
        assert self._current is not None
        return self._current

    def known(self) -> dict[str, ec.EllipticCurvePublicKey]:
        """kid → every key the mirror has signed with that it still has on disk: the current
        one and the previous one, whatever its grace (what it signed is the mirror's, honoured
        or not: ``docxy.access.tokens.issued_here``). None while there is no key on disk: the
        mirror signed nothing then, and telling a client's token is no reason to make one
        (client certificates in open mode issue no token; their ``auth.dir`` may be
        read-only)."""
        if _stat(self.current_path)[1] == -1:
            return {}
        self._refresh()
        assert self._current is not None
        keys = {self._current.kid: self._current.public}
        if self._previous is not None:
            keys.setdefault(self._previous.kid, self._previous.public)
        return keys

    def verifying(self, now: float | None = None) -> dict[str, VerifyingKey]:
        """kid → every key whose tokens may still be honoured: the current one, and during its
        grace the previous one, with the time of its rotation."""
        self._refresh()
        assert self._current is not None
        keys = {self._current.kid: VerifyingKey(self._current.public)}
        now = time.time() if now is None else now
        previous = self._previous
        if (
            previous is not None
            and previous.kid != self._current.kid  # a rotation cut off between its two renames
            and now - self._previous_since < self.grace
        ):
            keys[previous.kid] = VerifyingKey(previous.public, self._previous_since)
        return keys
