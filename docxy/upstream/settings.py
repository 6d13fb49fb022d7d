"""The ``upstreams`` setting: more registries beside ``[upstream]``, in every settings layer.

Forms, lowest precedence first (the settings contract: flag > env > file > preset)::

    upstreams = ["ghcr.io", "quay.io"]           # TOML: presets, one line
    [[upstreams]]                                # TOML: or a table each
    name = "lab.example"                         # path prefix and containerd's ?ns=
    registry = "https://registry.lab.example"
    hosts = ["lab-mirror.example.com"]           # optional: mirror host names that pick it
    username = "..."; password = "..."           # optional; also auth_realm, library_prefix
    password_file = "/run/secrets/lab_password"  # or the password read from a file
    ca_file = "/etc/docxy/lab-ca.pem"            # optional: CAs trusted besides certifi's
    ca_origins = ["https://s3.lab.example"]      # optional: more origins ca_file is trusted for

    DOCXY_UPSTREAMS="ghcr.io,lab.example=https://registry.lab.example"
    DOCXY_UPSTREAMS_<ID>_<KEY>=value             # ID: the name upper-cased, . and - as _
    --upstreams "ghcr.io,quay.io"  /  --set upstreams.ghcr.io.hosts=ghcr.mirror.example.com

The highest layer that gives the list decides which upstreams are on; each one's keys merge
from every layer. Mistakes stop start-up naming the key and its source, as for any setting.

The password may instead name a file that holds it, as ``[upstream]``'s may
(``docxy.config.read_secret_file``): ``password_file`` in a table,
``DOCXY_UPSTREAMS_<ID>_PASSWORD_FILE``, ``--set upstreams.<name>.password_file=``. It is the
password in its layer (a higher layer's password overrides it, and its file is then not read);
the password and its file both given in one layer are refused, an empty one stands aside.

``ca_file`` is no such file: it is a setting of its own, the path of a PEM file of CA
certificates that the upstream's registry and token service are verified with besides certifi's
(``docxy.upstream.trust.UpstreamTrust``), read and checked when the settings load
(``docxy.config.parse_ca_file``). ``ca_origins`` lists more origins (``https://HOST[:PORT]``)
its CAs are trusted for, such as the storage its blobs redirect to; it needs ``ca_file``.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from typing import Any, NamedTuple

from docxy.config import (
    CA_ORIGINS_ALONE,
    Config,
    NamedUpstreamConfig,
    SecretFile,
    Unechoed,
    UpstreamConfig,
    opt_credential,
    parse_bool,
    parse_ca_file,
    parse_ca_origins,
    parse_registry_url,
    parse_url,
    put_secret,
    redacted,
    shown,
)
from docxy.core.errors import ConfigError
from docxy.core.hosts import host_key, url_host
from docxy.upstream.presets import DEFAULT_NAME, PRESETS
from docxy.upstream.trust import TrustOrigin, origin_of

SECTION = "upstreams"
ENV_LIST = "DOCXY_UPSTREAMS"
ENV_PREFIX = "DOCXY_UPSTREAMS_"
KEYS = (
    "registry",
    "auth_realm",
    "library_prefix",
    "username",
    "password",
    "hosts",
    "ca_file",
    "ca_origins",
)
SECRET = "password"
SECRET_FILE = "password_file"  # names a file holding the password: a key in every layer
GIVEN_KEYS = (*KEYS, SECRET_FILE)  # what a layer may give
PRESET_KEYS = ("registry", "library_prefix")  # what a preset gives (docxy.upstream.presets)
_NAME = re.compile(r"[a-z0-9]+(?:-+[a-z0-9]+)*(?:\.[a-z0-9]+(?:-+[a-z0-9]+)*)+")
_PORT = re.compile(r"[1-9][0-9]{0,4}")  # and below 65536
_LABEL = r"[a-z0-9](?:[a-z0-9-]*[a-z0-9])?"
_HOST = re.compile(rf"(?:{_LABEL}(?:\.{_LABEL})*|\[[0-9a-f:.]+\])(?::\d{{1,5}})?")

Raw = dict[str, tuple[object, str]]  # key → (raw value, source)
AnyUpstream = UpstreamConfig | NamedUpstreamConfig


def env_id(name: str) -> str:
    """``ghcr.io`` → ``GHCR_IO``: how a name appears in ``DOCXY_UPSTREAMS_<ID>_<KEY>``."""
    return re.sub(r"[^A-Z0-9]", "_", name.upper())


def is_upstreams_key(key: str) -> bool:
    """Whether a flag key (``section.key``) belongs here rather than to the settings table."""
    return key == SECTION or key.startswith(SECTION + ".")


def is_upstreams_env(name: str) -> bool:
    return name == ENV_LIST or name.startswith(ENV_PREFIX)


def parse_name(value: object) -> str:
    """An upstream's name: a registry host name (with a dot), or ``HOST:PORT`` for a registry
    images are named with its port (``registry.lab.example:5000/app``, as registry:2 is run),
    which containerd sends as ``?ns=HOST:PORT``. Such a name cannot be a path prefix (the
    repository grammar has no ``:``). Port 80 or 443 is refused: the name without it is the
    one, and ``?ns=`` with it picks that (``docxy.upstream.routing``)."""
    text = value.strip().lower() if isinstance(value, str) else ""
    host, colon, port = text.partition(":")
    if not _NAME.fullmatch(host) or len(host) > 253 or (colon and not _valid_port(port)):
        shown = redacted(value) if isinstance(value, str) else value  # a URL's user:password@
        raise ValueError(
            "expected a registry host name such as ghcr.io (lower case, with a dot), or "
            f"HOST:PORT (port 1-65535), got {shown!r}"
        )
    if colon and int(port) in (80, 443):
        raise ValueError(f"{text!r}: leave out port {port}, a default port: name it {host!r}")
    return text


def _valid_port(port: str) -> bool:
    return _PORT.fullmatch(port) is not None and int(port) < 65536


def parse_hosts(value: object) -> tuple[str, ...]:
    """An upstream's ``hosts``: a TOML list, or comma-separated (env, flags), where an empty
    item is skipped as in every such list, so an empty value is no hosts: it clears a lower
    layer's (``DOCXY_UPSTREAMS_GHCR_IO_HOSTS=``). An empty item in a TOML list is refused.
    A name's fully qualified spelling, ``ghcr.mirror.lan.``, is the name (kept without its dot),
    as a request's ``Host: ghcr.mirror.lan.`` is (``docxy.core.hosts.host_key``)."""
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, list | tuple):
        raise ValueError(f"expected a list of host names, got {value!r}")
    hosts = []
    for item in items:
        text = item.strip().lower() if isinstance(item, str) else ""
        if text == "" and isinstance(value, str):
            continue
        name, colon, port_text = text.partition(":")
        if name.endswith(".") and not name.startswith("["):  # one dot only: m.lan.. stays wrong
            text = name[:-1] + colon + port_text
        port = text.rpartition("]")[2].partition(":")[2]
        if not _HOST.fullmatch(text) or (port and not 0 < int(port) < 65536):
            shown = redacted(item) if isinstance(item, str) else item
            raise ValueError(f"expected HOST or HOST:PORT (port 1-65535), got {shown!r}")
        hosts.append(text)
    return tuple(hosts)


def _opt(value: object) -> str | None:
    if not isinstance(value, str):
        raise ValueError(f"expected a string, got {value!r}")
    return value.strip() or None


def _put(keys: Raw, name: str, key: str, value: object, source: str) -> None:
    """Record one layer's `key` of the upstream `name`; ``password_file`` as the password, in
    its file, as for ``[upstream]`` (:func:`docxy.config.put_secret`)."""
    if key == SECRET_FILE:
        key, value = SECRET, SecretFile(value)
    if key != SECRET:
        keys[key] = (value, source)
        return
    full, in_file = (
        f"{SECTION}.{name}.{SECRET}",
        f"{SECRET} and {SECRET_FILE} in [[upstreams]] {name}",
    )
    put_secret(keys, key, value, source, full=full, in_file=in_file)


PARSERS: dict[str, Any] = {
    "registry": parse_registry_url,
    "auth_realm": lambda v: parse_url(v) if _opt(v) else None,
    "library_prefix": parse_bool,
    "username": opt_credential,  # its type checked there: a password's value never shown
    "password": opt_credential,
    "hosts": parse_hosts,
    "ca_file": parse_ca_file,
    "ca_origins": parse_ca_origins,
}


def _list_entries(value: object, source: str) -> list[tuple[str, Raw]]:
    """``"a,b=URL"``, ``["a", {...}]`` → (name, keys given with the name)."""
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, list):
        raise ConfigError(f"{SECTION}: expected a list of upstreams ({source})")
    entries = []
    for item in items:
        if isinstance(item, str):
            if not item.strip():
                continue
            name_text, sep, url = item.partition("=")
            keys: Raw = {"registry": (url, source)} if sep else {}
            table: dict[Any, Any] = {}
        elif isinstance(item, dict):
            table = dict(item)
            name_text = table.pop("name", None)
            if name_text is None:
                raise ConfigError(f"{SECTION}: every [[upstreams]] needs a name ({source})")
            for key in table:
                if key not in GIVEN_KEYS:
                    raise ConfigError(f"{SECTION}.{name_text}.{key}: unknown key ({source})")
            keys = {}
        else:
            raise ConfigError(f"{SECTION}: expected names or tables, got {item!r} ({source})")
        try:
            name = parse_name(name_text)
        except ValueError as exc:
            raise ConfigError(f"{SECTION}: {exc} ({source})") from None
        for key, raw in table.items():
            _put(keys, name, key, raw, source)
        entries.append((name, keys))
    return entries


def load_upstreams(
    file_value: object | None,
    file_source: str,
    environ: Mapping[str, str],
    flags: Mapping[str, object],
) -> tuple[tuple[NamedUpstreamConfig, ...], dict[str, str]]:
    """The configured upstreams (``[upstream]`` not included) and each key's source."""
    layers: list[tuple[object, str]] = []
    if file_value is not None:
        layers.append((file_value, file_source))
    if ENV_LIST in environ:
        layers.append((environ[ENV_LIST], f"env {ENV_LIST}"))
    if SECTION in flags:
        layers.append((flags[SECTION], "flag"))
    known: dict[str, Raw] = {}  # every name in some layer's list, its keys from them all
    names: list[str] = []
    listed_by = ""  # the source of the list that decides
    for value, source in layers:  # the highest layer with a list decides which are on
        entries = _list_entries(value, source)
        layer: dict[str, Raw] = {}
        for listed, keys in entries:
            if listed in layer:  # a copied table not renamed: merged, one's login went to
                raise ConfigError(  # the other's registry
                    f"{SECTION}: {listed!r} is listed twice ({source}): give each upstream "
                    "a name of its own (names are compared without case)"
                )
            merged = layer.setdefault(listed, {})
            for key, (raw, given) in keys.items():
                _put(merged, listed, key, raw, given)
        for listed, keys in layer.items():
            known[listed] = known.get(listed, {}) | keys  # a higher layer's key wins
        names = [listed for listed, _ in entries]
        listed_by = source
    # A layer between whose list left a name out does not drop what the layers below say of
    # it: a file's registry URL still counts when a flag's list names it again.
    enabled: dict[str, Raw] = {listed: known[listed] for listed in names}
    mentioned = set(known)  # its keys are known, maybe unused
    by_id: dict[str, str] = {}
    for mentioned_name in sorted(mentioned):
        other = by_id.setdefault(env_id(mentioned_name), mentioned_name)
        if other != mentioned_name:  # their DOCXY_UPSTREAMS_<ID>_* variables would be shared
            raise ConfigError(
                f"{SECTION}: {other!r} and {mentioned_name!r} share the environment name "
                f"DOCXY_UPSTREAMS_{env_id(mentioned_name)}_*: rename one"
            )
    for over in (_env_layer(environ, by_id, enabled), _flag_layer(flags, mentioned, enabled)):
        for name, keys in over.items():
            enabled[name] |= keys
    upstreams, sources = [], {}
    for name, keys in enabled.items():
        built = _build(name, keys, listed_by)
        if built is not None:
            upstreams.append(built)
            sources.update({f"{SECTION}.{name}.{k}": s for k, (_, s) in keys.items()})
    _check_hosts(upstreams, sources)
    return tuple(upstreams), sources


def _env_layer(
    environ: Mapping[str, str], by_id: Mapping[str, str], enabled: Mapping[str, Raw]
) -> dict[str, Raw]:
    """The enabled upstreams' keys that ``DOCXY_UPSTREAMS_<ID>_<KEY>`` variables give."""
    layer: dict[str, Raw] = {}
    for var, value in environ.items():
        if var == ENV_LIST or not var.startswith(ENV_PREFIX):
            continue
        rest = var[len(ENV_PREFIX) :]
        key = next((k for k in GIVEN_KEYS if rest.endswith("_" + k.upper())), None)
        name = by_id.get(rest[: -len(key) - 1]) if key else None
        if key is None or name is None:
            raise ConfigError(
                f"{var}: unknown variable (env {var}): expected DOCXY_UPSTREAMS_<ID>_<KEY> for "
                f"an enabled upstream ({', '.join(sorted(by_id)) or 'none enabled'}), "
                f"KEY one of {', '.join(k.upper() for k in GIVEN_KEYS)}"
            )
        if name in enabled:
            _put(layer.setdefault(name, {}), name, key, value, f"env {var}")
    return layer


def _flag_layer(
    flags: Mapping[str, object], mentioned: set[str], enabled: Mapping[str, Raw]
) -> dict[str, Raw]:
    """The enabled upstreams' keys that ``--set upstreams.<name>.<key>=`` flags give."""
    layer: dict[str, Raw] = {}
    for flag, value in flags.items():
        if flag == SECTION:
            continue
        name, _, key = flag[len(SECTION) + 1 :].rpartition(".")
        if name not in mentioned or key not in GIVEN_KEYS:
            raise ConfigError(f"{flag}: unknown key (flag): upstreams.<enabled name>.<key>")
        if name in enabled:
            _put(layer.setdefault(name, {}), name, key, value, "flag")
    return layer


def _build(name: str, keys: Raw, listed: str) -> NamedUpstreamConfig | None:
    """The upstream `name` from its `keys`; `listed`: the source of the list that enabled it."""
    preset = PRESETS.get(name)
    if name == DEFAULT_NAME:
        if keys:
            key, (_, source) = next(iter(keys.items()))
            raise ConfigError(
                f"{SECTION}.{name}.{key}: Docker Hub is configured under [upstream] ({source})"
            )
        return None  # [upstream] itself
    values: dict[str, Any] = {
        "registry": preset.registry if preset else None,
        "auth_realm": None,
        "library_prefix": preset.library_prefix if preset else False,
        "username": None,
        "password": None,
        "hosts": (),
        "ca_file": None,
        "ca_origins": (),
    }
    for key, (raw, source) in keys.items():
        if isinstance(raw, SecretFile):
            try:
                raw = raw.read()  # its errors name the file, never what is in it
            except ValueError as exc:
                raise ConfigError(f"{SECTION}.{name}.{key}: {exc} ({source})") from None
        try:
            values[key] = PARSERS[key](raw)
        except ValueError as exc:
            shown = exc if key != SECRET or isinstance(exc, Unechoed) else "(hidden)"
            raise ConfigError(f"{SECTION}.{name}.{key}: {shown} ({source})") from None
    if values["registry"] is None:
        raise ConfigError(
            f"{SECTION}.{name}.registry: required: {name} is not a preset "
            f"({', '.join(sorted(PRESETS))}) ({listed})"
        )
    if (values["username"] is None) != (values["password"] is None):
        # Name both: the one set, and the one missing (maybe emptied by a higher layer).
        have, lack = ("username", SECRET) if values["password"] is None else (SECRET, "username")
        lacking = keys.get(lack, (None, "default"))[1]
        raise ConfigError(
            f"{SECTION}.{name}.username: username and password go together ({keys[have][1]}); "
            f"{SECTION}.{name}.{lack} is not set ({lacking})"
        )
    if values["ca_origins"] and values["ca_file"] is None:
        source = keys["ca_origins"][1]
        raise ConfigError(f"{SECTION}.{name}.ca_origins: {CA_ORIGINS_ALONE} ({source})")
    return NamedUpstreamConfig(name=name, **values)


def _check_hosts(upstreams: list[NamedUpstreamConfig], sources: Mapping[str, str]) -> None:
    """Refuse a mirror host name claimed twice, however written: ``x``, ``x:443`` and
    ``x:80`` are one host (``docxy.core.hosts``)."""
    owner: dict[str, str] = {}
    for upstream in upstreams:
        for host in upstream.hosts:
            compared = host_key(host)[0]
            if compared in owner:
                key = f"{SECTION}.{upstream.name}.hosts"
                said = host if host == compared else f"{host} (the host {compared})"
                raise ConfigError(
                    f"{key}: {said} already picks {owner[compared]} ({sources.get(key, '?')})"
                )
            owner[compared] = upstream.name


class SharedHost(NamedTuple):
    """An upstream (``later``, its ``registry``) on the registry ``host`` of an ``earlier``
    one, and how their settings differ (``[]``: the same upstream under two names)."""

    earlier: str
    later: str
    registry: str
    host: str
    differences: list[str]


def same_registry_host(config: Config) -> Iterator[SharedHost]:
    """Every upstream whose registry host an earlier one has, ``[upstream]`` included. The
    mirror keys cache entries, tokens, refusals, realms and health by that host
    (``Upstream.host``): such upstreams share all of them."""
    first: dict[str, tuple[str, AnyUpstream]] = {}
    sections: list[tuple[str, AnyUpstream]] = [("[upstream]", config.upstream)]
    sections += [(f"{SECTION}.{u.name}", u) for u in config.upstreams]
    for section, upstream in sections:
        host = url_host(upstream.registry)
        earlier, other = first.setdefault(host, (section, upstream))
        if earlier != section:
            differences = _differences(other, upstream)
            yield SharedHost(earlier, section, upstream.registry, host, differences)


def _differences(a: AnyUpstream, b: AnyUpstream) -> list[str]:
    found = []
    if a.registry != b.registry:
        found.append("another registry URL")
    if a.auth_realm != b.auth_realm:
        found.append("another auth_realm")
    if (a.username, a.password) != (b.username, b.password):
        found.append("another login")
    if a.ca_file != b.ca_file:  # trusted per origin (UpstreamTrust): one for the host
        found.append("another ca_file")
    if _origins(a) != _origins(b):  # where it is trusted too: one list per host
        found.append("other ca_origins")
    return found


def _origins(upstream: AnyUpstream) -> set[TrustOrigin | None]:
    """``ca_origins`` as the trust keys them: ``bücher.example`` and ``xn--bcher-kva.example``
    are one origin there, so two names of one upstream may spell it either way."""
    return {origin_of(url) for url in upstream.ca_origins}


def check_registry_hosts(config: Config) -> None:
    """Refuse two upstreams on one registry host unless they are the same upstream (registry
    URL, auth_realm, login, ca_file and ca_origins alike), which sharing cannot harm."""
    for shared in same_registry_host(config):
        if shared.differences:
            key = f"{shared.later}.registry"
            raise ConfigError(
                f"{key}: {shared.registry} has the registry host {shared.host} of "
                f"{shared.earlier}, with {' and '.join(shared.differences)}: the mirror keys "
                f"its cache, tokens, refusals and health by that host, so the two would share "
                f"them; "
                f"configure each registry once ({config.sources.get(key, 'preset')})"
            )


def describe_upstreams(
    upstreams: tuple[NamedUpstreamConfig, ...], sources: Mapping[str, str]
) -> list[tuple[str, str, str]]:
    """(key, shown value, source) per upstream key, password hidden (``--show-config``)."""
    rows = []
    for upstream in upstreams:
        for key in KEYS:
            value = getattr(upstream, key)
            full = f"{SECTION}.{upstream.name}.{key}"
            if key == SECRET:
                value = "(set)" if value else None
            text = shown(f"{SECTION}.{key}", value)  # (discovered) for auth_realm, as upstream's
            default = "preset" if upstream.name in PRESETS and key in PRESET_KEYS else "default"
            rows.append((full, text, sources.get(full, default)))
    return rows
