"""JSON from outside (an upstream's answer, a client's form, a manifest) read safely.

``json.loads`` raises ValueError for a bad document, but RecursionError (no ValueError) for
one nested deeper than the decoder recurses: a few thousand ``[`` in a manifest or a token
answer went past every ``except ValueError`` as a traceback and a 500. :func:`loads` raises
the ValueError for both, so one ``except`` covers what a sender can put in a body.
"""

from __future__ import annotations

import json


def loads(data: bytes | str) -> object:
    """The document in ``data``; ValueError when it is none (bad, or nested too deep)."""
    try:
        return json.loads(data)
    except RecursionError as exc:
        raise ValueError("a JSON document nested too deep") from exc
