#!/usr/bin/env python3
"""Benchmark Docxy's blob cache against Distribution's proxy mode and nginx, all on 127.0.0.1.

Not a test: it prints figures and the ratios the cache issue sets as targets.

1. An upstream: Debian's ``docker-registry`` (Distribution v2.8) without auth, holding random
   blobs written straight into its filesystem storage. They are generated once into
   ``--data-dir`` (default ``$XDG_CACHE_HOME/docxy-bench``) and reused by later runs.
2. Peers in front of it: Docxy (``python -m docxy serve``), Distribution in proxy mode
   (``proxy.remoteurl``) and nginx as a plain ``proxy_pass`` (no cache; ``proxy_buffering off``
   with 1 MiB buffers, as the default 8 KiB cost it about 3x the CPU here), plus the upstream
   itself as a baseline.
3. Per variant, peer and round: a cold GET (fresh cache) and warm GETs of the big blob with
   ``curl -o /dev/null`` as MB/s (10^6 bytes/s) and CPU-seconds per GiB of the serving process
   tree (utime+stime from /proc, read once the peer and the upstream have gone quiet, so work
   left after the response, such as Distribution's second fetch, is counted). Every GET starts
   after a ``sync``, so no peer's GET shares the disk with what the peer before it cached. Byte
   counts are always checked, sha256 once per peer and variant. Variants (``--variants``):
   plain HTTP; HTTPS (the script makes one self-signed certificate: Docxy's TLS listener,
   Distribution's ``http.tls``, nginx ``ssl``, a TLS twin of the upstream for the direct row;
   curl ``--cacert``); and each of those with every peer's serving process tree pinned to one core
   (``taskset -c 0``, as a 1 vCPU VPS; the upstream and curl are not pinned). The upstream the
   peers fetch from is always plain HTTP. Rounds interleave the variants; every figure is a
   median over the rounds, and each is also given as a ratio to Distribution's.
4. Docxy's peak RSS while ``--clients`` curls fetch different blobs at once, cold then warm,
   once per round with a fresh cache (plain HTTP, not pinned). Then ``--layers`` different
   ``--layer-mib`` blobs, cold, one GET after another with nothing waited for in between (the
   layers of a pull), through Distribution and Docxy with fresh caches, once per round.
5. A blob (``--throttle-mib``) through a throttling TCP proxy (``--throttle-mbit``) in front of
   the upstream, once per round:
   direct, through Docxy whose cache a previous pull filled (section 3's cache dir), and through
   Docxy ``--no-cache``. A blob GET stands in for ``docker pull``: dockerd is not used.
6. With ``--docker-pull`` (root, dockerd): a real ``docker pull`` of ``docxybench/big:1`` (a
   ``--pull-mib`` random file in an uncompressed tar layer, plus a tiny /docxy-test.txt layer)
   from a private dockerd (lab/clients/dockerd.py: vfs, no networks, egress guard) whose
   registry mirror is Docxy, Docxy's upstream being the throttling proxy in front of a local
   ``docker-registry``. Per mirror (cache on with a fresh cache dir, then ``--no-cache``): pull,
   ``docker rmi``, pull again, each timed, with the upstream GETs of the big layer.

Usage: ``python scripts/bench_cache.py [--quick] [--rounds N] [--variants http,https]
[--docker-pull]``; ``--help`` lists the knobs.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import platform
import shutil
import signal
import ssl
import statistics
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

import httpx
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

# The loopback lab (lab/, beside scripts/) is not installed: this checkout's copy, and with it
# this checkout's docxy, come first: the one sys.path line, which ruff lets imports follow.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lab import REPO_ROOT, Unavailable, need
from lab.certs import CertPair, loopback_cert
from lab.clients.dockerd import Dockerd, docker_cli, running_dockerd
from lab.clients.egress import EgressGuard
from lab.mirror import mirror_env
from lab.ports import LOOPBACK, free_port
from lab.processes import status_kib, tree_cpu
from lab.registry import REGISTRY_BINARY, RegistryProcess
from lab.service import Service, start_service

MiB = 1024 * 1024
GiB = 1024 * MiB
MB = 1_000_000
CHUNK = 4 * MiB
BENCH_REPO = "bench/blob"
ONE_CORE = "0"  # the CPU a pinned peer runs on (taskset -c)
SETTLE_LIMIT = 60.0
TRANSFER_TIMEOUT = 1800


# --- blobs in the upstream's storage ---------------------------------------------------------


@dataclass(frozen=True)
class Blob:
    digest: str
    size: int
    repo: str = BENCH_REPO

    @property
    def path(self) -> str:
        return f"/v2/{self.repo}/blobs/{self.digest}"


def random_chunks(key: str, size: int) -> Iterator[bytes]:
    """``size`` bytes of AES-CTR keystream seeded by ``key`` (fast, incompressible)."""
    seed = hashlib.sha256(key.encode()).digest()[:16]
    stream = Cipher(algorithms.AES(seed), modes.CTR(bytes(16))).encryptor()
    zeros, left = bytes(CHUNK), size
    while left > 0:
        data = stream.update(zeros[: min(CHUNK, left)])
        left -= len(data)
        yield data


class BlobData:
    """Random blobs in a Distribution filesystem storage tree, generated once, reused after."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.storage = root / "storage"
        self.v2 = self.storage / "docker/registry/v2"
        self.index_path = root / "index.json"

    def ensure(self, label: str, size: int, *, announce: bool = True) -> Blob:
        key = f"{label}:{size}"
        return self.ensure_stream(key, size, lambda: random_chunks(key, size), announce=announce)

    def ensure_stream(
        self,
        key: str,
        size: int,
        chunks: Callable[[], Iterable[bytes]],
        *,
        repo: str = BENCH_REPO,
        announce: bool = True,
    ) -> Blob:
        """The blob ``chunks()`` yields (``size`` bytes), stored once under ``key``."""
        digest = self._index().get(key)
        if digest is None or not self._stored(digest, size):
            if announce:
                print(f"  generating blob {key} ({size // MiB} MiB) ...", flush=True)
            digest = self._generate(chunks())
            self._save(key, digest)
        blob = Blob(digest, size, repo)
        self._link(blob)
        return blob

    def _index(self) -> dict[str, str]:
        try:
            loaded = json.loads(self.index_path.read_text())
        except (OSError, ValueError):
            return {}
        return {str(k): str(v) for k, v in loaded.items()} if isinstance(loaded, dict) else {}

    def _save(self, key: str, digest: str) -> None:
        index = self._index() | {key: digest}
        tmp = self.index_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(index, indent=1, sort_keys=True))
        tmp.replace(self.index_path)

    def _data(self, digest: str) -> Path:
        hexpart = digest.removeprefix("sha256:")
        return self.v2 / "blobs/sha256" / hexpart[:2] / hexpart / "data"

    def _stored(self, digest: str, size: int) -> bool:
        path = self._data(digest)
        return path.is_file() and path.stat().st_size == size

    def _generate(self, chunks: Iterable[bytes]) -> str:
        """Write ``chunks`` into the storage, hashed as they are written."""
        self.v2.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256()
        tmp = self.root / f"generating-{os.getpid()}.tmp"
        try:
            with tmp.open("wb") as out:
                for data in chunks:
                    digest.update(data)
                    out.write(data)
            name = f"sha256:{digest.hexdigest()}"
            self._data(name).parent.mkdir(parents=True, exist_ok=True)
            tmp.replace(self._data(name))
        finally:
            tmp.unlink(missing_ok=True)
        return name

    def _link(self, blob: Blob) -> None:
        hexpart = blob.digest.removeprefix("sha256:")
        link = self.v2 / "repositories" / blob.repo / "_layers/sha256" / hexpart / "link"
        link.parent.mkdir(parents=True, exist_ok=True)
        link.write_text(blob.digest)


# --- processes -------------------------------------------------------------------------------


def settle_disk() -> None:
    """Write back every dirty page before a measurement starts.

    Without it a peer's GET shares the disk with the write-back of what the peer before it
    cached (Distribution's stored copy of the blob, Docxy's temp file), and the order of the
    peers in a round, not the peer, decides part of its figure.
    """
    os.sync()


def settle(pids: Sequence[int], quiet: float = 0.02, interval: float = 0.3) -> None:
    """Wait (bounded) until ``pids`` stop using CPU: background work is done."""
    deadline = time.monotonic() + SETTLE_LIMIT
    before = sum(tree_cpu(pid) for pid in pids)
    while time.monotonic() < deadline:
        time.sleep(interval)
        now = sum(tree_cpu(pid) for pid in pids)
        if now - before < quiet:
            return
        before = now
    print(f"  warning: processes {list(pids)} still busy after {SETTLE_LIMIT}s", flush=True)


class Services:
    """Every process the benchmark starts; :meth:`stop_all` in ``finally``."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.running: list[Service] = []

    def start(
        self,
        name: str,
        command: Sequence[str],
        port: int,
        ready_path: str,
        env: Mapping[str, str] | None = None,
        *,
        tls: CertPair | None = None,
        pin: bool = False,
    ) -> Service:
        """Start ``command``; ``pin``: on one core only (its children inherit the affinity)."""
        cpus = ONE_CORE if pin else None
        service = start_service(
            name,
            command,
            port=port,
            workdir=self.workdir,
            ready_path=ready_path,
            env=env,
            tls=tls,
            cpus=cpus,
        )
        return self.track(service)

    def track(self, service: Service) -> Service:
        self.running.append(service)
        return service

    def stop(self, service: Service) -> None:
        service.stop()
        if service in self.running:
            self.running.remove(service)

    def stop_all(self) -> None:
        while self.running:
            self.running.pop().stop()


def start_registry(
    services: Services,
    name: str,
    storage: Path,
    remote: str | None = None,
    *,
    tls: CertPair | None = None,
    pin: bool = False,
) -> Service:
    """Distribution without auth on ``storage``; with ``remote``, its proxy mode."""
    registry = RegistryProcess(
        REGISTRY_BINARY,
        services.workdir,
        name=name,
        storage=storage,
        remote=remote,
        tls=tls,
        cpus=ONE_CORE if pin else None,
    )
    return services.track(registry.start())


def nginx_config(prefix: Path, port: int, upstream_port: int, tls: CertPair | None = None) -> str:
    user = "user root root;\n" if os.geteuid() == 0 else ""
    temp = "\n".join(
        f"  {kind}_temp_path {prefix}/{kind}_temp;"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    listen = f"{LOOPBACK}:{port}"
    if tls is not None:
        listen += f" ssl;\n    ssl_certificate {tls.cert};\n    ssl_certificate_key {tls.key}"
    return f"""{user}daemon off;
master_process on;
worker_processes auto;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 1024; }}
http {{
  access_log off;
{temp}
  upstream registry {{ server {LOOPBACK}:{upstream_port}; keepalive 8; }}
  server {{
    listen {listen};
    location / {{
      proxy_pass http://registry;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host $http_host;
      proxy_buffering off;
      proxy_buffer_size 1m;
      proxy_buffers 8 1m;
      proxy_read_timeout 600s;
    }}
  }}
}}
"""


def start_nginx(
    services: Services, upstream: Service, *, tls: CertPair | None = None, pin: bool = False
) -> Service:
    prefix = services.workdir / "nginx"
    prefix.mkdir(exist_ok=True)
    port = free_port()
    config = prefix / "nginx.conf"
    config.write_text(nginx_config(prefix, port, upstream.port, tls))
    command = ["nginx", "-p", str(prefix), "-c", str(config), "-e", str(prefix / "error.log")]
    return services.start("nginx", command, port, "/v2/", tls=tls, pin=pin)


def start_docxy(
    services: Services,
    name: str,
    upstream_url: str,
    cache_dir: Path,
    max_size: int | None,
    *,
    tls: CertPair | None = None,
    pin: bool = False,
) -> Service:
    """Docxy with its cache in ``cache_dir``; ``max_size=None``: ``--no-cache``.

    With ``tls`` the returned service is its TLS listener (the plain one is on another port).
    """
    port = free_port()
    command = [sys.executable, "-m", "docxy", "serve"]
    if tls is None:
        command += ["--listen", f"{LOOPBACK}:{port}"]
    else:
        command += ["--listen", f"{LOOPBACK}:{free_port()}", "--tls-listen", f"{LOOPBACK}:{port}"]
        command += ["--cert", str(tls.cert), "--key", str(tls.key)]
    command += ["--upstream", upstream_url, "--cache-dir", str(cache_dir)]
    if max_size is None:
        command.append("--no-cache")
    else:
        command += ["--set", f"cache.max_size={max_size}"]
    env = mirror_env(services.workdir, None)  # --cache-dir above wins over its cache dir
    return services.start(name, command, port, "/health", env, tls=tls, pin=pin)


# --- clients and measurements ----------------------------------------------------------------


@dataclass(frozen=True)
class Transfer:
    status: int
    nbytes: int
    seconds: float


#: TLS 1.3 suites in the order Docker's Go client offers them on a machine with AES hardware.
#: curl's own order puts AES-256 first; a Go server (Distribution) ignores the client's order and
#: picks AES-128, Docxy honours it: so curl asks as docker would, and both serve what docker gets.
DOCKER_TLS13_ORDER = "TLS_AES_128_GCM_SHA256:TLS_CHACHA20_POLY1305_SHA256:TLS_AES_256_GCM_SHA384"


def curl_command(url: str, cacert: Path | None = None) -> list[str]:
    write_out = "%{http_code} %{size_download} %{time_total}"
    trust = []
    if cacert is not None:
        trust = ["--cacert", str(cacert), "--tls13-ciphers", DOCKER_TLS13_ORDER]
    return ["curl", "-sS", "-o", "/dev/null", "-w", write_out, "--max-time", "1800", *trust, url]


def parse_curl(output: str) -> Transfer:
    status, nbytes, seconds = output.split()
    return Transfer(int(status), int(nbytes), float(seconds))


def curl_get(url: str, cacert: Path | None = None) -> Transfer:
    done = subprocess.run(
        curl_command(url, cacert), capture_output=True, text=True, timeout=TRANSFER_TIMEOUT + 30
    )
    if not done.stdout.strip():
        raise RuntimeError(f"curl {url}: {done.stderr.strip()}")
    return parse_curl(done.stdout)


def check_transfer(what: str, transfer: Transfer, blob: Blob) -> None:
    if transfer.status != 200 or transfer.nbytes != blob.size:
        raise RuntimeError(
            f"{what}: status {transfer.status}, {transfer.nbytes} of {blob.size} bytes"
        )


def sha256_of(url: str, verify: ssl.SSLContext | bool = True) -> tuple[str, int]:
    digest, total = hashlib.sha256(), 0
    timeout = httpx.Timeout(60.0, read=600.0)
    with httpx.stream("GET", url, timeout=timeout, verify=verify) as response:
        response.raise_for_status()
        for chunk in response.iter_raw(CHUNK):
            digest.update(chunk)
            total += len(chunk)
    return f"sha256:{digest.hexdigest()}", total


@dataclass(frozen=True)
class Sample:
    seconds: float
    nbytes: int
    cpu: float
    upstream_gets: int

    @property
    def mbps(self) -> float:
        return self.nbytes / MB / self.seconds

    @property
    def cpu_per_gib(self) -> float:
        return self.cpu / (self.nbytes / GiB)


def upstream_gets(upstream: Service, blob: Blob) -> int:
    """GETs of ``blob`` in the upstream's access log."""
    return upstream.log_text().count(f'"GET {blob.path} ')


def timed_get(peer: Service, upstream: Service, blob: Blob) -> Sample:
    quiet = [peer.pid, upstream.pid]
    settle_disk()
    settle(quiet)
    gets, cpu = upstream_gets(upstream, blob), tree_cpu(peer.pid)
    transfer = curl_get(peer.url + blob.path, peer.cacert)
    check_transfer(peer.name, transfer, blob)
    settle(quiet)
    used = tree_cpu(peer.pid) - cpu
    return Sample(transfer.seconds, transfer.nbytes, used, upstream_gets(upstream, blob) - gets)


# --- the comparison (sections 2 and 3) -------------------------------------------------------

PEERS = ("upstream (direct)", "Distribution proxy", "Docxy", "nginx proxy_pass")
DIRECT, DISTRIBUTION = PEERS[0], PEERS[1]


@dataclass(frozen=True)
class Variant:
    """How the peers are reached and run: HTTP or HTTPS, on every core or on CPU 0 only."""

    https: bool
    one_core: bool

    @property
    def name(self) -> str:
        return ("HTTPS" if self.https else "HTTP") + (", one core" if self.one_core else "")


VARIANTS = {
    "http": Variant(https=False, one_core=False),
    "https": Variant(https=True, one_core=False),
    "http-1core": Variant(https=False, one_core=True),
    "https-1core": Variant(https=True, one_core=True),
}


class PeerResult:
    def __init__(self) -> None:
        self.cold: list[Sample] = []
        self.warm: list[Sample] = []
        self.sha256 = "not checked"


class Bench:
    def __init__(
        self, args: argparse.Namespace, services: Services, data: BlobData, tls: CertPair
    ) -> None:
        self.args = args
        self.services = services
        self.data = data
        self.tls = tls
        self.workdir = services.workdir
        self.results = {
            variant: {name: PeerResult() for name in PEERS} for variant in args.variant_list
        }
        self.docxy_cache: Path | None = None
        """The cache dir of the latest Docxy (the throttle section reuses it, warm)."""

    def start_peer(self, name: str, upstream: Service, variant: Variant, fresh: Path) -> Service:
        tls, pin = (self.tls if variant.https else None), variant.one_core
        if name == DIRECT:
            storage = self.data.storage
            return start_registry(self.services, "upstream-direct", storage, tls=tls, pin=pin)
        if name == DISTRIBUTION:
            return start_registry(
                self.services, "distribution-proxy", fresh, upstream.url, tls=tls, pin=pin
            )
        if name == "Docxy":
            if self.docxy_cache is not None:
                shutil.rmtree(self.docxy_cache, ignore_errors=True)  # keep only the latest
            self.docxy_cache = fresh
            max_size = 4 * self.args.size
            return start_docxy(
                self.services, "docxy", upstream.url, fresh, max_size, tls=tls, pin=pin
            )
        return start_nginx(self.services, upstream, tls=tls, pin=pin)

    def round(self, upstream: Service, blob: Blob, round_no: int, variant: Variant) -> None:
        for name in PEERS:
            slug = f"{name.split()[0].lower()}-{variant.name.replace(', ', '-').replace(' ', '')}"
            fresh = self.workdir / f"round{round_no}-{slug}"
            peer = self.start_peer(name, upstream, variant, fresh)
            # The direct row's own registry serves the blob: its log has the GETs.
            source = peer if name == DIRECT else upstream
            try:
                result = self.results[variant][name]
                result.cold.append(timed_get(peer, source, blob))
                for _ in range(self.args.warm):
                    result.warm.append(timed_get(peer, source, blob))
                if round_no == 0:
                    digest, nbytes = sha256_of(peer.url + blob.path, peer.verify)
                    ok = digest == blob.digest and nbytes == blob.size
                    result.sha256 = "ok" if ok else f"WRONG ({digest}, {nbytes} bytes)"
                self._log(name, round_no, variant, result)
            finally:
                self.services.stop(peer)
            if name == DISTRIBUTION:
                shutil.rmtree(fresh, ignore_errors=True)

    def _log(self, name: str, round_no: int, variant: Variant, result: PeerResult) -> None:
        cold, warm = result.cold[-1], result.warm[-1]
        print(
            f"  round {round_no + 1}, {variant.name}, {name}: cold {cold.mbps:.0f} MB/s "
            f"{cold.cpu_per_gib:.2f} CPU-s/GiB ({cold.upstream_gets} upstream GETs), warm "
            f"{warm.mbps:.0f} MB/s {warm.cpu_per_gib:.2f} CPU-s/GiB "
            f"({warm.upstream_gets} upstream GETs)",
            flush=True,
        )


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def spread(values: Sequence[float], fmt: str) -> str:
    text = format(median(values), fmt)
    if len(values) > 1:
        text += f" [{format(min(values), fmt)}-{format(max(values), fmt)}]"
    return text


#: The columns of a variant's table: (title, which samples, what of each, format).
METRICS: tuple[tuple[str, str, Callable[[Sample], float], str], ...] = (
    ("cold MB/s", "cold", lambda s: s.mbps, ".0f"),
    ("cold CPU-s/GiB", "cold", lambda s: s.cpu_per_gib, ".2f"),
    ("warm MB/s", "warm", lambda s: s.mbps, ".0f"),
    ("warm CPU-s/GiB", "warm", lambda s: s.cpu_per_gib, ".2f"),
)


def metric_median(result: PeerResult, kind: str, pick: Callable[[Sample], float]) -> float:
    samples = result.cold if kind == "cold" else result.warm
    return median([pick(s) for s in samples])


def print_table(results: Mapping[str, PeerResult], variant: Variant) -> None:
    """Medians [min-max] per peer, each with its ratio to Distribution's median."""
    header = ("peer", *(title for title, *_ in METRICS), "up GETs")
    dist = results[DISTRIBUTION]
    rows = [header]
    for name, result in results.items():
        cells = [name]
        for _, kind, pick, fmt in METRICS:
            values = [pick(s) for s in (result.cold if kind == "cold" else result.warm)]
            ratio = median(values) / metric_median(dist, kind, pick)
            cells.append(f"{spread(values, fmt)} ({ratio:.2f}x)")
        cold_gets = median([s.upstream_gets for s in result.cold])
        cells.append(f"{cold_gets:g}+{median([s.upstream_gets for s in result.warm]):g}")
        rows.append(tuple(cells))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    print(f"\n  -- {variant.name} --")
    for row in rows:
        print("  " + "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)))
    print("  sha256 of a full GET: " + ", ".join(f"{n} {r.sha256}" for n, r in results.items()))


#: The issue's targets for Docxy / Distribution, per metric, in every variant.
TARGETS = {
    "cold MB/s": (">=", 1.0),
    "cold CPU-s/GiB": ("<=", 1.0),
    "warm MB/s": (">=", 1.0),
    "warm CPU-s/GiB": ("<=", 1.0),
}


def print_ratios(results: Mapping[Variant, Mapping[str, PeerResult]]) -> None:
    """Docxy / Distribution per variant and metric (medians), against the targets."""
    print("\n  Docxy / Distribution (medians):")
    for variant, peers in results.items():
        docxy, dist = peers["Docxy"], peers[DISTRIBUTION]
        for title, kind, pick, fmt in METRICS:
            ours, theirs = metric_median(docxy, kind, pick), metric_median(dist, kind, pick)
            op, target = TARGETS[title]
            value = ours / theirs
            met = value >= target if op == ">=" else value <= target
            print(
                f"  {variant.name:<17} {title:<15} {ours:{fmt}} / {theirs:{fmt}} = "
                f"{value:.2f} (target {op} {target:g}: {'met' if met else 'MISSED'})"
            )


# --- section 4: memory under many clients ----------------------------------------------------


@dataclass(frozen=True)
class CrowdResult:
    seconds: float
    nbytes: int
    peak_rss_kib: int
    failures: int


def crowd_get(service: Service, blobs: Sequence[Blob]) -> CrowdResult:
    """All ``blobs`` at once, one curl each, sampling the server's RSS every 50 ms."""
    started = time.monotonic()
    procs = [
        subprocess.Popen(curl_command(service.url + blob.path), stdout=subprocess.PIPE, text=True)
        for blob in blobs
    ]
    peak = 0
    try:
        deadline = started + TRANSFER_TIMEOUT + 30
        while any(p.poll() is None for p in procs) and time.monotonic() < deadline:
            peak = max(peak, status_kib(service.pid, "VmRSS"))
            time.sleep(0.05)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    seconds = time.monotonic() - started
    failures, total = 0, 0
    for proc, blob in zip(procs, blobs, strict=True):
        out = proc.stdout.read() if proc.stdout is not None else ""
        proc.wait()
        transfer = parse_curl(out) if out.strip() else Transfer(0, 0, 0.0)
        total += transfer.nbytes
        failures += transfer.status != 200 or transfer.nbytes != blob.size
    return CrowdResult(seconds, total, peak, failures)


def crowd_section(args: argparse.Namespace, services: Services, data: BlobData) -> None:
    size, clients = args.client_mib * MiB, args.clients
    print(
        f"\n== Docxy RSS, {clients} clients x {args.client_mib} MiB different blobs, "
        f"{args.rounds} round(s) with a fresh cache =="
    )
    print(f"  (blobs generated on first use: {clients * size / GiB:.1f} GiB in the data dir)")
    blobs = [data.ensure(f"client-{i}", size, announce=False) for i in range(clients)]
    upstream = start_registry(services, "upstream-crowd", data.storage)
    phases = ("cold (all misses)", "warm (all hits)")
    runs: dict[str, list[CrowdResult]] = {phase: [] for phase in phases}
    idle, hwm = [], []
    try:
        for round_no in range(args.rounds):
            cache = services.workdir / f"crowd-docxy-{round_no}"
            docxy = start_docxy(services, "docxy-crowd", upstream.url, cache, clients * size + GiB)
            try:
                idle.append(status_kib(docxy.pid, "VmRSS") / 1024)
                for phase in phases:
                    settle_disk()
                    settle([docxy.pid, upstream.pid])
                    result = crowd_get(docxy, blobs)
                    runs[phase].append(result)
                    print(
                        f"  round {round_no + 1} {phase}: peak VmRSS "
                        f"{result.peak_rss_kib / 1024:.0f} MiB, "
                        f"{result.nbytes / MB / result.seconds:.0f} MB/s aggregate, "
                        f"{result.failures} failed transfers",
                        flush=True,
                    )
                hwm.append(status_kib(docxy.pid, "VmHWM") / 1024)
            finally:
                services.stop(docxy)
                shutil.rmtree(cache, ignore_errors=True)
    finally:
        services.stop(upstream)
    print(f"  median [min-max] over {args.rounds} round(s); RSS sampled every 50 ms")
    print(f"  Docxy idle RSS {spread(idle, '.0f')} MiB")
    for phase, results in runs.items():
        peaks = [r.peak_rss_kib / 1024 for r in results]
        speeds = [r.nbytes / MB / r.seconds for r in results]
        failed = sum(r.failures for r in results)
        print(
            f"  {phase}: peak VmRSS {spread(peaks, '.0f')} MiB, "
            f"{spread(speeds, '.0f')} MB/s aggregate, {failed} failed transfers in all"
        )
    verdict = "met" if max(hwm) < 150 else "MISSED"
    print(
        f"  Docxy VmHWM per round {spread(hwm, '.0f')} MiB, "
        f"highest {max(hwm):.0f} (target < 150 MiB: {verdict})"
    )


# --- section 4b: the layers of one pull, one after another -------------------------------------


def layers_section(args: argparse.Namespace, services: Services, data: BlobData) -> None:
    """Cold GETs of ``--layers`` different blobs in a row, as a pull fetches its layers: what
    a peer does after one blob's GET (Distribution's second fetch and store, Docxy's sync and
    read back, which waits for no fill to run) may overlap the next GET; the other sections
    let each peer go quiet first."""
    size, count = args.layer_mib * MiB, args.layers
    print(
        f"\n== {count} different {args.layer_mib} MiB blobs, cold, one GET after another "
        f"(the layers of a pull), {args.rounds} round(s), plain HTTP, every core =="
    )
    blobs = [data.ensure(f"layer-{i}", size, announce=False) for i in range(count)]
    upstream = start_registry(services, "upstream-layers", data.storage)
    names = (DISTRIBUTION, "Docxy")
    speeds: dict[str, list[float]] = {name: [] for name in names}
    try:
        for round_no in range(args.rounds):
            for name in names:
                fresh = services.workdir / f"layers-{round_no}-{name.split()[0].lower()}"
                if name == DISTRIBUTION:
                    peer = start_registry(services, "distribution-layers", fresh, upstream.url)
                else:
                    max_size = count * size + GiB
                    peer = start_docxy(services, "docxy-layers", upstream.url, fresh, max_size)
                try:
                    settle_disk()
                    settle([peer.pid, upstream.pid])
                    transfers = [curl_get(peer.url + blob.path) for blob in blobs]
                    for blob, transfer in zip(blobs, transfers, strict=True):
                        check_transfer(name, transfer, blob)
                    seconds = sum(transfer.seconds for transfer in transfers)
                    speeds[name].append(count * size / MB / seconds)
                    each = ", ".join(f"{size / MB / t.seconds:.0f}" for t in transfers)
                    print(
                        f"  round {round_no + 1} {name}: {speeds[name][-1]:.0f} MB/s in all "
                        f"(each: {each})",
                        flush=True,
                    )
                finally:
                    services.stop(peer)
                    shutil.rmtree(fresh, ignore_errors=True)
    finally:
        services.stop(upstream)
    print(f"  median [min-max] over {args.rounds} round(s), MB/s over the {count} GETs' time:")
    for name in names:
        print(f"  {name:<20}{spread(speeds[name], '.0f')}")
    ratio = median(speeds["Docxy"]) / median(speeds[DISTRIBUTION])
    verdict = "met" if ratio >= 1 else "MISSED"
    print(
        f"  Docxy / Distribution: {median(speeds['Docxy']):.0f} / "
        f"{median(speeds[DISTRIBUTION]):.0f} = {ratio:.2f} (target >= 1: {verdict})"
    )


# --- section 5: a throttled upstream ---------------------------------------------------------


class ThrottleProxy:
    """A TCP relay on loopback whose upstream→client direction shares one ``rate`` (bytes/s)."""

    READ = 64 * 1024
    BURST = 0.05

    def __init__(self, target_port: int, rate: float) -> None:
        self.target_port = target_port
        self.rate = rate
        self.port = 0
        self.relayed = 0
        """Bytes sent upstream→client so far (read from other threads: an int is enough)."""
        self._next = 0.0
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, name="throttle", daemon=True)

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def start(self) -> None:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("throttle proxy did not start")

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout=10)

    def _run(self) -> None:
        asyncio.run(self._serve())

    async def _serve(self) -> None:
        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        server = await asyncio.start_server(self._handle, LOOPBACK, 0)
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        async with server:
            await self._stop.wait()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(LOOPBACK, self.target_port)
        except OSError:
            writer.close()
            return
        try:
            await asyncio.gather(
                self._pump(reader, up_writer, throttled=False),
                self._pump(up_reader, writer, throttled=True),
            )
        finally:
            writer.close()
            up_writer.close()

    async def _pump(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, throttled: bool
    ) -> None:
        try:
            while data := await reader.read(self.READ):
                if throttled:
                    await self._wait_turn(len(data))
                    self.relayed += len(data)
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            with contextlib.suppress(OSError):
                if writer.can_write_eof():
                    writer.write_eof()

    async def _wait_turn(self, nbytes: int) -> None:
        now = asyncio.get_running_loop().time()
        # A token bucket holding BURST seconds of credit, so timer overshoot is made up for.
        self._next = max(self._next, now - self.BURST) + nbytes / self.rate
        await asyncio.sleep(self._next - now)


def throttle_section(
    args: argparse.Namespace, services: Services, data: BlobData, warm_cache: Path | None
) -> None:
    blob = data.ensure("main", args.throttle_size)
    rate = args.throttle_mbit * 1e6 / 8
    print(
        f"\n== upstream throttled to {args.throttle_mbit:g} Mbit/s, {blob.size // MiB} MiB blob, "
        f"{args.rounds} round(s) =="
    )
    upstream = start_registry(services, "upstream-throttled", data.storage)
    proxy = ThrottleProxy(upstream.port, rate)
    proxy.start()
    warmed = services.workdir / "throttle-warmed"
    try:
        print(f"  wire time of the blob at that rate: {blob.size / rate:.1f} s")
        if warm_cache is not None and blob.size == args.size:
            shutil.copytree(warm_cache, warmed)  # a cache a previous pull filled
        else:
            warm = start_docxy(services, "docxy-warming", upstream.url, warmed, 4 * blob.size)
            try:
                check_transfer("warming", curl_get(warm.url + blob.path), blob)
            finally:
                services.stop(warm)
        runs: dict[str, list[Sample]] = {"upstream direct through the throttle": []}
        for round_no in range(args.rounds):
            direct = curl_get(proxy.url + blob.path)
            check_transfer("through the throttle", direct, blob)
            runs["upstream direct through the throttle"].append(
                Sample(direct.seconds, direct.nbytes, 0.0, 1)
            )
            cases: list[tuple[str, Path, int | None]] = [
                ("Docxy, cache warmed by a previous pull", warmed, 4 * blob.size),
                ("Docxy --no-cache", services.workdir / "nocache", None),
            ]
            for label, cache, max_size in cases:
                docxy = start_docxy(services, "docxy-throttled", proxy.url, cache, max_size)
                try:
                    sample = timed_get(docxy, upstream, blob)
                finally:
                    services.stop(docxy)
                runs.setdefault(label, []).append(sample)
                print(
                    f"  round {round_no + 1} {label}: {sample.seconds:.2f} s, "
                    f"{sample.upstream_gets} upstream GETs of the blob",
                    flush=True,
                )
        print(f"  median [min-max] over {args.rounds} round(s):")
        for label, samples in runs.items():
            print(
                f"  {label}: {spread([s.seconds for s in samples], '.2f')} s, "
                f"{spread([s.mbps for s in samples], '.1f')} MB/s, "
                f"{spread([s.upstream_gets for s in samples], 'g')} upstream GETs of the blob"
            )
    finally:
        proxy.stop()
        services.stop(upstream)
        shutil.rmtree(warmed, ignore_errors=True)


# --- section 6: docker pull through a mirror, upstream throttled -----------------------------

PULL_REPO = "docxybench/big"
PULL_TAG = "1"
PULL_IMAGE = f"{PULL_REPO}:{PULL_TAG}"  # a Docker Hub name, so dockerd asks its mirror
PULL_FILE = "docxy-big.bin"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_TAR_LAYER = "application/vnd.docker.image.rootfs.diff.tar"  # uncompressed: diff_id = digest


def _tar_header(name: str, size: int) -> bytes:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = size, 0o644, 0
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    return info.tobuf(tarfile.PAX_FORMAT)


def _tar_tail(size: int) -> bytes:
    return bytes(-size % 512) + bytes(1024)  # pad the member, then the end-of-archive blocks


def big_layer_size(file_size: int) -> int:
    return len(_tar_header(PULL_FILE, file_size)) + file_size + len(_tar_tail(file_size))


def big_layer_chunks(key: str, file_size: int) -> Iterator[bytes]:
    """An uncompressed tar holding one file of ``file_size`` random bytes."""
    yield _tar_header(PULL_FILE, file_size)
    yield from random_chunks(key, file_size)
    yield _tar_tail(file_size)


def small_tar(name: str, content: bytes) -> bytes:
    return _tar_header(name, len(content)) + content + _tar_tail(len(content))


def docker_arch() -> str:
    machine = platform.machine()
    return {"x86_64": "amd64", "aarch64": "arm64"}.get(machine, machine)


@dataclass(frozen=True)
class PullImage:
    big: Blob
    config_digest: str
    diff_ids: list[str]


def seed_pull_image(data: BlobData, upstream: Service, file_mib: int) -> PullImage:
    """Layers and config into the upstream's storage, the manifest PUT under ``PULL_IMAGE``.

    The tiny layer (/docxy-test.txt) comes first: vfs copies every lower layer into the next
    one, so a big first layer would be copied again on top of the big layer's own unpacking.
    """
    file_size = file_mib * MiB
    key = f"pull-layer:{file_size}"
    big = data.ensure_stream(
        key,
        big_layer_size(file_size),
        lambda: big_layer_chunks(key, file_size),
        repo=PULL_REPO,
    )
    text = small_tar("docxy-test.txt", f"docxy bench image {PULL_IMAGE}\n".encode())

    def small_blob(content: bytes) -> Blob:
        digest = f"sha256:{hashlib.sha256(content).hexdigest()}"
        return data.ensure_stream(
            f"pull-small:{digest}",
            len(content),
            lambda: [content],
            repo=PULL_REPO,
            announce=False,
        )

    small = small_blob(text)
    diff_ids = [small.digest, big.digest]  # uncompressed layers: diff_id == digest
    config = {
        "architecture": docker_arch(),
        "os": "linux",
        "created": "1970-01-01T00:00:00Z",
        "config": {"Env": ["PATH=/usr/sbin:/usr/bin:/sbin:/bin"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": [{"created": "1970-01-01T00:00:00Z", "created_by": "docxy bench_cache.py"}],
    }
    config_blob = small_blob(json.dumps(config).encode())
    manifest = {
        "schemaVersion": 2,
        "mediaType": DOCKER_MANIFEST,
        "config": {
            "mediaType": DOCKER_CONFIG,
            "digest": config_blob.digest,
            "size": config_blob.size,
        },
        "layers": [
            {"mediaType": DOCKER_TAR_LAYER, "digest": blob.digest, "size": blob.size}
            for blob in (small, big)
        ],
    }
    response = httpx.put(
        f"{upstream.url}/v2/{PULL_REPO}/manifests/{PULL_TAG}",
        content=json.dumps(manifest).encode(),
        headers={"Content-Type": DOCKER_MANIFEST},
        timeout=30,
    )
    if response.status_code != 201:
        raise RuntimeError(f"manifest PUT: {response.status_code} {response.text[:500]}")
    return PullImage(big, config_blob.digest, diff_ids)


@dataclass(frozen=True)
class Pull:
    seconds: float
    upstream_gets: int
    upstream_bytes: int
    check: str


def pull_skip_reason() -> str | None:
    try:
        need.root("needs root (dockerd)")
        for binary in ("dockerd", "containerd", docker_cli()):
            need.binary(binary)
    except Unavailable as exc:
        return f"{exc} (apt-get install docker.io)"
    return None


def pull_section(args: argparse.Namespace, services: Services, data: BlobData) -> None:
    rate = args.throttle_mbit * 1e6 / 8
    print(
        f"\n== docker pull of a {args.pull_mib} MiB image through a mirror, upstream throttled "
        f"to {args.throttle_mbit:g} Mbit/s =="
    )
    reason = pull_skip_reason()
    if reason is not None:
        print(f"  skipped: {reason}")
        return
    upstream = start_registry(services, "upstream-pull", data.storage)
    proxy = ThrottleProxy(upstream.port, rate)
    proxy.start()
    try:
        image = seed_pull_image(data, upstream, args.pull_mib)
        big = image.big
        wire = big.size / rate
        print(
            f"  image {PULL_IMAGE}: layers {image.diff_ids[0][:19]} (/docxy-test.txt) + "
            f"{big.digest[:19]} ({big.size} bytes, uncompressed tar); "
            f"wire time of the big layer at that rate: {wire:.1f} s"
        )
        print(
            "  a fresh dockerd (vfs) per mirror, `docker pull`, `docker rmi`, `docker pull`; "
            "MB/s = big layer bytes / pull time"
        )
        runs: list[tuple[str, int | None]] = [
            ("Docxy, cache on (fresh cache dir)", 4 * big.size),
            ("Docxy --no-cache", None),
        ]
        with EgressGuard() as egress:
            for label, max_size in runs:
                cache = services.workdir / f"pull-cache-{'on' if max_size else 'off'}"
                docxy = start_docxy(services, "docxy-pull", proxy.url, cache, max_size)
                try:
                    with running_dockerd(mirror_url=docxy.url, egress_proxy=egress.url) as daemon:
                        pulls: list[Pull] = []
                        for attempt in (1, 2):
                            if attempt == 2:
                                settle([docxy.pid])
                                rmi = daemon.docker("rmi", PULL_IMAGE, timeout=120)
                                if rmi.returncode != 0:
                                    raise RuntimeError(f"docker rmi: {rmi.stderr.strip()}")
                            pulls.append(timed_pull(daemon, upstream, proxy, image, wire))
                finally:
                    services.stop(docxy)
                    shutil.rmtree(cache, ignore_errors=True)
                for attempt, pull in enumerate(pulls, 1):
                    print(
                        f"  {label}, pull {attempt}: {pull.seconds:.2f} s, "
                        f"{big.size / MB / pull.seconds:.1f} MB/s, {pull.upstream_gets} upstream "
                        f"GETs of the big layer, {pull.upstream_bytes / MB:.1f} MB through the "
                        f"throttle; image {pull.check}",
                        flush=True,
                    )
                total = sum(p.upstream_gets for p in pulls)
                print(f"  {label}: {total} upstream GETs of the big layer in total")
            if egress.attempts:
                print(f"  WARNING: dockerd tried to leave 127.0.0.1: {egress.attempts}")
    finally:
        proxy.stop()
        services.stop(upstream)


def timed_pull(
    daemon: Dockerd, upstream: Service, proxy: ThrottleProxy, image: PullImage, wire: float
) -> Pull:
    gets, relayed = upstream_gets(upstream, image.big), proxy.relayed
    started = time.monotonic()
    done = daemon.docker("pull", PULL_IMAGE, timeout=3 * wire + 300)
    seconds = time.monotonic() - started
    if done.returncode != 0:
        raise RuntimeError(
            f"docker pull: {done.stderr.strip()}\n--- dockerd log ---\n{daemon.log()[-4000:]}"
        )
    inspect = daemon.docker(
        "image", "inspect", "--format", "{{.Id}} {{json .RootFS.Layers}}", PULL_IMAGE, timeout=60
    )
    image_id, _, layers = inspect.stdout.strip().partition(" ")
    ok = image_id == image.config_digest and json.loads(layers or "null") == image.diff_ids
    check = "ok (id and diff_ids)" if ok else f"WRONG: {inspect.stdout.strip()}"
    return Pull(seconds, upstream_gets(upstream, image.big) - gets, proxy.relayed - relayed, check)


# --- main ------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="small sizes for a fast check")
    parser.add_argument("--size-mib", type=int, help="big blob size (default 1024; quick 128)")
    parser.add_argument("--rounds", type=int, help="cold+warm rounds per peer (3; quick 1)")
    parser.add_argument("--warm", type=int, default=2, help="warm GETs per round (2)")
    parser.add_argument("--clients", type=int, help="concurrent clients for RSS (50; quick 10)")
    parser.add_argument("--client-mib", type=int, help="blob per client, MiB (256; quick 32)")
    parser.add_argument(
        "--variants",
        default=",".join(VARIANTS),
        help=f"comma-separated, of {', '.join(VARIANTS)} (default: all)",
    )
    parser.add_argument("--throttle-mbit", type=float, default=100.0)
    parser.add_argument("--throttle-mib", type=int, help="throttled blob (default: --size-mib)")
    parser.add_argument("--skip-crowd", action="store_true")
    parser.add_argument("--layers", type=int, default=3, help="blobs GET in a row, cold (3)")
    parser.add_argument("--layer-mib", type=int, help="size of each of them, MiB (512; quick 64)")
    parser.add_argument("--skip-layers", action="store_true")
    parser.add_argument("--skip-throttle", action="store_true")
    parser.add_argument(
        "--docker-pull",
        action="store_true",
        help="also time docker pull through Docxy with the cache on and off (root, dockerd)",
    )
    parser.add_argument("--pull-mib", type=int, help="big layer of the pulled image (1024; 128)")
    default_data = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "docxy-bench"
    parser.add_argument("--data-dir", type=Path, default=default_data, help="generated blobs")
    args = parser.parse_args(argv)
    quick = args.quick
    args.size = (args.size_mib or (128 if quick else 1024)) * MiB
    args.rounds = args.rounds or (1 if quick else 3)
    args.clients = args.clients or (10 if quick else 50)
    args.client_mib = args.client_mib or (32 if quick else 256)
    args.pull_mib = args.pull_mib or (128 if quick else 1024)
    args.layer_mib = args.layer_mib or (64 if quick else 512)
    args.throttle_size = args.throttle_mib * MiB if args.throttle_mib else args.size
    unknown = sorted(set(args.variants.split(",")) - set(VARIANTS))
    if args.layers < 1:
        parser.error("--layers: at least 1")
    if unknown:
        parser.error(f"--variants: unknown {', '.join(unknown)} (known: {', '.join(VARIANTS)})")
    args.variant_list = [VARIANTS[name] for name in args.variants.split(",")]
    return args


def describe_machine() -> None:
    def version(command: Sequence[str]) -> str:
        done = subprocess.run(list(command), capture_output=True, text=True, timeout=10)
        return (done.stdout + done.stderr).strip().splitlines()[0]

    commit = subprocess.run(
        ["git", "-C", str(REPO_ROOT), "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        timeout=10,
    ).stdout.strip()
    print(
        f"  {os.cpu_count()} CPUs ({platform.processor() or platform.machine()}), "
        f"Python {platform.python_version()}, Docxy {commit}"
    )
    print(
        f"  {version(['docker-registry', '--version'])}; {version(['nginx', '-v'])}; "
        f"{' '.join(version(['curl', '--version']).split()[:2])}"
    )


def loadavg() -> str:
    with open("/proc/loadavg") as load:
        return " ".join(load.read().split()[:3])


def require(binary: str, hint: str) -> None:
    if shutil.which(binary) is None:
        raise SystemExit(f"bench_cache: {binary} not found ({hint})")


@contextlib.contextmanager
def sigterm_as_exit() -> Iterator[None]:
    def handler(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run(args: argparse.Namespace, services: Services) -> None:
    data = BlobData(args.data_dir)
    print(f"== Docxy cache benchmark{' (quick)' if args.quick else ''}, all on {LOOPBACK} ==")
    describe_machine()
    print(f"  load average at start: {loadavg()}; blobs in {args.data_dir}")
    blob = data.ensure("main", args.size)
    upstream = start_registry(services, "upstream", data.storage)
    bench = Bench(args, services, data, loopback_cert(services.workdir, "bench"))
    print(
        f"\n== {blob.size // MiB} MiB blob, {args.rounds} round(s) of "
        f"{', '.join(v.name for v in args.variant_list)}: 1 cold + {args.warm} warm GETs per "
        "peer each; curl -o /dev/null; MB = 10^6 bytes =="
    )
    for round_no in range(args.rounds):
        for variant in args.variant_list:
            bench.round(upstream, blob, round_no, variant)
    services.stop(upstream)
    print(
        f"\nmedian [min-max] over {args.rounds} round(s) (ratio to Distribution's median); "
        "CPU = serving process tree; up GETs = upstream GETs of the blob per cold + per warm "
        f"request; blob {blob.digest} ({blob.size // MiB} MiB)"
    )
    for variant, results in bench.results.items():
        print_table(results, variant)
    print_ratios(bench.results)
    if not args.skip_crowd:
        crowd_section(args, services, data)
    if not args.skip_layers:
        layers_section(args, services, data)
    if not args.skip_throttle:
        throttle_section(args, services, data, bench.docxy_cache)
    if args.docker_pull:
        pull_section(args, services, data)
    print(f"\n  load average at end: {loadavg()}")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    require("docker-registry", "apt-get install docker-registry")
    require("nginx", "apt-get install -y nginx-light")
    require("curl", "apt-get install curl")
    if any(v.one_core for v in args.variant_list):
        require("taskset", "apt-get install util-linux")
    args.data_dir.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="docxy-bench-"))
    services = Services(workdir)
    try:
        with sigterm_as_exit():
            run(args, services)
    finally:
        services.stop_all()
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
