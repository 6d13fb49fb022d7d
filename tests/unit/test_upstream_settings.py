"""The ``upstreams`` setting in every layer: presets, tables, env, flags, and its mistakes."""

from __future__ import annotations

from pathlib import Path

import pytest

from docxy.cli.main import main
from docxy.config import Config, NamedUpstreamConfig, describe, load_config
from docxy.core.errors import ConfigError
from docxy.upstream.settings import env_id

BASE = {"server.listen": "127.0.0.1:8080"}


def load(
    toml: str | None = None,
    env: dict[str, str] | None = None,
    flags: dict[str, object] | None = None,
    tmp_path: Path | None = None,
) -> Config:
    path = None
    if toml is not None:
        assert tmp_path is not None
        path = tmp_path / "docxy.toml"
        path.write_text(toml)
    return load_config({**BASE, **(flags or {})}, path, environ=env or {})


def by_name(config: Config) -> dict[str, NamedUpstreamConfig]:
    return {u.name: u for u in config.upstreams}


def test_none_by_default() -> None:
    assert load().upstreams == ()


def test_presets_in_one_toml_line(tmp_path: Path) -> None:
    config = load('upstreams = ["ghcr.io", "quay.io", "registry.k8s.io"]\n', tmp_path=tmp_path)
    found = by_name(config)
    assert list(found) == ["ghcr.io", "quay.io", "registry.k8s.io"]
    assert found["ghcr.io"].registry == "https://ghcr.io"
    assert found["registry.k8s.io"].registry == "https://registry.k8s.io"
    assert not found["quay.io"].library_prefix
    assert config.sources.get("upstreams.ghcr.io.registry") is None  # from the preset


@pytest.mark.parametrize("name", ["gcr.io", "mcr.microsoft.com", "nvcr.io"])
def test_every_preset_enables_with_its_name(name: str) -> None:
    (upstream,) = load(env={"DOCXY_UPSTREAMS": name}).upstreams
    assert upstream.registry == f"https://{name}"


def test_docker_io_in_the_list_is_upstream_itself() -> None:
    config = load(env={"DOCXY_UPSTREAMS": "docker.io,ghcr.io"})
    assert [u.name for u in config.upstreams] == ["ghcr.io"]


def test_tables_with_hosts_and_credentials(tmp_path: Path) -> None:
    toml = """
[[upstreams]]
name = "lab.example"
registry = "http://127.0.0.1:5000"
hosts = ["127.0.0.2:8080", "Lab-Mirror.example.com"]
username = "bob"
password = "hunter2"

[[upstreams]]
name = "ghcr.io"
hosts = ["ghcr.mirror.example.com"]
"""
    found = by_name(load(toml, tmp_path=tmp_path))
    lab = found["lab.example"]
    assert lab.registry == "http://127.0.0.1:5000"
    assert lab.hosts == ("127.0.0.2:8080", "lab-mirror.example.com")
    assert (lab.username, lab.password) == ("bob", "hunter2")
    assert found["ghcr.io"].registry == "https://ghcr.io"
    assert found["ghcr.io"].hosts == ("ghcr.mirror.example.com",)


def test_env_list_with_urls_and_per_upstream_keys() -> None:
    env = {
        "DOCXY_UPSTREAMS": "ghcr.io, lab.example=http://127.0.0.1:5000",
        "DOCXY_UPSTREAMS_LAB_EXAMPLE_USERNAME": "bob",
        "DOCXY_UPSTREAMS_LAB_EXAMPLE_PASSWORD": "hunter2",
        "DOCXY_UPSTREAMS_GHCR_IO_HOSTS": "ghcr.mirror.example.com,127.0.0.3:8443",
    }
    config = load(env=env)
    found = by_name(config)
    assert found["lab.example"].username == "bob"
    assert found["ghcr.io"].hosts == ("ghcr.mirror.example.com", "127.0.0.3:8443")
    assert config.sources["upstreams.ghcr.io.hosts"] == "env DOCXY_UPSTREAMS_GHCR_IO_HOSTS"


def test_flag_beats_env_beats_file(tmp_path: Path) -> None:
    toml = '[[upstreams]]\nname = "ghcr.io"\nhosts = ["from-file.example"]\n'
    env = {"DOCXY_UPSTREAMS": "ghcr.io,quay.io", "DOCXY_UPSTREAMS_QUAY_IO_HOSTS": "q.example"}
    config = load(
        toml,
        env=env,
        flags={"upstreams": "ghcr.io", "upstreams.ghcr.io.hosts": "from-flag.example"},
        tmp_path=tmp_path,
    )
    # The flag's list decides what is on (quay.io is not), keys merge from every layer.
    assert [u.name for u in config.upstreams] == ["ghcr.io"]
    assert config.upstreams[0].hosts == ("from-flag.example",)
    assert config.sources["upstreams.ghcr.io.hosts"] == "flag"
    only_file = load(toml, env={"DOCXY_UPSTREAMS": "ghcr.io"}, tmp_path=tmp_path)
    assert only_file.upstreams[0].hosts == ("from-file.example",)


def test_a_layer_that_leaves_an_upstream_out_does_not_drop_its_keys_below(
    tmp_path: Path,
) -> None:
    """The file configures lab.example, the environment's list names ghcr.io only, the flag
    names lab.example again: its registry is the file's (it was "required", with no source)."""
    toml = '[[upstreams]]\nname = "lab.example"\nregistry = "https://lab.example:5000"\n'
    config = load(
        toml,
        env={"DOCXY_UPSTREAMS": "ghcr.io"},
        flags={"upstreams": "lab.example"},
        tmp_path=tmp_path,
    )
    assert [(u.name, u.registry) for u in config.upstreams] == [
        ("lab.example", "https://lab.example:5000")
    ]
    assert config.sources["upstreams.lab.example.registry"] == f"file {tmp_path / 'docxy.toml'}"


@pytest.mark.parametrize(
    ("env", "words"),
    [
        ({"DOCXY_UPSTREAMS": "lab.example"}, "upstreams.lab.example.registry: required"),
        ({"DOCXY_UPSTREAMS": "Ghcr"}, "upstreams: expected a registry host name"),
        ({"DOCXY_UPSTREAMS": "evil.com/x"}, "expected a registry host name"),
        ({"DOCXY_UPSTREAMS": "lab.example=ftp://x"}, "upstreams.lab.example.registry: not an"),
        ({"DOCXY_UPSTREAMS": "a.example=https://u:p@x"}, "must not carry"),
        ({"DOCXY_UPSTREAMS": "docker.io=https://x"}, "upstreams.docker.io.registry: Docker Hub"),
        ({"DOCXY_UPSTREAMS_GHCR_IO_HOSTS": "x"}, "DOCXY_UPSTREAMS_GHCR_IO_HOSTS: unknown"),
        (
            {"DOCXY_UPSTREAMS": "ghcr.io", "DOCXY_UPSTREAMS_GHCR_IO_HOTS": "x"},
            "DOCXY_UPSTREAMS_GHCR_IO_HOTS: unknown variable",
        ),
        (
            {"DOCXY_UPSTREAMS": "ghcr.io", "DOCXY_UPSTREAMS_GHCR_IO_HOSTS": "a b"},
            "upstreams.ghcr.io.hosts: expected HOST or HOST:PORT",
        ),
        (
            {"DOCXY_UPSTREAMS": "ghcr.io", "DOCXY_UPSTREAMS_GHCR_IO_USERNAME": "bob"},
            "upstreams.ghcr.io.username: username and password go together",
        ),
        (
            {
                "DOCXY_UPSTREAMS": "ghcr.io,quay.io",
                "DOCXY_UPSTREAMS_GHCR_IO_HOSTS": "same.example",
                "DOCXY_UPSTREAMS_QUAY_IO_HOSTS": "same.example",
            },
            "same.example already picks ghcr.io",
        ),
        (
            {"DOCXY_UPSTREAMS": "lab.test=https://lab.example/v2/"},
            "upstreams.lab.test.registry: expected the registry's root URL, without /v2",
        ),
    ],
)
def test_mistakes_name_the_key_and_source(env: dict[str, str], words: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load(env=env)
    assert words in str(caught.value)
    assert "(env DOCXY_UPSTREAMS" in str(caught.value) or "(no source)" in str(caught.value)


@pytest.mark.parametrize(
    ("toml", "words"),
    [
        ('[[upstreams]]\nregistry = "https://x.example"\n', "needs a name"),
        ('[[upstreams]]\nname = "a.example"\nregistri = "https://x"\n', "a.example.registri"),
        ("upstreams = 5\n", "expected a list"),
        ("upstreams = [5]\n", "expected names or tables"),
        ('[[upstreams]]\nname = "a.example"\nregistry = 5\n', "a.example.registry"),
    ],
)
def test_file_mistakes(tmp_path: Path, toml: str, words: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load(toml, tmp_path=tmp_path)
    assert words in str(caught.value)
    assert f"file {tmp_path}" in str(caught.value)


def test_a_bad_password_is_never_shown() -> None:
    env = {
        "DOCXY_UPSTREAMS": "ghcr.io",
        "DOCXY_UPSTREAMS_GHCR_IO_USERNAME": "bob",
        "DOCXY_UPSTREAMS_GHCR_IO_PASSWORD": "s3cret",
    }
    rows = describe(load(env=env))
    assert ("upstreams.ghcr.io.password", "(set)", "env DOCXY_UPSTREAMS_GHCR_IO_PASSWORD") in rows
    assert not any("s3cret" in value for _, value, _ in rows)


def test_show_config_and_the_upstreams_flag(
    capsys: pytest.CaptureFixture[str], clean_docxy_env: None
) -> None:
    code = main(["serve", "--upstreams", "ghcr.io,lab.example=http://127.0.0.1:5000",
                 "--show-config"])  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0
    assert "upstreams.ghcr.io.registry = https://ghcr.io  (preset)" in out
    assert "upstreams.lab.example.registry = http://127.0.0.1:5000  (flag)" in out


def test_unknown_flag_key_for_an_upstream() -> None:
    with pytest.raises(ConfigError, match=r"upstreams\.quay\.io\.hosts: unknown key \(flag\)"):
        load(flags={"upstreams": "ghcr.io", "upstreams.quay.io.hosts": "x.example"})


def test_env_id() -> None:
    assert env_id("registry.k8s.io") == "REGISTRY_K8S_IO"
    assert env_id("mcr.microsoft.com") == "MCR_MICROSOFT_COM"
    assert env_id("my-lab.example") == "MY_LAB_EXAMPLE"


def test_names_that_share_an_environment_name_are_refused() -> None:
    # a-b.io and a.b.io would both read DOCXY_UPSTREAMS_A_B_IO_*: one's settings the other's.
    env = {"DOCXY_UPSTREAMS": "a-b.io=https://one.test,a.b.io=https://two.test"}
    with pytest.raises(ConfigError, match="share the environment name DOCXY_UPSTREAMS_A_B_IO_"):
        load(env=env)


# --- two upstreams on one registry host -------------------------------------------------
# The mirror keys its cache, tokens, refusals, realms and health by the registry's host
# (``Upstream.host``): two upstreams there share all of it.


@pytest.mark.parametrize(
    ("toml", "words"),
    [
        (  # a second name for ghcr.io with a login of its own: tokens would mix
            '[[upstreams]]\nname = "ghcr.io"\n\n[[upstreams]]\nname = "ghcr.work.example"\n'
            'registry = "https://ghcr.io"\nusername = "robot"\npassword = "s3cret"\n',
            "upstreams.ghcr.work.example.registry: https://ghcr.io has the registry host "
            "ghcr.io of upstreams.ghcr.io, with another login",
        ),
        (  # Docker Hub again under a name, anonymous beside [upstream]'s account
            '[upstream]\nusername = "hub"\npassword = "s3cret"\n\n[[upstreams]]\n'
            'name = "hub.example"\nregistry = "https://registry-1.docker.io"\n',
            "upstreams.hub.example.registry: https://registry-1.docker.io has the registry host "
            "registry-1.docker.io of [upstream], with another login",
        ),
        (  # one host, two registries under different paths: same repository names would mix
            '[[upstreams]]\nname = "a.example"\nregistry = "https://lab.example/a"\n\n'
            '[[upstreams]]\nname = "b.example"\nregistry = "https://lab.example/b"\n'
            'auth_realm = "https://lab.example/token"\n',
            "of upstreams.a.example, with another registry URL and another auth_realm",
        ),
    ],
)
def test_two_upstreams_on_one_registry_host_are_refused(
    tmp_path: Path, toml: str, words: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        load(toml, tmp_path=tmp_path)
    message = str(caught.value)
    assert words in message
    assert "share" in message and f"(file {tmp_path}" in message
    assert "s3cret" not in message


@pytest.mark.parametrize(
    "env",
    [
        {  # a registry URL with the default port is the registry host without it
            "DOCXY_UPSTREAMS": "ghcr.io,ghcr.work.example=https://ghcr.io:443",
            "DOCXY_UPSTREAMS_GHCR_WORK_EXAMPLE_USERNAME": "robot",
            "DOCXY_UPSTREAMS_GHCR_WORK_EXAMPLE_PASSWORD": "s3cret",
        },
        {
            "DOCXY_UPSTREAMS": "hub.example=https://Registry-1.Docker.IO:443",
            "DOCXY_UPSTREAMS_HUB_EXAMPLE_USERNAME": "robot",
            "DOCXY_UPSTREAMS_HUB_EXAMPLE_PASSWORD": "s3cret",
        },
    ],
)
def test_a_default_port_does_not_make_another_registry_host(env: dict[str, str]) -> None:
    """``https://ghcr.io:443`` and ``https://ghcr.io`` were two hosts to this check (and two
    sets of cache keys and tokens for one registry): a second login there went unrefused."""
    with pytest.raises(ConfigError) as caught:
        load(env=env)
    message = str(caught.value)
    assert "has the registry host" in message and "with another login" in message
    assert "s3cret" not in message


def test_a_registry_url_is_kept_without_its_default_port() -> None:
    config = load(env={"DOCXY_UPSTREAMS": "lab.example=https://Lab.Example:443/v2mirror"})
    assert by_name(config)["lab.example"].registry == "https://lab.example/v2mirror"
    assert load(flags={"upstream.registry": "http://10.0.0.5:80"}).upstream.registry == (
        "http://10.0.0.5"
    )


@pytest.mark.parametrize(
    ("ghcr_hosts", "quay_hosts"),
    [
        ("same.example", "same.example:443"),
        ("same.example:443", "Same.Example"),
        ("same.example:80", "same.example:443"),
        ("[2001:db8::1]", "[2001:db8::1]:443"),
    ],
)
def test_hosts_that_differ_only_by_a_default_port_are_refused(
    ghcr_hosts: str, quay_hosts: str
) -> None:
    env = {
        "DOCXY_UPSTREAMS": "ghcr.io,quay.io",
        "DOCXY_UPSTREAMS_GHCR_IO_HOSTS": ghcr_hosts,
        "DOCXY_UPSTREAMS_QUAY_IO_HOSTS": quay_hosts,
    }
    with pytest.raises(ConfigError) as caught:
        load(env=env)
    message = str(caught.value)
    assert message.startswith(f"upstreams.quay.io.hosts: {quay_hosts.lower()} ")
    assert "already picks ghcr.io (env DOCXY_UPSTREAMS_QUAY_IO_HOSTS)" in message


def test_hosts_on_other_ports_of_one_host_are_two_names() -> None:
    env = {
        "DOCXY_UPSTREAMS": "ghcr.io,quay.io",
        "DOCXY_UPSTREAMS_GHCR_IO_HOSTS": "same.example",
        "DOCXY_UPSTREAMS_QUAY_IO_HOSTS": "same.example:8443",
    }
    assert by_name(load(env=env))["quay.io"].hosts == ("same.example:8443",)


def test_the_same_upstream_under_two_names_is_allowed(tmp_path: Path) -> None:
    # Identical in all the mirror keys by: sharing is harmless (and said at start-up).
    toml = (
        '[[upstreams]]\nname = "ghcr.io"\nhosts = ["ghcr.mirror.example.com"]\n\n'
        '[[upstreams]]\nname = "ghcr.alias.example"\nregistry = "https://ghcr.io"\n'
    )
    assert [u.name for u in load(toml, tmp_path=tmp_path).upstreams] == [
        "ghcr.io",
        "ghcr.alias.example",
    ]


def test_show_config_lists_every_upstream_with_its_hosts_and_no_secret(
    capsys: pytest.CaptureFixture[str], clean_docxy_env: None, tmp_path: Path
) -> None:
    path = tmp_path / "docxy.toml"
    path.write_text(
        '[upstream]\nusername = "hub"\npassword = "hub-s3cret"\n\n'
        '[[upstreams]]\nname = "ghcr.io"\nhosts = ["ghcr.mirror.example", "127.0.0.2:8080"]\n\n'
        '[[upstreams]]\nname = "lab.example"\nregistry = "http://127.0.0.1:5000"\n'
        'username = "bob"\npassword = "lab-s3cret"\n'
    )
    code = main(["serve", "--config", str(path), "--listen", "127.0.0.1:8080", "--show-config"])
    out = capsys.readouterr().out
    assert code == 0
    source = f"(file {path})"
    assert f"upstream.password = (set)  {source}" in out
    assert f"upstreams.ghcr.io.hosts = ghcr.mirror.example,127.0.0.2:8080  {source}" in out
    assert "upstreams.ghcr.io.registry = https://ghcr.io  (preset)" in out
    # what the preset does not give is a default, as for any upstream
    assert "upstreams.ghcr.io.password = (none)  (default)" in out
    assert f"upstreams.lab.example.password = (set)  {source}" in out
    assert "upstreams.lab.example.hosts = (none)  (default)" in out
    assert "s3cret" not in out
