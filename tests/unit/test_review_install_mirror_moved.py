"""Review: the mirror's URL changed for the same host (a port added, another scheme) between two
runs. install.sh put the new URL first in daemon.json's "registry-mirrors" and kept the old
one (https://mirror.test beside https://mirror.test:8443), a dead URL dockerd then tried on
every pull; --uninstall took out only the current one. configure-client.sh's --replace-host
HOST now takes out every other entry whose host is HOST (any scheme, port, trailing slash),
and install.sh passes its domain: other mirrors stay, look-alike hosts among them.

Same sandboxes as tests/unit/test_install_script.py
(stand-ins for docker, systemctl and kill; dnsmasq on an ephemeral port of 127.0.0.1).
"""

from __future__ import annotations

import json

from tests.scriptbox import Rule, ScriptBox, output
from tests.unit.test_install_script import (
    DOMAIN,
    Resolver,
    clone_script,
    env_file,
    install,
    stack_is_running,
)
from tests.unit.test_install_script import box as box  # noqa: F401  (fixture)
from tests.unit.test_install_script import resolver as resolver  # noqa: F401  (fixture)


def public_url(box: ScriptBox, url: str) -> None:
    """.env gains the mirror's public URL (the operator's, kept by a rerun)."""
    with env_file(box).open("a") as env:
        env.write(f"DOCXY_SERVER_PUBLIC_URL={url}\n")


def running_with_mirrors(box: ScriptBox, *mirrors: str) -> None:
    """Docxy running, and a dockerd that (reloaded) uses ``mirrors``."""
    box.stand_in(
        "docker",
        Rule(r"^compose version", stdout="Docker Compose version v2.26.1\n"),
        Rule(r"^info", stdout=json.dumps([m + "/" for m in mirrors]) + "\n"),
        Rule(r"^ps ", stdout="3f2a1b\n"),
    )


LOOKALIKES = ["https://other.example", f"https://{DOMAIN}.evil.net", f"https://sub.{DOMAIN}"]


def test_a_rerun_with_a_port_added_replaces_the_old_url(box: ScriptBox, resolver: Resolver) -> None:
    daemon = box.path("/etc/docker/daemon.json")
    assert install(box, resolver, "--configure-local-docker").returncode == 0
    data = json.loads(daemon.read_text())
    data["registry-mirrors"] += LOOKALIKES
    daemon.write_text(json.dumps(data))
    public_url(box, f"https://{DOMAIN}:8443")
    running_with_mirrors(box, f"https://{DOMAIN}:8443", *LOOKALIKES)

    dry = install(box, resolver, "--configure-local-docker", "--dry-run")

    assert dry.returncode == 0, output(dry)
    assert f"would remove https://{DOMAIN} from registry-mirrors" in dry.stdout, output(dry)
    assert json.loads(daemon.read_text()) == data

    result = install(box, resolver, "--configure-local-docker")

    assert result.returncode == 0, output(result)
    mirrors = json.loads(daemon.read_text())["registry-mirrors"]
    assert mirrors == [f"https://{DOMAIN}:8443", *LOOKALIKES], output(result)
    assert "Nothing to change" not in result.stdout


def test_uninstall_takes_out_every_url_of_the_mirror(box: ScriptBox, resolver: Resolver) -> None:
    """The current URL (a port added) and the one an earlier run wrote: both go."""
    daemon = box.path("/etc/docker/daemon.json")
    assert install(box, resolver, "--configure-local-docker").returncode == 0
    public_url(box, f"https://{DOMAIN}:8443")
    mirrors = [f"https://{DOMAIN}:8443/", LOOKALIKES[0], f"https://{DOMAIN}", *LOOKALIKES[1:]]
    daemon.write_text(json.dumps({"registry-mirrors": mirrors}))
    stack_is_running(box)

    result = box.run(clone_script(box), "--root", str(box.root), "--uninstall")

    assert result.returncode == 0, output(result)
    assert json.loads(daemon.read_text())["registry-mirrors"] == LOOKALIKES, output(result)


def test_uninstall_takes_out_an_older_url_when_the_current_one_is_not_there(
    box: ScriptBox, resolver: Resolver
) -> None:
    daemon = box.path("/etc/docker/daemon.json")
    assert install(box, resolver, "--configure-local-docker").returncode == 0
    public_url(box, f"https://{DOMAIN}:8443")
    daemon.write_text(json.dumps({"registry-mirrors": [f"https://{DOMAIN}", *LOOKALIKES]}))
    stack_is_running(box)

    result = box.run(clone_script(box), "--root", str(box.root), "--uninstall")

    assert result.returncode == 0, output(result)
    assert json.loads(daemon.read_text())["registry-mirrors"] == LOOKALIKES, output(result)


def test_uninstall_leaves_a_look_alike_host_alone(box: ScriptBox, resolver: Resolver) -> None:
    """Only a look-alike in daemon.json: nothing of the mirror's to take out, and not said to."""
    daemon = box.path("/etc/docker/daemon.json")
    assert install(box, resolver, "--configure-local-docker").returncode == 0
    daemon.write_text(json.dumps({"registry-mirrors": LOOKALIKES}))
    before = daemon.read_text()
    stack_is_running(box)

    result = box.run(clone_script(box), "--root", str(box.root), "--uninstall")

    assert result.returncode == 0, output(result)
    assert daemon.read_text() == before
    assert "uses the mirror" not in result.stdout, output(result)
