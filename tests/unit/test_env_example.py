""".env.example copied as it is (`cp .env.example .env`) must not ask Let's Encrypt for anything.

Its example domain is one Let's Encrypt refuses by policy: the appliance's entry point, given the
file's lines as compose passes them, must stop with a message instead of starting the renewer.
"""

from __future__ import annotations

from pathlib import Path

from tests.scriptbox import REPO, ScriptBox


def example_env() -> dict[str, str]:
    """The DOCXY_* variables compose passes from an unedited copy of .env.example."""
    found: dict[str, str] = {}
    for line in (REPO / ".env.example").read_text().splitlines():
        key, equals, value = line.strip().partition("=")
        if equals and key.startswith("DOCXY_"):
            found[key] = value
    return found


def entrypoint(tmp_path: Path, *args: str) -> tuple[int, str, ScriptBox]:
    box = ScriptBox(tmp_path)
    box.stand_in("python")  # supervisord is never started for real
    env = example_env() | {"DOCXY_STATE_DIR": str(box.root), "DOCXY_RUN_DIR": str(box.root)}
    result = box.run("entrypoint.sh", *args, env=env)
    return result.returncode, result.stdout + result.stderr, box


def test_an_unedited_copy_names_no_domain_for_lets_encrypt(tmp_path: Path) -> None:
    code, said, _ = entrypoint(tmp_path, "env")

    assert code == 0, said
    assert "DOCXY_CERTS_DOMAIN=" not in said
    assert "DOCXY_SUPERVISOR_RENEWER=false" in said


def test_an_unedited_copy_stops_the_appliance_with_what_to_set(tmp_path: Path) -> None:
    code, said, box = entrypoint(tmp_path)

    assert code == 2, said
    assert "set DOCXY_DOMAIN" in said
    assert not box.called(r"scheduler\.supervise")
