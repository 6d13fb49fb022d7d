"""skopeo as the end-to-end tests run it: a private HOME and an empty auth file, so neither the
machine's logins nor a test's earlier run leak into what is sent."""

from __future__ import annotations

import subprocess
from collections.abc import Mapping
from pathlib import Path

from tests.unavailable import need_binary

TIMEOUT = 180


def run_skopeo(
    home: Path, *args: str, env: Mapping[str, str] | None = None, timeout: float = TIMEOUT
) -> subprocess.CompletedProcess[str]:
    """``skopeo ARGS`` with HOME at `home` (made if missing) and only PATH (or `env`) besides;
    skips the test without skopeo (fails under DOCXY_REQUIRE_E2E=1)."""
    skopeo = need_binary("skopeo")
    home.mkdir(parents=True, exist_ok=True)
    auth_file = home / "auth.json"
    auth_file.write_text('{"auths": {}}')
    env = dict(env or {"PATH": "/usr/bin:/bin"})
    env |= {"HOME": str(home), "REGISTRY_AUTH_FILE": str(auth_file)}
    return subprocess.run(
        [skopeo, *args], capture_output=True, text=True, timeout=timeout, env=env, check=False
    )
