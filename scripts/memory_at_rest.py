#!/usr/bin/env python3
"""Memory at rest of the mirror and of the appliance's processes, per process, outside Docker.

Not a test: it prints figures. Everything runs on 127.0.0.1 (the test bed of lab/bed/):

1. ``python -m docxy serve`` alone, against the bed.
2. The appliance's processes as the image runs them: scripts/entrypoint.sh execs supervisord
   (``python -m scheduler.supervise``), which runs the mirror, the renewer (``python -m
   scheduler``) and the fatal listener (bash). With a domain whose ACME server is a closed
   loopback port: the renewer's first run fails at once and it then waits, as it does between
   runs.

Each is measured at rest after start, then at rest again after pulls through the mirror (every
public bed image, cold then warm, with the token dance a client does, and one ``--big-mib`` blob
cold then warm). Per process, from /proc: RSS, PSS (shared pages split between the processes
sharing them), USS (pages of its own: what ending it would give back), anon (its anonymous
memory: heap, Python objects, stacks; what the code controls) and threads. PSS and USS move with
whatever else on the machine maps the same libraries (another python, say); RSS and anon do
not. "At rest" is the median of ``--samples`` readings a second apart, after ``--settle``
seconds.

``--python``: the interpreter of every process (default: this one). The image's packages are
not this machine's (httpx loads its CLI's click/rich/pygments when click is installed, for
one): a venv made as the Dockerfile makes it, without docxy itself, gives the image's figures:

    python3 -m venv /tmp/v && /tmp/v/bin/pip install '.[scheduler,shared]' certbot \\
        && /tmp/v/bin/pip uninstall -y docxy
    python3 scripts/memory_at_rest.py --python /tmp/v/bin/python

This checkout's docxy and scheduler come first on PYTHONPATH.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

# The loopback lab (lab/, beside scripts/) is not installed: this checkout's copy, and with it
# this checkout's docxy, come first: the one sys.path line, which ruff lets imports follow.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lab import REPO_ROOT, Unavailable
from lab.bed import Bed, start_bed
from lab.ports import LOOPBACK, free_port
from lab.processes import command_line, tree, wait_healthy

MiB = 1 << 20
START_TIMEOUT = 120.0
ACCEPT = ", ".join(
    [
        "application/vnd.docker.distribution.manifest.v2+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.oci.image.index.v1+json",
    ]
)


# --- one process's memory, from /proc ------------------------------------------------------------


@dataclass(frozen=True)
class Usage:
    """KiB, and threads."""

    rss: int
    pss: int
    uss: int
    anon: int
    threads: int

    @staticmethod
    def of(pid: int) -> Usage:
        fields: dict[str, int] = {}
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
                name, value = line.split(":", 1)
                fields[name] = int(value.split()[0])
            status = Path(f"/proc/{pid}/status").read_text()
        except (OSError, ValueError):
            return Usage(0, 0, 0, 0, 0)
        threads = int(re.search(r"^Threads:\s+(\d+)", status, re.MULTILINE)[1])  # type: ignore[index]
        private = fields.get("Private_Clean", 0) + fields.get("Private_Dirty", 0)
        rss, pss, anon = (fields.get(name, 0) for name in ("Rss", "Pss", "Anonymous"))
        return Usage(rss, pss, private, anon, threads)

    @staticmethod
    def median(samples: Sequence[Usage]) -> Usage:
        def mid(pick: Callable[[Usage], int]) -> int:
            return int(statistics.median(pick(s) for s in samples))

        return Usage(
            mid(lambda u: u.rss),
            mid(lambda u: u.pss),
            mid(lambda u: u.uss),
            mid(lambda u: u.anon),
            mid(lambda u: u.threads),
        )


def at_rest(root: int, settle: float, samples: int) -> dict[str, Usage]:
    """Per process of `root`'s tree (named by its command line): median usage at rest."""
    time.sleep(settle)
    readings: dict[str, list[Usage]] = {}
    for index in range(samples):
        if index:
            time.sleep(1.0)
        for pid in tree(root):
            readings.setdefault(name_of(pid), []).append(Usage.of(pid))
    return {name: Usage.median(usages) for name, usages in readings.items()}


def name_of(pid: int) -> str:
    command = command_line(pid, limit=200)
    for marker, name in (
        ("docxy serve", "mirror (python -m docxy serve)"),
        ("scheduler.supervise", "supervisord (python -m scheduler.supervise)"),
        ("scheduler.worker", "renewal run (python -m scheduler.worker)"),
        ("-m scheduler", "renewer (python -m scheduler)"),
        ("supervisor-fatal", "fatal listener (bash)"),
        ("supervisor-watchdog", "watchdog listener (bash)"),
    ):
        if marker in command:
            return name
    return command[:60]


def report(title: str, usage: dict[str, Usage]) -> None:
    print(f"\n{title}")
    print(f"  {'process':<46} {'RSS':>7} {'PSS':>7} {'USS':>7} {'anon':>7} {'threads':>7}  (MiB)")
    for name, u in usage.items():
        figures = " ".join(f"{kib / 1024:7.1f}" for kib in (u.rss, u.pss, u.uss, u.anon))
        print(f"  {name:<46} {figures} {u.threads:7}")
    totals = (sum(getattr(u, f) for u in usage.values()) for f in ("rss", "pss", "uss", "anon"))
    print(f"  {'sum':<46} " + " ".join(f"{kib / 1024:7.1f}" for kib in totals), flush=True)


# --- pulls through the mirror ---------------------------------------------------------------------


def pull(client: httpx.Client, mirror: str, repo: str, refs: Sequence[tuple[str, str]]) -> int:
    """GET `refs` of `repo` ((manifests, tag or digest) or (blobs, digest)) as a registry client
    does: the token dance once, then every request with the token. Returns the bytes read."""
    token: str | None = None
    got = 0
    for kind, ref in refs:
        url = f"{mirror}/v2/{repo}/{kind}/{ref}"
        headers = {"Accept": ACCEPT}
        for _ in range(2):
            if token is not None:
                headers["Authorization"] = f"Bearer {token}"
            with client.stream("GET", url, headers=headers, follow_redirects=True) as response:
                if response.status_code == 401 and token is None:
                    challenge = response.headers["www-authenticate"]
                    params = dict(re.findall(r'(\w+)="([^"]*)"', challenge))
                    token = client.get(params.pop("realm"), params=params).json()["token"]
                    continue
                response.raise_for_status()
                for chunk in response.iter_bytes(MiB):
                    got += len(chunk)
                break
    return got


def pull_everything(mirror: str, bed: Bed, big: str | None) -> int:
    got = 0
    # The appliance's TLS listener serves its self-signed bootstrap certificate.
    with httpx.Client(timeout=120, verify=False) as client:
        for image in bed.images.values():
            if image.private:
                continue
            manifests = [image.tag, *image.platforms.values()]
            refs = [("manifests", m) for m in manifests] + [("blobs", b) for b in image.blobs]
            got += pull(client, mirror, image.repo, refs)
        if big is not None:
            got += pull(client, mirror, "library/hello", [("blobs", big)])
    return got


# --- the two set-ups -----------------------------------------------------------------------------


def environment(python: str, extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DOCXY_")}
    env["PATH"] = f"{Path(python).parent}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = str(REPO_ROOT)
    return env | extra


def wait_text(log: Path, text: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while text not in log.read_text(errors="replace"):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{text!r} never logged:\n{log.read_text()[-3000:]}")
        time.sleep(0.5)


@contextmanager
def started(argv: list[str], env: dict[str, str], workdir: Path) -> Iterator[tuple[int, Path]]:
    log = workdir / "output.log"
    with log.open("ab") as out:
        proc = subprocess.Popen(argv, env=env, cwd=workdir, stdout=out, stderr=subprocess.STDOUT)
    try:
        port = int(env["DOCXY_SERVER_LISTEN"].rsplit(":", 1)[1])
        wait_healthy(
            port,
            stopped=lambda: None if proc.poll() is None else f"exited {proc.returncode}",
            detail=lambda: log.read_text()[-3000:],
            timeout=START_TIMEOUT,
        )
        yield proc.pid, log
    finally:
        proc.terminate()  # supervisord stops its children
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def measure(
    name: str, pid: int, mirror: str, bed: Bed, big: str | None, args: argparse.Namespace
) -> None:
    report(f"{name}: at rest after start", at_rest(pid, args.settle, args.samples))
    got = [pull_everything(mirror, bed, big) for _ in range(2)]  # cold, then warm
    print(f"\n  pulled {got[0] / MiB:.1f} MiB cold, {got[1] / MiB:.1f} MiB warm")
    report(f"{name}: at rest after the pulls", at_rest(pid, args.settle, args.samples))


def run(args: argparse.Namespace) -> None:
    with ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="dxmem-")))
        (workdir / "bed").mkdir()
        bed = stack.enter_context(start_bed(workdir / "bed"))
        big = bed.push_big_blob("library/hello", args.big_mib * MiB) if args.big_mib else None
        print(f"python: {args.python}")

        direct = workdir / "direct"
        direct.mkdir()
        port = free_port()
        env = environment(
            args.python,
            {
                "DOCXY_CACHE_DIR": str(direct / "cache"),
                "DOCXY_SERVER_LISTEN": f"{LOOPBACK}:{port}",
                "DOCXY_SERVER_ADMIN_LISTEN": f"{LOOPBACK}:{free_port()}",
                "DOCXY_UPSTREAM_REGISTRY": bed.upstream_url,
            },
        )
        with started([args.python, "-m", "docxy", "serve"], env, direct) as (pid, _):
            measure("python -m docxy serve", pid, f"http://{LOOPBACK}:{port}", bed, big, args)

        appliance = workdir / "appliance"
        (appliance / "state").mkdir(parents=True)
        (appliance / "run").mkdir()
        port, tls = free_port(), f"{LOOPBACK}:{free_port()}"
        env = environment(
            args.python,
            {
                "DOCXY_DOMAIN": "mirror.memory.test",
                "DOCXY_STATE_DIR": str(appliance / "state"),
                "DOCXY_RUN_DIR": str(appliance / "run"),
                "DOCXY_SERVER_LISTEN": f"{LOOPBACK}:{port}",
                "DOCXY_SERVER_TLS_LISTEN": tls,
                # Not the domain, which no resolver knows here (the realm of the challenges).
                "DOCXY_SERVER_PUBLIC_URL": f"https://{tls}",
                "DOCXY_SERVER_ADMIN_LISTEN": f"{LOOPBACK}:{free_port()}",
                "DOCXY_UPSTREAM_REGISTRY": bed.upstream_url,
                "DOCXY_CERTS_ACME_SERVER": f"https://{LOOPBACK}:9/directory",  # closed
                "XDG_CACHE_HOME": str(appliance / "xdg"),
            },
        )
        entrypoint = str(REPO_ROOT / "scripts" / "entrypoint.sh")
        with started(["bash", entrypoint], env, appliance) as (pid, log):
            wait_text(log, "certificate renewal failed")
            name = "appliance (supervisord, with a domain; pulls over TLS)"
            measure(name, pid, f"https://{tls}", bed, big, args)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--python", default=sys.executable, help="interpreter of the processes")
    parser.add_argument("--big-mib", type=int, default=64, help="one big blob pulled (0: none)")
    parser.add_argument("--settle", type=float, default=10.0, help="seconds before sampling")
    parser.add_argument("--samples", type=int, default=5, help="readings a second apart")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    try:
        run(parse_args(argv))
    except Unavailable as exc:
        print(f"memory_at_rest: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
