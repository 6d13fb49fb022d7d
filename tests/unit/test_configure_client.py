"""scripts/configure-client.sh against a sandbox root, with stand-ins for docker, systemctl, kill.

Every test reads the files the script left under the sandbox root and the commands it ran (the
stand-ins' log); nothing here touches the machine's own Docker, containerd or podman.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tomllib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path

import pytest

from docxy.access.clientca import ClientCA
from docxy.http.setup_script import fill_in
from tests.scriptbox import REPO, Rule, ScriptBox, output, run_ok

MIRROR = "https://mirror.example.com"
SCRIPT = "configure-client.sh"
DAEMON_JSON = "/etc/docker/daemon.json"
HOSTS_TOML = "/etc/containerd/certs.d/docker.io/hosts.toml"
PODMAN_DROPIN = "/etc/containers/registries.conf.d/50-docxy-mirror.conf"

RICH = """{
    "log-driver": "json-file",
    "log-opts": {"max-size": "10m", "max-file": "3"},
    "registry-mirrors": ["https://other.example", "https://mirror.example.com/", "https://third.example"],
    "insecure-registries": ["10.0.0.5:5000"],
    "default-ulimits": {"nofile": {"Name": "nofile", "Hard": 64000, "Soft": 64000}},
    "big": 123456789012345678901234567890,
    "label": "café"
}
"""


def docker_info(*mirrors: str) -> Rule:
    """`docker info` of a dockerd using ``mirrors`` (dockerd adds a trailing slash)."""
    return Rule(r"^info", stdout=json.dumps([m + "/" for m in mirrors]) + "\n")


@pytest.fixture
def box(tmp_path: Path) -> ScriptBox:
    """A Docker host under systemd whose dockerd answers `docker info` with our mirror."""
    box = ScriptBox(tmp_path)
    box.stand_in("docker", docker_info(MIRROR))
    box.stand_in("systemctl", Rule(r"is-active", rc=0))
    box.stand_in("kill")
    return box


# Under --root the script leaves this host's dockerd alone unless asked: the tests ask, for
# the stand-ins of systemctl, docker and kill to stand in for that dockerd.
def attempt(
    box: ScriptBox, *args: str, env: dict[str, str] | None = None, stdin: str = ""
) -> subprocess.CompletedProcess[str]:
    """Run the script (read from ``stdin`` when given) under the sandbox root, reloading the
    sandbox's dockerd stand-in as it would this host's."""
    script = "" if stdin else SCRIPT
    return box.run(script, "--root", str(box.root), "--reload", *args, env=env, stdin=stdin)


def run(box: ScriptBox, *args: str) -> tuple[int, str]:
    result = attempt(box, *args)
    return result.returncode, result.stdout + result.stderr


def configure(box: ScriptBox, *args: str) -> str:
    """Run the script under the sandbox root; it must succeed. Returns what it printed."""
    return run_ok(attempt(box, *args))


def daemon_json(box: ScriptBox) -> dict[str, object]:
    loaded = json.loads(box.path(DAEMON_JSON).read_text())
    assert isinstance(loaded, dict)
    return loaded


def backups(box: ScriptBox, path: str) -> list[Path]:
    target = box.path(path)
    return sorted(target.parent.glob(target.name + ".docxy-backup-*"))


def leftovers(box: ScriptBox) -> list[str]:
    """Temporary files the script left behind (it stages files as hidden siblings)."""
    return [name for name in box.files() if Path(name).name.startswith(".")]


# --- daemon.json ---------------------------------------------------------------------------


def test_missing_daemon_json_is_created_and_dockerd_reloaded(box: ScriptBox) -> None:
    code, said = run(box, "--mirror", MIRROR)

    assert code == 0, said
    assert daemon_json(box) == {"registry-mirrors": [MIRROR]}
    assert box.path(DAEMON_JSON).stat().st_mode & 0o777 == 0o644
    assert backups(box, DAEMON_JSON) == []
    assert box.called(r"^systemctl reload docker$")
    assert box.called(r"^docker info")
    assert "dockerd now uses https://mirror.example.com" in said
    assert leftovers(box) == []


def test_empty_daemon_json_is_filled_in(box: ScriptBox) -> None:
    box.path(DAEMON_JSON).parent.mkdir(parents=True)
    box.path(DAEMON_JSON).write_text("  \n")

    code, said = run(box, "--mirror", MIRROR, "--docker")

    assert code == 0, said
    assert daemon_json(box) == {"registry-mirrors": [MIRROR]}
    assert [p.read_text() for p in backups(box, DAEMON_JSON)] == ["  \n"]


def test_rich_daemon_json_keeps_every_key_and_mirror_with_ours_first(box: ScriptBox) -> None:
    box.path(DAEMON_JSON).parent.mkdir(parents=True)
    box.path(DAEMON_JSON).write_text(RICH)
    box.path(DAEMON_JSON).chmod(0o600)

    code, said = run(box, "--mirror", MIRROR + "/", "--docker")

    assert code == 0, said
    after = daemon_json(box)
    before = json.loads(RICH)
    assert after["registry-mirrors"] == [
        MIRROR,
        "https://other.example",
        "https://third.example",
    ]
    assert {k: v for k, v in after.items() if k != "registry-mirrors"} == {
        k: v for k, v in before.items() if k != "registry-mirrors"
    }
    assert list(after) == list(before), "keys keep their order"
    assert box.path(DAEMON_JSON).stat().st_mode & 0o777 == 0o600, "the file keeps its mode"
    (backup,) = backups(box, DAEMON_JSON)
    assert backup.read_text() == RICH


def test_second_run_changes_nothing_and_says_so(box: ScriptBox) -> None:
    box.path(DAEMON_JSON).parent.mkdir(parents=True)
    box.path(DAEMON_JSON).write_text(RICH)
    configure(box, "--mirror", MIRROR, "--docker")
    first = box.files()
    box.forget_calls()

    code, said = run(box, "--mirror", MIRROR, "--docker")

    assert code == 0, said
    assert box.files() == first, "byte-identical, and no new backup"
    assert "already the first registry mirror: unchanged" in said
    assert "Nothing to change" in said
    assert not box.called(r"^(systemctl reload|systemctl restart|kill)")


def test_second_run_reloads_a_dockerd_that_missed_the_first(box: ScriptBox) -> None:
    configure(box, "--mirror", MIRROR, "--no-reload")
    assert not box.called(r"^systemctl reload")
    box.stand_in("docker", docker_info("https://other.example"))

    attempt(
        box,
        "--mirror",
        MIRROR,
        env={"DOCXY_RELOAD_WAIT": "1"},
    )

    assert box.called(r"^systemctl reload docker$")


@pytest.mark.parametrize(
    "broken",
    [
        '{"registry-mirrors": ["https://other.example"],',
        '["https://mirror.example.com"]',
        '{"registry-mirrors": "https://other.example"}',
        '{"registry-mirrors": [1, 2]}',
        '{"debug": true, "debug": false}',
        "not json at all",
        '{"debug": true, "registry-mirrors": [] // ours\n}',
    ],
)
def test_malformed_daemon_json_is_left_untouched_with_an_error(box: ScriptBox, broken: str) -> None:
    box.path(DAEMON_JSON).parent.mkdir(parents=True)
    box.path(DAEMON_JSON).write_bytes(broken.encode())
    before = box.files()

    code, said = run(box, "--mirror", MIRROR, "--docker")

    assert code == 3, said
    assert box.files() == before, "byte-for-byte untouched, no backup, no temp file"
    assert "daemon.json" in said and "left as it is" in said
    assert not box.called(r"^(systemctl reload|kill)")


@pytest.mark.parametrize(
    ("comment", "where"),
    [
        ('{\n  // the log settings\n  "debug": true\n}\n', "line 2 column 3"),
        ('{"debug": true /* on */}', "line 1 column 16"),
        ('# daemon settings\n{"debug": true}\n', "line 1 column 1"),
    ],
)
def test_a_comment_in_daemon_json_is_refused_saying_so(
    box: ScriptBox, comment: str, where: str
) -> None:
    box.path(DAEMON_JSON).parent.mkdir(parents=True)
    box.path(DAEMON_JSON).write_text(comment)
    before = box.files()

    code, said = run(box, "--mirror", MIRROR, "--docker")

    assert code == 3, said
    assert box.files() == before
    assert f"has a comment at {where}" in said
    assert "dockerd refuses" in said


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ('{\n  "debug": true,\n}\n', "line 2 column 16"),
        ('{"registry-mirrors": ["https://a.example",  ]}', "line 1 column 42"),
    ],
)
def test_a_trailing_comma_in_daemon_json_is_refused_saying_so(
    box: ScriptBox, text: str, where: str
) -> None:
    """A comma before a closing brace or bracket (left by a hand edit that removed the last
    entry): dockerd refuses the file too; the script said only Python's "Expecting property
    name enclosed in double quotes"."""
    box.path(DAEMON_JSON).parent.mkdir(parents=True)
    box.path(DAEMON_JSON).write_text(text)
    before = box.files()

    code, said = run(box, "--mirror", MIRROR, "--docker")

    assert code == 3, said
    assert box.files() == before
    assert f"has a trailing comma at {where}" in said
    assert "dockerd refuses" in said


@pytest.mark.parametrize("mirrors", ["null", "[]"])
def test_an_empty_registry_mirrors_becomes_the_mirror_in_its_place(
    box: ScriptBox, mirrors: str
) -> None:
    box.path(DAEMON_JSON).parent.mkdir(parents=True)
    text = f'{{"debug": true, "registry-mirrors": {mirrors}, "log-level": "warn"}}\n'
    box.path(DAEMON_JSON).write_text(text)

    code, said = run(box, "--mirror", MIRROR, "--docker")

    assert code == 0, said
    after = daemon_json(box)
    assert after == {"debug": True, "registry-mirrors": [MIRROR], "log-level": "warn"}
    assert list(after) == ["debug", "registry-mirrors", "log-level"]
    assert [p.read_text() for p in backups(box, DAEMON_JSON)] == [text]


def test_removing_from_a_null_registry_mirrors_changes_nothing(box: ScriptBox) -> None:
    box.path(DAEMON_JSON).parent.mkdir(parents=True)
    box.path(DAEMON_JSON).write_text('{"registry-mirrors": null}\n')
    box.stand_in("docker", docker_info())
    before = box.files()

    code, said = run(box, "--mirror", MIRROR, "--docker", "--remove")

    assert code == 0, said
    assert box.files() == before
    assert "not in registry-mirrors: nothing to remove" in said


def test_a_daemon_json_with_a_byte_order_mark_keeps_it(box: ScriptBox) -> None:
    """Notepad writes one; dockerd 23.0 and later read past it (20.10 refused the file)."""
    box.path(DAEMON_JSON).parent.mkdir(parents=True)
    box.path(DAEMON_JSON).write_bytes(b"\xef\xbb\xbf" + RICH.encode())

    code, said = run(box, "--mirror", MIRROR, "--docker")

    assert code == 0, said
    written = box.path(DAEMON_JSON).read_bytes()
    assert written.startswith(b"\xef\xbb\xbf{"), "one mark, where it was"
    after = json.loads(written[3:])
    assert after["registry-mirrors"] == [MIRROR, "https://other.example", "https://third.example"]
    assert list(after) == list(json.loads(RICH))
    (backup,) = backups(box, DAEMON_JSON)
    assert backup.read_bytes() == b"\xef\xbb\xbf" + RICH.encode()

    box.forget_calls()
    code, said = run(box, "--mirror", MIRROR, "--docker")

    assert code == 0, said
    assert "already the first registry mirror: unchanged" in said
    assert box.path(DAEMON_JSON).read_bytes() == written


def test_a_utf16_daemon_json_is_refused_saying_what_it_is(box: ScriptBox) -> None:
    box.path(DAEMON_JSON).parent.mkdir(parents=True)
    box.path(DAEMON_JSON).write_bytes("\ufeff{}".encode("utf-16-le"))
    before = box.files()

    code, said = run(box, "--mirror", MIRROR, "--docker")

    assert code == 3, said
    assert box.files() == before
    assert "UTF-16" in said and "save it as UTF-8" in said


def test_dry_run_prints_the_new_file_and_changes_nothing(box: ScriptBox) -> None:
    box.path(DAEMON_JSON).parent.mkdir(parents=True)
    box.path(DAEMON_JSON).write_text(RICH)
    before = box.files()

    code, said = run(box, "--mirror", MIRROR, "--dry-run", "--containerd", "--podman", "--docker")

    assert code == 0, said
    assert box.files() == before
    assert f"would write {box.path(DAEMON_JSON)}" in said
    assert f'|     "{MIRROR}",' in said
    assert f"would write {box.path(HOSTS_TOML)}" in said
    assert f"would write {box.path(PODMAN_DROPIN)}" in said
    assert not box.called(r"^(systemctl reload|systemctl restart|kill)")


def test_remove_takes_out_only_this_mirror(box: ScriptBox) -> None:
    box.path(DAEMON_JSON).parent.mkdir(parents=True)
    box.path(DAEMON_JSON).write_text(RICH)
    box.stand_in("docker", docker_info("https://other.example"))

    code, said = run(box, "--mirror", MIRROR, "--remove", "--docker")

    assert code == 0, said
    after = daemon_json(box)
    assert after["registry-mirrors"] == ["https://other.example", "https://third.example"]
    assert after["log-opts"] == {"max-size": "10m", "max-file": "3"}
    assert box.called(r"^systemctl reload docker$")
    assert "dockerd no longer uses" in said

    again, said = run(box, "--mirror", MIRROR, "--remove", "--docker")
    assert again == 0 and "nothing to remove" in said


def test_add_then_remove_leaves_an_empty_registry_mirrors(box: ScriptBox) -> None:
    """An empty list, not no key: dockerd's reload keeps its mirrors when the key is absent
    (test_review_client_script)."""
    box.path(DAEMON_JSON).parent.mkdir(parents=True)
    box.path(DAEMON_JSON).write_text('{"debug": true}')
    configure(box, "--mirror", MIRROR, "--docker")
    box.stand_in("docker", docker_info())

    configure(box, "--mirror", MIRROR, "--docker", "--remove")

    assert daemon_json(box) == {"debug": True, "registry-mirrors": []}
    assert len(backups(box, DAEMON_JSON)) == 2


@pytest.mark.parametrize("link", ["absolute", "relative"])
def test_a_symlinked_daemon_json_is_edited_through_its_link(box: ScriptBox, link: str) -> None:
    """Some hosts keep daemon.json in a config repository and link it into /etc/docker: the
    file the link points at is edited, the link stays."""
    real = box.base / "config-repo" / "docker" / "daemon.json"
    real.parent.mkdir(parents=True)
    real.write_text('{"debug": true}\n')
    real.chmod(0o640)
    box.path(DAEMON_JSON).parent.mkdir(parents=True)
    to = real if link == "absolute" else Path("../../..") / "config-repo/docker/daemon.json"
    box.path(DAEMON_JSON).symlink_to(to)

    said = configure(box, "--mirror", MIRROR, "--docker")

    assert box.path(DAEMON_JSON).is_symlink(), said
    assert box.path(DAEMON_JSON).readlink() == to
    assert json.loads(real.read_text()) == {"debug": True, "registry-mirrors": [MIRROR]}
    assert real.stat().st_mode & 0o777 == 0o640, "the file keeps its mode"
    (backup,) = backups(box, DAEMON_JSON)
    assert backup.read_text() == '{"debug": true}\n' and not backup.is_symlink()
    assert list(real.parent.iterdir()) == [real], "nothing staged or left in the repository"

    box.stand_in("docker", docker_info())
    configure(box, "--mirror", MIRROR, "--docker", "--remove")

    assert box.path(DAEMON_JSON).is_symlink()
    assert json.loads(real.read_text()) == {"debug": True, "registry-mirrors": []}


def running(tmp_path: Path, name: str) -> Iterator[int]:
    """A real process of this host whose name (``/proc/PID/comm``) is ``name``: ``sleep``
    started through a link of that name; its pid while the fixture lasts."""
    link = tmp_path / "procs" / name
    link.parent.mkdir(exist_ok=True)
    link.symlink_to(shutil.which("sleep") or "/bin/sleep")
    proc = subprocess.Popen([str(link), "600"])
    try:
        yield proc.pid
    finally:
        proc.kill()
        proc.wait(timeout=10)


@pytest.fixture
def dockerd(tmp_path: Path) -> Iterator[int]:
    """A stand-in dockerd process (the stand-in ``kill`` never signals it)."""
    yield from running(tmp_path, "dockerd")


@pytest.fixture
def bystander(tmp_path: Path) -> Iterator[int]:
    """Some other process of this host."""
    yield from running(tmp_path, "bystander")


@contextmanager
def dockerd_with_flags(tmp_path: Path, *flags: str) -> Iterator[subprocess.Popen[bytes]]:
    """A process named ``dockerd`` whose command line is ``dockerd FLAGS``: a shell run through
    a link of that name (``sleep 600; :`` keeps the shell, with its arguments, alive). It and
    its ``sleep`` are killed at the end, as one process group: killing the shell alone left
    the ``sleep`` running for 10 minutes after every test."""
    link = tmp_path / "procs" / "dockerd"
    link.parent.mkdir()
    link.symlink_to(shutil.which("sh") or "/bin/sh")
    argv = [str(link), "-c", "sleep 600; :", "dockerd", *flags]
    proc = subprocess.Popen(argv, start_new_session=True)
    try:
        yield proc
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


@pytest.mark.parametrize(
    "flag", ["--registry-mirror=https://old.example", "--debug", f"--registry-mirror={MIRROR}"]
)
def test_a_dockerd_started_with_registry_mirror_gets_no_registry_mirrors_key(
    box: ScriptBox, tmp_path: Path, flag: str
) -> None:
    """dockerd refuses to start with a directive both as a flag and in daemon.json: with
    --registry-mirror in its unit, the file was written, the reload refused, and the next
    restart (or boot) left Docker down. The script says what to do instead, and writes nothing."""
    if "old.example" in flag:  # what dockerd uses: its flag's mirror
        box.stand_in("docker", docker_info("https://old.example"))
    with dockerd_with_flags(tmp_path, flag) as proc:
        pidfile = box.base / "dockerd.pid"
        pidfile.write_text(f"{proc.pid}\n")
        code, said = run(box, "--mirror", MIRROR, "--docker", "--dockerd-pidfile", str(pidfile))

    if flag == f"--registry-mirror={MIRROR}":  # docker info lists it already: nothing to do
        assert code == 0 and "dockerd already uses" in said, said
        assert not box.path("/etc/docker/daemon.json").exists()
    elif flag.startswith("--registry-mirror"):
        assert code == 1 and "--registry-mirror on its command line" in said, said
        assert f"--registry-mirror={MIRROR}" in said
        assert not box.path("/etc/docker/daemon.json").exists()
    else:
        assert code == 0, said
        assert daemon_json(box)["registry-mirrors"] == [MIRROR]


@pytest.mark.parametrize("more", [[], ["--allow-restart"]], ids=["plain", "allow-restart"])
def test_a_root_of_its_own_leaves_this_hosts_dockerd_alone(
    box: ScriptBox, tmp_path: Path, more: list[str]
) -> None:
    """`--root DIR` (an image's tree being built) still reloaded this host's dockerd, restarted
    it with --allow-restart (its containers stopped), failed when this host's `docker info`
    did not show the mirror, and wrote nothing when this host's dockerd ran with
    --registry-mirror. The host's dockerd is only looked at when asked (--reload)."""
    box.stand_in("docker", docker_info())
    # this host's dockerd, run with --registry-mirror
    with dockerd_with_flags(tmp_path, "--registry-mirror=x") as proc:
        box.stand_in(
            "systemctl",
            Rule(r"is-active", rc=0),
            Rule(r"^show .*MainPID", stdout=f"{proc.pid}\n"),
        )
        result = box.run(SCRIPT, "--root", str(box.root), "--mirror", MIRROR, "--docker", *more)

    assert result.returncode == 0, output(result)
    assert daemon_json(box) == {"registry-mirrors": [MIRROR]}
    assert not box.called(r"^(systemctl (reload|restart)|kill|docker info)"), output(result)
    assert "not reloading dockerd: --root" in result.stdout


@pytest.mark.parametrize(
    ("listed", "flag", "allow_restart"),
    [
        ([MIRROR], "https://old.example", False),
        ([MIRROR], "https://old.example", True),
        (["https://other.example", MIRROR], MIRROR, False),  # the flag's mirror in use
        (["https://other.example"], MIRROR, False),
        ([], "https://old.example", False),
    ],
)
def test_a_registry_mirrors_key_already_beside_the_flag_is_never_a_success(
    box: ScriptBox, tmp_path: Path, listed: list[str], flag: str, allow_restart: bool
) -> None:
    """A registry-mirrors key in daemon.json beside dockerd's --registry-mirror flag (written
    before the flag was, the reload refused) leaves Docker down at its next start. Listing the
    mirror first, it was 'unchanged': the run advised a restart, or with --allow-restart did
    one; listing it second or not at all, with the flag naming it, 'dockerd already uses it',
    exit 0. Each is a failure now, with nothing changed or restarted (review)."""
    box.stand_in("docker", docker_info(flag))
    box.path(DAEMON_JSON).parent.mkdir(parents=True)
    written = json.dumps({"registry-mirrors": listed}) + "\n"
    box.path(DAEMON_JSON).write_text(written)
    with dockerd_with_flags(tmp_path, f"--registry-mirror={flag}") as proc:
        pidfile = box.base / "dockerd.pid"
        pidfile.write_text(f"{proc.pid}\n")
        flags = ["--allow-restart"] if allow_restart else []
        code, said = run(
            box, "--mirror", MIRROR, "--docker", "--dockerd-pidfile", str(pidfile), *flags
        )
        assert proc.poll() is None, "dockerd was signalled"
    assert code == 1, said
    assert "--registry-mirror on its command line" in said
    assert "restart" not in said.replace("next restart", ""), said
    assert box.path(DAEMON_JSON).read_text() == written


def test_reload_by_sighup_to_the_pid_in_the_pidfile(box: ScriptBox, dockerd: int) -> None:
    pidfile = box.base / "dockerd.pid"
    pidfile.write_text(f"{dockerd}\n")

    code, said = run(box, "--mirror", MIRROR, "--docker", "--dockerd-pidfile", str(pidfile))

    assert code == 0, said
    assert [c.argv for c in box.calls("kill")] == [["-s", "HUP", str(dockerd)]]
    assert not box.called(r"^systemctl reload")


def test_without_systemd_the_pidfile_under_root_is_used(box: ScriptBox, dockerd: int) -> None:
    box.stand_in("systemctl", Rule(r"is-active", rc=3))
    box.path("/run/docker.pid").parent.mkdir(parents=True)
    box.path("/run/docker.pid").write_text(str(dockerd))

    configure(box, "--mirror", MIRROR)

    assert [c.argv for c in box.calls("kill")] == [["-s", "HUP", str(dockerd)]]


def test_a_pidfile_naming_another_process_is_not_signalled(box: ScriptBox, bystander: int) -> None:
    """A pid file left by a dockerd that is gone, or an image's under --root, names a pid this
    host may have given to any process since: SIGHUP would end most of them."""
    box.stand_in("systemctl", Rule(r"is-active", rc=3))
    box.stand_in("docker", docker_info())  # the host's own dockerd, if any, is not changed
    box.path("/run/docker.pid").parent.mkdir(parents=True)
    box.path("/run/docker.pid").write_text(str(bystander))

    code, said = run(box, "--mirror", MIRROR, "--docker")

    assert box.calls("kill") == [], said
    assert f"names pid {bystander}, which is not a running dockerd: not signalled" in said
    assert code != 0, said  # `docker info` says the change did not take: restart it


def test_no_running_dockerd_is_said_and_not_an_error(box: ScriptBox) -> None:
    box.stand_in("systemctl", Rule(r"is-active", rc=3))

    code, said = run(box, "--mirror", MIRROR, "--docker")

    assert code == 0, said
    assert "no running dockerd found" in said
    assert box.calls("kill") == []


def test_a_dockerd_that_answers_but_cannot_be_reloaded_is_not_taken_for_none(
    box: ScriptBox,
) -> None:
    """No docker unit, no pid file, yet `docker info` answers without the mirror (a snap's or a
    differently named unit's dockerd): the file was written but nothing uses it yet."""
    box.stand_in("systemctl", Rule(r"is-active", rc=3))
    box.stand_in("docker", docker_info("https://other.example"))

    result = attempt(box, "--mirror", MIRROR, "--docker")

    assert result.returncode == 1, output(result)
    assert "from a dockerd without this change" in result.stderr and "restart it" in result.stderr
    assert daemon_json(box) == {"registry-mirrors": [MIRROR]}
    assert box.calls("kill") == []


def test_a_reload_that_does_not_take_fails_and_says_how_to_restart(box: ScriptBox) -> None:
    box.stand_in("docker", docker_info("https://other.example"))

    result = attempt(
        box,
        "--mirror",
        MIRROR,
        env={"DOCXY_RELOAD_WAIT": "1"},
    )

    assert result.returncode == 1, output(result)
    assert "systemctl restart docker" in result.stderr
    assert not box.called(r"^systemctl restart")
    assert daemon_json(box) == {"registry-mirrors": [MIRROR]}
    # The file stays written: the last line says so, not only "see the messages above".
    last = result.stdout.splitlines()[-1]
    assert last == "Not done: see the messages above; 1 file(s) were changed all the same."


def test_a_failed_systemctl_reload_is_not_taken_for_success(box: ScriptBox) -> None:
    """A unit that cannot reload: the running dockerd keeps its old mirrors, so say so."""
    refused = "Failed to reload docker.service: Job type reload is not applicable for unit.\n"
    box.stand_in("systemctl", Rule(r"^is-active"), Rule(r"^reload", rc=1, stderr=refused))
    box.stand_in("docker", docker_info("https://other.example"))

    result = attempt(
        box,
        "--mirror",
        MIRROR,
        env={"DOCXY_RELOAD_WAIT": "1"},
    )

    assert result.returncode == 1, output(result)
    assert "systemctl restart docker" in result.stderr
    assert daemon_json(box) == {"registry-mirrors": [MIRROR]}


def run_allowing_restart(box: ScriptBox) -> subprocess.CompletedProcess[str]:
    return attempt(
        box,
        "--mirror",
        MIRROR,
        "--allow-restart",
        env={"DOCXY_RELOAD_WAIT": "1"},
    )


def test_allow_restart_restarts_when_the_reload_does_not_take(box: ScriptBox) -> None:
    box.stand_in("docker", docker_info("https://other.example"))

    run_allowing_restart(box)

    assert box.called(r"^systemctl restart docker$")


def test_a_restart_that_did_not_take_does_not_say_to_restart_again(box: ScriptBox) -> None:
    """--allow-restart restarted dockerd, and `docker info` still did not show the mirror (a
    dockerd that reads another file, --config-file): the failure said to restart dockerd "or
    rerun with --allow-restart", both just done. It now says what to look for instead."""
    box.stand_in("docker", docker_info("https://other.example"))

    result = run_allowing_restart(box)

    assert result.returncode == 1, output(result)
    assert box.called(r"^systemctl restart docker$")
    assert "--allow-restart" not in result.stderr, output(result)
    assert "systemctl restart docker, which stops" not in result.stderr
    assert f"it does not read {box.path(DAEMON_JSON)}" in result.stderr
    assert "--config-file" in result.stderr and "--registry-mirror" in result.stderr


def test_no_reload_writes_the_file_only(box: ScriptBox) -> None:
    code, said = run(box, "--mirror", MIRROR, "--docker", "--no-reload")

    assert code == 0, said
    assert daemon_json(box) == {"registry-mirrors": [MIRROR]}
    assert not box.called(r"^(systemctl reload|kill)")
    assert "--no-reload" in said


def test_daemon_json_option_names_the_file(box: ScriptBox) -> None:
    elsewhere = box.base / "private" / "daemon.json"
    elsewhere.parent.mkdir()
    elsewhere.write_text('{"storage-driver": "vfs"}')

    run_ok(
        box.run(
            SCRIPT, "--mirror", MIRROR, "--docker", "--daemon-json", str(elsewhere), "--no-reload"
        )
    )

    assert json.loads(elsewhere.read_text()) == {
        "storage-driver": "vfs",
        "registry-mirrors": [MIRROR],
    }


@pytest.mark.parametrize(
    "bad", ["mirror.example.com", "https://", 'https://x"y', "https://a/$(id)", "ftp://x"]
)
def test_a_bad_mirror_url_is_refused(box: ScriptBox, bad: str) -> None:
    code, said = run(box, "--mirror", bad)

    assert code == 2, said
    assert box.files() == {}


@pytest.mark.parametrize(
    "flag",
    [
        "--mirror",
        "--root",
        "--registry",
        "--client-cert",
        "--ca-cert",
        "--daemon-json",
        "--dockerd-pidfile",
    ],
)
def test_a_flag_without_its_value_is_a_usage_error(box: ScriptBox, flag: str) -> None:
    """As every other usage error: exit 2 and the script's own word, not bash's `line 97: 2:`."""
    result = attempt(box, "--mirror", MIRROR, "--docker", flag)

    assert result.returncode == 2, output(result)
    assert result.stderr.endswith(f"{SCRIPT}: {flag} needs a value\n"), output(result)
    assert "line " not in result.stderr
    assert box.files() == {}


@pytest.mark.parametrize(
    ("mirror", "warned"),
    [
        ("http://10.0.0.5:8080", True),
        ("http://mirror.lan", True),
        ("http://127.0.0.1:8080", False),
        ("http://localhost:8080", False),
        ("http://[::1]:8080", True),  # dockerd's version unknown: up to 27 it needs the key
        ("https://10.0.0.5", False),
    ],
)
def test_a_plain_http_mirror_off_loopback_is_warned_about(
    box: ScriptBox, mirror: str, warned: bool
) -> None:
    """The README's word: Docker takes a plain-HTTP mirror on loopback only (elsewhere its host
    must be in insecure-registries, which this script does not write); dockerd then skips it
    and pulls from Docker Hub, which is what the mirror is there to spare."""
    box.stand_in("docker", docker_info(mirror))
    result = attempt(box, "--mirror", mirror, "--docker")

    assert result.returncode == 0, output(result)
    assert ("insecure-registries" in result.stderr) is warned, output(result)
    assert daemon_json(box)["registry-mirrors"] == [mirror]


@pytest.mark.parametrize("path", ["/docker", "/v2/", "/v2/library"])
def test_a_mirror_url_with_a_path_is_refused_before_anything_changes(
    box: ScriptBox, path: str
) -> None:
    """dockerd (20.10, and moby's ValidateMirror to this day) will not start with a registry
    mirror that has a path; the script wrote one, and an --allow-restart then left no dockerd."""
    box.path(DAEMON_JSON).parent.mkdir(parents=True)
    box.path(DAEMON_JSON).write_text(RICH)
    before = box.files()

    code, said = run(box, "--mirror", MIRROR + path, "--docker", "--containerd", "--podman")

    assert code == 2, said
    assert "root URL" in said and "path" in said
    assert box.files() == before
    assert not box.called(r"^(systemctl reload|kill)")


def test_remove_still_takes_out_a_mirror_with_a_path(box: ScriptBox) -> None:
    box.path(DAEMON_JSON).parent.mkdir(parents=True)
    box.path(DAEMON_JSON).write_text(json.dumps({"registry-mirrors": [MIRROR + "/docker"]}))
    box.stand_in("docker", docker_info())

    code, said = run(box, "--mirror", MIRROR + "/docker", "--docker", "--remove")

    assert code == 0, said
    assert daemon_json(box) == {"registry-mirrors": []}


def test_the_mirror_is_required(box: ScriptBox) -> None:
    code, said = run(box)

    assert code == 2 and "--mirror URL is required" in said


def test_without_python3_nothing_is_touched(box: ScriptBox) -> None:
    box.without("python3")

    code, said = run(box, "--mirror", MIRROR)

    assert code == 1 and "python3" in said
    assert box.files() == {}


# --- which runtimes ---------------------------------------------------------------------------


def test_only_installed_runtimes_are_configured(tmp_path: Path) -> None:
    box = ScriptBox(tmp_path)
    box.stand_in("podman")

    code, said = run(box, "--mirror", MIRROR)

    assert code == 0, said
    assert list(box.files()) == [PODMAN_DROPIN.lstrip("/")]


def test_no_runtime_found_is_an_error(tmp_path: Path) -> None:
    box = ScriptBox(tmp_path)

    code, said = run(box, "--mirror", MIRROR)

    assert code == 1 and "found no Docker, containerd or podman" in said
    assert box.files() == {}


# --- containerd -------------------------------------------------------------------------------


def test_containerd_hosts_toml_is_written_and_kept_on_a_second_run(box: ScriptBox) -> None:
    configure(box, "--mirror", MIRROR, "--containerd")
    text = box.path(HOSTS_TOML).read_text()
    first = box.files()

    said = configure(box, "--mirror", MIRROR, "--containerd")

    assert 'server = "https://registry-1.docker.io"' in text
    assert f'[host."{MIRROR}"]\n  capabilities = ["pull", "resolve"]\n' in text
    assert box.files() == first
    assert "unchanged" in said


def test_containerd_other_hosts_are_kept_after_ours(box: ScriptBox) -> None:
    box.path(HOSTS_TOML).parent.mkdir(parents=True)
    box.path(HOSTS_TOML).write_text(
        'server = "https://registry-1.docker.io"\n\n'
        '[host."https://corp-cache.example"]\n  capabilities = ["pull", "resolve"]\n'
        '  [host."https://corp-cache.example".header]\n    x-team = ["a"]\n'
    )

    configure(box, "--mirror", MIRROR, "--containerd")
    text = box.path(HOSTS_TOML).read_text()

    hosts = list(tomllib.loads(text)["host"])
    assert hosts == [MIRROR, "https://corp-cache.example"]
    assert tomllib.loads(text)["host"]["https://corp-cache.example"]["header"] == {"x-team": ["a"]}

    configure(box, "--mirror", MIRROR, "--containerd", "--remove")
    assert list(tomllib.loads(box.path(HOSTS_TOML).read_text())["host"]) == [
        "https://corp-cache.example"
    ]


def test_a_symlinked_hosts_toml_is_edited_through_its_link(box: ScriptBox) -> None:
    real = box.base / "config-repo" / "hosts.toml"
    real.parent.mkdir(parents=True)
    real.write_text('[host."https://corp-cache.example"]\n  capabilities = ["pull"]\n')
    box.path(HOSTS_TOML).parent.mkdir(parents=True)
    box.path(HOSTS_TOML).symlink_to(real)

    configure(box, "--mirror", MIRROR, "--containerd")

    assert box.path(HOSTS_TOML).is_symlink()
    assert list(tomllib.loads(real.read_text())["host"]) == [MIRROR, "https://corp-cache.example"]


HOSTS_WITH_HEADER = """\
server = "https://registry-1.docker.io"

[host."https://mirror.example.com"]
  capabilities = ["pull", "resolve"]
  skip_verify = true

  [host."https://mirror.example.com".header]
    x-team = ["ci"]
"""


def test_containerd_a_rerun_keeps_own_lines_after_a_blank_line_unchanged(box: ScriptBox) -> None:
    box.path(HOSTS_TOML).parent.mkdir(parents=True)
    box.path(HOSTS_TOML).write_text(HOSTS_WITH_HEADER)

    said = configure(box, "--mirror", MIRROR, "--containerd")

    assert box.path(HOSTS_TOML).read_text() == HOSTS_WITH_HEADER
    assert backups(box, HOSTS_TOML) == [] and "Nothing to change" in said, said


def test_containerd_hosts_in_literal_string_keys_are_still_after_ours(box: ScriptBox) -> None:
    """`[host.'https://...']` (a TOML literal string) names a host as well as double quotes."""
    box.path(HOSTS_TOML).parent.mkdir(parents=True)
    box.path(HOSTS_TOML).write_text(
        "server = 'https://registry-1.docker.io'\n\n"
        "[host.'https://corp-cache.example']\n  capabilities = ['pull', 'resolve']\n"
    )

    configure(box, "--mirror", MIRROR, "--containerd")

    hosts = list(tomllib.loads(box.path(HOSTS_TOML).read_text())["host"])
    assert hosts == [MIRROR, "https://corp-cache.example"]


@pytest.mark.parametrize(
    "header",
    ['[host."{}"]  # the team\'s', '[ host . "{}" ]', "[host.'{}'] # literal"],
    ids=["comment", "spaces", "literal-comment"],
)
@pytest.mark.parametrize("host", [MIRROR, "https://corp-cache.example"], ids=["ours", "other"])
def test_containerd_a_host_header_as_toml_allows_it_is_still_a_host(
    box: ScriptBox, header: str, host: str
) -> None:
    """A header with a comment after it, or spaces around its dot, is valid TOML: read as the
    preamble, it left two tables for the mirror (a file containerd refuses, while the script
    said "wrote"), or the mirror after another host, for good ("already the first host")."""
    box.path(HOSTS_TOML).parent.mkdir(parents=True)
    box.path(HOSTS_TOML).write_text(
        'server = "https://registry-1.docker.io"\n\n'
        + header.format(host)
        + '\n  capabilities = ["pull", "resolve"]\n'
    )

    configure(box, "--mirror", MIRROR, "--containerd")
    text = box.path(HOSTS_TOML).read_text()
    said = configure(box, "--mirror", MIRROR, "--containerd")

    hosts = list(tomllib.loads(text)["host"])
    assert hosts == list(dict.fromkeys([MIRROR, host])), text
    assert box.path(HOSTS_TOML).read_text() == text and "Nothing to change" in said, said


def test_containerd_a_merge_that_would_break_the_toml_is_refused(box: ScriptBox) -> None:
    """The new hosts.toml is parsed before it replaces a valid one, and one that would not
    parse is refused, the file left as it was. Shown with a host given by dotted keys, which
    the script does not read as a table (the mirror's table would be defined twice)."""
    box.path(HOSTS_TOML).parent.mkdir(parents=True)
    valid = f'server = "https://registry-1.docker.io"\n\nhost."{MIRROR}".capabilities = ["pull"]\n'
    box.path(HOSTS_TOML).write_text(valid)

    code, said = run(box, "--mirror", MIRROR, "--containerd")

    assert code == 1 and "would not be valid TOML" in said, said
    assert "by hand" in said and "could not build" not in said, said
    assert box.path(HOSTS_TOML).read_text() == valid


def test_containerd_remove_deletes_a_file_that_held_only_this_mirror(box: ScriptBox) -> None:
    configure(box, "--mirror", MIRROR, "--containerd")

    configure(box, "--mirror", MIRROR, "--containerd", "--remove")

    assert not box.path(HOSTS_TOML).exists()
    assert len(backups(box, HOSTS_TOML)) == 1


def test_containerd_the_operators_own_ca_and_client_in_our_table_are_kept(box: ScriptBox) -> None:
    """A plain run (the served setup.sh: no --ca-cert, no kit) names no CA and no client
    certificate: the operator's own lines for them in the mirror's table were dropped, with
    exit 0 and no word, and containerd then failed TLS to the mirror."""
    box.path(HOSTS_TOML).parent.mkdir(parents=True)
    box.path(HOSTS_TOML).write_text(
        'server = "https://registry-1.docker.io"\n\n'
        f'[host."{MIRROR}"]\n  capabilities = ["pull", "resolve"]\n'
        '  ca = "/etc/pki/corp-root.pem"\n'
        '  client = [["/etc/pki/node.cert", "/etc/pki/node.key"]]\n'
    )

    said = configure(box, "--mirror", MIRROR, "--containerd")

    table = tomllib.loads(box.path(HOSTS_TOML).read_text())["host"][MIRROR]
    assert table["ca"] == "/etc/pki/corp-root.pem"
    assert table["client"] == [["/etc/pki/node.cert", "/etc/pki/node.key"]]
    assert "Nothing to change" in said, said


def test_containerd_remove_keeps_a_file_whose_server_line_is_the_operators(
    box: ScriptBox,
) -> None:
    """Its own fallback (a proxy) was taken for the script's line: the whole file was deleted,
    "it held only this mirror", and containerd went to Docker Hub directly."""
    box.path(HOSTS_TOML).parent.mkdir(parents=True)
    box.path(HOSTS_TOML).write_text('server = "https://dockerhub-proxy.corp.example"\n')

    configure(box, "--mirror", MIRROR, "--containerd")
    configure(box, "--mirror", MIRROR, "--containerd", "--remove")

    assert tomllib.loads(box.path(HOSTS_TOML).read_text()) == {
        "server": "https://dockerhub-proxy.corp.example"
    }


def test_containerd_registry_with_a_url_replaces_the_server_an_earlier_run_wrote(
    box: ScriptBox,
) -> None:
    """The README's remedy for a users-mode setup.sh (``server = "https://NAME"``) is a rerun
    with ``--registry NAME=URL``: it said "unchanged" and kept the wrong server."""
    toml = box.path("/etc/containerd/certs.d/registry.internal/hosts.toml")
    configure(box, "--mirror", MIRROR, "--containerd", "--registry", "registry.internal")
    assert tomllib.loads(toml.read_text())["server"] == "https://registry.internal"

    given = "registry.internal=https://10.0.0.5:5000"
    configure(box, "--mirror", MIRROR, "--containerd", "--registry", given)
    again = configure(box, "--mirror", MIRROR, "--containerd", "--registry", given)

    assert tomllib.loads(toml.read_text())["server"] == "https://10.0.0.5:5000"
    assert list(tomllib.loads(toml.read_text())["host"]) == [MIRROR]
    assert "Nothing to change" in again, again


def test_containerd_a_served_rerun_keeps_a_server_line_the_operator_changed(
    box: ScriptBox,
) -> None:
    """The served setup.sh passes NAME=URL for every registry: a rerun put the registry back
    over a fallback the operator had set in the file the script wrote (a proxy)."""
    toml = box.path("/etc/containerd/certs.d/ghcr.io/hosts.toml")
    configure(box, "--mirror", MIRROR, "--containerd", "--registry", "ghcr.io")
    text = toml.read_text().replace('"https://ghcr.io"', '"https://ghcr-proxy.corp.example"')
    toml.write_text(text)

    configure(box, "--mirror", MIRROR, "--containerd", "--registry", "ghcr.io=https://ghcr.io")

    assert tomllib.loads(toml.read_text())["server"] == "https://ghcr-proxy.corp.example"


def test_containerd_remove_through_a_link_empties_the_linked_file(box: ScriptBox) -> None:
    """The link was deleted and the file it leads to (a config repository's) kept the mirror,
    for the next deploy to bring back."""
    real = box.base / "config-repo" / "hosts.toml"
    real.parent.mkdir(parents=True)
    real.write_text("")
    box.path(HOSTS_TOML).parent.mkdir(parents=True)
    box.path(HOSTS_TOML).symlink_to(real)
    configure(box, "--mirror", MIRROR, "--containerd")
    assert MIRROR in real.read_text()

    configure(box, "--mirror", MIRROR, "--containerd", "--remove")

    assert box.path(HOSTS_TOML).is_symlink()
    assert tomllib.loads(real.read_text()) == {}


@pytest.mark.parametrize(
    ("config", "verdict"),
    [
        (
            'version = 2\n[plugins."io.containerd.grpc.v1.cri".registry]\n'
            '  config_path = "/etc/containerd/certs.d"\n',
            "config_path points at /etc/containerd/certs.d",
        ),
        (
            'version = 3\n[plugins."io.containerd.cri.v1.images".registry]\n'
            '  config_path = "/etc/containerd/certs.d:/etc/docker/certs.d"\n',
            "config_path points at /etc/containerd/certs.d",
        ),
        (
            'version = 2\n[plugins."io.containerd.grpc.v1.cri".registry]\n'
            '  config_path = "/etc/other"\n',
            "config_path is '/etc/other', which does not include",
        ),
        ("version = 2\n", "config_path is not set"),
    ],
)
def test_containerd_config_path_is_reported(box: ScriptBox, config: str, verdict: str) -> None:
    box.path("/etc/containerd/config.toml").parent.mkdir(parents=True)
    box.path("/etc/containerd/config.toml").write_text(config)

    said = configure(box, "--mirror", MIRROR, "--containerd")

    assert verdict in said


def test_containerd_config_path_without_tomllib(box: ScriptBox) -> None:
    """Python 3.10 (Ubuntu 22.04) has no tomllib: the config_path line is still found."""
    box.path("/etc/containerd/config.toml").parent.mkdir(parents=True)
    box.path("/etc/containerd/config.toml").write_text(
        'version = 2\n[plugins."io.containerd.grpc.v1.cri".registry]\n'
        '  config_path = "/etc/containerd/certs.d"\n'
    )
    no_tomllib = box.base / "no-tomllib"
    no_tomllib.mkdir()
    (no_tomllib / "tomllib.py").write_text("raise ImportError('as on Python 3.10')\n")

    result = attempt(
        box,
        "--mirror",
        MIRROR,
        "--containerd",
        env={"PYTHONPATH": str(no_tomllib)},
    )

    assert result.returncode == 0, output(result)
    assert "config_path points at /etc/containerd/certs.d" in result.stdout


# --- podman -----------------------------------------------------------------------------------


def test_podman_dropin_for_an_http_mirror_is_insecure(box: ScriptBox) -> None:
    configure(box, "--mirror", "http://127.0.0.1:5000", "--podman")

    dropin = tomllib.loads(box.path(PODMAN_DROPIN).read_text())
    assert dropin["registry"] == [
        {
            "prefix": "docker.io",
            "location": "docker.io",
            "mirror": [{"location": "127.0.0.1:5000", "insecure": True}],
        }
    ]


def test_podman_dropin_second_run_and_remove(box: ScriptBox) -> None:
    configure(box, "--mirror", MIRROR, "--podman")
    first = box.files()
    said = configure(box, "--mirror", MIRROR, "--podman")
    assert box.files() == first and "unchanged" in said

    mirrors = tomllib.loads(box.path(PODMAN_DROPIN).read_text())["registry"][0]["mirror"]
    assert mirrors == [{"location": "mirror.example.com"}]

    configure(box, "--mirror", MIRROR, "--podman", "--remove")
    assert not box.path(PODMAN_DROPIN).exists()


# --- client certificates (--client-cert, --ca-cert) -------------------------------------------

CERTS_D = "/etc/docker/certs.d/mirror.example.com"
CLIENT_CERT = "/etc/containerd/certs.d/docker.io/client-mirror.example.com.cert"
CLIENT_KEY = "/etc/containerd/certs.d/docker.io/client-mirror.example.com.key"
# hosts.toml names them relative to its directory, as containerd resolves them
CLIENT_PAIR = ["client-mirror.example.com.cert", "client-mirror.example.com.key"]


@pytest.fixture
def kit(tmp_path: Path) -> Path:
    """What `docxy clients add ci --out kit` writes: client.cert, client.key, ca.crt."""
    out = tmp_path / "kit"
    out.mkdir()
    ClientCA(tmp_path / "auth").issue("ci", out)
    return out


@pytest.fixture
def server_ca(tmp_path: Path) -> Path:
    """A private CA certificate for the mirror's server certificate (any PEM certificate)."""
    path = tmp_path / "server-ca.pem"
    ClientCA(tmp_path / "server-ca").ensure()
    path.write_bytes((tmp_path / "server-ca" / "ca.crt").read_bytes())
    return path


def mode(box: ScriptBox, path: str) -> int:
    return box.path(path).stat().st_mode & 0o777


# --- podman: an operator's own Docker Hub table; certificates ------------------------------------

REGISTRIES_CONF = "/etc/containers/registries.conf"
DROPIN_DIR = "/etc/containers/registries.conf.d"
OPERATORS_HUB = """\
unqualified-search-registries = ["docker.io"]

[[registry]]
prefix = "docker.io"
location = "docker.io"

[[registry.mirror]]
location = "cache.corp.example:5000"
"""


def podman_hub(box: ScriptBox) -> dict[str, object]:
    """The [[registry]] podman uses for docker.io: registries.conf, then each drop-in in
    order, a table whose prefix came before replacing that one whole (containers/image)."""
    files = [box.path(REGISTRIES_CONF), *sorted(box.path(DROPIN_DIR).glob("*.conf"))]
    tables: dict[str, dict[str, object]] = {}
    for path in files:
        if path.exists():
            for table in tomllib.loads(path.read_text()).get("registry", []):
                tables[table.get("prefix") or table["location"]] = table
    return tables["docker.io"]


@pytest.mark.parametrize(
    ("where", "table"),
    [
        (REGISTRIES_CONF, OPERATORS_HUB),
        (f"{DROPIN_DIR}/60-corp.conf", OPERATORS_HUB),  # read after ours: it would replace it
        (f"{DROPIN_DIR}/10-corp.conf", "[[registry]]\nlocation = 'docker.io'  # no prefix\n"),
        (REGISTRIES_CONF, '[[registry]]\nprefix = "docker.io/library"\nlocation = "docker.io"\n'),
    ],
)
def test_podman_a_hub_table_of_the_operators_is_kept_and_the_mirror_not_forced(
    box: ScriptBox, where: str, table: str
) -> None:
    box.path(where).parent.mkdir(parents=True, exist_ok=True)
    box.path(where).write_text(table)

    code, said = run(box, "--mirror", MIRROR, "--podman")

    assert code == 1, said
    assert not box.path(PODMAN_DROPIN).exists()
    assert box.path(where).read_text() == table
    assert str(box.path(where)) in said
    assert '[[registry.mirror]]\n    location = "mirror.example.com"' in said  # what to add
    if "cache.corp.example" in table:
        mirrors = podman_hub(box)["mirror"]
        assert mirrors == [{"location": "cache.corp.example:5000"}]


def test_a_run_that_failed_never_ends_with_nothing_to_change(box: ScriptBox) -> None:
    """A run that wrote nothing on purpose and failed (the operator's table for docker.io,
    a dockerd run with --registry-mirror, a hosts.toml it cannot merge) ended with "Nothing
    to change: every file was already as wanted.", where the mirror was exactly not set up."""
    box.path(REGISTRIES_CONF).parent.mkdir(parents=True, exist_ok=True)
    box.path(REGISTRIES_CONF).write_text(OPERATORS_HUB)

    result = attempt(box, "--mirror", MIRROR, "--podman")

    assert result.returncode == 1, output(result)
    assert "Nothing to change" not in result.stdout, output(result)
    assert result.stdout.splitlines()[-1] == "Not done: see the messages above."
    quiet = attempt(box, "--mirror", MIRROR, "--podman", "--no-summary")
    assert quiet.returncode == 1 and "Not done" not in quiet.stdout, output(quiet)


def test_podman_a_hub_table_that_lists_the_mirror_already_is_enough(box: ScriptBox) -> None:
    """What the script asks the operator to add, added: the next runs go through."""
    table = OPERATORS_HUB.replace(
        "[[registry.mirror]]\n",
        '[[registry.mirror]]\nlocation = "Mirror.Example.com"\n\n[[registry.mirror]]\n',
        1,
    )
    box.path(REGISTRIES_CONF).parent.mkdir(parents=True)
    box.path(REGISTRIES_CONF).write_text(table)

    said = configure(box, "--mirror", MIRROR, "--podman")

    assert "lists the mirror already" in said and "Nothing to change" in said
    assert not box.path(PODMAN_DROPIN).exists()
    mirrors = podman_hub(box)["mirror"]
    assert mirrors == [{"location": "Mirror.Example.com"}, {"location": "cache.corp.example:5000"}]


def test_podman_an_earlier_runs_dropin_in_the_way_is_named(box: ScriptBox) -> None:
    configure(box, "--mirror", MIRROR, "--podman")
    box.path(REGISTRIES_CONF).write_text(OPERATORS_HUB)

    code, said = run(box, "--mirror", MIRROR, "--podman")

    assert code == 1 and f"delete {box.path(PODMAN_DROPIN)}" in said, said


def test_podman_other_registries_tables_do_not_stand_in_the_way(box: ScriptBox) -> None:
    box.path(REGISTRIES_CONF).parent.mkdir(parents=True)
    box.path(REGISTRIES_CONF).write_text(
        '[[registry]]\nprefix = "quay.io"\nlocation = "quay.io"\n\n'
        '[[registry.mirror]]\nlocation = "docker.io"  # a mirror\'s location is no prefix\n'
    )

    configure(box, "--mirror", MIRROR, "--podman")

    assert podman_hub(box)["mirror"] == [{"location": "mirror.example.com"}]


def test_podman_gets_the_client_certificate_and_server_ca(
    box: ScriptBox, kit: Path, server_ca: Path
) -> None:
    certs = "/etc/containers/certs.d/mirror.example.com"
    args = ("--mirror", MIRROR, "--podman", "--client-cert", str(kit), "--ca-cert", str(server_ca))
    configure(box, *args)

    assert box.path(f"{certs}/client.cert").read_bytes() == (kit / "client.cert").read_bytes()
    assert box.path(f"{certs}/client.key").read_bytes() == (kit / "client.key").read_bytes()
    assert mode(box, f"{certs}/client.key") == 0o600
    assert box.path(f"{certs}/ca.crt").read_bytes() == server_ca.read_bytes()
    assert "Nothing to change" in configure(box, *args)

    configure(box, "--mirror", MIRROR, "--podman", "--remove")
    assert not box.path(certs).exists()
    assert not box.path(PODMAN_DROPIN).exists()


def test_client_cert_goes_into_docker_certs_d_without_the_client_ca(
    box: ScriptBox, kit: Path
) -> None:
    said = configure(box, "--mirror", MIRROR, "--docker", "--client-cert", str(kit))

    assert box.path(f"{CERTS_D}/client.cert").read_bytes() == (kit / "client.cert").read_bytes()
    assert box.path(f"{CERTS_D}/client.key").read_bytes() == (kit / "client.key").read_bytes()
    assert mode(box, f"{CERTS_D}/client.key") == 0o600
    assert mode(box, f"{CERTS_D}/client.cert") == 0o644
    assert not box.path(f"{CERTS_D}/ca.crt").exists(), "the client CA never vouches for the server"
    assert "client CA" in said
    assert leftovers(box) == []


def test_ca_cert_is_the_servers_ca_in_docker_and_containerd(
    box: ScriptBox, kit: Path, server_ca: Path
) -> None:
    configure(
        box, "--mirror", MIRROR, "--docker", "--containerd",
        "--client-cert", str(kit), "--ca-cert", str(server_ca),
    )  # fmt: skip

    assert box.path(f"{CERTS_D}/ca.crt").read_bytes() == server_ca.read_bytes()
    host = tomllib.loads(box.path(HOSTS_TOML).read_text())["host"][MIRROR]
    assert host["ca"] == "ca-mirror.example.com.crt"
    ca = box.path("/etc/containerd/certs.d/docker.io/ca-mirror.example.com.crt")
    assert ca.read_bytes() == server_ca.read_bytes()


def test_a_ca_line_an_earlier_run_wrote_goes_when_its_file_is_gone(
    box: ScriptBox, server_ca: Path
) -> None:
    """Run with --ca-cert, its file then removed (the mirror has a public certificate now),
    run without: the script's own ``ca`` line was kept as if it were the operator's, naming a
    file that is gone (containerd: "unable to read CA cert", every pull failed)."""
    configure(box, "--mirror", MIRROR, "--containerd", "--ca-cert", str(server_ca))
    box.path("/etc/containerd/certs.d/docker.io/ca-mirror.example.com.crt").unlink()

    configure(box, "--mirror", MIRROR, "--containerd")

    assert "ca" not in tomllib.loads(box.path(HOSTS_TOML).read_text())["host"][MIRROR]


def test_client_cert_goes_into_hosts_toml_beside_it(box: ScriptBox, kit: Path) -> None:
    configure(box, "--mirror", MIRROR, "--containerd", "--client-cert", str(kit))

    hosts = tomllib.loads(box.path(HOSTS_TOML).read_text())
    assert hosts["server"] == "https://registry-1.docker.io"
    assert hosts["host"][MIRROR] == {
        "capabilities": ["pull", "resolve"],
        "client": [CLIENT_PAIR],
    }
    assert box.path(CLIENT_CERT).read_bytes() == (kit / "client.cert").read_bytes()
    assert box.path(CLIENT_KEY).read_bytes() == (kit / "client.key").read_bytes()
    assert mode(box, CLIENT_KEY) == 0o600
    assert str(box.root) not in box.path(HOSTS_TOML).read_text(), "--root is not the host's path"


def test_client_cert_second_run_changes_nothing(box: ScriptBox, kit: Path) -> None:
    args = ("--mirror", MIRROR, "--docker", "--containerd", "--client-cert", str(kit))
    configure(box, *args)
    first = box.files()
    box.forget_calls()

    said = configure(box, *args)

    assert box.files() == first
    assert "Nothing to change" in said
    assert not box.called(r"^(systemctl reload|kill)")


def test_a_run_without_client_cert_keeps_the_installed_one(box: ScriptBox, kit: Path) -> None:
    """The served script (no --client-cert) run again must not drop the certificate."""
    configure(box, "--mirror", MIRROR, "--docker", "--containerd", "--client-cert", str(kit))
    first = box.files()

    configure(box, "--mirror", MIRROR, "--docker", "--containerd")

    assert box.files() == first


def test_a_new_client_cert_replaces_the_old_one(box: ScriptBox, kit: Path, tmp_path: Path) -> None:
    configure(box, "--mirror", MIRROR, "--docker", "--containerd", "--client-cert", str(kit))
    box.path(f"{CERTS_D}/client.key").chmod(0o644)
    renewed = tmp_path / "renewed"
    renewed.mkdir()
    ClientCA(tmp_path / "auth").issue("ci", renewed)

    configure(box, "--mirror", MIRROR, "--docker", "--containerd", "--client-cert", str(renewed))

    for installed in (f"{CERTS_D}/client.key", CLIENT_KEY):
        assert box.path(installed).read_bytes() == (renewed / "client.key").read_bytes()
        assert mode(box, installed) == 0o600
    assert box.path(CLIENT_CERT).read_bytes() == (renewed / "client.cert").read_bytes()
    assert not [name for name in box.files() if "client.key.docxy-backup" in name]


def test_client_cert_dry_run_changes_nothing(box: ScriptBox, kit: Path) -> None:
    code, said = run(
        box, "--mirror", MIRROR, "--docker", "--containerd", "--dry-run", "--client-cert", str(kit)
    )

    assert code == 0, said
    assert box.files() == {}
    assert f"would install {box.path(CERTS_D)}/client.key (mode 0600)" in said
    assert f"would install {box.path(CLIENT_KEY)} (mode 0600)" in said
    assert f'|   client = [["{CLIENT_PAIR[0]}", "{CLIENT_PAIR[1]}"]]' in said


def test_remove_takes_the_certificates_out(box: ScriptBox, kit: Path, server_ca: Path) -> None:
    box.path(HOSTS_TOML).parent.mkdir(parents=True)
    box.path(HOSTS_TOML).write_text(
        'server = "https://registry-1.docker.io"\n\n'
        '[host."https://corp-cache.example"]\n  capabilities = ["pull", "resolve"]\n'
    )
    args = ("--mirror", MIRROR, "--docker", "--containerd")
    configure(box, *args, "--client-cert", str(kit), "--ca-cert", str(server_ca))
    box.stand_in("docker", docker_info())

    dry = configure(box, *args, "--remove", "--dry-run")
    assert f"would remove {box.path(CERTS_D)}/client.key" in dry
    assert box.path(CLIENT_KEY).exists()
    said = configure(box, *args, "--remove")

    assert not box.path(CERTS_D).exists()
    left = [name for name in box.files() if "containerd" in name and ".docxy-backup-" not in name]
    assert left == [HOSTS_TOML.lstrip("/")], "the copies beside hosts.toml are gone"
    hosts = tomllib.loads(box.path(HOSTS_TOML).read_text())
    assert list(hosts["host"]) == ["https://corp-cache.example"]
    assert "removed" in said
    again = configure(box, *args, "--remove", "--client-cert", str(box.base / "gone"))
    assert "Nothing to change" in again


@pytest.mark.parametrize(
    ("make", "complaint"),
    [
        (lambda kit: (kit / "client.key").unlink(), "client.key is missing"),
        (lambda kit: (kit / "client.cert").write_text("not a cert\n"), "client.cert is missing"),
        (lambda kit: (kit / "client.key").write_bytes((kit / "client.cert").read_bytes()), "key"),
        # `docxy clients add` cut between its renames (ClientCA.issue writes the pair as
        # docxy.tls.files.write_pair does): the new key beside the old certificate
        (
            lambda kit: shutil.copy(kit / "client.cert", kit / ".client.cert.pending"),
            "did not finish",
        ),
        (lambda kit: shutil.copy(kit / "client.key", kit / ".client.key.pending"), "run it again"),
    ],
)
def test_an_incomplete_client_cert_dir_is_refused(
    box: ScriptBox, kit: Path, make: Callable[[Path], object], complaint: str
) -> None:
    make(kit)

    code, said = run(box, "--mirror", MIRROR, "--docker", "--containerd", "--client-cert", str(kit))

    assert code == 2, said
    assert complaint in said
    assert box.files() == {}


def test_client_cert_needs_an_https_mirror(box: ScriptBox, kit: Path) -> None:
    code, said = run(box, "--mirror", "http://127.0.0.1:5000", "--client-cert", str(kit))

    assert code == 2 and "https://" in said
    assert box.files() == {}


def test_certs_d_is_named_with_the_mirror_port(box: ScriptBox, kit: Path) -> None:
    configure(box, "--mirror", "https://mirror.example.com:8443/", "--docker", "--no-reload",
              "--client-cert", str(kit))  # fmt: skip

    assert box.path("/etc/docker/certs.d/mirror.example.com:8443/client.cert").exists()


# --- several registries (--registry) ----------------------------------------------------------


def hosts_toml(box: ScriptBox, registry: str) -> dict[str, object]:
    path = box.path(f"/etc/containerd/certs.d/{registry}/hosts.toml")
    return tomllib.loads(path.read_text())


def test_one_hosts_toml_per_registry_with_its_real_server(box: ScriptBox, kit: Path) -> None:
    configure(
        box, "--mirror", MIRROR, "--containerd", "--client-cert", str(kit),
        "--registry", "docker.io", "--registry", "ghcr.io",
        "--registry=lab.test=http://10.0.0.5:5000",
    )  # fmt: skip

    servers = {r: hosts_toml(box, r)["server"] for r in ("docker.io", "ghcr.io", "lab.test")}
    assert servers == {
        "docker.io": "https://registry-1.docker.io",
        "ghcr.io": "https://ghcr.io",
        "lab.test": "http://10.0.0.5:5000",
    }
    ghcr = hosts_toml(box, "ghcr.io")["host"]
    assert isinstance(ghcr, dict)
    assert ghcr[MIRROR]["client"] == [CLIENT_PAIR]
    assert box.path("/etc/containerd/certs.d/ghcr.io/client-mirror.example.com.key").exists()


def test_named_registries_replace_the_docker_io_default(box: ScriptBox) -> None:
    configure(box, "--mirror", MIRROR, "--containerd", "--registry", "quay.io")

    assert [name for name in box.files() if name.endswith("hosts.toml")] == [
        "etc/containerd/certs.d/quay.io/hosts.toml"
    ]


def test_the_served_registries_are_the_default_and_removed_together(box: ScriptBox) -> None:
    filled = fill_in(
        (REPO / "scripts" / SCRIPT).read_text(),
        MIRROR,
        ("docker.io", "ghcr.io=https://ghcr.io"),
    )
    result = attempt(box, "--containerd", "--docker", stdin=filled)
    said = run_ok(result)

    assert hosts_toml(box, "ghcr.io")["server"] == "https://ghcr.io"
    assert hosts_toml(box, "docker.io")["server"] == "https://registry-1.docker.io"
    assert "registry-mirrors applies to Docker Hub only" in said
    assert "docker pull mirror.example.com/ghcr.io/OWNER/IMAGE:TAG" in said

    box.stand_in("docker", docker_info())
    run_ok(attempt(box, "--containerd", "--remove", stdin=filled))
    assert not [name for name in box.files() if name.endswith("hosts.toml")]


@pytest.mark.parametrize(
    "bad", ["GHCR.IO", "ghcr.io/x", "-x.io", "a.io=ftp://h", "a.io=https://h/p", "a b", "a;id"]
)
def test_a_bad_registry_is_refused(box: ScriptBox, bad: str) -> None:
    code, said = run(box, "--mirror", MIRROR, "--containerd", "--registry", bad)

    assert code == 2 and "--registry" in said, said
    assert box.files() == {}


# --- the mirror's URL compares as a URL: scheme and host in any case, a trailing slash ----------


def test_the_mirror_in_another_case_is_the_same_mirror_in_daemon_json(box: ScriptBox) -> None:
    box.path(DAEMON_JSON).parent.mkdir(parents=True)
    box.path(DAEMON_JSON).write_text(
        '{"registry-mirrors": ["HTTPS://Mirror.Example.COM/", "https://other.example"]}'
    )

    configure(box, "--mirror", MIRROR, "--docker")
    assert daemon_json(box)["registry-mirrors"] == [MIRROR, "https://other.example"]

    box.stand_in("docker", docker_info("https://other.example"))
    configure(box, "--mirror", "https://MIRROR.example.com/", "--docker", "--remove")
    assert daemon_json(box)["registry-mirrors"] == ["https://other.example"]


def test_the_mirror_in_another_case_is_the_same_host_in_hosts_toml(box: ScriptBox) -> None:
    configure(box, "--mirror", "https://MIRROR.Example.com", "--containerd")
    text = box.path(HOSTS_TOML).read_text()
    assert f'[host."{MIRROR}"]' in text

    said = configure(box, "--mirror", MIRROR + "/", "--containerd")
    assert "unchanged" in said and box.path(HOSTS_TOML).read_text() == text

    configure(box, "--mirror", "https://Mirror.Example.Com", "--containerd", "--remove")
    assert not box.path(HOSTS_TOML).exists()


@pytest.mark.parametrize("before", [{"log-level": "warn"}, None])
def test_a_restart_that_fails_puts_the_old_daemon_json_back_and_starts_dockerd_again(
    box: ScriptBox, before: dict[str, str] | None
) -> None:
    """dockerd refuses the new file (a --registry-mirror in its unit, say) and does not start:
    the old file (or none) is put back and dockerd started with it, and the run fails."""
    if before is not None:
        box.path(DAEMON_JSON).parent.mkdir(parents=True, exist_ok=True)
        box.path(DAEMON_JSON).write_text(json.dumps(before))
    starts = box.base / "systemctl-starts.json"  # the rules once the first restart failed
    starts.write_text(json.dumps([asdict(Rule(r"is-active")), asdict(Rule(r"^restart"))]))
    box.stand_in(
        "systemctl",
        Rule(r"is-active"),
        Rule(r"^restart", rc=1, effect=f'cp "{starts}" "$STANDINS/.rules/systemctl.json"'),
    )
    box.stand_in("docker", docker_info("https://other.example"))

    result = run_allowing_restart(box)

    assert result.returncode == 1, output(result)
    assert len(box.calls("systemctl")) >= 2 and [
        c.line for c in box.calls("systemctl") if "restart" in c.line
    ] == ["systemctl restart docker", "systemctl restart docker"]
    if before is None:
        assert not box.path(DAEMON_JSON).exists()
        assert "removed the new file" in result.stderr
    else:
        assert daemon_json(box) == before
        assert "put the old file back" in result.stderr
    assert "dockerd runs again with its old settings" in result.stderr


def test_the_operators_own_lines_in_the_mirrors_host_table_are_kept(box: ScriptBox) -> None:
    """A rerun (to add a registry, say) rewrites what the script owns in the mirror's table
    (capabilities, client, ca) and keeps the rest: a skip_verify for a private certificate,
    a header sub-table. Dropping them had containerd fail TLS and fall back to the upstream."""
    box.path(HOSTS_TOML).parent.mkdir(parents=True)
    box.path(HOSTS_TOML).write_text(
        'server = "https://registry-1.docker.io"\n\n'
        f'[host."{MIRROR}"]\n  capabilities = [\n    "pull",\n  ]\n  skip_verify = true\n'
        f'  [host."{MIRROR}".header]\n    x-team = ["a"]\n\n'
        '[host."https://corp-cache.example"]\n  capabilities = ["pull", "resolve"]\n'
    )

    configure(box, "--mirror", MIRROR, "--containerd")
    text = box.path(HOSTS_TOML).read_text()
    again = box.files()
    said = configure(box, "--mirror", MIRROR, "--containerd")

    hosts = tomllib.loads(text)["host"]
    assert list(hosts) == [MIRROR, "https://corp-cache.example"]
    assert hosts[MIRROR] == {
        "capabilities": ["pull", "resolve"],
        "skip_verify": True,
        "header": {"x-team": ["a"]},
    }
    assert box.files() == again and "unchanged" in said
