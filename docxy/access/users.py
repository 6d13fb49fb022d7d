"""The users file: one ``name:hash`` per line, argon2id (written by ``docxy users add``) or bcrypt.

The file is read again whenever it changes on disk, so ``docxy users add/rm`` takes effect in a
running mirror without a restart (and a removed user's tokens stop working at once: tokens are
only honoured for names still in the file). A check for an unknown name still runs one full hash
verification, so timing does not tell which names exist.
"""

from __future__ import annotations

import functools
import re
import secrets
from dataclasses import dataclass
from pathlib import Path

import bcrypt
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from docxy.tls.files import write_files_atomic

NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
_HASHER = PasswordHasher()


@functools.cache
def _dummy_hash() -> str:
    """Verified against for unknown names so that they cost as much as known ones (made on
    first use: hashing takes a moment that a CLI start should not pay)."""
    return _HASHER.hash(secrets.token_hex(16))


class UsersFileError(Exception):
    """A users file that cannot be read or parsed; the message names the file and line."""


def valid_name(name: str) -> bool:
    return NAME.fullmatch(name) is not None


def hash_password(password: str) -> str:
    """An argon2id hash (argon2-cffi's RFC 9106 low-memory defaults)."""
    return _HASHER.hash(password)


def verify_hash(stored: str, password: str) -> bool:
    """Whether ``password`` matches ``stored`` (argon2 ``$argon2...`` or bcrypt ``$2a/b/y$``)."""
    if stored.startswith("$argon2"):
        try:
            return _HASHER.verify(stored, password)
        except (VerificationError, InvalidHashError):
            return False
    if stored.startswith(("$2a$", "$2b$", "$2y$")):
        try:
            return bcrypt.checkpw(password.encode(), stored.encode())
        except ValueError:
            return False
    return False


def parse_users(text: str, path: Path) -> dict[str, str]:
    """``name:hash`` lines; blank lines and ``#`` comments skipped; a bad line is an error."""
    users: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, stored = line.partition(":")
        if not sep or not valid_name(name):
            raise UsersFileError(f"{path}:{number}: expected NAME:HASH with a valid name")
        if not stored.startswith(("$argon2", "$2a$", "$2b$", "$2y$")):
            raise UsersFileError(f"{path}:{number}: {name}: not an argon2 or bcrypt hash")
        if name in users:
            raise UsersFileError(f"{path}:{number}: {name}: listed twice")
        users[name] = stored
    return users


def render_users(users: dict[str, str]) -> bytes:
    lines = ["# docxy users: NAME:HASH (argon2id or bcrypt); edit with `docxy users`"]
    lines += [f"{name}:{stored}" for name, stored in sorted(users.items())]
    return ("\n".join(lines) + "\n").encode()


@dataclass
class _Snapshot:
    signature: tuple[int, int, int]
    users: dict[str, str]


class UsersFile:
    """The users file at ``path``, re-read when it changes (mtime, size or inode)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._snapshot: _Snapshot | None = None

    def _signature(self) -> tuple[int, int, int]:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return (0, -1, 0)
        except OSError as exc:
            raise UsersFileError(f"{self.path}: unreadable ({exc.strerror or exc})") from exc
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def users(self) -> dict[str, str]:
        signature = self._signature()
        if self._snapshot is None or self._snapshot.signature != signature:
            if signature[1] == -1:
                users: dict[str, str] = {}
            else:
                try:
                    text = self.path.read_text()
                except OSError as exc:
                    raise UsersFileError(f"{self.path}: unreadable ({exc.strerror})") from exc
                users = parse_users(text, self.path)
            self._snapshot = _Snapshot(signature, users)
        return self._snapshot.users

    def exists(self, name: str) -> bool:
        return name in self.users()

    def check(self, name: str, password: str) -> bool:
        """Whether ``name`` is a user with this password; as slow for unknown names."""
        stored = self.users().get(name)
        matched = verify_hash(stored if stored is not None else _dummy_hash(), password)
        return matched and stored is not None

    def names(self) -> list[str]:
        return sorted(self.users())

    def _write(self, users: dict[str, str]) -> None:
        write_files_atomic([(self.path, render_users(users), 0o600)])
        self._snapshot = None

    def add(self, name: str, password: str) -> bool:
        """Add or replace ``name``; True if it is new."""
        if not valid_name(name):
            raise ValueError(f"{name!r}: a user name is 1-64 of a-z 0-9 . _ - (first a-z 0-9)")
        if not password:
            raise ValueError("an empty password is not allowed")
        users = dict(self.users())
        new = name not in users
        users[name] = hash_password(password)
        self._write(users)
        return new

    def remove(self, name: str) -> bool:
        users = dict(self.users())
        if users.pop(name, None) is None:
            return False
        self._write(users)
        return True
