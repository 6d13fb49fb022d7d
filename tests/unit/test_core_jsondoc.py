"""JSON from outside read safely (docxy.core.jsondoc)."""

from __future__ import annotations

import pytest

from docxy.core import jsondoc

DEEP = b"[" * 100_000  # past the decoder's recursion: RecursionError from json.loads


def test_an_object_reads_as_json_loads_reads_it() -> None:
    assert jsondoc.object_in(b'{"a": [1, {"b": null}]}') == {"a": [1, {"b": None}]}


@pytest.mark.parametrize(
    "data", [DEEP, b"{" + b'"a":[' * 50_000, b"not json", b"", b"[1]", b'"text"', b"null"]
)
def test_anything_but_an_object_is_none_a_document_too_deep_as_well(data: bytes) -> None:
    assert jsondoc.object_in(data) is None
