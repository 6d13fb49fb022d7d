"""Edges of ``docxy.core.expiry`` that mutation testing found untested: an ``expires_in`` of
zero is no length of time (the default), and the boundary on either side of it (a positive
lifetime below the default is the default too: Docker's least)."""

from __future__ import annotations

import pytest

from docxy.core.expiry import DEFAULT_EXPIRES_IN, token_lifetime


@pytest.mark.parametrize(
    ("expires_in", "seconds"),
    [
        (0, DEFAULT_EXPIRES_IN),
        (0.0, DEFAULT_EXPIRES_IN),
        ("0", DEFAULT_EXPIRES_IN),
        (-0.0, DEFAULT_EXPIRES_IN),
        (0.5, DEFAULT_EXPIRES_IN),  # a positive lifetime below the least is the least
        (1, DEFAULT_EXPIRES_IN),
        (60.5, 60.5),
        (86400, 3600.0),  # at most the longest
    ],
)
def test_token_lifetime_at_zero(expires_in: object, seconds: float) -> None:
    assert token_lifetime(expires_in, 3600.0) == seconds
    assert DEFAULT_EXPIRES_IN == 60.0
