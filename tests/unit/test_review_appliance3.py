"""The container appliance as an operator runs it: scripts/entrypoint.sh, the real supervisord
with scripts/supervisord.conf and its two listeners, a stand-in for the mirror (`python -m
docxy serve` answers /health and nothing else). Loopback 127.0.0.70-77, ports 7000-7199."""

from __future__ import annotations

import contextlib
import http.server
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from lab.ports import free_port
from tests.scriptbox import REPO

ADDRESS = "127.0.0.71"

#: `python`, first on PATH: `python -m docxy serve` is a mirror that answers every GET with 200
#: and notes each request in $FAKE_MIRROR_LOG; anything else (the entrypoint's check of the
#: settings, `python -m docxy serve --show-config`, too) is the real interpreter.
FAKE_PYTHON = """#!/usr/bin/env bash
if [[ "$*" == "-m docxy serve" ]]; then
  exec {python} -c '
import http.server, os, sys
host, _, port = os.environ["DOCXY_SERVER_LISTEN"].rpartition(":")
log = os.environ["FAKE_MIRROR_LOG"]
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        with open(log, "a") as f:
            f.write(self.path + "\\n")
        body = b"{{\\"status\\": \\"ok\\"}}"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
http.server.HTTPServer.allow_reuse_address = True
http.server.HTTPServer((host, int(port)), Handler).serve_forever()
'
fi
exec {python} "$@"
"""


@dataclass
class Box:
    proc: subprocess.Popen[bytes]
    env: dict[str, str]
    run_dir: Path
    mirror_log: Path
    output: Path
    tmp: Path

    def ctl(self, *args: str) -> str:
        done = subprocess.run(
            ["supervisorctl", "-s", f"unix://{self.run_dir}/supervisor.sock", *args],
            env=self.env, capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        return done.stdout + done.stderr

    def state(self, program: str) -> str:
        words = self.ctl("status", program).split()
        return words[1] if len(words) > 1 else "?"

    def probes(self) -> int:
        if not self.mirror_log.exists():
            return 0
        return self.mirror_log.read_text().count("/health")


def wait_for(check: Callable[[], bool], seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.2)
    raise AssertionError(f"not within {seconds} s: {what}")


@contextlib.contextmanager
def appliance(**settings: str) -> Iterator[Box]:
    """scripts/entrypoint.sh with no arguments (supervisord), plain HTTP, in a short temp dir
    (a unix socket's path is at most 107 bytes)."""
    top = Path(tempfile.mkdtemp(prefix="dx3-"))
    bin_dir, run_dir, state = top / "bin", top / "run", top / "state"
    tmp = top / "tmp"  # TMPDIR: supervisord's childlogdir (the image's /tmp)
    for directory in (bin_dir, run_dir, state, tmp):
        directory.mkdir()
    python = bin_dir / "python"
    python.write_text(FAKE_PYTHON.format(python=sys.executable))
    python.chmod(0o755)
    for tool in ("supervisorctl", "supervisord"):
        found = shutil.which(tool, path=str(Path(sys.executable).parent)) or shutil.which(tool)
        assert found, tool
        (bin_dir / tool).symlink_to(found)
    env = {k: v for k, v in os.environ.items() if not k.startswith("DOCXY_")}
    env |= {
        "PATH": f"{bin_dir}:{env['PATH']}",
        "PYTHONPATH": str(REPO),
        "TMPDIR": str(tmp),
        "DOCXY_STATE_DIR": str(state),
        "DOCXY_RUN_DIR": str(run_dir),
        "DOCXY_IF_INET6": str(top / "none"),
        "DOCXY_SERVER_PUBLIC_URL": "http://mirror.test",
        "DOCXY_SERVER_LISTEN": f"{ADDRESS}:{free_port(ADDRESS)}",
        "DOCXY_SERVER_ADMIN_LISTEN": "",
        "FAKE_MIRROR_LOG": str(top / "mirror.log"),
        **settings,
    }
    output = top / "output.log"
    with output.open("ab") as out:
        proc = subprocess.Popen(
            ["bash", str(REPO / "scripts" / "entrypoint.sh")],
            env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    box = Box(proc, env, run_dir, top / "mirror.log", output, tmp)
    try:
        wait_for(lambda: (run_dir / "supervisor.sock").exists(), 30, "supervisord up")
        yield box
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                pass
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # the session this test started, nothing else
        proc.wait(timeout=10)
        shutil.rmtree(top, ignore_errors=True)


def test_a_mirror_the_operator_stopped_stays_stopped() -> None:
    """`supervisorctl stop docxy` (maintenance inside the container: the cache moved, a
    `docxy cache gc` with the mirror down) is supervisord's STOPPED, not a hang: the watchdog,
    which had seen the mirror answer, took the failed probes that followed for a hung mirror
    and started it again behind the operator's back, DOCXY_WATCHDOG_SECONDS later."""
    with appliance(DOCXY_WATCHDOG_SECONDS="1") as box:
        wait_for(lambda: box.probes() >= 1, 30, "the watchdog's first probe answered")
        time.sleep(1)  # its answer read
        assert "stopped" in box.ctl("stop", "docxy")
        assert box.state("docxy") == "STOPPED"
        time.sleep(16)  # three ticks: the patience (1 s) several times over
        assert box.state("docxy") == "STOPPED", box.output.read_text()


def exposed_ports(dockerfile: str) -> set[int]:
    """The ports the image's EXPOSE instructions name (`docker run -P` publishes each)."""
    ports: set[int] = set()
    for line in dockerfile.replace("\\\n", " ").splitlines():
        words = line.split()
        if words and words[0] == "EXPOSE":
            ports |= {int(word.split("/")[0]) for word in words[1:]}
    return ports


def test_publishing_every_port_leaves_the_admin_listener_alone() -> None:
    """The admin listener (/metrics, /status, /status.json: the upstreams, their errors, the
    shared bucket's endpoint) answers any address in Host, and compose.yaml binds it on all of
    the container's addresses to publish it on the host's loopback. `EXPOSE 9180` made
    `docker run -P` (publish every exposed port) put it on all of the host's interfaces, to
    anyone, beside the mirror's 80 and 443."""
    dockerfile = (REPO / "Dockerfile").read_text()
    assert {80, 443} <= exposed_ports(dockerfile)
    assert 9180 not in exposed_ports(dockerfile)


def entrypoint_env(**settings: str) -> subprocess.CompletedProcess[str]:
    """scripts/entrypoint.sh with arguments (as `docker exec <ctr> docxy ...` and the
    HEALTHCHECK run it): what the mirror's config makes of the settings it derives."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DOCXY_")}
    env |= {"PYTHONPATH": str(REPO), "DOCXY_IF_INET6": "/nonexistent", **settings}
    show = (
        "from docxy.config import load_config; c = load_config(); "
        "print(c.server.public_url, c.certs.domain, c.server.tls_listen)"
    )
    return subprocess.run(
        ["bash", str(REPO / "scripts" / "entrypoint.sh"), sys.executable, "-c", show],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


@pytest.mark.parametrize(
    "domain", [" mirror.example.org", "mirror.example.org\t", "\tmirror.example.org "]
)
def test_a_domain_with_spaces_around_it_is_the_domain(tmp_path: Path, domain: str) -> None:
    """A quoted value keeps its spaces (`DOCXY_DOMAIN=" mirror.example.org"` in .env, `-e` on
    docker run): the config strips them off certs.domain, but the entrypoint built the public
    URL from the raw value, `https:// mirror.example.org`, and the mirror refused to start
    over a setting the operator never gave ("server.public_url: not an http(s) URL ... (env
    DOCXY_SERVER_PUBLIC_URL)"), FATAL, a restart loop."""
    ran = entrypoint_env(DOCXY_STATE_DIR=str(tmp_path), DOCXY_DOMAIN=domain)
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.split() == ["https://mirror.example.org", "mirror.example.org", "0.0.0.0:443"]


def test_a_blank_domain_is_no_domain(tmp_path: Path) -> None:
    """`DOCXY_DOMAIN=" "`: the entrypoint took it for a domain (HTTPS on, the renewer started,
    public URL `https:// `), the config for none; the container went FATAL over the public
    URL instead of saying what to set."""
    python = tmp_path / "bin" / "python"  # what the entrypoint execs: supervisord's
    python.parent.mkdir()
    python.write_text('#!/bin/sh\necho "started: $*"\n')
    python.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith("DOCXY_")}
    env |= {"PATH": f"{python.parent}:{env['PATH']}", "DOCXY_STATE_DIR": str(tmp_path)}
    ran = subprocess.run(
        ["bash", str(REPO / "scripts" / "entrypoint.sh")],
        env=env | {"DOCXY_DOMAIN": "  "}, capture_output=True, text=True, timeout=60,
        check=False,
    )  # fmt: skip
    assert ran.returncode == 2, ran.stdout + ran.stderr
    assert "set DOCXY_DOMAIN" in ran.stderr and ran.stdout == ""


def test_the_listeners_protocol_is_not_written_to_files() -> None:
    """The two event listeners' stdout is supervisord's event protocol. With no
    stdout_logfile of their own, supervisord logged it to AUTO files in its childlogdir (the
    image's /tmp, in the container's writable layer): `READY RESULT 2 OK` for every TICK_5,
    some 300 KB a day, kept up to 50 MB and 10 backups each, and two new files left behind at
    every start of the container (`docker restart`, a restart after FATAL)."""
    with appliance() as box:
        wait_for(lambda: box.probes() >= 1, 30, "the watchdog's first probe (after a tick)")
        time.sleep(1)
        left = sorted(path.name for path in box.tmp.iterdir())
        assert not [name for name in left if "---supervisor-" in name], left


def test_a_hung_mirror_is_still_restarted() -> None:
    """The other side of the two above (no protocol log, STOPPED heeded): a mirror that
    answered and then hangs (SIGSTOP) is restarted by the watchdog under the real supervisord."""
    with appliance(DOCXY_WATCHDOG_SECONDS="1") as box:
        wait_for(lambda: box.probes() >= 1, 30, "the watchdog's first probe answered")
        time.sleep(1)
        pid = int(box.ctl("pid", "docxy").strip())
        os.kill(pid, signal.SIGSTOP)
        said = "the mirror has not answered /health"
        wait_for(lambda: said in box.output.read_text(), 60, "the watchdog's restart")
        wait_for(lambda: box.ctl("pid", "docxy").strip() not in ("0", str(pid)), 30, "new pid")


def test_a_watchdog_of_zero_seconds_is_off(tmp_path: Path) -> None:
    """0 is "off" in the mirror's own settings (limits.*, bandwidth): DOCXY_WATCHDOG_SECONDS=0
    instead made the watchdog probe at every tick and restart the mirror at its first failed
    probe (one /health slower than 10 s on a loaded host cut every download). It is now off,
    and says so once."""
    from tests.unit.test_watchdog_clock import start_watchdog

    first = tmp_path / "bin"
    first.mkdir()
    calls = tmp_path / "supervisorctl.log"
    (first / "supervisorctl").write_text(f'#!/bin/sh\necho "$@" >>"{calls}"\n')
    (first / "supervisorctl").chmod(0o755)
    mirror = http.server.ThreadingHTTPServer(
        (ADDRESS, free_port(ADDRESS)), http.server.BaseHTTPRequestHandler
    )
    threading.Thread(target=mirror.serve_forever, daemon=True).start()
    listen = f"{ADDRESS}:{mirror.server_address[1]}"
    watchdog = start_watchdog(tmp_path, listen, "0", first=first)
    assert watchdog.stdin is not None and watchdog.stdout is not None
    try:
        for serial in range(4):  # TICK_5 events, as supervisord sends them
            if serial == 1:
                mirror.shutdown()  # answered once, then refuses: a failed probe at once
                mirror.server_close()
            assert watchdog.stdout.readline() == b"READY\n", f"gone before tick {serial}"
            header = b"ver:3.0 server:supervisor serial:%d pool:watchdog poolserial:%d" % (
                serial,
                serial,
            )
            payload = b"when:%d" % serial
            watchdog.stdin.write(header + b" eventname:TICK_5 len:%d\n" % len(payload) + payload)
            watchdog.stdin.flush()
            assert watchdog.stdout.read(len(b"RESULT 2\nOK")) == b"RESULT 2\nOK"
            time.sleep(0.5)
        assert watchdog.stdout.readline() == b"READY\n"
    finally:
        watchdog.stdin.close()
        watchdog.wait(timeout=15)
        assert watchdog.stderr is not None
        said = watchdog.stderr.read().decode()
        watchdog.stdout.close()
        watchdog.stderr.close()
    assert not calls.exists(), calls.read_text()
    assert said.count("DOCXY_WATCHDOG_SECONDS=0") == 1 and "off" in said, said


def image_env(dockerfile: str) -> dict[str, str]:
    """The runtime stage's ENV settings (KEY=VALUE pairs, continued lines joined)."""
    stage = dockerfile[dockerfile.rindex("\nFROM ") :].replace("\\\n", " ")
    found: dict[str, str] = {}
    for line in stage.splitlines():
        words = line.split()
        if words and words[0] == "ENV":
            found |= dict(word.split("=", 1) for word in words[1:])
    return found


def test_the_image_alone_keeps_the_admin_listener_on_loopback(tmp_path: Path) -> None:
    """The image bound the admin listener (/metrics, /status.json: upstream errors, the
    shared bucket's endpoint; any address in Host answered) on 0.0.0.0: run as the README's
    e2e runs it, `docker run --network host`, without compose.host.yaml's override, that was
    every interface of the host. The image keeps it on loopback, as the mirror's own default
    does; compose.yaml, which publishes it on the host's loopback (and lets a scraper in its
    network reach it), binds it on the container's addresses itself, and an empty value in
    .env still turns it off."""
    from tests.unit.test_review_appliance2 import compose_environment

    assert image_env((REPO / "Dockerfile").read_text())["DOCXY_SERVER_ADMIN_LISTEN"] == (
        "127.0.0.1:9180"
    )
    public = "DOCXY_SERVER_PUBLIC_URL=http://mirror.test\n"
    unset = compose_environment(tmp_path / "unset", "compose.yaml", public)
    assert unset["DOCXY_SERVER_ADMIN_LISTEN"] == "0.0.0.0:9180"
    off = compose_environment(
        tmp_path / "off", "compose.yaml", public + "DOCXY_SERVER_ADMIN_LISTEN=\n"
    )
    assert off["DOCXY_SERVER_ADMIN_LISTEN"] == ""
