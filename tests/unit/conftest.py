"""Fixtures the unit tests share."""

from __future__ import annotations

import pytest

from tests.unit.logs import AccessLines


@pytest.fixture
def access_log(caplog: pytest.LogCaptureFixture) -> AccessLines:
    """The mirror's access log lines, captured from the test's start."""
    return AccessLines(caplog)
