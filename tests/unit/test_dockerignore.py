""".dockerignore: what `docker compose up --build` sends as the build context from a clone.

The README's quick start makes a virtual environment in the clone (``.venv``, 360 MB with the
test extras), and install.sh run from a clone writes ``.env`` there, with the upstream
password: neither belongs in the context (sent whole to the daemon on every build, though the
Dockerfile copies neither), and what the Dockerfile copies must stay in it.

The patterns are matched as Docker's builder matches them (moby/patternmatcher): against the
path relative to the context, a pattern that matches a directory excluding all under it, ``*``
within one path component, ``**`` across any number of them. No pattern here uses ``!``.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.scriptbox import REPO

WILDCARDS = {"*": "[^/]*", "?": "[^/]"}


def _regex(pattern: str) -> re.Pattern[str]:
    out = []
    for component in pattern.strip("/").split("/"):
        if component == "**":
            out.append("(?:[^/]+/)*")  # any number of directories
        else:
            out.append("".join(WILDCARDS.get(c, re.escape(c)) for c in component) + "/")
    return re.compile("".join(out).removesuffix("/"))


def patterns() -> list[re.Pattern[str]]:
    lines = (REPO / ".dockerignore").read_text().splitlines()
    found = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    assert not any(p.startswith("!") for p in found), "this matcher does not handle exceptions"
    return [_regex(p) for p in found]


def excluded(path: str) -> bool:
    """Whether the file at ``path`` (relative to the context) stays out of it: a pattern
    matches the path or one of the directories above it."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    return any(p.fullmatch(prefix) for p in patterns() for prefix in prefixes)


@pytest.mark.parametrize(
    "path",
    [
        ".venv/bin/python3",
        ".venv/lib/python3.11/site-packages/httpx/__init__.py",
        ".env",
        ".git/config",
        "docxy/__pycache__/config.cpython-311.pyc",
        "tests/unit/test_config.py",
    ],
)
def test_kept_out_of_the_build_context(path: str) -> None:
    assert excluded(path)


@pytest.mark.parametrize(
    "path",
    [
        "pyproject.toml",
        "README.md",
        "constraints.txt",
        "Dockerfile",
        "docxy/config.py",
        "docxy/data/configure-client.sh",
        "scheduler/__init__.py",
        "scripts/entrypoint.sh",
        "scripts/configure-client.sh",
        ".env.example",
    ],
)
def test_what_the_dockerfile_copies_stays_in_the_context(path: str) -> None:
    assert not excluded(path)


def test_every_script_supervisord_runs_is_copied_into_the_image() -> None:
    """supervisord.conf runs its listeners from DOCXY_SCRIPTS_DIR, /usr/local/lib/docxy/ in the
    image: one the Dockerfile leaves out is a listener that cannot start, FATAL, and the fatal
    listener takes every container down (only the image build would show it, slowly)."""
    conf = (REPO / "scripts" / "supervisord.conf").read_text()
    run = set(re.findall(r"%\(ENV_DOCXY_SCRIPTS_DIR\)s/([\w.-]+)", conf))
    assert {"supervisor-fatal.sh", "supervisor-watchdog.sh"} <= run
    copy = next(
        line
        for line in re.split(r"(?<!\\)\n", (REPO / "Dockerfile").read_text())
        if line.startswith("COPY scripts/entrypoint.sh")
    )
    assert copy.rstrip().endswith("/usr/local/lib/docxy/"), copy
    copied = {Path(word).name for word in copy.split() if word.startswith("scripts/")}
    assert run <= copied, sorted(run - copied)
