"""Config loading: flag > env > TOML > default, with sources; errors name the key and source."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from docxy.config import (
    ENV_ALIASES,
    OTHER_ENV,
    SECRET_FILE_KEYS,
    SETTINGS,
    Config,
    HostPort,
    check_ca_bundle,
    check_tls_files,
    describe,
    env_name,
    load_config,
    parse_host_port,
    parse_size,
    parse_url,
)
from docxy.core.errors import ConfigError
from docxy.tls.context import self_signed
from docxy.upstream.settings import is_upstreams_env

SECRET = "s3cr3t-Pa55word"


def write_toml(tmp_path: Path, text: str, name: str = "docxy.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def config_error(
    overrides: dict[str, object] | None = None,
    config_file: Path | None = None,
    environ: dict[str, str] | None = None,
    *,
    renewer: bool = False,
) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(overrides, config_file, environ or {}, renewer=renewer)
    message = str(info.value)
    assert "\n" not in message
    return message


@pytest.fixture
def cert_pair(tmp_path: Path) -> tuple[Path, Path]:
    cert, key = tmp_path / "chain.pem", tmp_path / "key.pem"
    cert.write_text("-----BEGIN CERTIFICATE-----\n")
    key.write_text("-----BEGIN PRIVATE KEY-----\n")
    return cert, key


# --- defaults --------------------------------------------------------------------------------


def test_defaults_are_a_docker_hub_mirror_on_loopback(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", "/somewhere/else")  # the environ argument wins
    config = load_config(environ={"XDG_CACHE_HOME": str(tmp_path)})
    assert config.server.listen == HostPort("127.0.0.1", 8080)
    assert config.server.tls_listen is None
    assert config.server.public_url == "http://127.0.0.1:8080"
    assert config.upstream.registry == "https://registry-1.docker.io"
    assert config.upstream.auth_realm is None
    assert config.upstream.library_prefix is True
    assert config.upstream.username is None and config.upstream.password is None
    assert config.tls.cert_path is None and config.tls.key_path is None
    assert config.cache.enabled is True
    assert config.cache.dir == tmp_path / "docxy"
    assert config.cache.max_size == 20 * 1024**3
    assert config.log.level == "INFO"
    assert config.sources["server.public_url"] == "derived from server.listen"  # not set
    assert set(config.sources.values()) == {"default", "derived from server.listen"}


def test_config_is_frozen() -> None:
    config = load_config(environ={})
    with pytest.raises(AttributeError):
        config.server.listen = HostPort("0.0.0.0", 1)  # type: ignore[misc]


# --- precedence ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("use_flag", "use_env", "use_file", "expected", "source"),
    [
        (True, True, True, "https://flag.example", "flag"),
        (False, True, True, "https://env.example", "env DOCXY_UPSTREAM_REGISTRY"),
        (False, False, True, "https://file.example", "file"),
        (False, False, False, "https://registry-1.docker.io", "default"),
        (True, False, False, "https://flag.example", "flag"),
        (True, False, True, "https://flag.example", "flag"),
    ],
)
def test_precedence_flag_env_file_default(
    tmp_path: Path,
    use_flag: bool,
    use_env: bool,
    use_file: bool,
    expected: str,
    source: str,
) -> None:
    path = write_toml(tmp_path, '[upstream]\nregistry = "https://file.example"\n')
    overrides = {"upstream.registry": "https://flag.example"} if use_flag else {}
    environ = {"DOCXY_UPSTREAM_REGISTRY": "https://env.example"} if use_env else {}
    config = load_config(overrides, path if use_file else None, environ)
    assert config.upstream.registry == expected
    if source == "file":
        source = f"file {path}"
    assert config.sources["upstream.registry"] == source


def test_sources_are_per_key(tmp_path: Path) -> None:
    path = write_toml(tmp_path, '[server]\nlisten = "127.0.0.1:9000"\n[log]\nlevel = "debug"\n')
    config = load_config({"log.level": "warning"}, path, {"DOCXY_UPSTREAM_LIBRARY_PREFIX": "false"})
    assert config.server.listen == HostPort("127.0.0.1", 9000)
    assert config.log.level == "WARNING"
    assert config.upstream.library_prefix is False
    assert config.sources["server.listen"] == f"file {path}"
    assert config.sources["log.level"] == "flag"
    assert config.sources["upstream.library_prefix"] == "env DOCXY_UPSTREAM_LIBRARY_PREFIX"
    assert config.sources["upstream.registry"] == "default"
    # the public URL follows the listener it was derived from
    assert config.server.public_url == "http://127.0.0.1:9000"


# One good raw value per setting (credentials go in pairs and are tested below).
SAMPLES = {
    "server.listen": "127.0.0.1:1234",
    "server.tls_listen": "127.0.0.1:8443",
    "server.public_url": "https://m.example",
    "server.admin_listen": "127.0.0.1:9999",
    "server.admin_hosts": "docxy,metrics.lan",
    "tls.cert_path": "",
    "tls.key_path": "",
    "upstream.registry": "http://up.example",
    "upstream.auth_realm": "http://auth.example/token",
    "upstream.library_prefix": "false",
    "upstream.connect_timeout": "1",
    "upstream.read_timeout": "1",
    "cache.enabled": "false",
    "cache.dir": "/tmp/docxy-cache",
    "cache.max_size": "1G",
    "cache.tag_ttl": "1",
    "cache.room_wait": "12.5",
    "cache.direct_writes": "false",
    "certs.domain": "m.example",
    "certs.email": "ops@m.example",
    "certs.acme_server": "https://acme.example/dir",
    "certs.ca_bundle": "",
    "upstream.ca_file": "",  # a file to read: tests/unit/test_upstream_ca_file.py
    "upstream.ca_origins": "",  # needs ca_file: tests/unit/test_upstream_ca_origins.py
    "certs.webroot": "/tmp/webroot",
    "certs.config_dir": "/tmp/letsencrypt",
    "log.level": "error",
    "scheduler.hour": "3",
    "scheduler.minute": "59",
    "scheduler.interval": "30",
    "scheduler.retry_base": "1",
    "scheduler.retry_max": "600",
    "scheduler.certbot_timeout": "10",
    "scheduler.pidfile": "/run/docxy/docxy.pid",
    "scheduler.reload_command": "supervisorctl signal HUP docxy",
    "scheduler.deploy_hook": "true",
    "scheduler.wait_for_mirror": "true",
    "server.trusted_proxies": "10.0.0.0/8, ::1",
    "server.forwarded_header": "forwarded",
    "access.allow": "192.0.2.0/24",
    "access.repositories": "library/*",
    "access.deny_repositories": "library/bad",
    "limits.max_connections": "50",
    "limits.connections_per_client": "8",
    "limits.backlog": "64",
    "limits.idle_timeout": "5",
    "limits.send_timeout": "5",
    "limits.send_min_rate": "2K",
    "limits.requests_per_minute": "600",
    "limits.manifests_per_minute": "60",
    "limits.failed_logins_per_minute": "5",
    "limits.token_relays_per_minute": "120",
    "limits.bandwidth": "10M",
    "limits.fills_per_client": "2",
    "limits.fills_total": "8",
    "limits.exempt": "10.20.0.0/16, 2001:db8:42::/48",
    "limits.h2_max_streams": "4",
    "auth.mode": "users",
    "auth.dir": "/tmp/docxy-access",
    "auth.users_file": "/tmp/docxy-users",
    "auth.token_ttl": "60",
    "auth.key_grace": "600",
    "auth.client_certs": "false",
    "auth.upstream_logins": "true",
    "auth.allow_plain_http": "true",
    "shared.bucket": "docxy-cache",
    "shared.region": "eu-west-3",
    "shared.access_key": "docxy",
    "shared.secret_key": "not-shown",
    "shared.prefix": "team/docxy",
    "shared.uploads": "4",
}


@pytest.mark.parametrize(("key", "value"), sorted(SAMPLES.items()))
def test_every_setting_has_an_env_name(key: str, value: str) -> None:
    name = env_name(key)
    config = load_config(environ={name: value})
    assert config.sources[key] == f"env {name}"


def test_samples_cover_every_setting() -> None:
    keys = {key for key, _, _ in describe(load_config(environ={}))}
    # shared.endpoint needs the bucket and keys beside it: tests/unit/test_shared.py
    assert keys - set(SAMPLES) == {"upstream.username", "upstream.password", "shared.endpoint"}


def test_docxy_config_env_names_the_file(tmp_path: Path) -> None:
    path = write_toml(tmp_path, '[upstream]\nregistry = "https://from-env-file.example"\n')
    config = load_config(environ={"DOCXY_CONFIG": str(path)})
    assert config.upstream.registry == "https://from-env-file.example"
    assert config.sources["upstream.registry"] == f"file {path}"


def test_config_file_argument_beats_docxy_config(tmp_path: Path) -> None:
    chosen = write_toml(tmp_path, '[upstream]\nregistry = "https://chosen.example"\n', "a.toml")
    other = write_toml(tmp_path, '[upstream]\nregistry = "https://other.example"\n', "b.toml")
    config = load_config(config_file=chosen, environ={"DOCXY_CONFIG": str(other)})
    assert config.upstream.registry == "https://chosen.example"


def test_seed_cert_aliases(cert_pair: tuple[Path, Path]) -> None:
    cert, key = cert_pair
    config = load_config(
        environ={"DOCXY_CERT_PATH": str(cert), "DOCXY_KEY_PATH": str(key)},
    )
    assert config.tls.cert_path == cert
    assert config.tls.key_path == key
    assert config.sources["tls.cert_path"] == "env DOCXY_CERT_PATH"
    assert config.sources["tls.key_path"] == "env DOCXY_KEY_PATH"


def test_canonical_env_beats_seed_alias(cert_pair: tuple[Path, Path], tmp_path: Path) -> None:
    cert, key = cert_pair
    other = tmp_path / "other.pem"
    other.write_text("x")
    config = load_config(
        environ={
            "DOCXY_CERT_PATH": str(other),
            "DOCXY_TLS_CERT_PATH": str(cert),
            "DOCXY_KEY_PATH": str(key),
        }
    )
    assert config.tls.cert_path == cert
    assert config.sources["tls.cert_path"] == "env DOCXY_TLS_CERT_PATH"


def test_flag_beats_seed_alias(cert_pair: tuple[Path, Path], tmp_path: Path) -> None:
    cert, key = cert_pair
    missing = tmp_path / "missing.pem"
    config = load_config(
        {"tls.cert_path": str(cert), "tls.key_path": str(key)},
        environ={"DOCXY_CERT_PATH": str(missing), "DOCXY_KEY_PATH": str(missing)},
    )
    assert config.tls.cert_path == cert
    assert config.sources["tls.cert_path"] == "flag"


def test_documented_non_setting_docxy_env_is_allowed() -> None:
    environ = {name: "x" for name in OTHER_ENV} | {"DOCXY": "x", "PATH": "/bin"}
    environ["DOCXY_CONFIG"] = ""
    config = load_config(environ=environ)
    assert config.upstream.registry == "https://registry-1.docker.io"
    container = {"DOCXY_DOMAIN", "DOCXY_EMAIL", "DOCXY_STATE_DIR", "DOCXY_RUN_DIR"}
    assert container | {"DOCXY_CONFIG", "DOCXY_SUPERVISOR_CONF", "DOCXY_REQUIRE_E2E"} <= OTHER_ENV


@pytest.mark.parametrize(
    "name", ["DOCXY_SERVR_LISTEN", "DOCXY_LISTEN", "DOCXY_CERT", "DOCXY_SCHEDULR_HOUR", "DOCXY_"]
)
def test_any_other_docxy_env_stops_start_up(name: str) -> None:
    message = config_error(environ={name: "127.0.0.1:1"})
    assert message.startswith(f"{name}: unknown variable (env {name})")
    assert "DOCXY_DOMAIN" in message  # says what is allowed


def test_every_docxy_variable_the_container_files_read_is_allowed() -> None:
    """Names that scripts/, the Dockerfile, compose.yaml, the README, the lab and CI use are
    settings, aliases or documented extras (a shell that exported one can still start the
    mirror)."""
    root = Path(__file__).resolve().parents[2]
    files = [root / "README.md", *root.glob("Dockerfile*"), *root.glob("compose*.y*ml")]
    files += [p for p in (root / "scripts").rglob("*") if p.is_file()]
    files += [*(root / "lab").rglob("*.py"), *(p for p in (root / ".ci").rglob("*") if p.is_file())]
    names = {m for f in files for m in re.findall(r"\bDOCXY_[A-Z0-9_]*[A-Z0-9]", f.read_text())}
    settings = {env_name(key) for key, _, _ in describe(load_config(environ={}))}
    settings |= {env_name(key) for key in SECRET_FILE_KEYS}  # DOCXY_UPSTREAM_PASSWORD_FILE
    prefixes = {f"DOCXY_{section.upper()}" for section in SETTINGS}
    typo_example = {"DOCXY_SERVR_LISTEN"}  # the README's example of what is refused
    upstreams = {n for n in names if is_upstreams_env(n)}  # docxy.upstream.settings checks them
    unknown = names - settings - OTHER_ENV - set(ENV_ALIASES) - prefixes - typo_example - upstreams
    assert not unknown, f"DOCXY_* variables used but not allowed by docxy.config: {unknown}"
    assert "DOCXY_DOMAIN" in names


def test_toml_types(tmp_path: Path) -> None:
    path = write_toml(
        tmp_path,
        "[upstream]\nlibrary_prefix = false\nread_timeout = 120\nconnect_timeout = 2.5\n"
        "[cache]\nmax_size = 1048576\nenabled = false\n",
    )
    config = load_config(config_file=path, environ={})
    assert config.upstream.library_prefix is False
    assert config.upstream.read_timeout == 120.0
    assert config.upstream.connect_timeout == 2.5
    assert config.cache.max_size == 1048576
    assert config.cache.enabled is False


# --- public URL --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({}, "http://127.0.0.1:8080"),
        ({"server.listen": "localhost:5000"}, "http://localhost:5000"),
        ({"server.listen": "[::1]:8080"}, "http://[::1]:8080"),
        ({"server.public_url": "https://mirror.example.com/"}, "https://mirror.example.com"),
        (
            {"server.listen": "0.0.0.0:80", "server.public_url": "https://m.example:8443"},
            "https://m.example:8443",
        ),
        ({"server.tls_listen": "127.0.0.1:8443"}, "https://127.0.0.1:8443"),
        ({"server.tls_listen": "[::1]:443"}, "https://[::1]"),
        (
            {"server.tls_listen": "0.0.0.0:443", "certs.domain": "mirror.example.com"},
            "https://mirror.example.com",
        ),
        (
            {"server.tls_listen": "0.0.0.0:8443", "certs.domain": "mirror.example.com"},
            "https://mirror.example.com:8443",
        ),
        (
            {"server.listen": "0.0.0.0:80", "certs.domain": "mirror.example.com"},
            "http://mirror.example.com",
        ),
    ],
)
def test_public_url(overrides: dict[str, object], expected: str) -> None:
    assert load_config(overrides, environ={}).server.public_url == expected


@pytest.mark.parametrize(
    "overrides",
    [
        {"server.listen": "0.0.0.0:8080"},
        {"server.listen": "[::]:8080"},
        {"server.listen": ":8080"},
        {"server.tls_listen": "0.0.0.0:443"},
    ],
)
def test_wildcard_listen_needs_public_url(overrides: dict[str, object]) -> None:
    message = config_error(overrides)
    assert message.startswith("server.public_url: required")
    assert message.endswith("(default)")


def test_a_plain_http_public_url_with_tls_on_is_refused() -> None:
    """Plain HTTP is redirected to public_url when TLS is on: an http:// one redirected every
    request to itself (Docker gave up after 10 redirects)."""
    overrides: dict[str, object] = {
        "server.tls_listen": "127.0.0.1:8443",
        "server.public_url": "http://mirror.example.com:5000",
    }
    message = config_error(overrides)
    assert message.startswith("server.public_url: must be an https:// URL"), message


# --- value parsers -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:8080", HostPort("127.0.0.1", 8080)),
        ("localhost:1", HostPort("localhost", 1)),
        ("0.0.0.0:65535", HostPort("0.0.0.0", 65535)),
        ("[::1]:443", HostPort("::1", 443)),
        ("[::]:80", HostPort("::", 80)),
        (":8080", HostPort("", 8080)),
        (" mirror.example:80 ", HostPort("mirror.example", 80)),
    ],
)
def test_parse_host_port(text: str, expected: HostPort) -> None:
    assert parse_host_port(text) == expected


def test_host_port_renders_ipv6_in_brackets() -> None:
    assert str(HostPort("::1", 443)) == "[::1]:443"
    assert str(HostPort("127.0.0.1", 80)) == "127.0.0.1:80"
    assert HostPort("0.0.0.0", 1).is_wildcard and HostPort("::", 1).is_wildcard
    assert not HostPort("127.0.0.1", 1).is_wildcard


@pytest.mark.parametrize(
    "text",
    [
        "",
        "localhost",
        "8080",
        "host:",
        "host:0",
        "host:65536",
        "host:http",
        "::1:80",
        "[::1]",
        "a:b:80",
        "[zz]:80",
        "host:-1",
    ],
)
def test_bad_host_port(text: str) -> None:
    with pytest.raises(ValueError):
        parse_host_port(text)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("20G", 20 * 1024**3),
        ("20g", 20 * 1024**3),
        ("512M", 512 * 1024**2),
        ("512MiB", 512 * 1024**2),
        ("512MB", 512 * 1024**2),
        ("1.5G", 3 * 1024**3 // 2),
        ("64K", 65536),
        ("2T", 2 * 1024**4),
        ("100", 100),
        ("100B", 100),
        (" 1G ", 1024**3),
        (1048576, 1048576),
    ],
)
def test_parse_size(value: object, expected: int) -> None:
    assert parse_size(value) == expected


@pytest.mark.parametrize(
    "value",
    [
        "",
        "G",
        "20X",
        "-1",
        "-1G",
        "0",
        "0G",
        "0.0001K",
        "1.2.3G",
        "lots",
        "1iB",
        "2i",
        0,
        -5,
        True,
        1.5,
    ],
)
def test_bad_size(value: object) -> None:
    with pytest.raises(ValueError):
        parse_size(value)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("https://registry-1.docker.io", "https://registry-1.docker.io"),
        ("https://registry-1.docker.io/", "https://registry-1.docker.io"),
        ("http://127.0.0.1:5000", "http://127.0.0.1:5000"),
        ("https://[::1]:5000", "https://[::1]:5000"),
        ("https://mirror.example.com/prefix", "https://mirror.example.com/prefix"),
    ],
)
def test_parse_url(text: str, expected: str) -> None:
    assert parse_url(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        "registry-1.docker.io",
        "ftp://registry.example",
        "https://",
        "https:///path",
        "https://x.example?a=b",
        "https://x.example#frag",
        "https://user@x.example",
        "https://x.example:99999",
        "https://x.example:port",
        "file:///etc/passwd",
        "https://exa mple.com",
        "https://example.com/a b",
        "https://example.com\tx",
    ],
)
def test_bad_url(text: str) -> None:
    with pytest.raises(ValueError):
        parse_url(text)


@pytest.mark.parametrize(
    "text",
    ["https://registry-1.docker.io/v2/", "https://registry-1.docker.io/v2", "http://h:5000/V2"],
)
def test_an_upstream_registry_with_the_apis_v2_path_is_refused_by_name(text: str) -> None:
    """``/v2/`` copied from a curl command would make every request ``/v2/v2/...``: a 404
    that looks like a missing image, while /health calls the upstream reachable."""
    message = config_error({"upstream.registry": text})
    assert message.startswith("upstream.registry: ") and message.endswith("(flag)"), message
    assert "without /v2" in message


def test_an_upstream_registry_under_a_path_prefix_is_kept() -> None:
    config = load_config({"upstream.registry": "https://proxy.example/v2-cache"}, None, {})
    assert config.upstream.registry == "https://proxy.example/v2-cache"


# --- errors name the key and the source ------------------------------------------------------


def test_unknown_key_in_toml(tmp_path: Path) -> None:
    path = write_toml(tmp_path, '[server]\nlisten = "127.0.0.1:1"\nlistne = "x"\n')
    assert config_error(config_file=path) == f"server.listne: unknown key (file {path})"


def test_unknown_section_in_toml(tmp_path: Path) -> None:
    path = write_toml(tmp_path, "[sever]\nlisten = 1\n")
    assert config_error(config_file=path) == f"sever: unknown section (file {path})"


def test_top_level_value_in_toml(tmp_path: Path) -> None:
    path = write_toml(tmp_path, 'server = "127.0.0.1:1"\n')
    message = config_error(config_file=path)
    assert message.startswith("server: ") and message.endswith(f"(file {path})")


def test_invalid_toml(tmp_path: Path) -> None:
    path = write_toml(tmp_path, "[server\nlisten = \n")
    message = config_error(config_file=path)
    assert message.startswith(f"config file {path}: not valid TOML")


def test_missing_config_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.toml"
    assert config_error(config_file=path).startswith(f"config file {path}: cannot read")


def test_missing_docxy_config_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.toml"
    message = config_error(environ={"DOCXY_CONFIG": str(path)})
    assert message.startswith(f"config file {path}: cannot read")


@pytest.mark.parametrize(
    ("name", "key"),
    [
        ("DOCXY_SERVER_FOO", "server.foo"),
        ("DOCXY_UPSTREAM_REGISTERY", "upstream.registery"),
        ("DOCXY_TLS_LISTEN", "tls.listen"),
        ("DOCXY_CACHE_", "cache."),
    ],
)
def test_unknown_env_key(name: str, key: str) -> None:
    assert config_error(environ={name: "x"}) == f"{key}: unknown key (env {name})"


def test_unknown_flag_key() -> None:
    assert config_error({"server.nope": "x"}) == "server.nope: unknown key (flag)"
    assert config_error({"nosection": "x"}) == "nosection: unknown key (flag)"


@pytest.mark.parametrize(
    ("key", "value", "fragment"),
    [
        ("upstream.registry", "ftp://x", "not an http(s) URL: 'ftp://x'"),
        ("upstream.auth_realm", "auth.docker.io/token", "not an http(s) URL"),
        ("server.public_url", "mirror.example.com", "not an http(s) URL"),
        ("certs.acme_server", "localhost:14000", "not an http(s) URL"),
        ("server.listen", "localhost", "expected HOST:PORT"),
        ("server.listen", "localhost:99999", "port out of range"),
        ("server.tls_listen", "443", "expected HOST:PORT"),
        ("cache.max_size", "20X", "expected a size"),
        ("cache.max_size", "0", "positive size"),
        ("upstream.library_prefix", "maybe", "expected true or false"),
        ("cache.enabled", "2", "expected true or false"),
        ("upstream.read_timeout", "soon", "expected a number"),
        ("upstream.connect_timeout", "0", "positive number"),
        ("cache.tag_ttl", "-1", "positive number"),
        ("log.level", "loud", "expected DEBUG, INFO, WARNING or ERROR"),
        ("upstream.read_timeout", "nan", "finite number"),
        ("upstream.connect_timeout", "NaN", "finite number"),
        ("upstream.read_timeout", "inf", "finite number"),
        ("cache.tag_ttl", "infinity", "finite number"),
        ("upstream.read_timeout", "1e999", "finite number"),
        ("cache.max_size", "9" * 400 + "T", "out of range"),
        ("scheduler.retry_base", "nan", "finite number"),
        ("scheduler.interval", "-inf", "finite number"),
        ("scheduler.interval", "-1", "expected a number >= 0"),
        ("scheduler.hour", "12", "expected a whole number 0-11"),
        ("scheduler.hour", "-1", "expected a whole number 0-11"),
        ("scheduler.hour", "25", "expected a whole number 0-11"),
        ("scheduler.hour", "3.5", "expected a whole number 0-11"),
        ("scheduler.minute", "60", "expected a whole number 0-59"),
        ("scheduler.minute", "soon", "expected a whole number 0-59"),
        ("scheduler.certbot_timeout", "0", "positive number"),
        ("scheduler.wait_for_mirror", "perhaps", "expected true or false"),
    ],
)
def test_bad_values_name_key_and_source(key: str, value: str, fragment: str) -> None:
    name = env_name(key)
    renewer = key.startswith("scheduler.")  # the renewer's alone: only it refuses (review_config3)
    from_env = config_error(environ={name: value}, renewer=renewer)
    assert from_env.startswith(f"{key}: ")
    assert fragment in from_env
    assert from_env.endswith(f"(env {name})")
    from_flag = config_error({key: value}, renewer=renewer)
    assert from_flag.startswith(f"{key}: ") and from_flag.endswith("(flag)")


@pytest.mark.parametrize(
    ("toml", "key"),
    [
        ("[server]\nlisten = 8080\n", "server.listen"),
        ("[upstream]\nlibrary_prefix = 1\n", "upstream.library_prefix"),
        ('[upstream]\nread_timeout = "fast"\n', "upstream.read_timeout"),
        ("[upstream]\nread_timeout = true\n", "upstream.read_timeout"),
        ("[cache]\nmax_size = -1\n", "cache.max_size"),
        ('[cache]\nmax_size = "huge"\n', "cache.max_size"),
        ('[upstream]\nregistry = ["https://a"]\n', "upstream.registry"),
        ("[upstream]\nread_timeout = nan\n", "upstream.read_timeout"),
        ("[upstream]\nconnect_timeout = inf\n", "upstream.connect_timeout"),
        ("[cache]\ntag_ttl = -nan\n", "cache.tag_ttl"),
        ("[scheduler]\nhour = 12\n", "scheduler.hour"),
        ("[scheduler]\nminute = 60\n", "scheduler.minute"),
        ("[scheduler]\nretry_max = inf\n", "scheduler.retry_max"),
        ("[scheduler]\nhoru = 1\n", "scheduler.horu"),
    ],
)
def test_bad_toml_values_name_key_and_file(tmp_path: Path, toml: str, key: str) -> None:
    path = write_toml(tmp_path, toml)
    message = config_error(config_file=path, renewer=key.startswith("scheduler."))
    assert message.startswith(f"{key}: ")
    assert message.endswith(f"(file {path})")


def test_unreadable_cert(tmp_path: Path, cert_pair: tuple[Path, Path]) -> None:
    _, key = cert_pair
    missing = tmp_path / "missing.pem"
    message = config_error({"tls.cert_path": str(missing), "tls.key_path": str(key)}, renewer=True)
    assert message == f"tls.cert_path: cannot read {missing} (flag)"


def test_unreadable_key_via_seed_alias(tmp_path: Path, cert_pair: tuple[Path, Path]) -> None:
    cert, _ = cert_pair
    missing = tmp_path / "missing.key"
    config = load_config(environ={"DOCXY_CERT_PATH": str(cert), "DOCXY_KEY_PATH": str(missing)})
    with pytest.raises(ConfigError) as info:  # where the pair is read: serve's start-up
        check_tls_files(config)
    assert str(info.value) == f"tls.key_path: cannot read {missing} (env DOCXY_KEY_PATH)"


def test_unreadable_ca_bundle(tmp_path: Path) -> None:
    missing = tmp_path / "ca.pem"
    environ = {"DOCXY_CERTS_CA_BUNDLE": str(missing)}
    assert load_config(environ=environ).certs.ca_bundle == missing  # certbot's alone
    config = load_config(environ=environ, renewer=True)  # its runs fail instead (RUN_REFUSES)
    with pytest.raises(ConfigError) as info:  # docxy certs obtain|renew
        check_ca_bundle(config)
    assert str(info.value) == (
        f"certs.ca_bundle: cannot read {missing} (env DOCXY_CERTS_CA_BUNDLE)"
    )


def test_cert_without_key(cert_pair: tuple[Path, Path]) -> None:
    cert, _ = cert_pair
    message = config_error({"tls.cert_path": str(cert)})
    assert message.startswith("tls.key_path: ")
    assert "together" in message


def test_key_without_cert(cert_pair: tuple[Path, Path], tmp_path: Path) -> None:
    _, key = cert_pair
    path = write_toml(tmp_path, f'[tls]\nkey_path = "{key}"\n')
    message = config_error(config_file=path)
    assert message.startswith("tls.cert_path: ")
    assert "together" in message


def test_cert_and_key_together(cert_pair: tuple[Path, Path]) -> None:
    cert, key = cert_pair
    config = load_config({"tls.cert_path": str(cert), "tls.key_path": str(key)}, environ={})
    assert (config.tls.cert_path, config.tls.key_path) == (cert, key)


# --- secrets -----------------------------------------------------------------------------------


def credentials(tmp_path: Path) -> Config:
    path = write_toml(tmp_path, f'[upstream]\nusername = "bob"\npassword = "{SECRET}"\n')
    return load_config(config_file=path, environ={})


def test_credentials_load(tmp_path: Path) -> None:
    config = credentials(tmp_path)
    assert config.upstream.username == "bob"
    assert config.upstream.password == SECRET


def test_password_hidden_in_describe_and_repr(tmp_path: Path) -> None:
    config = credentials(tmp_path)
    rows = {key: (value, source) for key, value, source in describe(config)}
    assert rows["upstream.password"] == ("(set)", f"file {tmp_path / 'docxy.toml'}")
    assert rows["upstream.username"][0] == "bob"
    assert SECRET not in repr(describe(config))
    assert SECRET not in repr(config)
    assert SECRET not in str(config)


def test_unset_password_is_not_reported_as_set() -> None:
    rows = {key: value for key, value, _ in describe(load_config(environ={}))}
    assert rows["upstream.password"] != "(set)"


def test_bad_password_value_is_hidden(tmp_path: Path) -> None:
    path = write_toml(tmp_path, '[upstream]\nusername = "bob"\npassword = 31415926535\n')
    message = config_error(config_file=path)
    assert message == (
        "upstream.password: expected a string (in TOML, in quotes), got a TOML integer; the "
        f"value is not shown (file {path})"
    )
    assert "31415926535" not in message


def test_password_without_username_does_not_show_it() -> None:
    message = config_error(environ={"DOCXY_UPSTREAM_PASSWORD": SECRET})
    assert message.startswith("upstream.username: ")
    assert SECRET not in message


@pytest.mark.parametrize(
    "url",
    [
        f"https://bob:{SECRET}@registry.example",
        f"ftp://bob:{SECRET}@registry.example",
        f"https://bob:{SECRET}@registry.example:99999",
        f"https://{SECRET}@registry.example",
        # a password's #, / or ? (where a URL's authority would end): its rest was shown
        f"https://bob:pre#{SECRET}@registry.example",
        f"https://bob:pre/{SECRET}@registry.example",
        f"https://bob:pre?{SECRET}@registry.example",
        # a space in the password, the slashes forgotten, one slash: shown whole (review)
        f"https://bob:pre {SECRET}@registry.example",
        f"https:bob:{SECRET}@registry.example",
        f"https:/bob:{SECRET}@registry.example",
    ],
)
def test_credentials_in_upstream_url_are_refused_without_echoing_them(url: str) -> None:
    message = config_error({"upstream.registry": url})
    assert message.startswith("upstream.registry: ")
    assert message.endswith("(flag)")
    assert SECRET not in message


def test_describe_lists_every_setting_with_its_source(tmp_path: Path) -> None:
    path = write_toml(tmp_path, '[cache]\nmax_size = "1G"\n')
    config = load_config({"log.level": "debug"}, path, {"DOCXY_UPSTREAM_READ_TIMEOUT": "5"})
    rows = {key: (value, source) for key, value, source in describe(config)}
    assert rows["cache.max_size"] == ("1G", f"file {path}")
    assert rows["log.level"] == ("DEBUG", "flag")
    assert rows["upstream.read_timeout"] == ("5", "env DOCXY_UPSTREAM_READ_TIMEOUT")
    assert rows["server.listen"] == ("127.0.0.1:8080", "default")
    assert len(rows) == sum(len(keys) for keys in SETTINGS.values())  # every one, once
    assert rows["scheduler.hour"] == ("(random)", "default")  # picked at random by the renewer
    assert rows["scheduler.retry_base"] == ("300", "default")


def test_one_file_for_certificate_and_key_is_refused_where_the_renewer_writes_them(
    tmp_path: Path,
) -> None:
    """A combined PEM (key and chain in one file) serves; but with certs.domain the renewer
    writes the key, then the certificate over it, and the mirror could no longer start."""
    combined = tmp_path / "combined.pem"
    cert, key = self_signed(tmp_path / "pair", "mirror.test")
    combined.write_bytes(key.read_bytes() + cert.read_bytes())
    paths = {"tls.cert_path": str(combined), "tls.key_path": str(tmp_path / "." / combined.name)}
    load_config(paths, environ={})  # served as it is
    message = config_error({**paths, "certs.domain": "mirror.test"})
    assert message.startswith("tls.key_path: must be another file than tls.cert_path")
