"""How a log line looks: its time in UTC, ISO 8601 with milliseconds and ``Z``, then the level,
the logger and the message (``2026-12-01T19:20:03.123Z INFO docxy.access: GET ...``).

UTC as ``/health``, the status page and the metrics tell times: a line matches the
``last_error`` it caused whatever the host's zone (a container's is often UTC, its host's
not). Shared by the mirror (``docxy serve``) and the renewer (``scheduler``), whose lines meet
in one container log; stdlib only, so the renewer's small process stays small.
"""

from __future__ import annotations

import logging
import sys
import time

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class UtcFormatter(logging.Formatter):
    """``%(asctime)s`` as ``2026-12-01T19:20:03.123Z``: UTC, whatever the process's zone."""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:  # noqa: N802
        seconds = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        return f"{seconds}.{int(record.msecs):03d}Z"


def log_to_stderr(level: int | str) -> None:
    """Lines of ``level`` and above on stderr, in :data:`FORMAT` with UTC times (as
    ``logging.basicConfig``: nothing changes if the root logger has a handler already)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(UtcFormatter(FORMAT))
    logging.basicConfig(level=level, handlers=[handler])
