"""Second review of the README against the code, as a new user reads it: the claims a test
can pin that the existing README tests (test_readme_*.py, test_review_readme.py) do not."""

from __future__ import annotations

import re
from fnmatch import fnmatch
from pathlib import Path

import pytest

from docxy.cli.main import main
from tests.scriptbox import ScriptBox, run_ok
from tests.unit.test_configure_client import attempt, configure
from tests.unit.test_configure_client import (
    box as box,  # noqa: F401  (fixture)
)
from tests.unit.test_configure_client import (
    kit as kit,  # noqa: F401  (fixture)
)
from tests.unit.test_configure_client import (
    server_ca as server_ca,  # noqa: F401  (fixture)
)
from tests.unit.test_review_container import start_appliance

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()

# A mirror on another port than 443: its host alone and its HOST:PORT name files differently.
PORTED = "https://mirror.example.com:8443"
HOST = "mirror.example.com"
HOST_PORT = "mirror.example.com:8443"


def mirror_host_paths() -> list[str]:
    """Every file or folder the README names after the mirror's host (`<mirror-host...>`)."""
    return sorted(set(re.findall(r"`([^`\s]*<mirror-host[^`\s]*)`", README)))


def test_the_readme_names_files_after_the_mirror_host() -> None:
    assert len(mirror_host_paths()) >= 6, mirror_host_paths()


def test_each_certificate_file_the_readme_names_is_where_the_script_puts_it(
    box: ScriptBox, kit: Path, server_ca: Path, tmp_path: Path
) -> None:
    """configure-client.sh names the certificate folders and copies after the mirror URL's
    HOST:PORT (`certs.d/mirror.example.com:8443/`, `client-mirror.example.com:8443.cert`, as
    Docker and podman look them up), which the README says as `<mirror-host[:port]>` for the
    first two; it named the rest `<mirror-host>`, and a reader of a mirror on port 8443 looked
    for `client-mirror.example.com.cert` beside hosts.toml, or a rootless user for
    `~/.config/containers/certs.d/mirror.example.com/`, which no run writes."""
    home = tmp_path / "home"
    home.mkdir()
    configure(
        box,
        "--mirror",
        PORTED,
        "--no-reload",
        "--docker",
        "--containerd",
        "--podman",
        "--client-cert",
        str(kit),
        "--ca-cert",
        str(server_ca),
    )
    run_ok(
        attempt(
            box,
            "--mirror",
            PORTED,
            "--podman",
            "--user",
            "--client-cert",
            str(kit),
            env={"HOME": str(home)},
        )
    )
    written = {"/" + str(path.relative_to(box.root)) for path in box.root.rglob("*")}
    # --user under the box's --root writes rootless podman's files under root + $HOME
    under_root = box.root / home.relative_to(home.anchor)
    written |= {"~/" + str(path.relative_to(under_root)) for path in under_root.rglob("*")}

    missing = []
    for template in mirror_host_paths():
        path = template.replace("<mirror-host[:port]>", HOST_PORT).replace("<mirror-host>", HOST)
        path = path.rstrip("/")
        # `client-<mirror-host[:port]>.*`: a name pattern
        if not any(fnmatch(each, path) or fnmatch(each, "*/" + path) for each in written):
            missing.append(f"{template} ({path})")
    near = sorted(each for each in written if HOST in each)
    assert not missing, f"not among the files written: {missing}; written: {near}"


# Third pass (2026-12-05): nothing here listens or connects; the addresses in the settings
# (127.0.0.218, ports 9650-9699) and the names under .test are values only.
#: users mode behind a TLS proxy elsewhere (a CDN), the mirror's listener off loopback in
#: effect: its public URL is plain http:// off loopback, where every challenge sends logins.
PLAIN_USERS = ["--set", "auth.mode=users", "--public-url", "http://mirror.test"]
LOOPBACK = ["--listen", "127.0.0.218:9660", "--upstream", "http://127.0.0.218:9661"]


def test_show_config_refuses_users_mode_over_plain_http(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """README (Access control): users mode with an http:// public URL off loopback makes the
    mirror refuse to start, exit 2 naming auth.allow_plain_http. `docxy serve --show-config`,
    which the appliance's entry point runs to refuse a bad setting before supervisord, printed
    the settings and exited 0: the refusal came only at `serve`'s start."""
    code = main(["serve", "--show-config", "--cache-dir", str(tmp_path), *LOOPBACK, *PLAIN_USERS])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("docxy: config error: auth.mode: users with server.public_url"), err
    assert "auth.allow_plain_http" in err


def test_show_config_takes_plain_http_users_mode_when_allowed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    allowed = ["--set", "auth.allow_plain_http=true"]
    code = main(
        ["serve", "--show-config", "--cache-dir", str(tmp_path), *LOOPBACK, *PLAIN_USERS, *allowed]
    )
    out, err = capsys.readouterr()
    assert (code, err) == (0, "")
    assert "auth.allow_plain_http = true  (flag)" in out


def test_the_appliance_stops_at_once_on_users_mode_over_plain_http(tmp_path: Path) -> None:
    """README (Container appliance): a setting the mirror refuses stops the container at once,
    with the mirror's one line, before supervisord starts. Users mode behind a CDN (the README's
    "Plain HTTP behind a CDN or reverse proxy" with DOCXY_AUTH_MODE=users, no
    DOCXY_AUTH_ALLOW_PLAIN_HTTP) passed the check: supervisord started the mirror, which exited 2
    at each of its six starts, FATAL, and compose restarted the container in a loop."""
    ran = start_appliance(tmp_path, DOCXY_AUTH_MODE="users")
    assert "supervisord started" not in ran.stdout, ran.stderr
    assert ran.returncode == 2, ran.stdout + ran.stderr
    errors = [line for line in ran.stderr.splitlines() if "config error" in line]
    assert len(errors) == 1, ran.stderr
    assert errors[0].startswith("docxy: config error: auth.mode: users with server.public_url")
    assert errors[0].endswith("(env DOCXY_AUTH_MODE)"), errors[0]
