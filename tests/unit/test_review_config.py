"""Review of settings and routing: values accepted that make no sense, secrets in messages,
requests sent to the wrong upstream."""

from __future__ import annotations

from pathlib import Path

import pytest

from docxy.config import load_config
from docxy.core.errors import ConfigError
from docxy.upstream.client import Upstream
from docxy.upstream.routing import Route, Upstreams

BASE = {"server.listen": "127.0.0.1:8080"}


def refused(
    env: dict[str, str],
    toml: str | None = None,
    tmp_path: Path | None = None,
    *,
    renewer: bool = False,
) -> str:
    path = None
    if toml is not None:
        assert tmp_path is not None
        path = tmp_path / "docxy.toml"
        path.write_text(toml)
    with pytest.raises(ConfigError) as caught:
        load_config(BASE, path, environ=env, renewer=renewer)
    return str(caught.value)


@pytest.mark.parametrize(
    "listed",
    ["https://robot:s3cret@registry.lab.example", "robot:s3cret@registry.lab.example"],
)
def test_an_upstream_listed_as_a_url_with_a_password_does_not_show_it(listed: str) -> None:
    """A registry URL written where its name goes (``DOCXY_UPSTREAMS=https://user:pw@host``
    instead of ``name=URL``) is refused; the refusal names the variable, never the password."""
    message = refused({"DOCXY_UPSTREAMS": listed})
    assert "DOCXY_UPSTREAMS" in message
    assert "s3cret" not in message


@pytest.mark.parametrize("entry", ["ghcr.mirror.example:0", "ghcr.mirror.example:65536"])
def test_a_hosts_entry_with_a_port_no_request_can_have_is_refused(entry: str) -> None:
    """A ``hosts`` entry on port 0 or past 65535 picks no request ever: a typo, refused like
    any bad port, naming the key and its source."""
    message = refused({"DOCXY_UPSTREAMS": "ghcr.io", "DOCXY_UPSTREAMS_GHCR_IO_HOSTS": entry})
    assert "upstreams.ghcr.io.hosts" in message
    assert "DOCXY_UPSTREAMS_GHCR_IO_HOSTS" in message


@pytest.mark.parametrize(
    "url", ["https://mirror.example.com/docxy", "https://mirror.example.com/v2"]
)
def test_a_public_url_with_a_path_is_refused(url: str) -> None:
    """``server.public_url`` is an origin: dockerd refuses a registry mirror with a path,
    /setup.sh's script refuses it too, and the mirror serves /v2/ and /auth/token at its root,
    so the realm (``<public_url>/auth/token``) and the HTTPS redirect would name paths it does
    not serve."""
    message = refused({"DOCXY_SERVER_PUBLIC_URL": url})
    assert "server.public_url" in message
    assert "DOCXY_SERVER_PUBLIC_URL" in message


def test_a_public_url_with_a_trailing_slash_is_still_taken() -> None:
    config = load_config(BASE, None, environ={"DOCXY_SERVER_PUBLIC_URL": "https://m.example/"})
    assert config.server.public_url == "https://m.example"


HUB = Upstream("https://registry-1.docker.io")
GHCR = Upstream(
    "https://ghcr.io", library_prefix=False, name="ghcr.io", hosts=("ghcr.mirror.test",)
)
LAB = Upstream("http://127.0.0.1:5000", name="lab.test", hosts=("lab.mirror.test:8080",))
TABLE = Upstreams(HUB, [GHCR, LAB])


@pytest.mark.parametrize(
    ("host", "upstream"),
    [
        ("ghcr.mirror.test.", GHCR),
        ("GHCR.Mirror.Test.:443", GHCR),
        ("ghcr.mirror.test.:5000", GHCR),
        ("lab.mirror.test.:8080", LAB),
    ],
)
def test_a_host_with_a_trailing_dot_picks_its_upstream(host: str, upstream: Upstream) -> None:
    """``Host: ghcr.mirror.test.`` (the fully qualified spelling, RFC 3986) is the host
    ``ghcr.mirror.test``: it went to Docker Hub, whose ``owner/img`` is someone else's image."""
    assert TABLE.route("owner/img", host=host) == Route(upstream, "owner/img")


def test_an_ns_with_a_trailing_dot_names_its_upstream() -> None:
    assert TABLE.route("owner/img", ns="ghcr.io.") == Route(GHCR, "owner/img")


@pytest.mark.parametrize("key", ["allow", "repositories", "deny_repositories"])
def test_an_empty_item_in_a_toml_list_of_the_access_rules_is_refused(
    tmp_path: Path, key: str
) -> None:
    """``allow = [""]`` (a list filled from an empty template variable) read as no list at all:
    everyone served, every repository. An item of a TOML list is given on purpose: empty, it
    is a mistake, refused naming the key and the file (as ``server.admin_hosts`` does)."""
    message = refused({}, f'[access]\n{key} = [""]\n', tmp_path)
    assert f"access.{key}" in message
    assert str(tmp_path / "docxy.toml") in message


@pytest.mark.parametrize("key", ["limits.exempt", "server.trusted_proxies"])
def test_an_empty_item_in_a_toml_list_of_networks_is_refused(tmp_path: Path, key: str) -> None:
    section, _, name = key.partition(".")
    message = refused({}, f'[{section}]\n{name} = ["10.0.0.0/8", " "]\n', tmp_path)
    assert key in message


def test_comma_separated_lists_still_take_a_trailing_comma() -> None:
    config = load_config(
        BASE, None, environ={"DOCXY_ACCESS_ALLOW": "10.0.0.0/8,", "DOCXY_ACCESS_REPOSITORIES": ""}
    )
    assert str(config.access.allow) == "10.0.0.0/8"
    assert not config.access.repositories


def test_a_password_emptied_by_a_higher_layer_is_named_as_the_one_missing(tmp_path: Path) -> None:
    """The file gives a login; ``DOCXY_UPSTREAM_PASSWORD=`` left empty in ``.env`` (as
    install.sh writes it) empties the password. The refusal blamed the file's username, not
    the variable that took the password away."""
    toml = '[upstream]\nusername = "robot"\npassword = "pw"\n'
    message = refused({"DOCXY_UPSTREAM_PASSWORD": ""}, toml, tmp_path)
    assert "upstream.password" in message
    assert "env DOCXY_UPSTREAM_PASSWORD" in message


def test_a_named_upstream_password_emptied_by_env_is_named(tmp_path: Path) -> None:
    toml = '[[upstreams]]\nname = "ghcr.io"\nusername = "robot"\npassword = "pw"\n'
    message = refused({"DOCXY_UPSTREAMS_GHCR_IO_PASSWORD": ""}, toml, tmp_path)
    assert "upstreams.ghcr.io.password" in message
    assert "env DOCXY_UPSTREAMS_GHCR_IO_PASSWORD" in message


def test_an_upstream_without_a_registry_names_where_it_was_listed(tmp_path: Path) -> None:
    message = refused({}, 'upstreams = ["ghcr.io", "lab.example"]\n', tmp_path)
    assert "upstreams.lab.example.registry" in message
    assert f"file {tmp_path / 'docxy.toml'}" in message
    message = refused({"DOCXY_UPSTREAMS": "lab.example"})
    assert "env DOCXY_UPSTREAMS" in message


@pytest.mark.parametrize("value", ["0", "-5", "0.5", "1.5", "nan"])
def test_a_size_given_as_a_toml_number_is_refused_as_a_size(tmp_path: Path, value: str) -> None:
    """A plain number is bytes (README): ``max_size = 0`` was refused as "expected a string"."""
    message = refused({}, f"[cache]\nmax_size = {value}\n", tmp_path)
    assert "cache.max_size" in message
    assert "expected a size" in message


def test_a_whole_toml_float_is_a_size_in_bytes(tmp_path: Path) -> None:
    path = tmp_path / "docxy.toml"
    path.write_text("[cache]\nmax_size = 1.5e9\n")
    assert load_config(BASE, path, environ={}).cache.max_size == 1_500_000_000


# --- second review: values taken at load that only broke later -------------------------------


def test_a_retry_base_above_retry_max_is_refused_naming_both() -> None:
    """backoff() waits min(retry_max, retry_base * 2**n): a base above the cap was never
    waited, every retry waited retry_max, and nothing said so."""
    env = {"DOCXY_SCHEDULER_RETRY_BASE": "7200", "DOCXY_SCHEDULER_RETRY_MAX": "600"}
    message = refused(env, renewer=True)  # the renewer's settings: the mirror warns instead
    assert message.startswith("scheduler.retry_base: ")
    assert "(env DOCXY_SCHEDULER_RETRY_BASE)" in message
    assert "scheduler.retry_max" in message and "(env DOCXY_SCHEDULER_RETRY_MAX)" in message


def test_a_retry_base_above_the_default_retry_max_names_the_default() -> None:
    message = refused({"DOCXY_SCHEDULER_RETRY_BASE": "86400"}, renewer=True)
    assert "scheduler.retry_max" in message and "(default)" in message


def test_a_retry_base_equal_to_retry_max_is_taken() -> None:
    env = {"DOCXY_SCHEDULER_RETRY_BASE": "600", "DOCXY_SCHEDULER_RETRY_MAX": "600"}
    config = load_config(BASE, None, environ=env)
    assert (config.scheduler.retry_base, config.scheduler.retry_max) == (600.0, 600.0)


@pytest.mark.parametrize("key", ["server.listen", "server.tls_listen", "server.admin_listen"])
@pytest.mark.parametrize(
    "value", ["127.0.0. 1:7000", "my host:7000", "bad!name:7000", "a..b:7000", "999.1.1.1:7000"]
)
def test_a_listen_address_that_cannot_be_bound_is_refused_at_load(key: str, value: str) -> None:
    """Taken at load, each failed only at bind, after start-up had begun."""
    with pytest.raises(ConfigError) as caught:
        load_config({**BASE, key: value}, None, environ={})
    message = str(caught.value)
    assert message.startswith(f"{key}: ") and message.endswith("(flag)")
    assert "\n" not in message


@pytest.mark.parametrize(
    ("value", "host"),
    [
        ("localhost:7000", "localhost"),
        ("127.0.0.70:7000", "127.0.0.70"),
        ("[::1]:7000", "::1"),
        (":7000", ""),
        ("docxy_mirror.lan:7000", "docxy_mirror.lan"),
    ],
)
def test_listen_addresses_that_can_be_bound_are_still_taken(value: str, host: str) -> None:
    config = load_config(
        {"server.listen": value, "server.public_url": "http://m.example"}, None, {}
    )
    assert config.server.listen.host == host


def test_a_bracketed_ipv4_listen_address_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"^server\.listen: "):
        load_config({"server.listen": "[127.0.0.70]:7000"}, None, {})


def test_a_registry_host_with_a_trailing_dot_is_the_host_without() -> None:
    """``registry.example.com.`` is ``registry.example.com`` (as a ``Host:`` with a trailing dot
    already is in routing): two upstreams there with other logins share its cache keys."""
    message = refused(
        {
            "DOCXY_UPSTREAM_REGISTRY": "https://registry.example.com",
            "DOCXY_UPSTREAMS": "lab.example=https://registry.example.com.",
            "DOCXY_UPSTREAMS_LAB_EXAMPLE_USERNAME": "robot",
            "DOCXY_UPSTREAMS_LAB_EXAMPLE_PASSWORD": "s3cret-pw",
        }
    )
    assert message.startswith("upstreams.lab.example.registry: ")
    assert "registry host registry.example.com " in message
    assert "s3cret-pw" not in message


def test_a_registry_url_with_a_trailing_dot_is_kept_without_it() -> None:
    env = {"DOCXY_UPSTREAM_REGISTRY": "https://Registry.Example.com.:443/"}
    config = load_config(BASE, None, environ=env)
    assert config.upstream.registry == "https://registry.example.com"
    env = {"DOCXY_UPSTREAMS": "lab.example=http://lab.example.:5000"}
    assert load_config(BASE, None, environ=env).upstreams[0].registry == "http://lab.example:5000"


@pytest.mark.parametrize("url", ["https://.", "https://..", "https://x..", "https://.:5000"])
def test_a_registry_url_of_dots_alone_is_refused(url: str) -> None:
    message = refused({"DOCXY_UPSTREAM_REGISTRY": url})
    assert message.startswith("upstream.registry: ")


def test_an_empty_env_value_clears_an_upstreams_hosts(tmp_path: Path) -> None:
    toml = '[[upstreams]]\nname = "ghcr.io"\nhosts = ["ghcr.mirror.example"]\n'
    path = tmp_path / "docxy.toml"
    path.write_text(toml)
    config = load_config(BASE, path, environ={"DOCXY_UPSTREAMS_GHCR_IO_HOSTS": ""})
    assert config.upstreams[0].hosts == ()
    assert config.sources["upstreams.ghcr.io.hosts"] == "env DOCXY_UPSTREAMS_GHCR_IO_HOSTS"


def test_an_empty_item_in_a_toml_list_of_hosts_is_still_refused(tmp_path: Path) -> None:
    message = refused({}, '[[upstreams]]\nname = "ghcr.io"\nhosts = [""]\n', tmp_path)
    assert message.startswith("upstreams.ghcr.io.hosts: ")


def test_listen_and_tls_listen_on_one_port_are_refused_at_load() -> None:
    """Taken at load, the second listener failed to bind after start."""
    for tls in ("127.0.0.70:7001", "0.0.0.0:7001"):
        with pytest.raises(ConfigError) as caught:
            load_config({"server.listen": "127.0.0.70:7001", "server.tls_listen": tls}, None, {})
        assert str(caught.value).startswith("server.tls_listen: ")
        assert "server.listen" in str(caught.value)
    other = load_config(
        {"server.listen": "127.0.0.70:7001", "server.tls_listen": "127.0.0.70:7002"}, None, {}
    )
    assert other.server.tls_listen is not None


@pytest.mark.parametrize(
    "domain",
    ["https://mirror.example.com", "mirror.example.com:443", "mirror example.com", "-x.example"],
)
def test_a_certs_domain_that_is_no_dns_name_is_refused(domain: str) -> None:
    """certbot (and the public URL derived from it, https://<domain>) took it only later."""
    message = refused({"DOCXY_CERTS_DOMAIN": domain})
    assert message.startswith("certs.domain: ") and message.endswith("(env DOCXY_CERTS_DOMAIN)")


def test_a_certs_domain_that_is_a_dns_name_is_taken() -> None:
    config = load_config(BASE, None, environ={"DOCXY_CERTS_DOMAIN": "Mirror.Example.com"})
    assert config.certs.domain is not None


# --- credentials that are not UTF-8 text (after the shared tier's secret_key, c7c7c04) ---------

LATIN1 = "p\udce4ss"  # "päss" from an .env saved as Latin-1, as Python reads it (PEP 383)


@pytest.mark.parametrize(
    ("env", "key"),
    [
        ({"DOCXY_UPSTREAM_USERNAME": "me", "DOCXY_UPSTREAM_PASSWORD": LATIN1}, "upstream.password"),
        ({"DOCXY_UPSTREAM_USERNAME": LATIN1, "DOCXY_UPSTREAM_PASSWORD": "pw"}, "upstream.username"),
        (
            {
                "DOCXY_UPSTREAMS": "lab.example=https://lab.example",
                "DOCXY_UPSTREAMS_LAB_EXAMPLE_USERNAME": "me",
                "DOCXY_UPSTREAMS_LAB_EXAMPLE_PASSWORD": LATIN1,
            },
            "upstreams.lab.example.password",
        ),
    ],
)
def test_an_upstream_credential_that_is_not_utf8_text_is_refused_unshown(
    env: dict[str, str], key: str
) -> None:
    """httpx encodes a login as UTF-8 for its basic auth: a byte of another encoding (a lone
    surrogate to Python) raised UnicodeEncodeError at the first token request, not at load."""
    message = refused(env)
    assert message.startswith(f"{key}: ") and "UTF-8" in message, message
    assert LATIN1 not in message and "\udce4" not in message


def test_ipv4s_wildcard_and_an_ipv6_address_on_one_port_are_taken() -> None:
    """``0.0.0.0:P`` and ``[::1]:P`` bind side by side (IPv4's wildcard takes no IPv6
    address): the check added for one port twice refused it (an e2e test of listeners does
    it), where ``[::]:P`` beside ``127.0.0.1:P`` is still refused (``[::]`` takes IPv4 too)."""
    url = {"server.public_url": "https://mirror.test:7001"}
    both = {"server.listen": "[::1]:7001", "server.tls_listen": "0.0.0.0:7001", **url}
    assert load_config(both, None, {}).server.tls_listen is not None
    with pytest.raises(ConfigError) as caught:
        load_config(
            {"server.listen": "127.0.0.1:7001", "server.tls_listen": "[::]:7001", **url}, None, {}
        )
    assert str(caught.value).startswith("server.tls_listen: ")
