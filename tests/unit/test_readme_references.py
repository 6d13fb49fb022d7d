"""What the README names exists: its links within itself, the files, modules and names it
points at, the Layout table's modules (every one of them, and nothing else), and every command
line flag it mentions.

Cheap checks that keep a long README honest as the code moves: a renamed module, a removed
flag or a retitled section fails here instead of misleading a reader. (test_readme_settings.py
checks the settings table, test_readme_metrics.py the metrics table.)
"""

from __future__ import annotations

import importlib
import re
import subprocess
from pathlib import Path

import pytest

from docxy.cli.main import build_parser
from docxy.config import SETTINGS
from scheduler.settings import build_parser as scheduler_parser

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
PROSE = re.sub(r"^```.*?^```", "", README, flags=re.M | re.S)  # fenced blocks left out
CODE = re.findall(r"`([^`\n]+)`", README) + re.findall(
    r"^```[a-z]*\n(.*?)^```", README, re.M | re.S
)

# Where a path the README names may start: the repository's own files and folders.
TOP = ("docxy/", "tests/", "scripts/", "lab/", "scheduler/", ".ci/")
TOP_FILES = {"Dockerfile", "compose.yaml", "compose.host.yaml", ".env.example", "pyproject.toml"}


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces as dashes."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_every_link_within_the_readme_names_a_heading() -> None:
    anchors = {slug(h) for h in re.findall(r"^#+ (.+)$", PROSE, re.M)}
    assert "several-upstreams" in anchors
    links = set(re.findall(r"\]\(#([^)]+)\)", README))
    assert links and sorted(links - anchors) == []


def named_paths() -> set[str]:
    paths = set()
    for text in CODE:
        for word in re.split(r"[\s,()`]+", text):
            word = word.rstrip(".,;:>")
            if word.startswith(TOP) or word in TOP_FILES:
                paths.add(word)
    return paths


def test_every_file_and_folder_the_readme_names_exists() -> None:
    paths = named_paths()
    assert "docxy/upstream/direct.py" in paths and ".ci/run" in paths
    missing = sorted(path for path in paths if not (ROOT / path).exists())
    assert missing == []


def test_every_test_file_the_readme_names_exists() -> None:
    names = {n for text in CODE for n in re.findall(r"\b(test_\w+\.py)\b", text)}
    assert "test_hostile_parsers.py" in names
    found = {path.name for path in (ROOT / "tests").rglob("test_*.py")}
    assert sorted(names - found) == []


def resolves(dotted: str) -> bool:
    """``package.module`` or ``package.module.attribute[.attribute]``."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            target: object = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        for name in parts[cut:]:
            if not hasattr(target, name):
                return False
            target = getattr(target, name)
        return True
    return False


def test_every_dotted_name_the_readme_gives_resolves() -> None:
    """``docxy.edge.clients.client_identity``, ``python -m tests.unit.big_catalogue``, ..."""
    pattern = r"(?<![\w.-])((?:docxy|scheduler|lab|tests)(?:\.\w+)+)\b"
    names = {n for text in CODE for n in re.findall(pattern, text)}
    settings = {f"{section}.{key}" for section, keys in SETTINGS.items() for key in keys}
    # scheduler.hour is a setting; docxy.toml and docxy.lock are files
    names -= settings | {"docxy.toml", "docxy.lock"}
    assert "docxy.core.cidr.client_key" in names and "scheduler.worker" in names
    assert sorted(n for n in names if not resolves(n)) == []


def layout_rows() -> dict[str, str]:
    """The Layout table: each folder (``docxy/core/``) → what its row says."""
    section = README.split("\n## Layout\n")[1].split("\n## ")[0]
    rows = {}
    for line in section.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        match = re.fullmatch(r"`([\w/]+/)`", cells[0])
        if match:
            rows[match.group(1)] = cells[1]
    return rows


PACKAGES = [f for f in layout_rows() if f.startswith(("docxy/", "lab/"))]


@pytest.mark.parametrize("folder", PACKAGES)
def test_the_layout_table_names_each_module_of_a_package(folder: str) -> None:
    """A package's row names each of its modules in backticks (``names``, ``digests``), and no
    module that is not there."""
    named = set(re.findall(r"`(\w+)`", layout_rows()[folder]))
    modules = {p.stem for p in (ROOT / folder).glob("*.py") if p.stem != "__init__"}
    packages = {p.name for p in (ROOT / folder).iterdir() if (p / "__init__.py").exists()}
    assert sorted(modules - named) == [], "modules the row does not name"
    others = {"Unavailable", "DiskBlobStore", "SharedTier", "HEALTHCHECK", "upstreams", "docxy"}
    assert sorted(named - modules - packages - others) == [], "named, not there"


def test_the_layout_table_has_a_row_for_each_package() -> None:
    rows = layout_rows()
    packages = {
        f"{p.parent.relative_to(ROOT)}/"
        for top in ("docxy", "lab")
        for p in (ROOT / top).glob("*/__init__.py")
    }
    assert sorted(packages - set(rows)) == []


def docxy_flags() -> dict[str, set[str]]:
    """Each ``docxy`` command (``docxy cache rm``) → the options it takes."""
    commands: dict[str, set[str]] = {}

    def walk(parser: object, words: str) -> None:
        actions = getattr(parser, "_actions", [])
        commands[words] = {s for a in actions for s in a.option_strings}
        for action in actions:
            for name, sub in (getattr(action, "choices", None) or {}).items():
                if hasattr(sub, "_actions"):
                    walk(sub, f"{words} {name}")

    walk(build_parser(), "docxy")
    return commands


def test_every_docxy_command_line_the_readme_gives_parses() -> None:
    """``docxy cache rm IMAGE[:TAG] [--blobs]``: the command exists and takes each flag."""
    commands = docxy_flags()
    lines = [
        m for text in CODE for m in re.findall(r"\bdocxy (?:[a-z]+)(?: [a-z]+)?[^`\n#|;]*", text)
    ]
    checked = 0
    for line in lines:
        words = line.split()
        command = " ".join(words[:3]) if " ".join(words[:3]) in commands else " ".join(words[:2])
        if command not in commands:
            continue  # "docxy serving on" in a quoted log line, "docxy users/clients/tokens"
        flags = set(re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", line))
        assert flags <= commands[command] | commands["docxy"], (line, flags - commands[command])
        checked += 1
    assert checked > 20


def script_flags(script: str) -> set[str]:
    help_text = subprocess.run(
        ["bash", str(ROOT / "scripts" / script), "--help"], capture_output=True, text=True
    ).stdout
    return set(re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", help_text))


def python_script_flags() -> set[str]:
    """The options scripts/*.py declare (the benchmarks, memory_at_rest.py)."""
    declared = r"add_argument\(\s*\"(--[a-z][a-z0-9-]*)\""
    return {f for p in (ROOT / "scripts").glob("*.py") for f in re.findall(declared, p.read_text())}


# Flags of other programs the README shows: docker, dockerd, curl, certbot, mypy.
FOREIGN = {
    "--registry-mirror",
    "--insecure-registry",
    "--build",
    "--build-arg",
    "--network",
    "--stop-timeout",
    "--cacert",
    "--cert-name",
    "--register-unsafely-without-email",
    "--strict",
    "--rm",  # docker compose run's, with --entrypoint (the chown of a root run's leftovers)
    "--entrypoint",
}


def test_every_flag_the_readme_mentions_is_taken_by_something() -> None:
    """A flag gone from every command (docxy's, the renewer's, install.sh, configure-client.sh,
    the benchmarks) and not another program's is a stale one."""
    ours = set().union(*docxy_flags().values(), scheduler_parser()._option_string_actions)
    ours |= script_flags("install.sh") | script_flags("configure-client.sh")
    ours |= python_script_flags()
    assert {"--rounds", "--throttle-mib", "--python"} <= ours
    mentioned = set(re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", README))
    assert "--skip-dns-check" in mentioned and "--show-config" in mentioned
    assert sorted(mentioned - ours - FOREIGN) == []


def test_the_readme_names_every_script() -> None:
    """Each file of scripts/ is named somewhere (the Layout table, its section)."""
    scripts = {p.name for p in (ROOT / "scripts").iterdir() if p.is_file()}
    assert "install.sh" in scripts
    assert sorted(name for name in scripts if name not in README) == []
