"""Routing gaps an outside review found: ``?ns=`` for ``[upstream]``'s own registry, registries
named with a port, ``?ns=`` ports of the other scheme, and IPv6 ``hosts`` entries spelt another
way. Each is what containerd (or a client) sends for an image name a user wrote."""

from __future__ import annotations

from pathlib import Path

import pytest

from docxy.cli.warm import _mirror_image
from docxy.config import load_config
from docxy.core.errors import ConfigError
from docxy.core.hosts import host_key
from docxy.http.setup_script import fill_in, registries_of, shipped_script
from docxy.upstream.client import Upstream
from docxy.upstream.routing import Upstreams, UpstreamUnknown
from tests.scriptbox import ScriptBox, run_ok
from tests.unit.test_multi_routes import errors, mirror

HUB = Upstream("https://registry-1.docker.io")
PRIVATE = Upstream("https://registry.lab.example")  # [upstream] in front of a private registry
PLAIN = Upstream("http://plain.example", library_prefix=False, name="plain.test")
SECURE = Upstream("https://secure.example", library_prefix=False, name="secure.test")
PORTED = Upstream("http://10.0.0.5:5000", library_prefix=False, name="registry.lab.example:5000")


# --- 1. [upstream] is not Docker Hub: ?ns=<its registry host> -------------------------------


@pytest.mark.parametrize(
    "ns",
    [
        "registry.lab.example",
        "Registry.Lab.Example:443",
        "docker.io",
    ],
)
def test_ns_of_the_default_registry_host_picks_the_default(ns: str) -> None:
    table = Upstreams(PRIVATE, [SECURE])
    assert table.route("app", ns=ns).upstream is PRIVATE


def test_a_named_upstream_keeps_its_name_over_the_default_registry_host() -> None:
    same = Upstream("https://registry.lab.example", name="registry.lab.example")
    table = Upstreams(PRIVATE, [same])
    assert table.route("app", ns="registry.lab.example").upstream is same


async def test_containerd_reaches_a_private_default_by_its_host() -> None:
    async with mirror() as m:  # [upstream] is https://hub.example
        answer = await m.get("/v2/owner/img/manifests/1?ns=hub.example")
    assert answer.status == 401, answer.body  # hub.example's challenge, relayed
    assert m.sent() == ["hub.example/v2/owner/img/manifests/1"]


def test_setup_script_names_a_private_default_registry_too() -> None:
    config = load_config(
        {"upstream.registry": "https://registry.lab.example", "server.public_url": "https://m.ex"},
        environ={},
    )
    assert registries_of(config) == (
        "docker.io",
        "registry.lab.example=https://registry.lab.example",
    )
    # Strangers learn no upstream URL from /setup.sh: that host is the registry's address.
    assert registries_of(config, urls=False) == ("docker.io",)


def test_setup_script_names_docker_hub_alone_for_docker_hub() -> None:
    config = load_config({"server.public_url": "https://m.example"}, environ={})
    assert registries_of(config) == ("docker.io",)


# --- 2. registries named with a port ---------------------------------------------------------


def test_an_upstream_named_with_its_port_loads_and_is_picked_by_that_ns() -> None:
    config = load_config(
        {"upstreams": "registry.lab.example:5000=http://10.0.0.5:5000"}, environ={}
    )
    assert [u.name for u in config.upstreams] == ["registry.lab.example:5000"]
    table = Upstreams(HUB, [Upstream.from_config(u) for u in config.upstreams])
    assert table.route("app", ns="registry.lab.example:5000").upstream.registry == (
        "http://10.0.0.5:5000"
    )
    with pytest.raises(UpstreamUnknown):  # the host on another port is another registry
        table.route("app", ns="registry.lab.example")


@pytest.mark.parametrize("name", ["registry.lab.example:443", "x.example:80", "x.example:0"])
def test_a_name_with_a_default_or_bad_port_is_refused(name: str) -> None:
    with pytest.raises(ConfigError, match="upstreams"):
        load_config({"upstreams": f"{name}=http://10.0.0.5:5000"}, environ={})


def test_a_default_registry_on_a_port_is_picked_by_host_and_port() -> None:
    table = Upstreams(Upstream("http://registry.lab.example:5000"))
    assert table.route("app", ns="registry.lab.example:5000").upstream is table.default
    with pytest.raises(UpstreamUnknown):
        table.route("app", ns="registry.lab.example")


def test_setup_script_writes_the_hosts_toml_of_a_registry_named_with_its_port(
    tmp_path: Path,
) -> None:
    config = load_config(
        {
            "server.public_url": "https://mirror.example.com",
            "upstreams": "registry.lab.example:5000=http://10.0.0.5:5000",
        },
        environ={},
    )
    registries = registries_of(config)
    assert registries[1] == "registry.lab.example:5000=http://10.0.0.5:5000"
    script = fill_in(shipped_script(), config.server.public_url, registries)
    box = ScriptBox(tmp_path)
    run_ok(box.run("", "--root", str(box.root), "--containerd", stdin=script))
    toml = box.path("/etc/containerd/certs.d/registry.lab.example:5000/hosts.toml").read_text()
    assert 'server = "http://10.0.0.5:5000"' in toml
    assert '[host."https://mirror.example.com"]' in toml


# --- 3. ?ns= ports: 443 is no port, for every upstream (review r4: test_review_issuer2) -----


@pytest.mark.parametrize(
    ("ns", "expected"),
    [
        ("secure.test:443", SECURE),
        ("plain.test:443", PLAIN),  # the image's registry host is on 443, however fetched
        ("secure.test", SECURE),
        ("plain.test", PLAIN),
    ],
)
def test_ns_443_is_no_port(ns: str, expected: Upstream) -> None:
    assert Upstreams(HUB, [SECURE, PLAIN]).route("app", ns=ns).upstream is expected


@pytest.mark.parametrize("ns", ["secure.test:80", "plain.test:80"])
def test_ns_port_80_picks_nothing(ns: str) -> None:
    with pytest.raises(UpstreamUnknown):
        Upstreams(HUB, [SECURE, PLAIN]).route("app", ns=ns)


async def test_ns_port_80_of_an_https_upstream_is_refused() -> None:
    async with mirror() as m:
        answer = await m.get("/v2/owner/img/manifests/1?ns=ghcr.test:80")
    assert answer.status == 404 and errors(answer) == ["NAME_UNKNOWN"]
    assert m.sent() == []


@pytest.mark.parametrize(
    ("written", "key"),
    [
        ("[fd00:0::5]:8443", ("[fd00::5]:8443", "[fd00::5]")),
        ("[FD00:0000:0:0:0:0:0:5]", ("[fd00::5]", "[fd00::5]")),
        ("[fd00::0:5]:443", ("[fd00::5]", "[fd00::5]")),
        ("[not-an-address]", ("[not-an-address]", "[not-an-address]")),
    ],
)
def test_host_key_writes_an_ipv6_address_one_way(written: str, key: tuple[str, str]) -> None:
    assert host_key(written) == key


async def test_an_ipv6_hosts_entry_takes_the_address_however_spelt() -> None:
    async with mirror(None, **{"upstreams.lab.test.hosts": "[fd00::5]"}) as m:
        answer = await m.get("/v2/owner/img/manifests/1", host="[fd00:0::5]:8443")
    assert answer.status == 200, answer.body
    assert m.sent()[-1] == "lab.example/v2/owner/img/manifests/1"
    assert not [sent for sent in m.sent() if not sent.startswith("lab.example/")]


def test_two_spellings_of_one_ipv6_hosts_entry_are_refused() -> None:
    with pytest.raises(ConfigError, match="already picks"):
        load_config(
            {
                "upstreams": "a.test=https://a.example,b.test=https://b.example",
                "upstreams.a.test.hosts": "[fd00::5]",
                "upstreams.b.test.hosts": "[fd00:0::5]",
            },
            environ={},
        )


def test_warm_refuses_an_upstream_named_with_a_port_saying_why() -> None:
    with pytest.raises(ValueError, match="path prefix"):
        _mirror_image(
            "registry.lab.example:5000/app:1", ["registry.lab.example:5000"], library_prefix=False
        )
