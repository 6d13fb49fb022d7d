"""Review: the served /setup.sh left a moved mirror's old URL in daemon.json.

A mirror moved from http://mirror.example.com:5000 to https://mirror.example.com. install.sh
passes ``--replace-host DOMAIN`` for the local client, and the old URL goes; a client that
re-ran ``curl -fsSL https://mirror.example.com/setup.sh | sudo bash`` got the new URL first
and kept the old, dead one beside it (or, when the new one was already first, nothing at all
changed): dockerd tries each mirror in order, and a dead one costs a pull a timeout. The
served script now takes out Docker's other mirrors at the host of the mirror that served it
when that mirror is the one set up (no --mirror, or that same URL), says which, and keeps
them with ``--keep-others``; a --mirror to another host takes out nothing of the served one's.

The script is run as the mirror serves it (fetched from the app's /setup.sh), read from stdin
as ``curl ... | sudo bash`` runs it, in the sandbox of tests/unit/test_configure_client.py.
"""

from __future__ import annotations

import asyncio
import json

import pytest

from tests.scriptbox import ScriptBox, run_ok
from tests.unit.test_configure_client import DAEMON_JSON, attempt, daemon_json, docker_info
from tests.unit.test_configure_client import (
    box as box,  # noqa: F401  (fixture)
)
from tests.unit.test_setup_script import mirror_app

HOST = "mirror.example.com"
SERVED = f"https://{HOST}"
OLD = f"http://{HOST}:5000"
#: Not this mirror, whatever they share with its name.
OTHERS = ["https://other.example", f"https://sub.{HOST}", f"https://{HOST}.evil.net"]


def served_script(public_url: str = SERVED) -> str:
    """/setup.sh as the mirror at ``public_url`` serves it."""

    async def fetch() -> str:
        async with mirror_app(public_url).test_app() as test_app:
            response = await test_app.test_client().get("/setup.sh")
            assert response.status_code == 200
            return await response.get_data(as_text=True)

    return asyncio.run(fetch())


def with_mirrors(box: ScriptBox, *mirrors: str) -> None:
    box.path(DAEMON_JSON).parent.mkdir(parents=True, exist_ok=True)
    box.path(DAEMON_JSON).write_text(json.dumps({"debug": True, "registry-mirrors": mirrors}))


def serve(box: ScriptBox, *args: str, public_url: str = SERVED) -> str:
    """Run the served script (``curl .../setup.sh | sudo bash -s -- ARGS``); it must succeed."""
    return run_ok(attempt(box, "--docker", *args, stdin=served_script(public_url)))


@pytest.mark.parametrize(
    "before",
    [[OLD, *OTHERS], [OTHERS[0], OLD, *OTHERS[1:]], [SERVED, OLD, *OTHERS]],
    ids=["old-first", "old-among-others", "new-already-first"],
)
def test_the_served_script_takes_out_the_mirrors_old_url(box: ScriptBox, before: list[str]) -> None:
    with_mirrors(box, *before)
    box.stand_in("docker", docker_info(SERVED, *OTHERS))

    said = serve(box)

    assert daemon_json(box) == {"debug": True, "registry-mirrors": [SERVED, *OTHERS]}, said
    assert f"removed {OLD} from registry-mirrors" in said


def test_the_served_script_with_its_own_url_given_takes_it_out_too(box: ScriptBox) -> None:
    """--mirror spelling the served URL (another case, a trailing slash) is the same mirror."""
    with_mirrors(box, OLD, *OTHERS)
    box.stand_in("docker", docker_info(SERVED, *OTHERS))

    said = serve(box, "--mirror", f"HTTPS://{HOST.upper()}/")

    assert daemon_json(box)["registry-mirrors"] == [SERVED, *OTHERS], said


def test_a_served_dry_run_says_what_it_would_take_out_and_changes_nothing(
    box: ScriptBox,
) -> None:
    with_mirrors(box, OLD, *OTHERS)
    before = box.path(DAEMON_JSON).read_text()

    said = serve(box, "--dry-run")

    assert f"would remove {OLD} from registry-mirrors" in said
    assert box.path(DAEMON_JSON).read_text() == before


@pytest.mark.parametrize(
    ("served", "other"),
    [
        ("https://[2001:db8::1]:8443", "http://[2001:DB8::1]:5000"),
        ("http://192.168.1.10:5000", "http://192.168.1.10:8080"),
        ("http://127.0.0.1:5000", "http://127.0.0.1:9"),
        ("http://localhost:5000", "http://localhost:5001"),
    ],
    ids=["ipv6", "ipv4", "loopback", "localhost"],
)
def test_a_mirror_at_an_address_keeps_the_other_mirrors_there(
    box: ScriptBox, served: str, other: str
) -> None:
    """A LAN box's other port is as likely another registry (a Harbor, a second mirror) as
    this one's earlier URL (the e2e dockerd's other mirror at 127.0.0.1 went):
    only a host name's others go unasked; --replace-host takes an address's out."""
    with_mirrors(box, other, *OTHERS)
    box.stand_in("docker", docker_info(served, other, *OTHERS))

    said = serve(box, public_url=served)

    assert daemon_json(box)["registry-mirrors"] == [served, other, *OTHERS], said
    assert "removed" not in said
    host = served.split("://")[1].rsplit(":", 1)[0]
    box.stand_in("docker", docker_info(served, *OTHERS))
    said = serve(box, "--replace-host", host, public_url=served)
    assert daemon_json(box)["registry-mirrors"] == [served, *OTHERS], said
    assert f"removed {other} from registry-mirrors" in said


def test_keep_others_keeps_the_served_hosts_other_urls(box: ScriptBox) -> None:
    """A second mirror of the operator's at the same host (another port) is theirs to keep."""
    with_mirrors(box, OLD, *OTHERS)
    box.stand_in("docker", docker_info(SERVED, OLD, *OTHERS))

    said = serve(box, "--keep-others")

    assert daemon_json(box)["registry-mirrors"] == [SERVED, OLD, *OTHERS], said
    assert "removed" not in said


def test_a_mirror_at_another_host_takes_out_nothing_of_the_served_ones(box: ScriptBox) -> None:
    elsewhere = "https://elsewhere.example"
    with_mirrors(box, SERVED, OLD, *OTHERS)
    box.stand_in("docker", docker_info(elsewhere, SERVED, OLD, *OTHERS))

    said = serve(box, "--mirror", elsewhere)

    assert daemon_json(box)["registry-mirrors"] == [elsewhere, SERVED, OLD, *OTHERS], said


def test_a_mirror_at_another_host_with_replace_host_takes_out_the_served_ones(
    box: ScriptBox,
) -> None:
    """Unless asked, as --replace-host asks."""
    elsewhere = "https://elsewhere.example"
    with_mirrors(box, SERVED, OLD, *OTHERS)
    box.stand_in("docker", docker_info(elsewhere, *OTHERS))

    said = serve(box, "--mirror", elsewhere, "--replace-host", HOST)

    assert daemon_json(box)["registry-mirrors"] == [elsewhere, *OTHERS], said


def test_a_served_remove_takes_out_only_this_mirror(box: ScriptBox) -> None:
    """--remove keeps its word (only this one); --replace-host takes out the rest."""
    with_mirrors(box, SERVED, OLD, *OTHERS)
    box.stand_in("docker", docker_info(OLD, *OTHERS))

    said = serve(box, "--remove")

    assert daemon_json(box)["registry-mirrors"] == [OLD, *OTHERS], said


def test_keep_others_by_hand_is_taken_and_keeps_them(box: ScriptBox) -> None:
    """Run by hand (no served default) nothing is taken out unasked: --keep-others changes
    nothing there, and is taken all the same (one command line for both)."""
    with_mirrors(box, OLD, *OTHERS)
    box.stand_in("docker", docker_info(SERVED, OLD, *OTHERS))

    said = run_ok(attempt(box, "--mirror", SERVED, "--docker", "--keep-others"))

    assert daemon_json(box)["registry-mirrors"] == [SERVED, OLD, *OTHERS], said
