"""Review of the operator's command line (``docxy cache``, ``docxy health``, ``docxy users``):
faults an operator would meet, each shown by a test that failed before its fix."""

from __future__ import annotations

import asyncio
import errno
import os
import re
from pathlib import Path
from typing import Any

import pytest

from docxy.cli import cache as cachecli
from tests.unit.test_cachecli import Populated, _populate, run

pytestmark = pytest.mark.usefixtures("clean_docxy_env")


@pytest.fixture
def cache(tmp_path: Path) -> Populated:
    return asyncio.run(_populate(tmp_path / "cache"))


def test_rm_blobs_does_not_count_a_blob_a_live_mirror_evicted_meanwhile_as_freed(
    capsys: pytest.CaptureFixture[str], cache: Populated, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Beside a live mirror, a blob ``rm --blobs`` listed may be evicted by the mirror before
    rm gets to it: rm did not free it, and may not say it removed it (gc already counts such
    blobs apart, as gone meanwhile)."""
    looked = cachecli.open_by_processes
    evicted = cache.blob_path("busybox-l")

    def mirror_evicts_meanwhile(paths: object) -> dict[Path, int]:
        found = looked(paths)  # type: ignore[arg-type]
        os.unlink(evicted)  # the live mirror's eviction, between rm's listing and its delete
        return found

    monkeypatch.setattr(cachecli, "open_by_processes", mirror_evicts_meanwhile)
    code, out, _ = run(capsys, cache, "rm", "busybox:1", "--blobs")
    assert code == 0, out
    config_size = len(b"busybox-cfg " * 100)
    assert f"removed blob {cache.blobs['busybox-l']}" not in out
    assert f"removed blob {cache.blobs['busybox-cfg']} (1.2 KiB)" in out
    assert f"freed {cachecli.human_size(config_size)}" in out
    gone = [line for line in out.splitlines() if str(cache.blobs["busybox-l"]) in line]
    assert gone == [f"blob {cache.blobs['busybox-l']} (1000 B) was gone already (meanwhile)"]


@pytest.mark.parametrize("action", ["du", "ls"])
def test_a_cache_it_may_not_read_is_one_line_not_a_traceback(
    capsys: pytest.CaptureFixture[str],
    cache: Populated,
    monkeypatch: pytest.MonkeyPatch,
    action: str,
) -> None:
    """Run as another user than the mirror's, where the mirror's umask left its directories
    0700: listing tmp/ (du's downloads in progress) or the manifests' directory (ls's noted
    tags, du's count of them) is refused. rm and gc say such a refusal in one line; du and ls
    ended in a traceback."""
    scandir, stat = os.scandir, os.stat

    def refused(path: object) -> None:
        raise PermissionError(errno.EACCES, "Permission denied", str(path))

    def scandir_refusing(path: Any = ".") -> Any:
        if Path(path) == cache.root / "tmp":
            refused(path)
        return scandir(path)

    def stat_refusing(path: Any, *args: Any, **kwargs: Any) -> Any:
        if str(path).startswith(str(cache.root / "manifests" / "by-digest")):
            refused(path)
        return stat(path, *args, **kwargs)

    monkeypatch.setattr(os, "scandir", scandir_refusing)
    monkeypatch.setattr(os, "stat", stat_refusing)
    code, out, err = run(capsys, cache, action)
    assert "Traceback" not in err, err
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"docxy cache {action}: cannot read {cache.root}: {cache.root}/")
    assert lines[0].endswith(" Permission denied")
    assert code == 1


def test_gc_verify_says_a_corrupt_blob_it_kept_because_it_is_being_read(
    capsys: pytest.CaptureFixture[str], cache: Populated
) -> None:
    """Beside a live mirror, gc --verify leaves alone the blobs a process has open: it did not
    even hash them, and reported 'corrupt blobs removed: 0' and exit 0, as if all were sound.
    A corrupt layer a client is pulling (the one most worth knowing of) passed as good."""
    cache.blob_path("amd64-l").write_bytes(b"bit rot")  # corrupt, and being read
    with cache.blob_path("amd64-l").open("rb"):
        code, out, _ = run(capsys, cache, "gc", "--verify")
    assert cache.blob_path("amd64-l").exists()  # still left alone
    report = dict(
        (k.strip(), v.strip()) for k, v in (line.split(":", 1) for line in out.splitlines())
    )
    assert report["corrupt blobs removed"] == "0"
    assert report["corrupt blobs being read"].startswith("1 (kept:"), out
    assert code == 1, out


def test_gc_help_says_it_evicts_only_down_to_a_cap_given_to_it(
    capsys: pytest.CaptureFixture[str], cache: Populated
) -> None:
    """``docxy cache --help`` said gc would 'evict down to max_size' and du measure 'against
    cache.max_size': an operator whose mirror has its cap in a unit file ran ``docxy cache gc``
    and nothing was evicted (rightly: the default may not be the mirror's cap). The help says
    the cap must be given to the command, and ``gc --help`` says how."""
    from docxy.cli.main import main

    code, out, _ = run(capsys, cache, "gc")
    assert code == 0
    assert re.search(r"^blobs evicted: +none, cache\.max_size is not set", out, re.M), out
    assert main(["cache", "--help"]) == 0
    listing = " ".join(capsys.readouterr().out.split())
    assert re.search(r"gc .*evicts? down to cache\.max_size only when (it is )?given", listing)
    assert re.search(r"du .*against cache\.max_size only when (it is )?given", listing)
    assert main(["cache", "gc", "--help"]) == 0
    usage = " ".join(capsys.readouterr().out.split())
    assert "--set cache.max_size=" in usage, usage
