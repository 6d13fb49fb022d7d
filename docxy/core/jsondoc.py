"""JSON from outside (an upstream's answer, a client's form, a manifest) read safely.

Every such reader wants a JSON object and nothing else. ``json.loads`` raises ValueError for a
bad document, but RecursionError (no ValueError) for one nested deeper than the decoder
recurses: a few thousand ``[`` in a manifest or a token answer went past every ``except
ValueError`` as a traceback and a 500. :func:`object_in` is None for all of these.
"""

from __future__ import annotations

import json
from typing import Any


def object_in(data: bytes | str) -> dict[str, Any] | None:
    """The JSON object in ``data``; None for anything else (bad JSON, nested too deep, a
    document that is no object)."""
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError):
        return None
    return doc if isinstance(doc, dict) else None
