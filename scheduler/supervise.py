"""``python -m scheduler.supervise -c CONF``: supervisord, exiting 1 when a program gave up.

supervisord exits 0 however it was stopped, so a mirror that cannot start would leave the
container looking cleanly stopped (or, before, running without its mirror). The appliance's
event listener (scripts/supervisor-fatal.sh) leaves a note in ``$DOCXY_RUN_DIR`` and stops
supervisord when a program goes FATAL; this wrapper then exits 1, so ``docker ps`` and a restart
policy see a failure. It *is* supervisord (the same process): the entrypoint still execs it and
the container's signals still reach supervisord directly.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path

from supervisor import supervisord  # type: ignore[import-untyped]

FATAL_NOTE = "fatal"  # written by scripts/supervisor-fatal.sh: what went FATAL
EXIT_FATAL = 1


def main(argv: Sequence[str] | None = None) -> int:
    note = Path(os.environ["DOCXY_RUN_DIR"]) / FATAL_NOTE
    note.unlink(missing_ok=True)  # from a run before `docker restart`
    supervisord.main(list(sys.argv[1:] if argv is None else argv))
    if note.exists():
        print(
            f"supervisord stopped: a program gave up ({note.read_text().strip()})", file=sys.stderr
        )
        return EXIT_FATAL
    return 0


if __name__ == "__main__":
    sys.exit(main())
