"""The container appliance's files (compose files, supervisord.conf, entrypoint.sh), as an
operator's settings reach them: what compose hands the container, what supervisord runs."""

from __future__ import annotations

import fnmatch
import http.server
import os
import re
import shlex
import shutil
import signal
import struct
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from docxy.core.challenge import Challenge, bearer_challenge, rewrite_challenges
from tests.scriptbox import REPO
from tests.unavailable import need_binary, skip_or_fail
from tests.unit.test_watchdog_clock import start_watchdog


def compose_environment(tmp_path: Path, compose_file: str, env_text: str) -> dict[str, str]:
    """The environment docker-compose (bookworm's 1.29) gives the service of `compose_file`
    with `env_text` as the project's .env."""
    need_binary("docker-compose")
    project = tmp_path / "project"
    project.mkdir(parents=True)
    shutil.copy(REPO / compose_file, project / compose_file)
    (project / ".env").write_text(env_text)
    shown = subprocess.run(
        ["docker-compose", "--project-directory", str(project), "-f", compose_file, "config"],
        cwd=project, capture_output=True, text=True, timeout=60, check=True,
        env={k: v for k, v in os.environ.items() if not k.startswith("DOCXY_")},
    ).stdout  # fmt: skip
    block = shown.split("environment:\n", 1)[1]
    found = re.findall(r"^      (DOCXY_[A-Z_]+): ?(.*)$", block, re.M)
    return {key: value.strip("'\"") for key, value in found}


def test_host_networking_keeps_an_admin_listener_turned_off(tmp_path: Path) -> None:
    """`DOCXY_SERVER_ADMIN_LISTEN=` in .env turns the admin listener off (README: empty turns
    it off; every DOCXY_* line reaches the container). compose.host.yaml's `:-` default took an
    empty value for an unset one and bound 127.0.0.1:9180 on the host all the same (a port the
    operator had freed for something else: the mirror could not bind it and went FATAL)."""
    public = "DOCXY_SERVER_PUBLIC_URL=http://mirror.test\n"
    off = compose_environment(
        tmp_path / "off", "compose.host.yaml", public + "DOCXY_SERVER_ADMIN_LISTEN=\n"
    )
    assert off["DOCXY_SERVER_ADMIN_LISTEN"] == ""
    unset = compose_environment(tmp_path / "unset", "compose.host.yaml", public)
    assert unset["DOCXY_SERVER_ADMIN_LISTEN"] == "127.0.0.1:9180"
    moved = compose_environment(
        tmp_path / "moved",
        "compose.host.yaml",
        public + "DOCXY_SERVER_ADMIN_LISTEN=127.0.0.1:9999\n",
    )
    assert moved["DOCXY_SERVER_ADMIN_LISTEN"] == "127.0.0.1:9999"


def supervised_commands(run_dir: str, scripts_dir: str) -> dict[str, list[str]]:
    """Each program's argv as supervisord makes it from scripts/supervisord.conf (its own parser,
    then shlex.split, as supervisor.process.Subprocess.get_execv_args does)."""
    from supervisor.options import (  # type: ignore[import-untyped]
        ServerOptions,
        UnhosedConfigParser,
    )

    conf = REPO / "scripts" / "supervisord.conf"
    parser = UnhosedConfigParser()
    parser.expansions = {
        "ENV_DOCXY_RUN_DIR": run_dir,
        "ENV_DOCXY_SCRIPTS_DIR": scripts_dir,
        "ENV_DOCXY_SUPERVISOR_RENEWER": "true",
        "here": str(conf.parent),
    }
    parser.read_string(conf.read_text())
    groups = ServerOptions().process_groups_from_parser(parser)
    return {
        group.name: shlex.split(process.command)
        for group in groups
        for process in group.process_configs
    }


def test_directories_with_spaces_reach_supervisord_whole() -> None:
    """The scripts beside the entrypoint (a clone under "My Projects", the e2e test's way of
    running it outside the image) and DOCXY_RUN_DIR may hold a space: supervisord split the
    listeners' command at it ("can't find command '/tmp/with'"), both went FATAL at once, the
    FATAL listener with them, so nothing took a failed mirror's container down any more; the
    renewer's reload command named half a socket."""
    run_dir, scripts_dir = "/run/my docxy", "/home/me/My Projects/docxy/scripts"
    argv = supervised_commands(run_dir, scripts_dir)
    assert argv["fatal"] == [f"{scripts_dir}/supervisor-fatal.sh"]
    assert argv["watchdog"] == [f"{scripts_dir}/supervisor-watchdog.sh"]
    reload = argv["scheduler"][argv["scheduler"].index("--reload-command") + 1]
    # scheduler.renewal.tell_mirror splits it with shlex too
    assert shlex.split(reload) == [
        "supervisorctl", "-s", f"unix://{run_dir}/supervisor.sock", "signal", "HUP", "docxy"
    ]  # fmt: skip


def runtime_copies(dockerfile: str) -> list[str]:
    """Where the runtime stage's COPYs from the build context put each file (not --from=)."""
    stage = dockerfile[dockerfile.rindex("\nFROM ") :]
    joined = re.sub(r"\\\n\s*", " ", stage)
    placed = []
    for line in joined.splitlines():
        words = line.split()
        if not words or words[0] != "COPY" or any(w.startswith("--from") for w in words):
            continue
        *sources, target = [w for w in words[1:] if not w.startswith("--")]
        placed += [f"{target.rstrip('/')}/{Path(source).name}" for source in sources]
    return placed


def modes_set(dockerfile: str) -> dict[str, str]:
    """The paths (globs) the runtime stage's RUNs chmod, and the mode each gets."""
    stage = re.sub(r"\\\n\s*", " ", dockerfile[dockerfile.rindex("\nFROM ") :])
    found: dict[str, str] = {}
    for command in re.findall(r"chmod\s+([0-7]{3,4})\s+([^&;]+)", stage):
        mode, paths = command
        found |= dict.fromkeys(paths.split(), mode)
    return found


def test_the_image_scripts_are_usable_whatever_the_checkout_umask() -> None:
    """COPY keeps the modes of the build context: a checkout made under umask 027 (a hardened
    host's) gave root-owned 0750 scripts and a 0640 supervisord.conf, and the container, which
    runs as docxy, failed at once ("exec /usr/local/lib/docxy/entrypoint.sh: permission
    denied", reproduced in a private dockerd). Every file the runtime stage copies from the
    context is given its mode: executable scripts 0755, the rest 0644."""
    dockerfile = (REPO / "Dockerfile").read_text()
    modes = modes_set(dockerfile)
    placed = runtime_copies(dockerfile)
    assert "/usr/local/lib/docxy/entrypoint.sh" in placed
    for path in placed:
        given = [mode for glob, mode in modes.items() if fnmatch.fnmatchcase(path, glob)]
        assert given == (["0755"] if path.endswith(".sh") else ["0644"]), path


UPSTREAM_REALM = "https://auth.upstream.test/token"
MIRROR_REALM = "https://mirror.test/auth/token"


@pytest.mark.parametrize(
    "value",
    [
        # RFC 9110 5.6.1: a recipient accepts empty list elements, a leading one too
        f', Bearer realm="{UPSTREAM_REALM}",service="s"',
        f' ,, Bearer realm="{UPSTREAM_REALM}",service="s"',
        # no space between the scheme and its first parameter: read as Bearer by
        # bearer_challenge, which the mirror fetches its token with
        f'Bearer,realm="{UPSTREAM_REALM}",service="s"',
    ],
)
def test_an_upstream_realm_never_reaches_the_client(value: str) -> None:
    """rewrite_challenges relayed these unchanged, the upstream's realm in them (its docstring:
    "an upstream's realm never reaches them"), so a client went to the upstream's token
    service itself: the first two were no challenge at all to split_challenges (the mirror
    found no Bearer challenge either), the third was Bearer to parse_challenge but not to
    rewrite_challenges' own test of the scheme."""
    assert bearer_challenge([value]) == Challenge(
        "Bearer", {"realm": UPSTREAM_REALM, "service": "s"}
    )
    relayed = rewrite_challenges([value], MIRROR_REALM, True)
    assert relayed == [f'Bearer realm="{MIRROR_REALM}",service="s"']
    assert not any(UPSTREAM_REALM in text for text in relayed)


def fatal_listener_after(tmp_path: Path, header: bytes, payload: bytes) -> tuple[int, bool]:
    """scripts/supervisor-fatal.sh handed one event: (its parent's exit status, whether it left
    the note that makes the appliance exit 1). Its parent, which it sends SIGTERM to as it
    would supervisord, is a bash that waits for it."""
    script = REPO / "scripts" / "supervisor-fatal.sh"
    tmp_path.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("DOCXY_")}
    parent = subprocess.Popen(
        ["bash", "-c", '"$1"; echo $? >/dev/null', "_", str(script)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
        env=env | {"DOCXY_RUN_DIR": str(tmp_path)},
    )  # fmt: skip
    assert parent.stdin is not None and parent.stdout is not None
    assert parent.stdout.readline() == b"READY\n"
    parent.stdin.write(header + b" len:%d\n" % len(payload) + payload)
    parent.stdin.flush()
    assert parent.stdout.read(len(b"RESULT 2\nOK")) == b"RESULT 2\nOK"
    parent.stdin.close()
    status = parent.wait(timeout=10)
    parent.stdout.close()
    return status, (tmp_path / "fatal").exists()


HEADER = b"ver:3.0 server:supervisor serial:7 pool:fatal poolserial:3"


def test_only_a_fatal_event_takes_the_appliance_down(tmp_path: Path) -> None:
    """supervisor 4's Subprocess compares equal by priority, and the two listeners share the
    default one: an event the watchdog was handed and never answered (it died mid-event: a
    DOCXY_WATCHDOG_SECONDS of 5m made it exit at its first tick) was put back into the FATAL
    listener's pool too, which took a TICK_5 for a program that gave up and stopped the
    container: "supervisord stopped: a program gave up (when:1796390670)", exit 1 (reproduced
    with the entrypoint outside Docker). The FATAL listener now acts on PROCESS_STATE_FATAL only."""
    tick = fatal_listener_after(
        tmp_path / "tick", HEADER + b" eventname:TICK_5", b"when:1796390670"
    )
    assert tick == (0, False)
    fatal = fatal_listener_after(
        tmp_path / "fatal",
        HEADER + b" eventname:PROCESS_STATE_FATAL",
        b"processname:docxy groupname:docxy from_state:BACKOFF",
    )
    assert fatal == (-signal.SIGTERM, True)


def answering_mirror() -> http.server.ThreadingHTTPServer:
    """An HTTP server on 127.0.0.82 (a port below 10000) that answers every request."""
    for port in range(8230, 8330):  # bounded
        try:
            server = http.server.ThreadingHTTPServer(
                ("127.0.0.82", port), http.server.BaseHTTPRequestHandler
            )
        except OSError:
            continue
        threading.Thread(target=server.serve_forever, daemon=True).start()
        return server
    raise AssertionError("no free port on 127.0.0.82 in 8230-8329")


@pytest.mark.parametrize(
    ("patience", "unreadable"), [("5m", True), ("-5", True), ("300s", True), ("08", False)]
)
def test_a_watchdog_setting_it_cannot_read_is_said_once(
    tmp_path: Path, patience: str, unreadable: bool
) -> None:
    """DOCXY_WATCHDOG_SECONDS=5m (or 08, bash's octal) was an arithmetic error the watchdog
    went on past, then died at its first tick (`every: unbound variable`): supervisord
    started it again, a python start each time, every second or two for as long as the
    container ran, and no hung mirror was ever restarted. It now says so once and keeps the
    default, 300 s; 08 is 8 s."""
    mirror = answering_mirror()
    listen = f"127.0.0.82:{mirror.server_address[1]}"
    watchdog = start_watchdog(tmp_path, listen, patience)
    assert watchdog.stdin is not None and watchdog.stdout is not None
    try:
        for serial in range(3):  # three TICK_5 events, as supervisord sends them
            assert watchdog.stdout.readline() == b"READY\n", f"gone before tick {serial}"
            payload = b"when:%d" % serial
            header = b"ver:3.0 server:supervisor serial:%d pool:watchdog poolserial:%d" % (
                serial,
                serial,
            )
            watchdog.stdin.write(header + b" eventname:TICK_5 len:%d\n" % len(payload) + payload)
            watchdog.stdin.flush()
            assert watchdog.stdout.read(len(b"RESULT 2\nOK")) == b"RESULT 2\nOK"
        assert watchdog.stdout.readline() == b"READY\n"
    finally:
        watchdog.stdin.close()
        watchdog.wait(timeout=15)
        mirror.shutdown()
        mirror.server_close()
        assert watchdog.stderr is not None
        said = watchdog.stderr.read().decode()
        watchdog.stdout.close()
        watchdog.stderr.close()
    if unreadable:
        assert said.count("DOCXY_WATCHDOG_SECONDS") == 1 and "300 instead" in said, said
    else:
        assert "DOCXY_WATCHDOG_SECONDS" not in said and "base" not in said, said


#: cap_net_bind_service=+ep as `setcap` writes it (VFS_CAP_REVISION_2 | effective, bit 10)
NET_BIND_XATTR = struct.pack("<5I", 0x02000001, 1 << 10, 0, 0, 0)


def test_the_capability_is_on_a_copy_of_the_interpreter_not_on_it() -> None:
    """The Dockerfile gave the interpreter itself cap_net_bind_service=+ep, and every process
    of the appliance runs it: under `cap_drop: [ALL]` (or any bounding set without that
    capability) the kernel refuses to exec such a file, so nothing started ("python3:
    Operation not permitted", reproduced in a private dockerd with --cap-drop ALL). The
    capability is on a copy beside the venv's bin/, which the entrypoint picks when it may."""
    dockerfile = re.sub(r"\\\n\s*", " ", (REPO / "Dockerfile").read_text())
    (run,) = [line for line in dockerfile.splitlines() if "security.capability" in line]
    assert "netbind = '/opt/docxy/netbind/python'" in run
    assert "os.setxattr(netbind," in run
    assert "setxattr(os.path.realpath(sys.executable)" not in run


@pytest.mark.parametrize("dropped", [False, True])
def test_the_entrypoint_takes_the_capable_python_only_where_it_may(
    tmp_path: Path, dropped: bool
) -> None:
    """With cap_net_bind_service in the bounding set the entrypoint puts the capable copy
    first on PATH (a mirror on host networking binds 80 and 443 as docxy); without it (setpriv
    drops it here, as `cap_drop: [ALL]` does), the plain interpreter, which still runs."""
    need_binary("setpriv")
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").symlink_to(sys.executable)
    (venv / "netbind").mkdir()
    capable = venv / "netbind" / "python"
    shutil.copy(os.path.realpath(sys.executable), capable)
    try:
        os.setxattr(capable, "security.capability", NET_BIND_XATTR)
    except OSError as exc:
        skip_or_fail(f"cannot grant a file capability here: {exc}")
    env = {k: v for k, v in os.environ.items() if not k.startswith("DOCXY_")}
    env |= {"PATH": f"{venv / 'bin'}:/usr/bin:/bin", "DOCXY_RUN_DIR": str(tmp_path)}
    drop = ["--bounding-set", "-net_bind_service"] if dropped else []
    entrypoint = str(REPO / "scripts" / "entrypoint.sh")
    ran = subprocess.run(
        ["setpriv", *drop, "bash", entrypoint, "python", "-c", "import sys; print(sys.executable)"],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.strip() == str(venv / ("bin" if dropped else "netbind") / "python")
