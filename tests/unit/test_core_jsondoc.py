"""JSON from outside read safely (docxy.core.jsondoc)."""

from __future__ import annotations

import pytest

from docxy.core import jsondoc

DEEP = b"[" * 100_000  # past the decoder's recursion: RecursionError from json.loads


def test_a_document_reads_as_json_loads_reads_it() -> None:
    assert jsondoc.loads(b'{"a": [1, {"b": null}]}') == {"a": [1, {"b": None}]}


@pytest.mark.parametrize("data", [DEEP, b"{" + b'"a":[' * 50_000, b"not json", b""])
def test_a_document_too_deep_is_a_value_error_as_a_bad_one_is(data: bytes) -> None:
    with pytest.raises(ValueError):
        jsondoc.loads(data)
