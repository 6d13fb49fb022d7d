"""The mirror's access log as a test reads it (the ``access_log`` fixture, ``conftest.py``)."""

from __future__ import annotations

import logging

import pytest

ACCESS = "docxy.access"


class AccessLines:
    """The access log lines (``docxy.access`` at INFO) captured since the test began: call
    it for those logged so far."""

    def __init__(self, caplog: pytest.LogCaptureFixture) -> None:
        caplog.set_level(logging.INFO, logger=ACCESS)
        self.caplog = caplog

    def __call__(self) -> list[str]:
        return access_lines(self.caplog)


def access_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    """The access log lines among what ``caplog`` captured, at whatever level it captures."""
    return [r.getMessage() for r in caplog.records if r.name == ACCESS]
