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

from docxy.access.clientca import CLIENTS
from docxy.access.gate import CLIENTS_UNREADABLE
from lab import REPO_ROOT

#: Loads what ``docxy serve`` loads up to serving (the CLI, the server, the app built from the
#: settings in argv[1], its access state prepared as before serving) and prints which of
#: argv[2:] are in sys.modules.
MIRROR = """
import json, sys
import docxy.cli.main, docxy.http.server
from docxy.config import load_config
from docxy.http.app import create_app
from docxy.http.state import mirror_state
app = create_app(load_config(json.loads(sys.argv[1]), environ={}), probe=False)
access = mirror_state(app).access
if access is not None:
    access.prepare()
print(json.dumps(sorted(name for name in sys.argv[2:] if sys.modules.get(name))))
"""

#: What checks credentials: needed in users mode, with client certificates, or for TLS.
CREDENTIALS = ["cryptography", "jwt", "argon2", "bcrypt"]


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


def plain(tmp_path: Path, **more: str) -> str:
    settings = {"upstream.registry": "http://127.0.0.1:9", "cache.dir": str(tmp_path / "cache")}
    return json.dumps(settings | more)


def test_the_mirror_does_not_load_a_command_line_ui(tmp_path: Path) -> None:
    """rich and pygments are for ``docxy warm``'s progress bars (and httpx's own CLI, which
    Quart's click dependency would otherwise load): ~3.4 MiB the serving mirror never uses."""
    heavy = ["rich", "pygments", "httpx._main"]
    assert loaded(MIRROR, plain(tmp_path), *heavy, "httpx", "quart") == ["httpx", "quart"]


def test_an_open_mirror_without_tls_loads_no_credential_checks(tmp_path: Path) -> None:
    """cryptography, PyJWT, argon2 and bcrypt: ~10 MiB a mirror that checks no credentials
    and serves no TLS (behind a CDN or a TLS proxy) never uses."""
    assert loaded(MIRROR, plain(tmp_path), *CREDENTIALS) == []


def test_users_mode_loads_what_checks_credentials(tmp_path: Path) -> None:
    users = {"auth.mode": "users", "auth.dir": str(tmp_path / "auth")}
    assert loaded(MIRROR, plain(tmp_path, **users), *CREDENTIALS) == sorted(CREDENTIALS)


def test_the_gate_names_the_client_list_clientca_reads() -> None:
    assert f"({CLIENTS})" in CLIENTS_UNREADABLE
