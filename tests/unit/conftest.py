"""Fixtures the unit tests share."""

from __future__ import annotations

from pathlib import Path

import pytest

from docxy.cache import blobs
from tests.unit.logs import AccessLines

#: What every file system looks like in the unit tests: larger than any cap they set (the
#: default cache.max_size, 20G, among them).
LARGE_DISK = 1 << 50


@pytest.fixture(autouse=True)
def large_disks(monkeypatch: pytest.MonkeyPatch) -> None:
    """The start-up WARNING of a cache.max_size over the disk's size depends on no host: on a
    machine whose /tmp (tmp_path) is under 20 GiB it came in every test that opens a cache
    with the default cap, and broke those counting WARNINGs. The tests of that WARNING set
    ``blobs.file_system_size`` themselves."""

    def large(_: Path) -> int:
        return LARGE_DISK

    monkeypatch.setattr(blobs, "file_system_size", large)


@pytest.fixture
def access_log(caplog: pytest.LogCaptureFixture) -> AccessLines:
    """The mirror's access log lines, captured from the test's start."""
    return AccessLines(caplog)
