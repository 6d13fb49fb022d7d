"""The users file: one ``name:hash`` per line, argon2id (written by ``docxy users add``) or bcrypt.

The file is read again whenever it changes on disk, so ``docxy users add/rm`` takes effect in a
running mirror without a restart (and a removed user's tokens stop working at once: tokens are
only honoured for names still in the file). A check for an unknown name still runs one full hash
verification, at the scheme and cost most of the file's hashes have (bcrypt from ``htpasswd -B``
is a hundred times cheaper than argon2id), so timing does not tell which names exist. A file
that mixes costs still tells the users of a rarer one apart from unknown names: each read of such
a file (at start-up, after each change) logs one warning with how many they are and how to set
their passwords again at the usual cost (no names, no hashes).

A password change ends the tokens issued under the old password: each token carries the
:func:`password_fingerprint` of the hash its password matched, and is honoured only while the
user's current hash has the same one.
"""

from __future__ import annotations

import errno
import functools
import hashlib
import logging
import os
import re
import secrets
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import bcrypt
from argon2 import PasswordHasher, extract_parameters
from argon2.exceptions import InvalidHashError, VerificationError

from docxy.tls.files import directory_lock, write_files_atomic

NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
_HASHER = PasswordHasher()
#: What bcrypt reads of a password; ``htpasswd -B`` hashes that much of a longer one.
BCRYPT_MAX_BYTES = 72

log = logging.getLogger(__name__)

#: A file found by its path has a name, so a link count of 0 means the path leads to a file
#: deleted or replaced elsewhere: a container's single-file bind mount keeps the inode it was
#: made with, and ``docxy users add/rm`` on the host writes a new file and renames it over
#: that one. Read on, it would keep removed users and old passwords working until a restart.
STALE_MOUNT = (
    "{path}: the file there was replaced or deleted where it came from (link count 0), so "
    "this is a stale copy: a users file bind-mounted alone into a container keeps the file "
    "it was mounted with; mount its directory instead (and restart the container)"
)

#: What ``docxy users add/rm`` says when the new file cannot be renamed over the old one because
#: that is a mount point (EBUSY): the file bind-mounted alone into the container it runs in.
MOUNTED_ALONE = (
    "{path}: cannot be replaced, it is a mount point (the users file bind-mounted alone into "
    "this container?); nothing was changed: mount its directory instead (and restart the "
    "container)"
)


def cost_of(stored: str) -> str:
    """What a check of ``stored`` costs, as its scheme and parameters: ``$2b$05`` (bcrypt's
    rounds) or ``$argon2id$v=19$m=65536,t=3,p=4``."""
    if stored.startswith("$argon2"):
        return stored.rsplit("$", 2)[0]
    return stored[:6]


def describe_cost(cost: str) -> str:
    """A :func:`cost_of` as a person reads it: ``bcrypt cost 5``, ``argon2id m=65536,t=3,p=4``."""
    if cost.startswith("$argon2"):
        scheme, *_, params = cost.split("$")[1:]
        return f"{scheme} {params}"
    return f"bcrypt cost {cost[4:6].lstrip('0') or '0'}"


def _fix_for(cost: str, path: Path) -> str:
    """How an operator sets a password in ``path`` again at ``cost``."""
    if cost.startswith("$argon2") or not cost[4:6].isdigit():  # no cost bcrypt has: argon2id
        return "`docxy users add NAME` (argon2id)"
    return f"`htpasswd -B -C {int(cost[4:6])} {path} NAME`, or `docxy users add NAME` for all"


@functools.cache
def _dummy_hash(cost: str = "") -> str:
    """Verified against for unknown names so that they cost as much as known ones: a hash of
    a random password with the scheme and parameters ``cost`` (:func:`cost_of`), argon2id's
    defaults when none (made on first use: hashing takes a moment a CLI start should not pay)."""
    secret = secrets.token_hex(16)
    try:
        if cost.startswith(("$2a$", "$2b$", "$2y$")):
            salt = bcrypt.gensalt(int(cost[4:6]), b"2a" if cost[2] == "a" else b"2b")
            return bcrypt.hashpw(secret.encode(), salt).decode()
        if cost.startswith("$argon2"):
            salt_and_tag = _HASHER.hash(secret).split("$")[-2:]  # their lengths: any will do
            params = extract_parameters("$".join([cost, *salt_and_tag]))
            return PasswordHasher.from_parameters(params).hash(secret)
    except (InvalidHashError, ValueError):  # a cost the library refuses, as it refuses the
        pass  # hashes that have it: those users cannot log in either
    return _HASHER.hash(secret)


def password_fingerprint(stored: str) -> str:
    """A short fingerprint of a stored password hash, for the tokens issued under it (the
    ``pwf`` claim): 64 bits of SHA-256 over the hash string. A client reads it in its token;
    it tells nothing of the password (the hash's salt and output stay out of it) and changes
    with every new hash, the same password set again included (a new salt)."""
    return hashlib.sha256(b"docxy token password\0" + stored.encode()).hexdigest()[:16]


class UsersFileError(Exception):
    """A users file that cannot be read or parsed; the message names the file and line."""


def valid_name(name: str) -> bool:
    return NAME.fullmatch(name) is not None


def hash_password(password: str) -> str:
    """An argon2id hash (argon2-cffi's RFC 9106 low-memory defaults)."""
    return _HASHER.hash(password)


def is_bcrypt(stored: str) -> bool:
    return stored.startswith(("$2a$", "$2b$", "$2y$"))


def bcrypt_too_long(password: str) -> bool:
    """Whether bcrypt would read only part of ``password`` (:data:`BCRYPT_MAX_BYTES`)."""
    return len(password.encode()) > BCRYPT_MAX_BYTES


def verify_hash(stored: str, password: str) -> bool:
    """Whether ``password`` matches ``stored`` (argon2 ``$argon2...`` or bcrypt ``$2a/b/y$``).

    bcrypt reads 72 bytes: a longer password never matches a bcrypt hash. bcrypt 4.1-4.3 would
    match it by its first 72 bytes (any ending logs in), bcrypt 5 raises. The check still runs,
    on those 72 bytes, so that the answer takes as long as any other.
    """
    if stored.startswith("$argon2"):
        try:
            return _HASHER.verify(stored, password)
        except (VerificationError, InvalidHashError):
            return False
    if is_bcrypt(stored):
        encoded = password.encode()
        try:
            matched = bcrypt.checkpw(encoded[:BCRYPT_MAX_BYTES], stored.encode())
        except ValueError:
            return False
        return matched and len(encoded) <= BCRYPT_MAX_BYTES
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


#: The first line of a users file the mirror creates.
USERS_HEADER = "# docxy users: NAME:HASH (argon2id or bcrypt); edit with `docxy users`\n"


def edited_users(text: str, name: str, stored: str | None) -> tuple[str, bool]:
    """`text` (a valid users file) with `name`'s line set to `stored`, or dropped for None, and
    whether it had one: every other line (users, comments, blank lines) is kept as it is, a
    new user's line goes last."""
    lines, found = [], False
    for line in text.splitlines(keepends=True):
        bare = line.strip()
        if bare and not bare.startswith("#") and bare.partition(":")[0] == name:
            found = True
            if stored is not None:
                lines.append(f"{name}:{stored}\n")
            continue
        lines.append(line)
    if stored is not None and not found:
        if lines and not lines[-1].endswith("\n"):
            lines[-1] += "\n"
        lines.append(f"{name}:{stored}\n")
    return "".join(lines), found


@dataclass
class _Snapshot:
    signature: tuple[int, int, int]
    users: dict[str, str]

    @functools.cached_property
    def usual_cost(self) -> str:
        """The cost most of the users' hashes have (:func:`cost_of`): an unknown name is
        checked at it, so that its answer takes as long as most known names'."""
        costs = Counter(cost_of(stored) for stored in self.users.values())
        return costs.most_common(1)[0][0] if costs else ""

    def warn_rarer_costs(self, path: Path) -> None:
        """One warning if some users' hashes have another cost than :attr:`usual_cost`: an
        unknown name's check (at the usual cost) takes another time than theirs."""
        usual = self.usual_cost
        rarer = sum(1 for stored in self.users.values() if cost_of(stored) != usual)
        if rarer:
            log.warning(
                "users file %s: %d of %d users have a password hash of another cost than the"
                " usual %s, so the time a login takes tells their names from unknown ones: set"
                " their passwords again at the usual cost with %s",
                path,
                rarer,
                len(self.users),
                describe_cost(usual),
                _fix_for(usual, path),
            )


class UsersFile:
    """The users file at ``path``, re-read when it changes (mtime, size or inode).

    A file it has read that goes missing is an error, not "no users" (a volume not mounted, a
    file moved: the names it held are still the mirror's, and a login naming one must not be
    taken for an upstream login); a file never there is no users (``docxy users add`` makes
    it)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._snapshot: _Snapshot | None = None

    def _signature(self) -> tuple[int, int, int]:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            if self._snapshot is not None and self._snapshot.signature[1] != -1:
                raise UsersFileError(
                    f"{self.path}: missing, though the mirror read it before (moved, or its "
                    "volume not mounted?); put it back, or an empty file for no users"
                ) from None
            return (0, -1, 0)
        except OSError as exc:
            raise UsersFileError(f"{self.path}: unreadable ({exc.strerror or exc})") from exc
        if st.st_nlink == 0:
            raise UsersFileError(STALE_MOUNT.format(path=self.path))
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
            self._snapshot.warn_rarer_costs(self.path)
        return self._snapshot.users

    def prepare(self) -> dict[str, str]:
        """Read the file now, and make the hash an unknown name is checked against at its
        usual cost (the mirror's start, off any request: made by the first unknown name's
        check, it took that check three hashes' time). The users it read."""
        users = self.users()
        assert self._snapshot is not None
        _dummy_hash(self._snapshot.usual_cost)
        return users

    def exists(self, name: str) -> bool:
        return name in self.users()

    def fingerprint(self, name: str) -> str | None:
        """The :func:`password_fingerprint` of ``name``'s hash now; None: no such user."""
        stored = self.users().get(name)
        return None if stored is None else password_fingerprint(stored)

    def check(self, name: str, password: str) -> bool:
        """Whether ``name`` is a user with this password; as slow for unknown names (as most
        users' hashes: a file that mixes costs tells the rarer ones apart)."""
        return self.checked(name, password) is not None

    def checked(self, name: str, password: str) -> str | None:
        """:meth:`check`, telling the :func:`password_fingerprint` of the very hash the
        password matched (None: no match): a change of the file meanwhile cannot give a token
        the new password's fingerprint for the old password. Called off the event loop: after
        a change of the file's usual cost, its first check makes the new unknown-name hash
        whatever the name (:meth:`users` runs on the loop too, and makes none)."""
        users = self.users()
        assert self._snapshot is not None
        dummy = _dummy_hash(self._snapshot.usual_cost)  # before the name is looked up
        stored = users.get(name)
        if stored is None:
            verify_hash(dummy, password)
            return None
        if is_bcrypt(stored) and bcrypt_too_long(password):
            log.warning(
                "users file: %s has a bcrypt hash, which checks %d bytes of a password: a "
                "longer one is refused; set it again with `docxy users add %s` (argon2id)",
                name,
                BCRYPT_MAX_BYTES,
                name,
            )
        return password_fingerprint(stored) if verify_hash(stored, password) else None

    def names(self) -> list[str]:
        return sorted(self.users())

    def _edit(self, name: str, stored: str | None) -> bool:
        """Set (None: drop) `name`'s line, from the file as it is now, under a lock: two
        commands at once each wrote back the users they had read, and one's user was lost. A
        linked file is written where it leads (the link stays). True if `name` was there."""
        target = Path(os.path.realpath(self.path))
        with directory_lock(target):
            try:
                text = target.read_text()
            except FileNotFoundError:
                text = USERS_HEADER
            except OSError as exc:
                raise UsersFileError(f"{self.path}: unreadable ({exc.strerror or exc})") from exc
            parse_users(text, self.path)  # a file in error stays as it is: the error is said
            new, found = edited_users(text, name, stored)
            if found or stored is not None:
                try:
                    write_files_atomic([(target, new.encode(), 0o600)])
                except OSError as exc:
                    if exc.errno == errno.EBUSY:
                        raise UsersFileError(MOUNTED_ALONE.format(path=self.path)) from exc
                    raise
        self._snapshot = None
        return found

    def add(self, name: str, password: str) -> bool:
        """Add or replace ``name``; True if it is new."""
        if not valid_name(name):
            raise ValueError(f"{name!r}: a user name is 1-64 of a-z 0-9 . _ - (first a-z 0-9)")
        if not password:
            raise ValueError("an empty password is not allowed")
        try:
            password.encode()
        except UnicodeEncodeError:  # its message holds a character of the password
            raise ValueError(
                "the password is not UTF-8 text (typed or piped in another encoding, such as "
                "Latin-1?): docker login sends UTF-8, so it could never match"
            ) from None
        return not self._edit(name, hash_password(password))

    def remove(self, name: str) -> bool:
        return self._edit(name, None)
