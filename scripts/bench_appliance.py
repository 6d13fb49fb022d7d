#!/usr/bin/env python3
"""Benchmark the appliance image: its size, and the memory of the whole container.

Not a test: it prints figures against issue 7's targets (idle under 100 MiB, under 300 MiB
while 20 clients pull different images). Everything runs on 127.0.0.1, as root:

1. The test bed (lab/bed/: Distribution registry, token server, CDN front) seeded with
   ``--images`` images ``bench/app<i>:1``, each a busybox layer, a ``--layer-mib`` layer of its
   own random bytes and a small text layer.
2. A private dockerd (lab/clients/dockerd.py: vfs, no bridge networks, egress guard) with
   ``max-concurrent-downloads`` = the number of images, whose registry mirror is the container.
   It imports the locally made bookworm base and builds this checkout's image
   (lab/clients/baseimage.py), as tests/e2e/test_image_e2e.py does.
3. Image size (``docker image inspect``).
4. Idle memory of the whole container, three ways: the sum of VmRSS of every process in it (its
   PID 1 and all descendants, from /proc: pages shared by its python processes count once in
   each, so this overstates; issue 7's targets are checked against it), the sum of their PSS
   (shared pages split between the processes), and the container's cgroup (memory.current less
   inactive file pages, as ``docker stats``). With a domain (mirror + renewer; the ACME server is
   a closed loopback port, so the renewer's first run fails at once and it then idles) and
   without one (mirror only: the renewer is not started), ``--idle-seconds`` after /health.
5. Peak memory while ``docker pull`` of every image runs at once through the container (sampled
   every 0.2 s), then the memory once the pulls are done, and at rest ``REST_SETTLE`` seconds
   later. Every pull must succeed.

Usage: ``python scripts/bench_appliance.py [--images 20] [--layer-mib 16]``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

# The loopback lab (lab/, beside scripts/) is not installed: this checkout's copy, and with it
# this checkout's docxy, come first: the one sys.path line, which ruff lets imports follow.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lab import Unavailable
from lab.bed import Bed, start_bed
from lab.bed.images import build_image, busybox_layer, make_layer, noise, text_layer
from lab.clients.baseimage import build_image as build_appliance
from lab.clients.baseimage import import_base
from lab.clients.container import Container, running_container
from lab.clients.dockerd import running_dockerd
from lab.clients.egress import EgressGuard
from lab.ports import LOOPBACK, free_port
from lab.processes import command_line, pss_kib, rss_kib, tree, wait_healthy

MiB = 1 << 20
IMAGE = "docxy:bench"
SAMPLE_INTERVAL = 0.2
START_TIMEOUT = 180.0
PULL_TIMEOUT = 900.0
IDLE_TARGET_MIB = 100
PEAK_TARGET_MIB = 300
#: Seconds after the pulls before the at-rest figures: the mirror's rest trim comes 5 s after
#: its last request (docxy.http.rest.REST_DELAY).
REST_SETTLE = 10.0


# --- memory of a container, from /proc -----------------------------------------------------------


def cgroup_kib(pid: int) -> int:
    """The container's memory cgroup less inactive file pages (what `docker stats` shows)."""
    try:
        lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
    except OSError:
        return 0
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if "memory" in controllers.split(","):  # cgroup v1
            group = Path("/sys/fs/cgroup/memory") / path.lstrip("/")
            usage, inactive = "memory.usage_in_bytes", "total_inactive_file"
            break
    else:  # cgroup v2: the "0::<path>" line
        group = Path("/sys/fs/cgroup") / lines[-1].split(":", 2)[2].lstrip("/")
        usage, inactive = "memory.current", "inactive_file"
    try:
        current = int((group / usage).read_text())
        stat = dict(row.split() for row in (group / "memory.stat").read_text().splitlines())
    except (OSError, ValueError):
        return 0
    return (current - int(stat.get(inactive, 0))) // 1024


@dataclass(frozen=True)
class Memory:
    """KiB: the sum of RSS (shared pages counted in every process), of PSS, and the cgroup's."""

    rss: int
    pss: int
    cgroup: int

    @staticmethod
    def of(root_pid: int) -> Memory:
        pids = tree(root_pid)
        return Memory(
            sum(rss_kib(pid) for pid in pids),
            sum(pss_kib(pid) for pid in pids),
            cgroup_kib(root_pid),
        )

    def __str__(self) -> str:
        return f"RSS {mib(self.rss)}, PSS {mib(self.pss)}, cgroup {mib(self.cgroup)}"


def container_memory(container: Container) -> tuple[Memory, list[tuple[int, int, str]]]:
    """The container's memory, and (RSS KiB, PSS KiB, command) per process."""
    root = int(container.state()["Pid"])
    rows = [(rss_kib(pid), pss_kib(pid), command_line(pid)) for pid in tree(root)]
    return Memory.of(root), rows


class PeakSampler:
    """Samples the container's memory in a thread until stopped; keeps each figure's peak."""

    def __init__(self, root_pid: int) -> None:
        self.root_pid = root_pid
        self.peak = Memory(0, 0, 0)
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="memory-sampler", daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            now, peak = Memory.of(self.root_pid), self.peak
            self.peak = Memory(
                max(now.rss, peak.rss), max(now.pss, peak.pss), max(now.cgroup, peak.cgroup)
            )
            self.samples += 1
            self._stop.wait(SAMPLE_INTERVAL)

    def __enter__(self) -> PeakSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


# --- the bed's images ----------------------------------------------------------------------------


@dataclass(frozen=True)
class BenchImage:
    ref: str  # what `docker pull` is given
    content: str


def seed(bed: Bed, count: int, layer_mib: int) -> list[BenchImage]:
    seeded = []
    for index in range(count):
        repo, content = f"bench/app{index}", f"docxy bench image {index}\n"
        layers = [
            busybox_layer(False),
            make_layer({f"data/app{index}.bin": noise(layer_mib * MiB, f"bench/{index}")}),
            text_layer(content, False),
        ]
        bed.pusher.push_image(repo, build_image(layers, "amd64", False), "1")
        seeded.append(BenchImage(f"{repo}:1", content))
    return seeded


# --- the appliance -------------------------------------------------------------------------------


def wait_health(container: Container, port: int) -> None:
    wait_healthy(
        port,
        stopped=lambda: None if container.state()["Running"] else "the container stopped",
        detail=container.report,
        timeout=START_TIMEOUT,
    )


def wait_log(container: Container, text: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while text not in container.logs():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{text!r} never logged:\n{container.report()}")
        time.sleep(0.5)


def idle_memory(container: Container, seconds: float) -> Memory:
    """Medians of the container's memory sampled over `seconds`; prints the breakdown."""
    deadline = time.monotonic() + seconds
    samples: list[Memory] = []
    rows: list[tuple[int, int, str]] = []
    while time.monotonic() < deadline:
        memory, rows = container_memory(container)
        samples.append(memory)
        time.sleep(1.0)
    print(f"      {'RSS':>9}  {'PSS':>9}  process")
    for rss, pss, cmd in rows:
        print(f"      {mib(rss):>9}  {mib(pss):>9}  {cmd}")
    return Memory(
        int(statistics.median(m.rss for m in samples)),
        int(statistics.median(m.pss for m in samples)),
        int(statistics.median(m.cgroup for m in samples)),
    )


def mib(kib: int) -> str:
    return f"{kib / 1024:.1f} MiB"


def verdict(kib: int, target_mib: int) -> str:
    return "met" if kib < target_mib * 1024 else "NOT met"


def pull_all(container: Container, images: Sequence[BenchImage]) -> tuple[Memory, float]:
    daemon = container.daemon

    def pull(image: BenchImage) -> None:
        result = daemon.docker("pull", image.ref, timeout=PULL_TIMEOUT)
        if result.returncode != 0:
            raise RuntimeError(f"docker pull {image.ref}: {result.stderr}")

    started = time.monotonic()
    with PeakSampler(int(container.state()["Pid"])) as sampler:
        with ThreadPoolExecutor(max_workers=len(images)) as pool:
            list(pool.map(pull, images))
    elapsed = time.monotonic() - started
    for image in (images[0], images[-1]):
        argv = ["run", "--rm", "--network", "none", image.ref, "cat", "/docxy-test.txt"]
        out = daemon.docker(*argv, check=True).stdout
        if out != image.content:
            raise RuntimeError(f"{image.ref}: wrong content {out!r}")
    return sampler.peak, elapsed


def run(args: argparse.Namespace) -> None:
    with ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="dxbench-")))
        bed = stack.enter_context(start_bed(workdir))
        print(f"seeding {args.images} images of {args.layer_mib} MiB (+ busybox) ...", flush=True)
        images = seed(bed, args.images, args.layer_mib)
        port = free_port()
        egress = stack.enter_context(EgressGuard())
        daemon = stack.enter_context(
            running_dockerd(
                mirror_url=f"http://{LOOPBACK}:{port}",
                egress_proxy=egress.url,
                extra_config={"max-concurrent-downloads": args.images},
            )
        )
        print("building the image (vfs: a few minutes) ...", flush=True)
        started = time.monotonic()
        build_appliance(daemon, import_base(daemon), IMAGE)
        print(f"  built in {time.monotonic() - started:.0f} s")
        inspected = json.loads(daemon.docker("image", "inspect", IMAGE, check=True).stdout)
        size = int(inspected[0]["Size"])
        print(f"\nimage size: {size / 1e6:.0f} MB ({size / MiB:.0f} MiB)")

        tls_port = free_port()
        domain_env = {
            "DOCXY_DOMAIN": "mirror.bench.test",
            "DOCXY_EMAIL": "ops@mirror.bench.test",
            "DOCXY_SERVER_LISTEN": f"{LOOPBACK}:{port}",
            "DOCXY_SERVER_TLS_LISTEN": f"{LOOPBACK}:{tls_port}",
            "DOCXY_UPSTREAM_REGISTRY": bed.upstream_url,
            "DOCXY_CERTS_ACME_SERVER": f"https://{LOOPBACK}:9/directory",  # closed: fails at once
        }
        with running_container(daemon, IMAGE, env=domain_env) as container:
            wait_health(container, port)
            wait_log(container, "certificate renewal failed")
            print("\nidle, with a domain (mirror + renewer):")
            idle_domain = idle_memory(container, args.idle_seconds)
            print(f"  total: {idle_domain}")

        plain_env = {
            "DOCXY_SERVER_LISTEN": f"{LOOPBACK}:{port}",
            "DOCXY_SERVER_PUBLIC_URL": f"http://{LOOPBACK}:{port}",
            "DOCXY_UPSTREAM_REGISTRY": bed.upstream_url,
        }
        with running_container(daemon, IMAGE, env=plain_env) as container:
            wait_health(container, port)
            print("\nidle, without a domain (mirror only):")
            idle_plain = idle_memory(container, args.idle_seconds)
            print(f"  total: {idle_plain}")
            print(f"\n{args.images} docker pulls at once, different images ...", flush=True)
            peak, elapsed = pull_all(container, images)
            after, _ = container_memory(container)
            print(f"  all pulled in {elapsed:.0f} s\n  peak:  {peak}\n  after: {after}")
            time.sleep(REST_SETTLE)  # the mirror trims its heap once at rest (docxy.http.rest)
            print("\nat rest after the pulls (no domain):")
            rested = idle_memory(container, args.idle_seconds)
            print(f"  total: {rested}")
            if egress.attempts:
                raise RuntimeError(f"dockerd tried to leave the machine: {egress.attempts}")

        print("\nsummary (MiB; target applies to the sum of RSS, which overstates)")
        print(f"  {'':<34} {'RSS':>8} {'PSS':>8} {'cgroup':>8}")
        print(f"  {'image size':<34} {size / 1e6:.0f} MB")
        summary_row("idle, domain (mirror + renewer)", idle_domain, IDLE_TARGET_MIB)
        summary_row("idle, no domain (mirror only)", idle_plain, IDLE_TARGET_MIB)
        summary_row(f"peak, {args.images} pulls at once", peak, PEAK_TARGET_MIB)
        summary_row("at rest after the pulls", rested, IDLE_TARGET_MIB)


def summary_row(label: str, memory: Memory, target_mib: int) -> None:
    figures = " ".join(f"{kib / 1024:8.1f}" for kib in (memory.rss, memory.pss, memory.cgroup))
    print(f"  {label:<34} {figures}  target < {target_mib}: {verdict(memory.rss, target_mib)}")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--images", type=int, default=20, help="different images pulled at once")
    parser.add_argument("--layer-mib", type=int, default=16, help="each image's own layer")
    parser.add_argument("--idle-seconds", type=float, default=10.0, help="idle sampling time")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    if os.geteuid() != 0:
        print("bench_appliance: needs root (a private dockerd)", file=sys.stderr)
        return 2
    try:
        run(parse_args(argv))
    except Unavailable as exc:
        print(f"bench_appliance: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
