"""Review: the mirror's URL changed for the same host (a port added, another scheme) between two
runs. install.sh put the new URL first in daemon.json's "registry-mirrors" and kept the old
one (https://mirror.test beside https://mirror.test:8443), a dead URL dockerd then tried on
every pull; --uninstall took out only the current one. configure-client.sh's --replace-host
HOST now takes out every other entry whose host is HOST (any scheme, port, trailing slash),
and install.sh passes its domain: other mirrors stay, look-alike hosts among them.

Same sandboxes as tests/unit/test_configure_client.py and tests/unit/test_install_script.py
(stand-ins for docker, systemctl and kill; dnsmasq on an ephemeral port of 127.0.0.1).
"""

from __future__ import annotations

import json

from tests.scriptbox import ScriptBox, output
from tests.unit.test_configure_client import (
    DAEMON_JSON,
    attempt,
    configure,
    daemon_json,
    docker_info,
)
from tests.unit.test_configure_client import (
    box as box,  # noqa: F401  (fixture)
)

HOST = "mirror.example.com"
MOVED = f"https://{HOST}:8443"
#: Entries that are not this mirror, whatever they share with its name.
OTHERS = [
    "https://other.example",
    f"https://{HOST}.evil.net",
    f"https://sub.{HOST}",
    f"https://{HOST}-old.example",
]


def with_mirrors(box: ScriptBox, *mirrors: str) -> None:
    box.path(DAEMON_JSON).parent.mkdir(parents=True, exist_ok=True)
    box.path(DAEMON_JSON).write_text(json.dumps({"debug": True, "registry-mirrors": mirrors}))


# --- configure-client.sh --replace-host ---------------------------------------------------------


def test_replace_host_takes_out_the_same_hosts_other_urls_and_keeps_the_rest_in_order(
    box: ScriptBox,
) -> None:
    old = [f"https://{HOST}/", f"http://{HOST.upper()}:5000"]
    with_mirrors(box, OTHERS[0], old[0], *OTHERS[1:3], old[1], OTHERS[3])
    box.stand_in("docker", docker_info(MOVED, *OTHERS))

    said = configure(box, "--mirror", MOVED, "--docker", "--replace-host", HOST)

    assert daemon_json(box) == {"debug": True, "registry-mirrors": [MOVED, *OTHERS]}, said
    for url in old:
        assert f"removed {url} from registry-mirrors" in said


def test_without_replace_host_the_same_hosts_other_urls_stay(box: ScriptBox) -> None:
    """Only asked for does it go: a second mirror of the operator's on the same host, another
    port, is theirs."""
    with_mirrors(box, f"https://{HOST}", *OTHERS)
    box.stand_in("docker", docker_info(MOVED))

    configure(box, "--mirror", MOVED, "--docker")

    assert daemon_json(box)["registry-mirrors"] == [MOVED, f"https://{HOST}", *OTHERS]


def test_replace_host_with_remove_takes_out_every_url_of_the_host(box: ScriptBox) -> None:
    with_mirrors(box, f"https://{HOST}", OTHERS[0], f"{MOVED}/", *OTHERS[1:])
    box.stand_in("docker", docker_info(*OTHERS))

    said = configure(box, "--mirror", MOVED, "--docker", "--remove", "--replace-host", HOST)

    assert daemon_json(box)["registry-mirrors"] == OTHERS, said
    assert f"removed https://{HOST} from registry-mirrors" in said


def test_replace_host_with_remove_when_only_an_older_url_is_left(box: ScriptBox) -> None:
    with_mirrors(box, f"https://{HOST}", *OTHERS)
    box.stand_in("docker", docker_info(*OTHERS))

    said = configure(box, "--mirror", MOVED, "--docker", "--remove", "--replace-host", HOST)

    assert daemon_json(box)["registry-mirrors"] == OTHERS, said
    assert "nothing to remove" not in said


def test_a_dry_run_says_which_urls_it_would_take_out(box: ScriptBox) -> None:
    with_mirrors(box, f"https://{HOST}/", *OTHERS)
    before = box.path(DAEMON_JSON).read_text()

    said = configure(box, "--mirror", MOVED, "--docker", "--replace-host", HOST, "--dry-run")

    assert f"would remove https://{HOST}/ from registry-mirrors" in said
    assert box.path(DAEMON_JSON).read_text() == before


def test_replace_host_must_be_a_host_name(box: ScriptBox) -> None:
    result = attempt(box, "--mirror", MOVED, "--docker", "--replace-host", f"https://{HOST}")

    assert result.returncode == 2, output(result)
    assert "--replace-host takes a host name" in result.stderr
