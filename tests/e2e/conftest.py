"""Fixtures the end-to-end test modules share."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from lab.objectstore import ObjectStore as Weed
from lab.objectstore import start_objectstore
from tests.unavailable import need_binary


@pytest.fixture(scope="module")
def weed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Weed]:
    """A real S3-compatible store (SeaweedFS) on loopback, one per test module."""
    need_binary("weed")
    store = start_objectstore(tmp_path_factory.mktemp("weed"))
    try:
        yield store
    finally:
        store.stop()
