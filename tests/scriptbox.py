"""A sandbox for running the shell scripts (install.sh, configure-client.sh) in tests.

The scripts take every path under ``--root DIR`` and call the commands that change a machine
(``apt-get``, ``systemctl``, ``docker``, ``kill``, ``curl``, ...) by name from PATH. A
:class:`ScriptBox` gives them a PATH of exactly two directories:

    bin/    stand-ins: each records its argv and answers from rules the test gave it
    tools/  links to the real harmless tools the scripts need (bash, coreutils, python3, dig...)

So a command the test did not foresee is "not found" instead of touching the machine, and the
stand-ins' log shows everything the script asked the machine to do.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SCRIPTS = REPO / "scripts"

# Real tools the scripts may use: they read and write only what they are given.
TOOLS = (
    "bash env cat cp mv rm mkdir mktemp chmod chown dirname basename date grep sed tr cmp "
    "head tail sleep id uname stat touch ln sort cut wc tee awk tar gzip dig getent "
    "readlink realpath find printf test rmdir du"
).split()

# The host's own free space must not decide a test (a CI machine with 21 GiB free failed every
# install of the default 20G cache): ``df`` answers with a fixed, roomy disk unless a test
# stands in another one.
DF_HEADER = "Filesystem 1024-blocks Used Available Capacity Mounted on\n"
ROOMY_KIB = 500 << 20  # 500 GiB

STAND_IN = """#!{python}
import json, os, re, subprocess, sys
name = os.path.basename(sys.argv[0])
here = os.path.dirname(os.path.abspath(sys.argv[0]))
argv = sys.argv[1:]
with open(os.path.join(here, ".calls.jsonl"), "a") as log:
    log.write(json.dumps({{"cmd": name, "argv": argv}}) + "\\n")
with open(os.path.join(here, ".rules", name + ".json")) as handle:
    rules = json.load(handle)
line = " ".join(argv)
for rule in rules:
    if re.search(rule["pattern"], line):
        if rule["effect"]:
            effect_env = {{**os.environ, "STANDINS": here}}
            subprocess.run(["bash", "-c", rule["effect"]], check=True, env=effect_env)
        if rule["passthrough"]:
            os.execv(rule["passthrough"], [rule["passthrough"], *argv])
        sys.stdout.write(rule["stdout"])
        sys.stderr.write(rule["stderr"])
        sys.exit(rule["rc"])
sys.exit(0)
"""


@dataclass(frozen=True)
class Rule:
    """When the stand-in's argv (joined by spaces) matches ``pattern``: print, exit ``rc``."""

    pattern: str
    stdout: str = ""
    rc: int = 0
    stderr: str = ""
    passthrough: str = ""  # exec this real program with the same argv instead
    effect: str = ""  # a bash command run first ($STANDINS is the stand-ins' directory)


@dataclass(frozen=True)
class Call:
    cmd: str
    argv: list[str]

    @property
    def line(self) -> str:
        return " ".join([self.cmd, *self.argv])


class ScriptBox:
    def __init__(self, base: Path) -> None:
        self.base = base
        self.root = base / "root"
        self.bin = base / "bin"
        self.tools = base / "tools"
        for directory in (self.root, self.bin / ".rules", self.tools):
            directory.mkdir(parents=True, exist_ok=True)
        for name in TOOLS:
            found = shutil.which(name)
            if found is not None:
                (self.tools / name).symlink_to(found)
        (self.tools / "python3").symlink_to(sys.executable)
        self.stand_in("df", Rule(r".", stdout=f"{DF_HEADER}x 1 1 {ROOMY_KIB} 1% /\n"))

    def stand_in(self, name: str, *rules: Rule, present: bool = True) -> None:
        """Put a recording stand-in for ``name`` first on PATH (exit 0 unless a rule matches).

        With ``present=False`` it is kept aside as ``bin/.later/NAME``: a rule's ``effect`` can
        install it (``cp $STANDINS/.later/docker $STANDINS/``), as apt-get would.
        """
        (self.bin / ".rules" / f"{name}.json").write_text(json.dumps([asdict(r) for r in rules]))
        (self.bin / ".later").mkdir(exist_ok=True)
        program = self.bin / name if present else self.bin / ".later" / name
        program.write_text(STAND_IN.format(python=sys.executable))
        program.chmod(0o755)

    def without(self, name: str) -> None:
        """Take a tool off PATH (a stand-in or a real one)."""
        for directory in (self.bin, self.tools):
            (directory / name).unlink(missing_ok=True)

    def path(self, rel: str) -> Path:
        """A path on the sandboxed machine: ``box.path("/etc/docker/daemon.json")``."""
        return self.root / rel.lstrip("/")

    def run(
        self,
        script: str | Path,
        *args: str,
        env: Mapping[str, str] | None = None,
        stdin: str = "",
        timeout: float = 120,
    ) -> subprocess.CompletedProcess[str]:
        environ = {
            "PATH": f"{self.bin}:{self.tools}",
            "HOME": str(self.base),
            "LANG": "C.UTF-8",
            "TMPDIR": str(self.base),
            **(env or {}),
        }
        return subprocess.run(
            [str(self.tools / "bash"), str(SCRIPTS / script), *args]
            if script
            else [str(self.tools / "bash"), "-s", "--", *args],
            env=environ,
            input=stdin,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def calls(self, cmd: str | None = None) -> list[Call]:
        log = self.bin / ".calls.jsonl"
        if not log.exists():
            return []
        calls = [Call(**json.loads(line)) for line in log.read_text().splitlines()]
        return [c for c in calls if cmd is None or c.cmd == cmd]

    def called(self, pattern: str) -> bool:
        return any(re.search(pattern, call.line) for call in self.calls())

    def forget_calls(self) -> None:
        (self.bin / ".calls.jsonl").unlink(missing_ok=True)

    def files(self) -> dict[str, bytes]:
        """Every file under the sandbox root, by path relative to it."""
        return {
            str(path.relative_to(self.root)): path.read_bytes()
            for path in sorted(self.root.rglob("*"))
            if path.is_file()
        }


def output(result: subprocess.CompletedProcess[str]) -> str:
    return f"exit {result.returncode}\n--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}"


def run_ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, output(result)
    return result.stdout
