"""What the long-lived processes import: what a process loads stays in its memory for good.

Each check runs in a fresh interpreter and reads its ``sys.modules``: a module imported by any
test before would hide the fault in this one.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from lab import REPO_ROOT

#: Loads what ``docxy serve`` loads up to serving (the CLI, the server, the app built from the
#: settings in argv[1]) and prints which of argv[2:] are in sys.modules.
MIRROR = """
import json, sys
import docxy.cli.main, docxy.http.server
from docxy.config import load_config
from docxy.http.app import create_app
create_app(load_config(json.loads(sys.argv[1]), environ={}), probe=False)
print(json.dumps(sorted(name for name in sys.argv[2:] if sys.modules.get(name))))
"""


def loaded(code: str, *args: str) -> list[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DOCXY_")}
    env["PYTHONPATH"] = str(REPO_ROOT)
    proc = subprocess.run(
        [sys.executable, "-c", code, *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    names: list[str] = json.loads(proc.stdout)
    return names


def test_the_mirror_does_not_load_a_command_line_ui(tmp_path: Path) -> None:
    """rich and pygments are for ``docxy warm``'s progress bars (and httpx's own CLI, which
    Quart's click dependency would otherwise load): ~3.4 MiB the serving mirror never uses."""
    settings = {"upstream.registry": "http://127.0.0.1:9", "cache.dir": str(tmp_path / "cache")}
    heavy = ["rich", "pygments", "httpx._main"]
    assert loaded(MIRROR, json.dumps(settings), *heavy, "httpx", "quart") == ["httpx", "quart"]
