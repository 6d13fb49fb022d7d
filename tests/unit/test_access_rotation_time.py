"""The time of ``docxy tokens rotate``, from which the previous key's grace and its "issued
before the rotation" rule run: written in ``token-key.previous.pem``, so that a copy of
``auth.dir`` that does not keep mtimes (``cp`` without ``-p`` from a backup, a volume migration)
no longer moves it to the copy's time, lengthening the retired key's life. A previous file
written before (no such line) still counts from its mtime."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from docxy.access import keys
from docxy.access.keys import KeyRing, TokenKeyError, load_key, new_key_pem
from docxy.access.scopes import Access
from docxy.access.tokens import TokenInvalid, TokenSpec, issue, verify
from docxy.tls import files

SPEC = TokenSpec("https://mirror.test", "mirror.test", 300)
PULL = [Access("repository", "library/redis", ("pull",))]
GRACE = 600


def rotate_at(ring: KeyRing, when: float, monkeypatch: pytest.MonkeyPatch) -> str:
    """``docxy tokens rotate`` run at `when` (the clock of that moment, for the rotation only)."""
    with monkeypatch.context() as patch:
        patch.setattr(time, "time", lambda: when)
        return ring.rotate()


def copied(source: Path, where: Path, at: float) -> Path:
    """``cp -r`` of ``auth.dir`` (no ``-p``): the files' mtimes are the copy's time, `at`."""
    shutil.copytree(source, where, copy_function=shutil.copyfile)
    for path in where.iterdir():
        os.utime(path, (at, at))
    return where


def leaked(ring: KeyRing, where: Path) -> KeyRing:
    """A ring signing with a copy of `ring`'s current key: what someone who copied
    ``token-key.pem`` signs with after the operator rotated it out."""
    ring.signing()
    where.mkdir()
    (where / keys.CURRENT).write_bytes(ring.current_path.read_bytes())
    return KeyRing(where, grace=GRACE)


def test_a_copy_without_mtimes_keeps_the_rotation_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The rotation two minutes ago, the copy one minute ago: a token the leaked old key signed
    between the two is not the mirror's, and the grace ends GRACE after the rotation."""
    ring = KeyRing(tmp_path / "auth", grace=GRACE)
    rotated_at = float(int(time.time()) - 120)  # PyJWT checks nbf and exp on the wall clock
    issued = issue(ring, SPEC, "alice", PULL, rotated_at - 100)
    thief = leaked(ring, tmp_path / "leak")
    old = ring.signing().kid
    rotate_at(ring, rotated_at, monkeypatch)
    moved = KeyRing(copied(tmp_path / "auth", tmp_path / "moved", rotated_at + 60), grace=GRACE)
    assert moved.verifying(rotated_at + 61)[old].retired == rotated_at
    assert verify(moved, SPEC, issued, rotated_at + 61).user == "alice"
    minted = issue(thief, SPEC, "alice", PULL, rotated_at + 30)  # after the rotation
    with pytest.raises(TokenInvalid, match="after its rotation"):
        verify(moved, SPEC, minted, rotated_at + 61)
    assert old in moved.verifying(rotated_at + GRACE - 1)
    assert old not in moved.verifying(rotated_at + GRACE + 1)  # not GRACE after the copy


def test_a_restore_over_the_running_mirrors_files_keeps_the_rotation_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The previous key file restored in place from a backup, under the running mirror."""
    ring = KeyRing(tmp_path / "auth", grace=GRACE)
    old = ring.signing().kid
    rotated_at = float(int(time.time()) - 120)
    rotate_at(ring, rotated_at, monkeypatch)
    running = KeyRing(tmp_path / "auth", grace=GRACE)
    assert running.verifying(rotated_at + 1)[old].retired == rotated_at
    backup = ring.previous_path.read_bytes()
    ring.previous_path.unlink()
    ring.previous_path.write_bytes(backup)  # a new file: new inode, mtime now
    assert running.verifying(rotated_at + 1)[old].retired == rotated_at
    assert old not in running.verifying(rotated_at + GRACE + 1)


def test_the_rotation_time_is_a_line_before_the_pem_block_every_loader_skips(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An older docxy (or openssl) reads the file as before, counting from its mtime."""
    ring = KeyRing(tmp_path, grace=GRACE)
    old_kid = ring.signing().kid
    old = ring.current_path.read_bytes()
    rotate_at(ring, 1_796_400_000.25, monkeypatch)
    data = ring.previous_path.read_bytes()
    assert data == b"Retired: 2026-12-04T16:00:00.250000+00:00\n" + old
    loaded = serialization.load_pem_private_key(data, password=None)  # as older versions do
    assert isinstance(loaded, ec.EllipticCurvePrivateKey)
    assert keys.key_id(loaded.public_key()) == old_kid
    assert keys.key_id(load_key(ring.previous_path).public_key()) == old_kid
    assert os.stat(ring.previous_path).st_mode & 0o777 == 0o600


def test_a_previous_key_file_of_an_older_version_counts_from_its_mtime(tmp_path: Path) -> None:
    """``token-key.previous.pem`` as versions before this wrote it: the bare PEM block."""
    ring = KeyRing(tmp_path / "auth", grace=GRACE)
    rotated_at = float(int(time.time()) - 120)
    issued = issue(ring, SPEC, "alice", PULL, rotated_at - 100)
    thief = leaked(ring, tmp_path / "leak")
    old = ring.signing().kid
    ring.previous_path.write_bytes(ring.current_path.read_bytes())  # what rotate() did
    ring.current_path.write_bytes(new_key_pem())
    os.utime(ring.previous_path, (rotated_at, rotated_at))
    running = KeyRing(tmp_path / "auth", grace=GRACE)
    assert running.verifying(rotated_at + 1)[old].retired == rotated_at
    assert verify(running, SPEC, issued, rotated_at + 61).user == "alice"
    minted = issue(thief, SPEC, "alice", PULL, rotated_at + 30)
    with pytest.raises(TokenInvalid, match="after its rotation"):
        verify(running, SPEC, minted, rotated_at + 61)
    assert old not in running.verifying(rotated_at + GRACE + 1)
    # and the next rotation writes the line over it
    running.rotate()
    assert ring.previous_path.read_bytes().startswith(b"Retired: ")


def test_of_the_line_and_the_mtime_the_earlier_counts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file set back to an earlier time (``touch -d``) retires the key earlier; a line that
    claims a time after the file was written claims too much."""
    ring = KeyRing(tmp_path, grace=GRACE)
    old = ring.signing().kid
    rotated_at = float(int(time.time()) - 120)
    rotate_at(ring, rotated_at, monkeypatch)
    os.utime(ring.previous_path, (rotated_at - 50, rotated_at - 50))
    assert KeyRing(tmp_path, grace=GRACE).verifying(rotated_at)[old].retired == rotated_at - 50
    pem = ring.previous_path.read_bytes().partition(b"\n")[2]
    ring.previous_path.write_bytes(b"Retired: 2099-01-01T00:00:00+00:00\n" + pem)
    os.utime(ring.previous_path, (rotated_at, rotated_at))
    assert KeyRing(tmp_path, grace=GRACE).verifying(rotated_at)[old].retired == rotated_at


@pytest.mark.parametrize(
    "line", [b"Retired: yesterday", b"Retired: 2026-12-04T16:00:00", b"Retired: \xff"]
)
def test_a_rotation_line_without_a_time_names_the_file(tmp_path: Path, line: bytes) -> None:
    ring = KeyRing(tmp_path, grace=GRACE)
    ring.signing()
    ring.previous_path.write_bytes(line + b"\n" + new_key_pem())
    with pytest.raises(TokenKeyError) as caught:
        KeyRing(tmp_path, grace=GRACE).verifying()
    message = str(caught.value)
    assert message.startswith(f"token key {ring.previous_path}: its 'Retired:' line holds no ")
    assert "PRIVATE" not in message and "\n" not in message


def test_the_rotation_stays_one_atomic_write_of_both_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ring = KeyRing(tmp_path, grace=GRACE)
    ring.signing()
    writes: list[list[Path]] = []
    real = files.write_files_atomic

    def recorded(files: list[tuple[Path, bytes, int]]) -> None:
        writes.append([path for path, _, _ in files])
        real(files)

    monkeypatch.setattr(keys, "write_files_atomic", recorded)
    ring.rotate()
    assert writes == [[ring.previous_path, ring.current_path]]
