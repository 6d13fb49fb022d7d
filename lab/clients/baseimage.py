"""The appliance image built for real, from a locally made base (no base image registry here).

    base_tarball()      bookworm minbase + python3, python3-venv, ca-certificates and this host's
                        extra CA certificates, made by mmdebstrap from the Debian archive apt uses
                        here; kept under /var/cache/docxy-ci/ ($DOCXY_CI_CACHE), named by a hash
                        of what went into it, so later runs reuse it and a fresh machine makes it
    import_base(d)      `docker import` of that tarball into a private dockerd (once per daemon)
    build_image(d, b)   `docker build --network host --build-arg BASE_IMAGE=b` of this checkout

The host's extra CAs go into the base as an operator behind a TLS-inspecting proxy would put
them: pip inside the build then reaches PyPI through this machine's re-signing proxy.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
from pathlib import Path

from lab import REPO_ROOT
from lab.clients.dockerd import Dockerd, docker_cli
from lab.processes import run

CACHE_DIR = Path(os.environ.get("DOCXY_CI_CACHE", "/var/cache/docxy-ci"))
BASE_PACKAGES = ("python3", "python3-venv", "ca-certificates")
APT_SOURCES = (Path("/etc/apt/sources.list.d/debian.sources"), Path("/etc/apt/sources.list"))
EXTRA_CAS = Path("/usr/local/share/ca-certificates")
BASE_REPO = "docxy-ci/bookworm-python3"
MMDEBSTRAP_TIMEOUT = 900.0
BUILD_TIMEOUT = 1800.0


def apt_sources() -> Path:
    """The file naming the Debian archive apt uses on this machine (mmdebstrap copies it)."""
    for path in APT_SOURCES:
        if path.is_file() and "debian" in path.read_text():
            return path
    raise FileNotFoundError(f"no Debian apt sources among {[str(p) for p in APT_SOURCES]}")


def extra_cas() -> list[Path]:
    return sorted(EXTRA_CAS.glob("*.crt")) if EXTRA_CAS.is_dir() else []


def base_key() -> str:
    """A short hash of the recipe: packages, apt sources and the extra CA certificates."""
    digest = hashlib.sha256()
    digest.update(" ".join(BASE_PACKAGES).encode())
    digest.update(apt_sources().read_bytes())
    for ca in extra_cas():
        digest.update(ca.name.encode() + ca.read_bytes())
    return digest.hexdigest()[:12]


def base_tarball() -> Path:
    """The base's root file system as a tarball, made now unless an earlier run left it."""
    key = base_key()
    tarball = CACHE_DIR / f"bookworm-python3-{key}.tar"
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    with (CACHE_DIR / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two test runs at once make it once
        if not tarball.exists():
            _mmdebstrap(tarball)
    return tarball


def _mmdebstrap(tarball: Path) -> None:
    partial = tarball.with_suffix(".partial")
    argv = [
        shutil.which("mmdebstrap") or "mmdebstrap",
        "--variant=minbase",
        "--format=tar",
        f"--include={','.join(BASE_PACKAGES)}",
    ]
    if extra_cas():
        argv += [
            f"--customize-hook=copy-in {EXTRA_CAS} /usr/local/share",
            '--customize-hook=chroot "$1" update-ca-certificates',
        ]
    argv += ["bookworm", str(partial), str(apt_sources())]
    result = subprocess.run(
        argv, capture_output=True, text=True, timeout=MMDEBSTRAP_TIMEOUT, check=False
    )
    if result.returncode != 0:
        partial.unlink(missing_ok=True)
        raise RuntimeError(f"mmdebstrap failed ({result.returncode}):\n{result.stderr[-4000:]}")
    partial.rename(tarball)


def import_base(daemon: Dockerd) -> str:
    """The base as an image in `daemon` (imported unless it is there already); its reference."""
    tarball = base_tarball()
    ref = f"{BASE_REPO}:{tarball.stem.rsplit('-', 1)[-1]}"
    if daemon.docker("image", "inspect", ref, timeout=60).returncode != 0:
        daemon.docker("import", str(tarball), ref, timeout=600, check=True)
    return ref


def build_image(daemon: Dockerd, base: str, tag: str) -> None:
    """`docker build` of this checkout with the legacy builder (no BuildKit frontend to fetch)."""
    argv = [docker_cli(), "-H", daemon.host, "build", "--network", "host"]
    argv += ["--build-arg", f"BASE_IMAGE={base}", "-t", tag, str(REPO_ROOT)]
    env = daemon.env | {"DOCKER_BUILDKIT": "0"}
    result = run(argv, env=env, timeout=BUILD_TIMEOUT)
    if result.returncode != 0:
        raise AssertionError(
            f"docker build failed ({result.returncode}):\n{result.stdout[-6000:]}\n{result.stderr}"
        )
