"""Docxy's settings: one frozen dataclass.

Loaded from flags > env ``DOCXY_<SECTION>_<KEY>`` > a TOML file > defaults.

Every value remembers where it came from, so a bad one stops start-up with a single line that
names the key and its source: ``upstream.registry: not an http(s) URL: 'ftp://x' (env
DOCXY_UPSTREAM_REGISTRY)``. Unknown keys in the TOML file and unknown ``DOCXY_*`` variables are
errors, not silently dropped: every ``DOCXY_*`` variable is a setting, an alias, or one of the
few documented :data:`OTHER_ENV` variables.

A secret setting (:data:`SECRET_KEYS`) may instead name a file that holds it, in any layer:
``DOCXY_UPSTREAM_PASSWORD_FILE``, ``[upstream] password_file``, ``--set upstream.password_file``
(:data:`SECRET_FILE_KEYS`), so that compose ``secrets:`` keep it out of ``docker inspect``.

The renewer (``python -m scheduler``) reads the same table: its settings are ``[scheduler]``.
Those and ``certs.email`` are the renewer's alone (:func:`renewer_only`): one that is wrong stops
the renewer (``load_config(renewer=True)``), while the mirror and docxy's other commands load
with its default and keep the refusal in :attr:`Config.renewer_errors`, for ``docxy serve`` to
log and ``docxy certs obtain``/``renew`` (which run certbot with ``certs.email``) to refuse.
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
import shlex
import ssl
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from docxy.core.cidr import Networks, parse_networks
from docxy.core.durations import parse_duration
from docxy.core.errors import ConfigError
from docxy.core.forwarded import HEADERS as FORWARDED_HEADERS
from docxy.core.hosts import canonical_url
from docxy.core.rules import Patterns, RepositoryRules, parse_patterns
from docxy.shared.keys import parse_bucket, parse_prefix


@dataclass(frozen=True, slots=True)
class HostPort:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @property
    def is_wildcard(self) -> bool:
        return self.host in ("", "0.0.0.0", "::")

    @property
    def is_loopback(self) -> bool:
        """Reachable from this host only (``127.0.0.0/8``, ``::1``, ``localhost``)."""
        return loopback_host(self.host)


def loopback_host(host: str) -> bool:
    """``localhost`` or a loopback address: only this host reaches it."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # another host name: it may resolve to anything


@dataclass(frozen=True, slots=True)
class ServerConfig:
    listen: HostPort
    tls_listen: HostPort | None
    public_url: str
    admin_listen: HostPort | None  # /metrics and /status (docxy.observe); None: off
    admin_hosts: tuple[str, ...] = ()  # more Host names the admin listener answers
    trusted_proxies: Networks = Networks()  # peers whose forwarded_header names the client
    forwarded_header: str = "x-forwarded-for"


@dataclass(frozen=True, slots=True)
class TlsConfig:
    cert_path: Path | None
    key_path: Path | None


@dataclass(frozen=True, slots=True)
class CaFile:
    """An upstream's ``ca_file``: the PEM certificates of the CAs its connections trust
    besides certifi's (``docxy.upstream.trust.UpstreamTrust``), read and checked at start-up.
    Shown as its path, compared as its path and certificates; never a secret (a CA's
    certificate is public)."""

    path: Path
    pem: str = field(repr=False)  # the file's certificate blocks alone, one after another
    count: int  # how many
    keys: int = 0  # private key blocks the file holds too, left out (told at start, never shown)

    def __str__(self) -> str:
        return str(self.path)


@dataclass(frozen=True, slots=True)
class UpstreamConfig:
    registry: str
    auth_realm: str | None
    library_prefix: bool
    username: str | None = field(repr=False)
    password: str | None = field(repr=False)
    connect_timeout: float
    read_timeout: float
    ca_file: CaFile | None = None  # CAs trusted besides certifi's on its origins
    ca_origins: tuple[str, ...] = ()  # more origins its ca_file is trusted for: its storage


@dataclass(frozen=True, slots=True)
class NamedUpstreamConfig:
    """One of ``upstreams`` beside ``[upstream]`` (parsed by ``docxy.upstream.settings``)."""

    name: str  # the path prefix and containerd's ?ns= that pick it: ghcr.io
    registry: str
    auth_realm: str | None
    library_prefix: bool
    username: str | None = field(repr=False)
    password: str | None = field(repr=False)
    hosts: tuple[str, ...]  # mirror host names (HOST or HOST:PORT) that pick it
    ca_file: CaFile | None = None  # CAs trusted besides certifi's on its origins
    ca_origins: tuple[str, ...] = ()  # more origins its ca_file is trusted for: its storage


@dataclass(frozen=True, slots=True)
class CacheConfig:
    enabled: bool
    dir: Path
    max_size: int
    tag_ttl: float
    room_wait: float = 30.0  # seconds a download short of room waits for it, then passes through
    direct_writes: bool = True  # a fill writes whole blocks past the page cache (see fill.py)


@dataclass(frozen=True, slots=True)
class SharedConfig:
    """The shared tier (``docxy.shared``): blobs in an S3-compatible bucket for every replica.
    Off while ``endpoint`` is None."""

    endpoint: str | None = None
    bucket: str | None = None
    region: str = "us-east-1"
    access_key: str | None = None
    secret_key: str | None = field(default=None, repr=False)
    prefix: str = "docxy"
    uploads: int = 2  # uploads at once; 0: none, a replica that only reads the bucket

    @property
    def read_only(self) -> bool:
        """The replica reads the bucket and never writes to it (``uploads = 0``: a key that
        may only read, given on purpose)."""
        return self.uploads == 0

    @property
    def enabled(self) -> bool:
        return self.endpoint is not None


@dataclass(frozen=True, slots=True)
class CertsConfig:
    domain: str | None
    email: str | None
    acme_server: str | None
    ca_bundle: Path | None
    webroot: Path | None
    config_dir: Path | None


@dataclass(frozen=True, slots=True)
class LogConfig:
    level: str


@dataclass(frozen=True, slots=True)
class SchedulerConfig:
    """The certificate renewer's own settings (``python -m scheduler``)."""

    hour: int | None  # first daily run's hour, 0-11 (the second is 12 hours later); None: random
    minute: int | None  # the daily runs' minute, 0-59; None: random
    interval: float | None  # run every N seconds instead of twice a day (tests)
    retry_base: float
    retry_max: float
    certbot_timeout: float
    pidfile: Path | None
    reload_command: str | None
    deploy_hook: str | None
    wait_for_mirror: bool


@dataclass(frozen=True, slots=True)
class AccessConfig:
    """Who may use the mirror, and for what (``docxy.edge.admission``)."""

    allow: Networks  # client networks served; empty: everyone
    repositories: Patterns  # repository patterns served; empty: all
    deny_repositories: Patterns

    @property
    def rules(self) -> RepositoryRules:
        return RepositoryRules(self.repositories, self.deny_repositories)


@dataclass(frozen=True, slots=True)
class LimitsConfig:
    """Connection limits (``docxy.edge.connections``), per-client ones (``docxy.edge.admission``).

    A rate, count or size of 0 is off.
    """

    max_connections: int
    connections_per_client: int  # open connections from one address (IPv6: its /64)
    backlog: int
    idle_timeout: float
    send_timeout: float
    #: bytes a second a client must take over each send_timeout the mirror waits on it (0: off)
    send_min_rate: int
    requests_per_minute: int
    manifests_per_minute: int
    failed_logins_per_minute: int  # wrong passwords per client: own, relayed, passed through
    token_relays_per_minute: int  # /v2/ and /auth/token asked upstream per address (edge.relays)
    bandwidth: int  # bytes a second per client
    fills_per_client: int
    fills_total: int
    h2_max_streams: int  # requests at once on one HTTP/2 (h2c) connection; 0: h2c refused
    #: client networks the per-client limits spare (a NAT-ed office, a CI farm): see
    #: ``docxy.edge.admission``; the global caps, the allow list and failed logins still apply
    exempt: Networks = Networks()


@dataclass(frozen=True, slots=True)
class AuthConfig:
    """Who may use the mirror (``docxy.access``)."""

    mode: str  # "open": anyone; "users": the mirror's own users, tokens and client certificates
    dir: Path  # token signing keys, the client CA and its list (the certificate volume)
    users_file: Path
    token_ttl: int  # seconds a token the mirror issues is valid
    key_grace: float  # seconds the previous signing key still verifies after a rotation
    client_certs: bool  # ask TLS clients for a certificate from the mirror's CA
    upstream_logins: bool  # users mode: a client's own Docker Hub login may pass through
    allow_plain_http: bool  # users mode may take passwords over plain HTTP off loopback


@dataclass(frozen=True, slots=True)
class Config:
    server: ServerConfig
    tls: TlsConfig
    upstream: UpstreamConfig
    cache: CacheConfig
    certs: CertsConfig
    log: LogConfig
    scheduler: SchedulerConfig
    access: AccessConfig
    limits: LimitsConfig
    auth: AuthConfig
    sources: Mapping[str, str] = field(default_factory=dict, compare=False, repr=False)
    upstreams: tuple[NamedUpstreamConfig, ...] = ()  # more registries beside [upstream]
    shared: SharedConfig = SharedConfig()  # off
    #: (key, one-line refusal) of each renewer-only setting (:func:`renewer_only`) that was
    #: wrong and stands at its default here: the renewer refuses it (and schedules no run).
    renewer_errors: tuple[tuple[str, str], ...] = field(default=(), compare=False)


def renewer_only(key: str) -> bool:
    """Whether `key` is read by the renewer alone (``[scheduler]``, ``certs.email``): a bad
    one stopped the mirror and every ``docxy`` command too, for a setting none of them uses."""
    return key.startswith("scheduler.") or key == "certs.email"


#: Renewer-only settings the renewer starts with all the same, each run failing while one is
#: wrong (``scheduler.settings.Settings.refused``): a renewer that stopped at start took the
#: appliance down with it (supervisord's FATAL), where certbot alone used to refuse a run.
RUN_REFUSES = frozenset({"certs.email"})


def renewer_refuses(key: str) -> str:
    """What ``docxy serve`` says of a renewer-only setting it set aside."""
    if key in RUN_REFUSES:
        return (
            "every certificate renewal fails with it until it is mended (the failures counted"
            " on /health, the reason on the admin /status.json)"
        )
    return (
        "the renewer (python -m scheduler) schedules no renewal with it until it is mended: it"
        " reads its config file again every minute and on SIGHUP (a mended environment"
        " variable needs it started with the new environment: in the container docker compose"
        " up -d); /health is degraded with renewal.refused, the reason"
        " on the admin /status.json; the mirror itself goes on"
    )


# --- value parsers: each takes the raw value (str from env/flags, any TOML type) -------------


def _str(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected a string, got {value!r}")
    return value


def parse_bool(value: object) -> bool:
    return _bool(value)


def _opt_str(value: object) -> str | None:
    text = _str(value).strip()
    return text or None


def _bool(value: object) -> bool:
    if isinstance(value, bool):
        return value
    text = _str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"expected true or false, got {value!r}")


def parse_seconds(value: object) -> float:
    """A duration above 0, as every timeout setting takes it: a number of seconds, or one with
    a unit, ``30s``, ``5m``, ``2h``, ``7d`` (:func:`docxy.core.durations.parse_duration`,
    ``ValueError``)."""
    return parse_duration(value)


#: The longest the renewer waits between runs (``scheduler.interval``, ``retry_base``,
#: ``retry_max``): certbot renews a Let's Encrypt certificate in its last 30 days, so a longer
#: wait can let one expire. Far longer ones overflowed its date arithmetic: it died at each start.
RENEWER_WAIT_MAX = 30 * 24 * 3600.0
#: The longest ``scheduler.certbot_timeout``: one of a month overflowed the wait on the run's
#: process, and every run raised instead of failing, so none was counted, retried or reported.
CERTBOT_TIMEOUT_MAX = 24 * 3600.0


def _seconds_at_most(limit: float, what: str) -> Callable[[object], float]:
    """A parser of a duration above 0 and at most `limit` seconds (`what` says why)."""

    def parse(value: object) -> float:
        return parse_duration(value, most=limit, why=what)

    return parse


_renewer_wait = _seconds_at_most(RENEWER_WAIT_MAX, "30 days")


def _opt_interval(value: object) -> float | None:
    """A duration, or None when empty or 0 (off); at most :data:`RENEWER_WAIT_MAX`."""
    if isinstance(value, str) and not value.strip():
        return None
    return parse_duration(value, zero=True, most=RENEWER_WAIT_MAX, why="30 days") or None


def _opt_command(value: object) -> str | None:
    """A command line as the renewer splits it (``shlex``, no shell), or None when empty: one
    it cannot split (an unclosed quote) failed every run with shlex's words alone."""
    text = _opt_str(value)
    if text is not None:
        try:
            shlex.split(text)
        except ValueError as exc:  # "No closing quotation", "No escaped character"
            # Not the text: it may hold a password (supervisorctl -p), and this reaches the log.
            raise ValueError(f"not a command line the renewer can split: {exc}") from None
    return text


def _opt_int_in(low: int, high: int) -> Callable[[object], int | None]:
    """A parser of an optional whole number in ``[low, high]``; out of range is an error."""

    def parse(value: object) -> int | None:
        if isinstance(value, str) and not value.strip():
            return None
        if isinstance(value, int) and not isinstance(value, bool):
            number = value
        elif isinstance(value, str) and re.fullmatch(r"\s*\d{1,6}\s*", value):
            number = int(value)
        else:
            raise ValueError(f"expected a whole number {low}-{high}, got {value!r}")
        if not low <= number <= high:
            raise ValueError(f"expected a whole number {low}-{high}, got {value!r}")
        return number

    return parse


_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([KMGT]?)(i?B?)?", re.IGNORECASE)


def parse_size(value: object) -> int:
    """``"20G"``, ``"512MiB"``, ``1048576`` → bytes (binary multiples)."""
    if isinstance(value, int | float) and not isinstance(value, bool):  # a TOML number: bytes
        if isinstance(value, int) and value > 0:
            return value
        if isinstance(value, float) and math.isfinite(value) and value.is_integer() and value > 0:
            return int(value)
        raise ValueError(f"expected a size such as 20G or 512M, or bytes above 0, got {value!r}")
    match = _SIZE.fullmatch(_str(value).strip())
    if match is None:
        raise ValueError(f"expected a size such as 20G or 512M, got {value!r}")
    number, unit = float(match.group(1)), match.group(2).upper()
    if not unit and (match.group(3) or "").lower().startswith("i"):  # "1iB": no multiple named
        raise ValueError(f"expected a size such as 20G or 512M, got {value!r}")
    scaled = number * 1024 ** "_KMGT".index(unit or "_")
    if not math.isfinite(scaled):
        raise ValueError(f"size out of range: {value!r}")
    size = int(scaled)
    if size <= 0:
        raise ValueError(f"expected a positive size, got {value!r}")
    return size


def _int_in(low: int, high: int) -> Callable[[object], int]:
    """A parser of a whole number in ``[low, high]``."""
    optional = _opt_int_in(low, high)

    def parse(value: object) -> int:
        number = optional(value)
        if number is None:
            raise ValueError(f"expected a whole number {low}-{high}, got {value!r}")
        return number

    return parse


def _count(value: object) -> int:
    """A whole number >= 0 (0: off)."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    if isinstance(value, str) and re.fullmatch(r"\s*\d{1,9}\s*", value):
        return int(value)
    raise ValueError(f"expected a whole number >= 0, got {value!r}")


def _opt_size(value: object) -> int:
    """A size such as ``10M``, or 0 / empty for off."""
    if value in (0, "0") or (isinstance(value, str) and not value.strip()):
        return 0
    return parse_size(value)


def _no_empty_item(value: object, what: str) -> None:
    """Refuse an empty item of a TOML list: ``allow = [""]`` (filled from an empty template
    variable) read as no list at all, everyone served. A comma-separated string (env, flags)
    may still be empty, or end in a comma."""
    if isinstance(value, list) and any(isinstance(i, str) and not i.strip() for i in value):
        raise ValueError(f"an empty item in the list of {what}: {value!r}")


def _networks(value: object) -> Networks:
    if not isinstance(value, str | list):
        raise ValueError(f"expected a list of networks, got {value!r}")
    _no_empty_item(value, "networks")
    return parse_networks(value)


def _patterns(value: object) -> Patterns:
    if not isinstance(value, str | list):
        raise ValueError(f"expected a list of repository patterns, got {value!r}")
    _no_empty_item(value, "repository patterns")
    return parse_patterns(value)


_HOST_NAME = re.compile(r"[a-z0-9_](?:[a-z0-9_.-]*[a-z0-9_])?")


def _host_names(value: object) -> tuple[str, ...]:
    """Host names without a port (``docxy``, ``metrics.lan``): a comma-separated string (env,
    flags) or a TOML list; matched without case, exactly (no wildcards)."""
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, list):
        raise ValueError(f"expected a list of host names, got {value!r}")
    names = []
    for item in items:
        text = item.strip().lower() if isinstance(item, str) else None
        if text == "" and isinstance(value, str):
            continue
        if text is None or len(text) > 253 or not _HOST_NAME.fullmatch(text):
            raise ValueError(
                f"expected host names without a port, such as docxy or metrics.lan, got {item!r}"
            )
        names.append(text)
    return tuple(names)


_DNS_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_DNS_NAME = re.compile(rf"{_DNS_LABEL}(?:\.{_DNS_LABEL})*")


def _opt_domain(value: object) -> str | None:
    """``certs.domain``: the DNS name the certificate is for, and the host of the public URL
    derived from it (``https://<domain>``). A URL, a port or a space there was taken, and only
    certbot (or a client given that URL) refused it, after start."""
    text = _opt_str(value)
    if text is not None and (len(text) > 253 or not _DNS_NAME.fullmatch(text)):
        raise ValueError(
            f"expected the mirror's DNS name, such as mirror.example.com (no scheme, port or "
            f"path), got {text!r}"
        )
    return text


_EMAIL_LOCAL = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*")


def _opt_email(value: object) -> str | None:
    """``certs.email``: the ACME account's contact, one address or several comma-separated
    (as certbot's ``--email`` takes them): each a plain ``local@domain``, the domain a DNS name
    with a dot. Taken as any text, a typo (``ops at example.com``, ``mailto:``, ``ops@host``)
    was refused by certbot, or the CA, only when the renewer first obtained a certificate."""
    text = _opt_str(value)
    if text is None:
        return None
    for address in text.split(","):
        local, at, domain = address.strip().rpartition("@")
        if (
            not at
            or not _EMAIL_LOCAL.fullmatch(local)
            or "." not in domain
            or len(domain) > 253
            or not _DNS_NAME.fullmatch(domain)
        ):
            raise ValueError(
                f"expected an e-mail address such as ops@example.com (several: comma-separated), "
                f"got {text!r}"
            )
    return text


def _forwarded_header(value: object) -> str:
    text = _str(value).strip().lower()
    if text not in FORWARDED_HEADERS:
        raise ValueError(f"expected {' or '.join(FORWARDED_HEADERS)}, got {value!r}")
    return text


def parse_host_port(value: object) -> HostPort:
    text = _str(value).strip()
    match = re.fullmatch(r"\[([0-9a-fA-F:.]+)\]:(\d+)|([^:\[\]]*):(\d+)", text)
    if match is None:
        raise ValueError(f"expected HOST:PORT (IPv6 as [::1]:PORT), got {value!r}")
    host = match.group(1) if match.group(1) is not None else match.group(3)
    port = int(match.group(2) or match.group(4))
    if not 0 < port < 65536:
        raise ValueError(f"port out of range in {value!r}")
    if not _bindable_host(host, bracketed=match.group(1) is not None):
        # Taken here, it failed only at bind, once start-up was under way.
        raise ValueError(
            f"expected HOST:PORT with HOST an IP address or host name (IPv6 as [::1]:PORT; "
            f"none for every address), got {value!r}"
        )
    return HostPort(host, port)


_LISTEN_LABEL = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?")


def _bindable_host(host: str, *, bracketed: bool) -> bool:
    """Whether a listener's `host` can be bound: none (every address), an IPv4 address, an
    IPv6 one in brackets, or a host name (labels of letters, digits, ``-`` and ``_``, the last
    one not all digits: ``999.1.1.1`` is no address and no name)."""
    if bracketed:
        try:
            return ipaddress.ip_address(host).version == 6
        except ValueError:
            return False
    if host == "":
        return True
    try:
        return ipaddress.ip_address(host).version == 4
    except ValueError:
        pass
    labels = host.removesuffix(".").split(".")
    return (
        len(host) <= 253
        and all(_LISTEN_LABEL.fullmatch(label) for label in labels)
        and not labels[-1].isdigit()
    )


def _opt_host_port(value: object) -> HostPort | None:
    return parse_host_port(value) if _opt_str(value) else None


def redacted(text: str) -> str:
    """``text`` with any ``user:password@`` userinfo hidden, for error messages: all from the
    scheme (and its slashes, if any) up to the last ``@``. A password may hold a ``#``, ``/``,
    ``?`` or a space, and a mistyped URL may lack the ``//`` (``https:alice:pw@host``): the
    URL is wrong then, and the message must still not show it. A query or fragment is hidden
    too (from its ``?`` or ``#`` on): a token service's link with the account in it, a
    presigned URL's ``X-Amz-Signature``, an ``#access_token=`` are credentials as well."""
    if "@" in text:
        head, _, tail = text.rpartition("@")
        scheme = re.match(r"\s*[A-Za-z][A-Za-z0-9+.-]*:/*", head)
        text = f"{scheme.group() if scheme else ''}(credentials hidden)@{tail}"
    cut = re.search(r"[?#]", text)
    return text if cut is None else f"{text[: cut.start() + 1]}({QUERY_HIDDEN})"


#: What :func:`redacted` shows for a URL's query or fragment.
QUERY_HIDDEN = "hidden"


def parse_url(value: object) -> str:
    text = _str(value).strip().rstrip("/")
    shown = repr(redacted(text))
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname or re.search(r"\s", text):
        raise ValueError(f"not an http(s) URL: {shown}")
    if parts.query or parts.fragment or parts.username or parts.password:
        raise ValueError(f"URL must not carry a query, fragment or credentials: {shown}")
    try:
        parts.port  # noqa: B018 - validates the port
    except ValueError:
        raise ValueError(f"bad port in URL {shown}") from None
    url = canonical_url(text)  # https://GHCR.io.:443 is https://ghcr.io (docxy.core.hosts)
    host = urlsplit(url).hostname or ""
    if not host or host.endswith(".") or ".." in host or host.startswith("."):
        raise ValueError(f"not an http(s) URL: {shown}")
    return url


def parse_registry_url(value: object) -> str:
    """An upstream registry's root URL: the mirror asks ``<registry>/v2/...``, so the API's own
    ``/v2`` there (copied from a curl command) would make every request ``/v2/v2/...``, a
    ``404`` that looks like a missing image. Another path (a registry under a prefix) is kept."""
    url = parse_url(value)
    if urlsplit(url).path.lower().endswith("/v2"):
        raise ValueError(f"expected the registry's root URL, without /v2: {url[:-3]!r}")
    return url


def _opt_url(value: object) -> str | None:
    return parse_url(value) if _opt_str(value) else None


def _opt_public_url(value: object) -> str | None:
    """``server.public_url``: the mirror's root, ``http(s)://HOST[:PORT]``. It serves ``/v2/``
    and ``/auth/token`` at its root, dockerd refuses a registry mirror with a path, and the
    realm and the HTTPS redirect are built by appending to it: a path would name neither."""
    url = _opt_url(value)
    if url is not None and urlsplit(url).path:
        raise ValueError(f"expected the mirror's root, http(s)://HOST[:PORT] (no path): {url!r}")
    return url


def _path(value: object) -> Path:
    text = _str(value)
    if "\0" in text:  # os.access and open raised ValueError on it: a traceback at start-up
        raise ValueError(f"a path cannot hold a NUL byte (\\0), got {value!r}")
    try:
        return Path(text).expanduser()
    except RuntimeError:  # ~name of no user here (or ~ with no home): it raised, a traceback
        home = text.split("/", 1)[0]
        raise ValueError(
            f"cannot expand {home}: no home directory for it on this system; write the full "
            f"path, got {value!r}"
        ) from None


def _opt_path(value: object) -> Path | None:
    return _path(value) if _opt_str(value) else None


#: More than a CA bundle would ever be (certifi's whole store is under 300 KiB): a log or an
#: image named by mistake.
CA_FILE_MAX = 4 * 1024 * 1024
_PEM_CERTIFICATE = re.compile(
    rb"-----BEGIN CERTIFICATE-----\r?\n[A-Za-z0-9+/=\s]*?-----END CERTIFICATE-----"
)
_PEM_PRIVATE_KEY = re.compile(rb"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----")


def read_ca_file(path: Path) -> CaFile:
    """The CA certificates in the PEM file `path` (text around and between them, such as
    ``# Issuer:`` comments, is left out; so is a private key, only counted). ``ValueError``
    naming `path` if it cannot be read or holds no certificate OpenSSL takes."""
    data = _read_at_most(path, CA_FILE_MAX)
    if len(data) > CA_FILE_MAX:
        raise ValueError(f"{path} is over {CA_FILE_MAX // (1024 * 1024)} MiB: not a CA file")
    blocks = [block.decode("ascii") for block in _PEM_CERTIFICATE.findall(data)]
    if not blocks:
        raise ValueError(
            f"no PEM certificate in {path} (expected one or more -----BEGIN CERTIFICATE----- "
            "blocks: the CA's certificate, not a key nor DER)"
        )
    pem = "\n".join(blocks) + "\n"
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cadata=pem)
    except ssl.SSLError as exc:
        reason = exc.reason or exc.strerror or type(exc).__name__
        raise ValueError(f"a certificate in {path} cannot be read: {reason}") from None
    return CaFile(path, pem, len(blocks), len(_PEM_PRIVATE_KEY.findall(data)))


#: Why ``ca_origins`` without ``ca_file`` stops start-up: it would trust nothing more.
CA_ORIGINS_ALONE = "needs the upstream's ca_file: ca_origins names where its CAs are trusted too"


def parse_ca_file(value: object) -> CaFile | None:
    """An upstream's ``ca_file``: a path, read now (:func:`read_ca_file`); empty: none."""
    return read_ca_file(_path(value)) if _opt_str(value) else None


def parse_ca_origins(value: object) -> tuple[str, ...]:
    """An upstream's ``ca_origins``: origins (``https://HOST[:PORT]``) its ``ca_file`` is trusted
    for besides its registry's and token service's, such as the storage its blobs redirect to.
    A comma-separated string (env, flags) or a TOML list; each as :func:`parse_url` keeps a URL
    (``https://Store.lab:443`` is ``https://store.lab``). Only an origin: https (a CA file
    vouches for TLS alone), a port that can be connected to, no path, and no ``@``, ``?`` or
    ``#`` even with nothing after it. An entry with an ``@`` (a user, maybe a password, which
    may even hold the comma a list is split at) or one that is not a string is not shown."""
    if isinstance(value, str):
        if "@" in value:
            raise ValueError(ORIGIN_WITH_USER)
        items: list[object] = [item for item in value.split(",") if item.strip()]
    elif isinstance(value, list | tuple):
        items = list(value)
    else:
        raise ValueError(f"expected a list of origins such as {ORIGIN_FORM}, got a {_kind(value)}")
    origins = []
    for item in items:
        if not isinstance(item, str):
            raise ValueError(f"expected each origin as a string, got a {_kind(item)}")
        if "@" in item:
            raise ValueError(ORIGIN_WITH_USER)
        url = parse_url(item)  # its errors name the entry
        parts = urlsplit(url)
        if parts.scheme != "https" or parts.path or "?" in item or "#" in item:
            raise ValueError(f"expected an origin, {ORIGIN_FORM} (no path), got {item.strip()!r}")
        if parts.port == 0:
            raise ValueError(f"bad port in URL {item.strip()!r}")
        if url not in origins:  # one entry twice (or spelt twice, as parse_url keeps it)
            origins.append(url)
    return tuple(origins)


#: What an entry of ``ca_origins`` looks like, and why one with an ``@`` is not shown.
ORIGIN_FORM = "https://HOST or https://HOST:PORT"
ORIGIN_WITH_USER = f"expected origins, {ORIGIN_FORM}, with no user or password (credentials hidden)"


def _kind(value: object) -> str:
    if isinstance(value, dict):
        return "table"
    return "list" if isinstance(value, list | tuple) else type(value).__name__


def _mode(value: object) -> str:
    text = _str(value).strip().lower()
    if text not in ("open", "users"):
        raise ValueError(f"expected open or users, got {value!r}")
    return text


#: The shortest life of a token the mirror issues: Distribution's token spec asks for no less,
#: and Docker and containers/image take a shorter ``expires_in`` for 60 s, so they would send a
#: token the mirror had refused as expired partway through a pull.
MIN_TOKEN_TTL = 60


def _ttl(value: object) -> int:
    number = parse_duration(value)
    if not MIN_TOKEN_TTL <= number <= 86400:
        raise ValueError(
            f"expected seconds between {MIN_TOKEN_TTL} and 86400, 1m to 1d (clients use a "
            f"token for at least {MIN_TOKEN_TTL} s), got {value!r}"
        )
    return int(number)


def _level(value: object) -> str:
    text = _str(value).strip().upper()
    if text not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise ValueError(f"expected DEBUG, INFO, WARNING or ERROR, got {value!r}")
    return text


def _printable_ascii(text: str | None) -> bool:
    """Whether `text` is all visible ASCII characters (``!`` to ``~``)."""
    return text is not None and all("!" <= ch <= "~" for ch in text)


def _utf8_text(text: str | None) -> bool:
    """Whether ``text`` encodes as UTF-8 (no lone surrogate: an undecodable byte read from
    the environment or the command line, PEP 383)."""
    try:
        (text or "").encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


NOT_UTF8 = "not UTF-8 text: it has a byte of another encoding (a file saved as Latin-1?)"


class Unechoed(ValueError):
    """A refusal whose message holds nothing of the value: shown for a secret too."""


def _secret_str(value: object) -> str | None:
    """A secret's text, or None when empty: one of another type (``password = 12345`` in
    TOML) was refused as ``(hidden)`` alone, with nothing of what to write. Only its type is
    said, never its value."""
    if value is not None and not isinstance(value, str):
        raise Unechoed(
            f"expected a string (in TOML, in quotes), got a TOML {_toml_type(value)}; the value "
            "is not shown"
        )
    return None if value is None else _opt_str(value)  # None: an upstreams entry's, emptied


def _toml_type(value: object) -> str:
    """What TOML calls the type of `value`, as tomllib read it."""
    if isinstance(value, bool):
        return "boolean"
    kinds = {int: "integer", float: "float", list: "array", dict: "table"}
    return next((name for kind, name in kinds.items() if isinstance(value, kind)), "date")


def opt_credential(value: object) -> str | None:
    """An upstream's ``username`` or ``password``: sent as UTF-8 in a basic ``Authorization``,
    where a byte of another encoding (a lone surrogate to Python) raised at the first token
    request. The value is never in the message."""
    text = _secret_str(value)
    if not _utf8_text(text):
        raise Unechoed(NOT_UTF8)
    return text


def _bucket(value: object) -> str | None:
    text = _opt_str(value)
    return None if text is None else parse_bucket(text)


def _prefix(value: object) -> str:
    return parse_prefix(_str(value))


def _default_cache_dir(environ: Mapping[str, str]) -> str:
    base = environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return str(Path(base) / "docxy")


Parser = Callable[[object], Any]

# (section, key) → (parser, default). Defaults are raw values run through the parser too.
#: Requests at once on one h2c connection; 0: h2c refused (``docxy.edge.h2c`` says why).
#: Docker clients speak HTTP/1.1 to a mirror.
H2_MAX_STREAMS = 0
#: ``/v2/`` and ``/auth/token`` requests relayed upstream per client address and minute
#: (``docxy.edge.relays``): a docker pull relays one (its token; its ``/v2/`` is answered from
#: the known challenge), so a farm behind one NAT pulls about 600 images a minute before it is
#: refused (unless ``limits.exempt`` lists it), and a loop asks the upstream 10 a second, not
#: thousands.
TOKEN_RELAYS_PER_MINUTE = 600

SETTINGS: dict[str, dict[str, tuple[Parser, object]]] = {
    "server": {
        "listen": (parse_host_port, "127.0.0.1:8080"),
        "tls_listen": (_opt_host_port, ""),
        "public_url": (_opt_public_url, ""),
        "admin_listen": (_opt_host_port, "127.0.0.1:9180"),
        "admin_hosts": (_host_names, ""),
        "trusted_proxies": (_networks, ""),
        "forwarded_header": (_forwarded_header, "x-forwarded-for"),
    },
    "tls": {
        "cert_path": (_opt_path, ""),
        "key_path": (_opt_path, ""),
    },
    "upstream": {
        "registry": (parse_registry_url, "https://registry-1.docker.io"),
        "auth_realm": (_opt_url, ""),
        "library_prefix": (_bool, True),
        "username": (opt_credential, ""),
        "password": (opt_credential, ""),
        "connect_timeout": (parse_seconds, 10.0),
        "read_timeout": (parse_seconds, 60.0),
        # A setting of its own, the path of a CA file, not the secret "ca" in a file: only
        # SECRET_KEYS have a <key>_file (SECRET_FILE_KEYS), and there is no "upstream.ca".
        "ca_file": (parse_ca_file, ""),
        "ca_origins": (parse_ca_origins, ""),
    },
    "cache": {
        "enabled": (_bool, True),
        "dir": (_path, None),  # default computed at load time (XDG_CACHE_HOME)
        "max_size": (parse_size, "20G"),
        "tag_ttl": (parse_seconds, 300.0),
        "room_wait": (parse_seconds, 30.0),
        "direct_writes": (_bool, True),
    },
    "shared": {
        "endpoint": (_opt_url, ""),
        "bucket": (_bucket, ""),
        "region": (_str, "us-east-1"),
        "access_key": (_opt_str, ""),
        "secret_key": (_secret_str, ""),
        "prefix": (_prefix, "docxy"),
        "uploads": (_int_in(0, 64), 2),  # 0: read-only
    },
    "certs": {
        "domain": (_opt_domain, ""),
        "email": (_opt_email, ""),
        "acme_server": (_opt_url, ""),
        "ca_bundle": (_opt_path, ""),
        "webroot": (_opt_path, ""),
        "config_dir": (_opt_path, ""),
    },
    "log": {"level": (_level, "INFO")},
    "access": {
        "allow": (_networks, ""),
        "repositories": (_patterns, ""),
        "deny_repositories": (_patterns, ""),
    },
    "limits": {
        "max_connections": (_count, 1000),
        "connections_per_client": (_count, 128),
        "backlog": (_count, 1024),
        "idle_timeout": (parse_seconds, 30.0),
        "send_timeout": (parse_seconds, 60.0),
        "send_min_rate": (_opt_size, 1024),
        "requests_per_minute": (_count, 0),
        "manifests_per_minute": (_count, 0),
        "failed_logins_per_minute": (_count, 10),
        "token_relays_per_minute": (_count, TOKEN_RELAYS_PER_MINUTE),
        "bandwidth": (_opt_size, 0),
        "fills_per_client": (_count, 0),
        "fills_total": (_count, 0),
        "exempt": (_networks, ""),
        "h2_max_streams": (_int_in(0, 1000), H2_MAX_STREAMS),
    },
    "auth": {
        "mode": (_mode, "open"),
        "dir": (_opt_path, ""),  # default: docxy-access beside cache.dir
        "users_file": (_opt_path, ""),  # default: users in auth.dir
        "token_ttl": (_ttl, 300),
        "key_grace": (parse_seconds, 3600.0),
        "client_certs": (_bool, False),
        "upstream_logins": (_bool, False),
        "allow_plain_http": (_bool, False),
    },
    "scheduler": {
        "hour": (_opt_int_in(0, 11), ""),
        "minute": (_opt_int_in(0, 59), ""),
        "interval": (_opt_interval, ""),
        "retry_base": (_renewer_wait, 300.0),
        "retry_max": (_renewer_wait, 6 * 3600.0),
        "certbot_timeout": (_seconds_at_most(CERTBOT_TIMEOUT_MAX, "a day"), 300.0),
        "pidfile": (_opt_path, ""),
        "reload_command": (_opt_command, ""),
        "deploy_hook": (_opt_str, ""),
        "wait_for_mirror": (_bool, False),
    },
}

SECRET_KEYS = frozenset({"upstream.password", "shared.secret_key"})
#: Each secret's companion that names a file holding it (:func:`read_secret_file`): a key in
#: every layer, ``upstream.password_file`` → ``DOCXY_UPSTREAM_PASSWORD_FILE``. Only the secrets
#: have one: a value that is not secret has no reason to hide from ``docker inspect``, and a
#: ``_FILE`` for every setting would read ``DOCXY_AUTH_USERS_FILE`` (``auth.users_file``) twice.
SECRET_FILE_KEYS = {
    f"{section}.{key}_file": f"{section}.{key}"
    for section, keys in SETTINGS.items()  # in the table's order: upstream's first
    for key in keys
    if f"{section}.{key}" in SECRET_KEYS
}


#: More than a password or key would ever be: a log or an image named by mistake.
SECRET_FILE_MAX = 64 * 1024


def _read_at_most(path: Path, limit: int) -> bytes:
    """Up to ``limit + 1`` bytes of the file at ``path`` (one more than allowed says it is too
    large); ``ValueError`` naming `path` and why it cannot be read (for a refusal, the uid)."""
    try:
        with path.open("rb") as handle:
            return handle.read(limit + 1)
    except PermissionError as exc:
        raise ValueError(
            f"cannot read {path}: {exc.strerror} (this process runs as uid {os.getuid()})"
        ) from None
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror or type(exc).__name__}") from None


def read_secret_file(path: Path) -> str:
    """The secret in `path`: its UTF-8 text, trailing newlines stripped (``echo pw > file`` adds
    one, an editor on Windows ``\\r\\n``), a leading byte order mark too (Notepad's "UTF-8 with
    BOM": it was the secret's first character, a login refused at the first pull).
    ``ValueError`` naming `path`, and never what is in it, if there is none to read."""
    data = _read_at_most(path, SECRET_FILE_MAX)
    if len(data) > SECRET_FILE_MAX:
        raise ValueError(f"{path} is over {SECRET_FILE_MAX // 1024} KiB: not a secret's file")
    try:
        text = data.removeprefix(b"\xef\xbb\xbf").decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"{path} is not UTF-8 text") from None
    text = text.rstrip("\r\n")
    if not text.strip():
        raise ValueError(f"{path} is empty")
    return text


@dataclass(frozen=True, slots=True)
class SecretFile:
    """A secret's raw value still in its file: read only if its layer wins (here, and for the
    named upstreams' passwords, ``docxy.upstream.settings``)."""

    name: object  # the file's name as the layer gave it; empty: no file, the secret unset

    def read(self) -> str:
        return read_secret_file(_path(self.name)) if _opt_str(self.name) else ""


def _is_empty(value: object) -> bool:
    if isinstance(value, SecretFile):
        value = value.name
    return isinstance(value, str) and not value.strip()


def put_secret(
    found: dict[str, tuple[object, str]],
    key: str,
    value: object,
    source: str,
    *,
    full: str,
    in_file: str,
) -> None:
    """Record one layer's secret `key` (its `value`, or a :class:`SecretFile`) in `found`.

    The secret and its file both given in one layer are refused, naming both (`full`: the
    secret's name; `in_file`: how a TOML file names the two); an empty one stands aside
    (``DOCXY_UPSTREAM_PASSWORD=`` kept in an .env beside the ``_FILE``), as the official
    images' ``file_env`` does."""
    if key not in found:
        found[key] = (value, source)
        return
    pair = sorted([found[key], (value, source)], key=lambda p: isinstance(p[0], SecretFile))
    given = [p for p in pair if not _is_empty(p[0])]
    if len(given) < 2:
        found[key] = (given or pair)[0]
        return
    (_, plain), (_, named) = pair  # the value's source, then its file's
    if plain.startswith("env "):
        both = f"{plain} and {named}"
    elif plain == "flag":
        both = f"flags {full} and {full}_file"
    else:
        both = f"{in_file} of {plain}"
    raise ConfigError(f"{full}: set twice ({both}): keep the value or its file, not both")


def _put(found: dict[str, tuple[object, str]], key: str, value: object, source: str) -> None:
    """Record a layer's `key`; a secret's ``<key>_file`` as that secret, read if it wins
    (:func:`put_secret`)."""
    if key in SECRET_FILE_KEYS:
        key, value = SECRET_FILE_KEYS[key], SecretFile(value)
    if key not in SECRET_KEYS:
        found[key] = (value, source)
        return
    section, _, name = key.partition(".")
    put_secret(
        found, key, value, source, full=key, in_file=f"{name} and {name}_file in [{section}]"
    )


def _unknown_key(key: str, source: str) -> ConfigError:
    """``unknown key``; for a ``_file`` beside a setting that is not secret, which ones have one."""
    section, _, name = key.partition(".")
    hint = ""
    if name.endswith("_file") and name.removesuffix("_file") in SETTINGS.get(section, {}):
        hint = f": only the secret settings take a file ({', '.join(SECRET_FILE_KEYS)})"
    return ConfigError(f"{key}: unknown key ({source}){hint}")


# Names the seed used, still accepted.
ENV_ALIASES = {"DOCXY_CERT_PATH": "tls.cert_path", "DOCXY_KEY_PATH": "tls.key_path"}

# The only DOCXY_* variables that are not settings. Any other DOCXY_* name stops start-up like an
# unknown key, so a typo (DOCXY_SERVR_LISTEN) is never silently ignored. Add a name here when
# a script starts reading one, and document it where it is read.
OTHER_ENV = frozenset(
    {
        "DOCXY_CONFIG",  # the TOML file (load_config)
        "DOCXY_DOMAIN",  # container: HTTPS with Let's Encrypt for this name (entrypoint.sh)
        "DOCXY_EMAIL",  # container: the ACME account's e-mail, certs.email (_from_env)
        "DOCXY_STATE_DIR",  # container: cache, webroot and certificates (entrypoint.sh)
        "DOCXY_RUN_DIR",  # container: supervisord's socket and pid file (entrypoint.sh)
        "DOCXY_SUPERVISOR_CONF",  # container: supervisord's config (entrypoint.sh)
        "DOCXY_SCRIPTS_DIR",  # container: where supervisord finds its listener (entrypoint.sh)
        "DOCXY_SUPERVISOR_RENEWER",  # container: whether the renewer runs (entrypoint.sh)
        "DOCXY_WATCHDOG_SECONDS",  # container: a hung mirror's restart (supervisor-watchdog.sh)
        "DOCXY_IF_INET6",  # container: where the kernel lists IPv6 addresses (entrypoint.sh)
        # compose.yaml's own (env_file: .env hands them to the container too):
        "DOCXY_HTTP_PORT",  # host port published for the mirror's port 80
        "DOCXY_HTTPS_PORT",  # host port published for the mirror's port 443
        "DOCXY_ADMIN_PORT",  # host loopback port published for the admin listener
        "DOCXY_IMAGE",  # the image's name
        "DOCXY_BASE_IMAGE",  # the base image the build starts from
        "DOCXY_REQUIRE_E2E",  # tests: a missing system binary fails instead of skipping
        "DOCXY_DOCKER_CLI",  # tests: the docker CLI to drive the private dockerd with
        "DOCXY_CI_CACHE",  # tests: where the lab keeps the base image it builds (lab/clients)
        # Read by the shell scripts, never by the mirror (allowed so that a shell which exported
        # them can still start it):
        "DOCXY_SOURCE_URL",  # install.sh: where to fetch the project when piped from a URL
        "DOCXY_IPV4_SERVICES",  # install.sh: public IPv4 discovery services (tests override)
        "DOCXY_IPV6_SERVICES",  # install.sh: public IPv6 discovery services (tests override)
        "DOCXY_PROMPT_INPUT",  # install.sh: where prompts read answers (tests: a file)
        "DOCXY_RELOAD_WAIT",  # configure-client.sh: seconds to wait for dockerd to reload
    }
)


def env_name(key: str) -> str:
    return "DOCXY_" + key.replace(".", "_").upper()


def _from_toml(
    path: Path, deferred: list[tuple[str, str]]
) -> tuple[dict[str, tuple[object, str]], object | None]:
    """The file's settings, and its ``upstreams`` list (``docxy.upstream.settings``) if any.
    An unknown renewer-only key goes to `deferred` (:func:`renewer_only`)."""
    try:
        content = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"config file {path}: cannot read: {exc.strerror}") from exc
    try:
        # A UTF-8 BOM (Notepad's "UTF-8 with BOM") is no text: tomllib read it as a statement.
        text = content.removeprefix(b"\xef\xbb\xbf").decode("utf-8")
    except UnicodeDecodeError as exc:  # tomllib let it out: a traceback, not a config error
        line = content[: exc.start].count(b"\n") + 1
        raise ConfigError(
            f"config file {path}: not UTF-8 text (TOML is UTF-8): a byte of another encoding "
            f"at line {line} (saved as Latin-1 or UTF-16?)"
        ) from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path}: not valid TOML: {exc}") from exc
    found: dict[str, tuple[object, str]] = {}
    upstreams = data.pop("upstreams", None)
    for section, table in data.items():
        if section not in SETTINGS:
            raise ConfigError(f"{section}: unknown section (file {path})")
        if not isinstance(table, dict):
            raise ConfigError(f"{section}: must be a table [{section}] (file {path})")
        for key, value in table.items():
            full = f"{section}.{key}"
            if key not in SETTINGS[section] and full not in SECRET_FILE_KEYS:
                _refuse(_unknown_key(full, f"file {path}"), full, deferred)
                continue
            _put(found, full, value, f"file {path}")
    return found, upstreams


def _from_env(
    environ: Mapping[str, str], deferred: list[tuple[str, str]]
) -> dict[str, tuple[object, str]]:
    found: dict[str, tuple[object, str]] = {}
    for alias, key in ENV_ALIASES.items():
        if alias in environ:
            found[key] = (environ[alias], f"env {alias}")
    # The container's DOCXY_EMAIL (.env), with a DOCXY_DOMAIN (entrypoint.sh), is certs.email
    # unless DOCXY_CERTS_EMAIL is set, and named as written wherever it is refused.
    # An empty DOCXY_CERTS_EMAIL= (a .env line left blank) does not hide it, as the entrypoint's
    # ${DOCXY_CERTS_EMAIL:-$DOCXY_EMAIL} did not.
    if "DOCXY_EMAIL" in environ and not environ.get("DOCXY_CERTS_EMAIL", "").strip():
        if environ.get("DOCXY_DOMAIN", "").strip():
            found["certs.email"] = (environ["DOCXY_EMAIL"], "env DOCXY_EMAIL")
    for name, value in environ.items():
        if not name.startswith("DOCXY_") or name in ENV_ALIASES or name in OTHER_ENV:
            continue
        if name == "DOCXY_UPSTREAMS" or name.startswith("DOCXY_UPSTREAMS_"):
            continue  # docxy.upstream.settings
        for section, keys in SETTINGS.items():
            prefix = f"DOCXY_{section.upper()}_"
            if not name.startswith(prefix):
                continue
            key = name[len(prefix) :].lower()
            full = f"{section}.{key}"
            if full == "certs.email" and "certs.email" in found and not value.strip():
                break  # DOCXY_CERTS_EMAIL= left blank: DOCXY_EMAIL's, above
            if key not in keys and full not in SECRET_FILE_KEYS:
                _refuse(_unknown_key(full, f"env {name}"), full, deferred)
            else:
                _put(found, full, value, f"env {name}")
            break
        else:
            raise ConfigError(
                f"{name}: unknown variable (env {name}): not a setting (DOCXY_<SECTION>_<KEY>, "
                f"sections {', '.join(SETTINGS)}) nor one of {', '.join(sorted(OTHER_ENV))}"
            )
    return found


def _refuse(error: ConfigError, key: str, deferred: list[tuple[str, str]]) -> None:
    """Raise `error`, but for a renewer-only `key`: kept in `deferred` instead."""
    if not renewer_only(key):
        raise error
    deferred.append((key, str(error)))


def _to_default(values: dict[str, Any], raw: dict[str, tuple[object, str]], key: str) -> None:
    """Set `key` back to its default (a renewer-only setting refused, :func:`_refuse`)."""
    section, _, name = key.partition(".")
    parser, default = SETTINGS[section][name]
    values[key] = parser(default)
    raw[key] = (default, "default")


def load_config(
    overrides: Mapping[str, object] | None = None,
    config_file: Path | None = None,
    environ: Mapping[str, str] | None = None,
    *,
    renewer: bool = False,
) -> Config:
    """Build the config from defaults < TOML file < environment < ``overrides`` (CLI flags).

    ``overrides`` maps ``section.key`` to a raw value; its source is reported as ``flag``.
    The TOML file is ``config_file``, else ``$DOCXY_CONFIG``, else none. A renewer-only
    setting (:func:`renewer_only`) that is wrong stops the load for the `renewer` (but for
    :data:`RUN_REFUSES`: its runs fail instead); otherwise it stands at its default, its
    refusal in :attr:`Config.renewer_errors`.
    """
    deferred: list[tuple[str, str]] = []
    environ = os.environ if environ is None else environ
    if config_file is None and environ.get("DOCXY_CONFIG"):
        config_file = Path(environ["DOCXY_CONFIG"])
    raw: dict[str, tuple[object, str]] = {}
    for section, keys in SETTINGS.items():
        for key, (_, default) in keys.items():
            raw[f"{section}.{key}"] = (default, "default")
    raw["cache.dir"] = (_default_cache_dir(environ), "default")
    file_upstreams = None
    if config_file is not None:
        found, file_upstreams = _from_toml(config_file, deferred)
        raw.update(found)
    raw.update(_from_env(environ, deferred))
    upstream_flags = {}
    flags: dict[str, tuple[object, str]] = {}
    for key, value in (overrides or {}).items():
        if key == "upstreams" or key.startswith("upstreams."):
            upstream_flags[key] = value
            continue
        section, _, name = key.partition(".")
        if name not in SETTINGS.get(section, {}) and key not in SECRET_FILE_KEYS:
            _refuse(_unknown_key(key, "flag"), key, deferred)
            continue
        _put(flags, key, value, "flag")
    raw.update(flags)

    values: dict[str, Any] = {}
    for key, (value, source) in raw.items():
        section, _, name = key.partition(".")
        parser = SETTINGS[section][name][0]
        if isinstance(value, SecretFile):
            try:
                value = value.read()  # its errors name the file, never what is in it
            except ValueError as exc:
                raise ConfigError(f"{key}: {exc} ({source})") from None
        try:
            values[key] = parser(value)
        except ValueError as exc:
            shown = exc if key not in SECRET_KEYS or isinstance(exc, Unechoed) else "(hidden)"
            _refuse(ConfigError(f"{key}: {shown} ({source})"), key, deferred)
            _to_default(values, raw, key)  # the renewer's alone
    _check_retries(values, raw, deferred)
    sources = {key: source for key, (_, source) in raw.items()}
    from docxy.upstream.settings import check_registry_hosts, load_upstreams  # on this module

    upstreams, upstream_sources = load_upstreams(
        file_upstreams, f"file {config_file}", environ, upstream_flags
    )
    config = replace(
        _assemble(values, sources | upstream_sources),
        upstreams=upstreams,
        renewer_errors=tuple(deferred or ()),
    )
    check_registry_hosts(config)
    if renewer:
        check_tls_files(config)  # it reads the served pair to compare and install over it
        for key, refusal in deferred:
            if key not in RUN_REFUSES:
                raise ConfigError(refusal)
    return config


def check_tls_files(config: Config) -> None:
    """Refuse a ``tls.cert_path``/``tls.key_path`` this process may not read: for ``docxy
    serve`` and the renewer, which read the pair, not for every command's load. certbot's
    ``privkey.pem`` is root's, mode 600: ``docxy cache ls`` run by another user, or a cron job
    sharing the config, was refused over a file it never opens. Missing with ``certs.domain``
    set is a first start: a bootstrap certificate stands in until the renewer installs one."""
    for key, path in (
        ("tls.cert_path", config.tls.cert_path),
        ("tls.key_path", config.tls.key_path),
    ):
        if path is None or os.access(path, os.R_OK):
            continue
        if config.certs.domain is not None and not path.exists():
            continue
        raise ConfigError(f"{key}: cannot read {path} ({config.sources.get(key, 'default')})")


def check_ca_bundle(config: Config) -> None:
    """Refuse a ``certs.ca_bundle`` this process may not read, for ``docxy certs obtain`` and
    ``renew``, which run certbot with it; not for every command's load. A bundle only the
    renewer's user may read stopped ``docxy cache ls``, ``users list`` or ``serve`` run by
    another user over a file they never open, as :func:`check_tls_files` does for the served
    pair. The renewer's runs each fail with :func:`unreadable_ca_bundle` instead: one that
    stopped at start took the appliance down with it (see :data:`RUN_REFUSES`)."""
    refusal = unreadable_ca_bundle(config.certs)
    if refusal is not None:
        raise ConfigError(f"{refusal} ({config.sources.get('certs.ca_bundle', 'default')})")


def unreadable_ca_bundle(certs: CertsConfig) -> str | None:
    """Why certbot cannot be run with ``certs.ca_bundle`` by this process; None if it can (or
    none is set). Looked at when certbot is to run: a file mounted or mended since counts. By
    the effective ids: a root run acting as the certificates' owner runs certbot as that user
    (:mod:`docxy.cli.owner`), and a bundle only root may read would pass a check by root's."""
    path = certs.ca_bundle
    if path is not None and not os.access(path, os.R_OK, effective_ids=True):
        return f"certs.ca_bundle: cannot read {path}"
    return None


def _check_retries(
    values: dict[str, Any], raw: dict[str, tuple[object, str]], deferred: list[tuple[str, str]]
) -> None:
    """Refuse ``scheduler.retry_base`` above ``retry_max`` (for the mirror: both at their
    defaults, the refusal deferred). The backoff waits ``min(retry_max, retry_base * 2**n)``:
    such a base is never waited."""
    base, most = values["scheduler.retry_base"], values["scheduler.retry_max"]
    if base <= most:
        return
    error = ConfigError(
        f"scheduler.retry_base: {shown('scheduler.retry_base', base)} seconds is above "
        f"scheduler.retry_max, {shown('scheduler.retry_max', most)} "
        f"({raw['scheduler.retry_max'][1]}): the first retry's wait must "
        f"not exceed the longest ({raw['scheduler.retry_base'][1]})"
    )
    _refuse(error, "scheduler.retry_base", deferred)
    for key in ("scheduler.retry_base", "scheduler.retry_max"):
        _to_default(values, raw, key)


def _section(values: Mapping[str, Any], section: str) -> dict[str, Any]:
    prefix = section + "."
    return {k[len(prefix) :]: v for k, v in values.items() if k.startswith(prefix)}


def _assemble(values: dict[str, Any], sources: dict[str, str]) -> Config:
    def fail(key: str, message: str) -> ConfigError:
        return ConfigError(f"{key}: {message} ({sources.get(key, 'default')})")

    server = _section(values, "server")
    tls = TlsConfig(**_section(values, "tls"))
    certs = CertsConfig(**_section(values, "certs"))
    if (tls.cert_path is None) != (tls.key_path is None):
        missing = "tls.key_path" if tls.key_path is None else "tls.cert_path"
        raise fail(missing, "tls.cert_path and tls.key_path must be given together")
    same_file = tls.cert_path is not None and (  # given together: key_path too
        os.path.abspath(tls.cert_path) == os.path.abspath(tls.key_path or "")
    )
    if same_file and certs.domain is not None:
        # The renewer writes the key and then the certificate, each in its own file: in one,
        # the certificate replaced the key, and the mirror could no longer start.
        raise fail(
            "tls.key_path",
            "must be another file than tls.cert_path when certs.domain is set (the renewer "
            "writes the certificate and its key separately)",
        )
    admin, plain, tls_listen = server["admin_listen"], server["listen"], server["tls_listen"]
    if tls_listen is not None and _overlap(plain, tls_listen):
        # Taken, the second listener failed to bind once the first had started.
        raise fail(
            "server.tls_listen",
            f"{tls_listen} is server.listen's port too ({plain} "
            f"({sources.get('server.listen', 'default')})): give each listener its own port",
        )
    for name in ("listen", "tls_listen"):
        other = server[name]
        if admin is not None and other is not None and _overlap(admin, other):
            raise fail(
                "server.admin_listen",
                f"{admin} is server.{name}'s port too ({other}): set it to another "
                "HOST:PORT, or empty to turn the admin listener off",
            )
    if server["tls_listen"] is not None and str(server["public_url"] or "").startswith("http:"):
        # Plain HTTP is redirected to public_url when TLS is on: to itself, for ever.
        raise fail(
            "server.public_url",
            "must be an https:// URL with server.tls_listen set (plain HTTP is redirected to it)",
        )
    if server["public_url"] is None:
        server["public_url"] = _derive_public_url(server["listen"], server["tls_listen"], certs)
        if server["public_url"] is None:
            raise fail(
                "server.public_url",
                "required when the mirror listens on a wildcard address: clients must be "
                "told a URL they can reach (e.g. https://mirror.example.com)",
            )
        # Not "default": --show-config said so of a URL made of the listener the user set.
        sources["server.public_url"] = _derived_from(server["listen"], server["tls_listen"], certs)
    upstream = UpstreamConfig(**_section(values, "upstream"))
    if (upstream.username is None) != (upstream.password is None):
        # Name both: the one set, and the one missing (maybe emptied by a higher layer, as
        # DOCXY_UPSTREAM_PASSWORD= left in .env empties a file's password).
        have, lack = (
            ("username", "password") if upstream.password is None else ("password", "username")
        )
        raise ConfigError(
            "upstream.username: upstream.username and upstream.password go together "
            f"({sources.get(f'upstream.{have}', 'default')}); upstream.{lack} is not set "
            f"({sources.get(f'upstream.{lack}', 'default')})"
        )
    if upstream.ca_origins and upstream.ca_file is None:
        raise fail("upstream.ca_origins", CA_ORIGINS_ALONE)
    auth = _section(values, "auth")
    if auth["dir"] is None:
        auth["dir"] = values["cache.dir"].parent / "docxy-access"
    if auth["users_file"] is None:
        auth["users_file"] = auth["dir"] / "users"
    if auth["client_certs"] and server["tls_listen"] is None:
        raise fail("auth.client_certs", "client certificates need server.tls_listen")
    shared = SharedConfig(**_section(values, "shared"))
    if shared.enabled:
        for key in ("bucket", "access_key", "secret_key"):
            if getattr(shared, key) is None:
                raise fail(f"shared.{key}", "required with shared.endpoint")
        if not shared.region.strip():
            raise fail("shared.region", "must not be empty")
        for key in ("region", "access_key"):
            # In each request's Authorization header: one pasted character outside ASCII (a
            # Cyrillic o) crashed the fill of every miss. (The secret is HMAC key material,
            # UTF-8: any text.) The value is not echoed.
            if not _printable_ascii(getattr(shared, key)):
                raise fail(f"shared.{key}", "must be printable ASCII with no spaces")
        if not _utf8_text(shared.secret_key):
            # Encoded as UTF-8 to sign every request: a byte no UTF-8 decodes (an .env saved
            # as Latin-1; Python keeps it as a lone surrogate) crashed the fill of every miss
            # in the signer, nothing ever cached. The value is not echoed.
            raise fail("shared.secret_key", NOT_UTF8)
        if not values["cache.enabled"]:  # the tier fills the local cache and uploads from it
            where = sources.get("cache.enabled", "default")
            raise fail(
                "shared.endpoint", f"needs the local cache, but cache.enabled is off ({where})"
            )
    scheduler = SchedulerConfig(**_section(values, "scheduler"))  # retries: _check_retries
    return Config(
        shared=shared,
        auth=AuthConfig(**auth),
        server=ServerConfig(**server),
        tls=tls,
        upstream=upstream,
        cache=CacheConfig(**_section(values, "cache")),
        certs=certs,
        log=LogConfig(**_section(values, "log")),
        scheduler=scheduler,
        access=AccessConfig(**_section(values, "access")),
        limits=LimitsConfig(**_section(values, "limits")),
        sources=sources,
    )


def _overlap(one: HostPort, other: HostPort) -> bool:
    """Whether two listeners would take the same port: the same one on the same address, or
    on any address where either is a wildcard (``[::]`` takes IPv4 too), but for IPv4's
    wildcard beside an IPv6 address (``0.0.0.0:P`` and ``[::1]:P`` bind side by side)."""
    if one.port != other.port:
        return False
    if one.host == other.host:
        return True
    for wild, addr in ((one, other), (other, one)):
        if wild.host == "0.0.0.0" and _ipv6_literal(addr.host):
            return False
    return one.is_wildcard or other.is_wildcard


def _ipv6_literal(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).version == 6
    except ValueError:
        return False


def _derived_from(listen: HostPort, tls_listen: HostPort | None, certs: CertsConfig) -> str:
    """The source of a public URL :func:`_derive_public_url` made: the settings it is from."""
    if tls_listen is not None:
        return "derived from server.tls_listen" + (" and certs.domain" if certs.domain else "")
    if listen.is_wildcard and certs.domain:
        return "derived from server.listen and certs.domain"
    return "derived from server.listen"


def _derive_public_url(
    listen: HostPort, tls_listen: HostPort | None, certs: CertsConfig
) -> str | None:
    if tls_listen is not None:
        host = certs.domain or (None if tls_listen.is_wildcard else tls_listen.host)
        if host is None:
            return None
        host = f"[{host}]" if ":" in host else host
        return f"https://{host}" + ("" if tls_listen.port == 443 else f":{tls_listen.port}")
    if listen.is_wildcard:
        if certs.domain:
            return f"http://{certs.domain}" + ("" if listen.port == 80 else f":{listen.port}")
        return None
    return f"http://{listen}"


#: What ``--show-config`` prints for a setting that is not set (None, or an empty list), as
#: the README's settings table says it; any other is ``(none)``.
UNSET_SHOWN = {
    "server.tls_listen": "(off)",
    "server.admin_listen": "(off)",
    "shared.endpoint": "(off)",
    "scheduler.interval": "(off)",
    "upstream.auth_realm": "(discovered)",
    "upstreams.auth_realm": "(discovered)",
    "scheduler.hour": "(random)",
    "scheduler.minute": "(random)",
    "access.allow": "(everyone)",
    "access.repositories": "(all)",
}
#: Limits that ``0`` turns off (their default): shown as ``(off)``, as the table says, not as
#: ``0``, which reads as nothing allowed.
OFF_AT_ZERO = frozenset(
    f"limits.{name}"
    for name in (
        "requests_per_minute",
        "manifests_per_minute",
        "bandwidth",
        "send_min_rate",
        "fills_per_client",
        "fills_total",
    )
)


def shown(key: str, value: object, *, size: bool = False) -> str:
    """`value` as a user would write it in TOML or ``--set``: ``true``, ``20G`` (`size`),
    ``60`` for ``60.0``, lists comma-separated; unset as :data:`UNSET_SHOWN` says, a limit
    that 0 turns off as ``(off)``."""
    if value is None or (isinstance(value, tuple | Networks | Patterns) and not value):
        return UNSET_SHOWN.get(key, "(none)")
    if key in OFF_AT_ZERO and value == 0:
        return "(off)"
    if key == "shared.uploads" and value == 0:  # not "none at once" of something still on
        return "0 (read-only: no uploads)"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if size and isinstance(value, int) and value > 0:
        power = max(p for p in range(5) if value % 1024**p == 0)
        return f"{value // 1024**power}{'_KMGT'[power] if power else ''}"
    if isinstance(value, tuple):  # a list of names: as it is written
        return ",".join(value)
    return str(value)  # Networks, Patterns: ", "-separated, as `--set` also takes them


#: Settings that are a command line: one may carry a secret (``curl -H 'Authorization: Bearer
#: ...'``, ``supervisorctl -p PASSWORD``, a URL with a password, ``TOKEN=... hook`` for the
#: deploy hook's shell), so ``--show-config`` shows its program alone (:func:`shown_command`).
COMMAND_KEYS = frozenset({"scheduler.reload_command", "scheduler.deploy_hook"})


def shown_command(command: str) -> str:
    """`command` as ``--show-config`` shows it: ``(set: supervisorctl, 3 arguments hidden)``.
    Its program is shown (a URL's userinfo and query hidden, :func:`redacted`), unless it is a
    shell's ``NAME=value`` assignment; its arguments are only counted."""
    try:
        words = shlex.split(command)
    except ValueError:  # the deploy hook is shell text: an unbalanced quote is its own affair
        words = command.split()
    if not words or "=" in words[0]:
        return "(set, hidden)"
    hidden = len(words) - 1
    said = f", {hidden} argument{'s' if hidden > 1 else ''} hidden" if hidden else ""
    return f"(set: {redacted(words[0])}{said})"


def describe(config: Config) -> list[tuple[str, str, str]]:
    """(key, shown value, source) for every setting, secrets and commands' arguments hidden;
    for logs and ``--show``."""
    rows = []
    for section, keys in SETTINGS.items():
        for key, (parser, _) in keys.items():
            value = getattr(getattr(config, section), key)
            full = f"{section}.{key}"
            if full in SECRET_KEYS:
                value = "(set)" if value else None
            elif full in COMMAND_KEYS and value:
                value = shown_command(value)
            text = shown(full, value, size=parser in (parse_size, _opt_size))
            rows.append((full, text, config.sources.get(full, "default")))
    from docxy.upstream.settings import describe_upstreams

    return rows + describe_upstreams(config.upstreams, config.sources)
