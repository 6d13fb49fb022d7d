"""``server.admin_hosts``: more ``Host`` names the admin listener answers (a Compose service
name a scraper uses), each exactly; any other name is still refused (DNS rebinding)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from docxy.config import HostPort, describe, load_config
from docxy.core.errors import ConfigError
from docxy.observe import create_admin_app
from tests.unit.asgi import call_asgi
from tests.unit.test_observe_admin import make_observer


def test_admin_hosts_is_empty_by_default_and_read_as_a_list(tmp_path: Path) -> None:
    assert load_config(environ={}).server.admin_hosts == ()
    env = load_config(environ={"DOCXY_SERVER_ADMIN_HOSTS": " Docxy, metrics.lan ,"})
    assert env.server.admin_hosts == ("docxy", "metrics.lan")
    toml = tmp_path / "docxy.toml"
    toml.write_text('[server]\nadmin_hosts = ["docxy", "prom_target"]\n')
    from_file = load_config(config_file=toml, environ={})
    assert from_file.server.admin_hosts == ("docxy", "prom_target")
    shown = {key: value for key, value, _ in describe(from_file)}
    assert shown["server.admin_hosts"] == "docxy,prom_target"


@pytest.mark.parametrize("value", ["docxy:9180", "*.lan", "evil.example/x", "a b", "[::1]"])
def test_a_bad_admin_host_names_the_key_and_its_source(value: str) -> None:
    with pytest.raises(ConfigError, match=r"server\.admin_hosts: .*env DOCXY_SERVER_ADMIN_HOSTS"):
        load_config(environ={"DOCXY_SERVER_ADMIN_HOSTS": value})


def test_a_toml_list_of_something_else_is_refused(tmp_path: Path) -> None:
    toml = tmp_path / "docxy.toml"
    toml.write_text("[server]\nadmin_hosts = [9180]\n")
    with pytest.raises(ConfigError, match=r"server\.admin_hosts: "):
        load_config(config_file=toml, environ={})


@pytest.mark.parametrize("host", ["docxy:9180", "docxy", "DOCXY:9180", "metrics.lan:9180"])
async def test_a_listed_name_is_answered(tmp_path: Path, host: str) -> None:
    config = load_config({"server.admin_hosts": "docxy,metrics.lan"}, environ={})
    app = create_admin_app(
        make_observer(tmp_path), HostPort("0.0.0.0", 9180), config.server.admin_hosts
    )
    for path in ("/metrics", "/status.json"):
        assert (await call_asgi(app, "GET", path, host=host)).status == 200


@pytest.mark.parametrize(
    "host", ["prometheus:9180", "docxy.evil.example:9180", "evil.docxy:9180", "lan:9180"]
)
async def test_an_unlisted_name_is_still_refused(tmp_path: Path, host: str) -> None:
    app = create_admin_app(
        make_observer(tmp_path), HostPort("0.0.0.0", 9180), ("docxy", "metrics.lan")
    )
    answer = await call_asgi(app, "GET", "/status.json", host=host)
    assert answer.status == 403
    body = json.loads(answer.body)
    assert body["errors"][0]["code"] == "DENIED"
    assert "server.admin_hosts" in body["errors"][0]["message"]


async def test_without_the_setting_a_service_name_is_refused(tmp_path: Path) -> None:
    app = create_admin_app(make_observer(tmp_path), HostPort("0.0.0.0", 9180))
    assert (await call_asgi(app, "GET", "/metrics", host="docxy:9180")).status == 403
