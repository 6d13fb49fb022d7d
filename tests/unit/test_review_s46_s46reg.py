"""Review s46 (s46reg): faults of the session's changes (1624707..s46)."""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path

import pytest

from docxy.config import load_config
from docxy.http.app import open_store
from tests.scriptbox import Rule, ScriptBox, output
from tests.unit.test_certbot_env import env_certbot_gets
from tests.unit.test_install_script import APT, Resolver, install, resolver_on
from tests.unit.test_install_script import box as box  # noqa: F401  (fixture)
from tests.unit.test_review_install11 import engine

resolver = resolver_on("127.0.174.1")  # this module's own address (review s46reg)


async def test_the_cache_dir_docxy_serve_makes_is_for_its_user_alone(tmp_path: Path) -> None:
    """README (threat model): the mirror makes a `cache.dir` that does not exist yet for its
    own user alone (0700). `docxy serve` opens the cache through open_store, which makes the
    directory first (mkdir -p, 0755 under umask 022): make_private then finds it there and
    leaves it readable by every local user."""
    root = tmp_path / "home" / ".cache" / "docxy"
    config = load_config({"upstream.registry": "http://127.0.174.1:15901", "cache.dir": str(root)})
    old = os.umask(0o022)
    try:
        cache = open_store(config)
        await cache.manifests.loaded()
    finally:
        os.umask(old)
    assert stat.S_IMODE(root.stat().st_mode) == 0o700


# --- scripts/install.sh: apt-cache policy read under the operator's locale ---------------------

#: apt-cache policy as apt writes it: its words in the language of LC_ALL, LC_MESSAGES or LANG
#: (apt-cache.cc: _("  Candidate: ")), German here as on a host installed in German, whose
#: /etc/default/locale pam_env hands on to `sudo bash install.sh`.
LOCALIZED_POLICY = """\
import os, sys
lang = os.environ.get("LC_ALL") or os.environ.get("LC_MESSAGES") or os.environ.get("LANG") or "C"
candidate, installed = "Candidate", "Installed"
if lang.startswith("de"):
    candidate, installed = "Installationskandidat", "Installiert"
package = sys.argv[-1]
if package == "docker-compose-plugin":
    sys.stdout.write(f"{package}:\\n  {installed}: (none)\\n  {candidate}: 2.29.7-1~debian.12\\n")
else:
    sys.stdout.write(f"{package}:\\n  {installed}: (none)\\n  {candidate}: (none)\\n")
"""


def test_a_compose_plugin_candidate_under_a_german_locale(
    box: ScriptBox,  # noqa: F811
    resolver: Resolver,
) -> None:
    """candidate() and compose_v2_candidate() look for apt-cache policy's `Candidate:` line,
    but apt-cache runs under the operator's locale (only apt_get sets LC_ALL=C), where apt
    says `Installationskandidat:`. Beside docker-ce 27 and docker-compose 1.29 the run then
    stops saying apt offers no Compose v2 (docker-compose-plugin), though it does."""
    engine(box, "27.3.1", docker_ce=True)
    program = box.base / "localized_policy"
    program.write_text(f"#!{sys.executable}\n{LOCALIZED_POLICY}")
    program.chmod(0o755)
    box.stand_in("apt-cache", Rule(r"policy", passthrough=str(program)))

    result = install(box, resolver, env={"LANG": "de_DE.UTF-8"})

    assert "apt offers no Compose v2" not in result.stderr, output(result)
    assert box.called(rf"{APT} install -y --no-install-recommends docker-compose-plugin$")


# --- docxy.tls.certs.run_certbot: the secrets kept from certbot and its hooks -----------------


def test_certbot_runs_without_a_named_upstreams_password(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """65be1f8 keeps the mirror's secrets from certbot and its deploy hooks (whatever the
    operator put there): DOCXY_UPSTREAM_PASSWORD and DOCXY_SHARED_SECRET_KEY. A named
    upstream's password (docxy.upstream.settings: DOCXY_UPSTREAMS_<ID>_PASSWORD, ghcr.io's
    token) is as secret, and still reached the hook."""
    monkeypatch.setenv("DOCXY_UPSTREAMS", "ghcr.io")
    monkeypatch.setenv("DOCXY_UPSTREAMS_GHCR_IO_USERNAME", "bot")
    monkeypatch.setenv("DOCXY_UPSTREAMS_GHCR_IO_PASSWORD", "ghp_secret0123456789")
    monkeypatch.setenv("DOCXY_UPSTREAMS_GHCR_IO_PASSWORD_FILE", "/run/secrets/ghcr")  # a path
    passed = env_certbot_gets(tmp_path, monkeypatch)
    assert passed["DOCXY_UPSTREAMS_GHCR_IO_USERNAME"] == "bot"  # not a secret: kept
    assert passed["DOCXY_UPSTREAMS_GHCR_IO_PASSWORD_FILE"] == "/run/secrets/ghcr"
    assert "DOCXY_UPSTREAMS_GHCR_IO_PASSWORD" not in passed
