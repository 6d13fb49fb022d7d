"""``docxy health``: ask the configured plain-HTTP listener for ``/health``.

The container's ``HEALTHCHECK`` runs it, so the probe follows ``server.listen`` wherever the
operator moved it. A wildcard listener is asked on loopback: ``0.0.0.0`` at 127.0.0.1, and
``[::]`` at 127.0.0.1 then ``::1``. The mirror's ``[::]`` socket is dual-stack (it turns
``IPV6_V6ONLY`` off itself, whatever ``net.ipv6.bindv6only`` says), and IPv4 loopback exists
where IPv6 loopback may not (containers often run with ``net.ipv6.conf.lo.disable_ipv6=1``);
an address that refuses the connection or cannot be used is followed by the other. Exit
codes: 0 the mirror answered 200 with its health report (``ok`` or ``degraded``: it serves),
1 it did not answer, not with 200, or not with Docxy's report (another server on that port),
or no listener can be found in the settings (never 2: Docker reserves it for a HEALTHCHECK).

The settings are loaded whole, as the mirror would; when they are refused (a config file being
edited, a certificate being replaced: nothing the running mirror rereads), the error is said on
stderr and the listener alone is looked up (:func:`configured_listen`): what the probe needs
is only ``server.listen``, which is plain HTTP whatever ``[tls]`` says.
"""

from __future__ import annotations

import argparse
import os
import sys
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from docxy.cli.exits import EXIT_FAILED, EXIT_OK
from docxy.cli.options import ConfigLoader, add_config_arguments, seconds
from docxy.config import SETTINGS, HostPort, parse_host_port
from docxy.core.errors import ConfigError

if TYPE_CHECKING:
    import httpx

EXIT_UNHEALTHY = EXIT_FAILED
DEFAULT_TIMEOUT = 5.0


def local_urls(listen: HostPort, path: str = "/health") -> list[str]:
    """The URLs this host reaches `listen` at, the likeliest first: loopback for a wildcard."""
    hosts = [listen.host]
    if listen.host == "::":
        hosts = ["127.0.0.1", "::1"]
    elif listen.is_wildcard:
        hosts = ["127.0.0.1"]
    return [f"http://{f'[{host}]' if ':' in host else host}:{listen.port}{path}" for host in hosts]


def probe(urls: list[str], timeout: float) -> tuple[bool, str]:
    """(healthy, what to print): healthy when one of `urls` answers 200 with Docxy's health
    report (:func:`verdict`). The next URL is tried only when one cannot be connected to; an
    answer, or a timeout, is the verdict."""
    import httpx  # here: the certificate renewer imports local_urls and stays small without it

    failed: list[str] = []
    for url in urls:
        try:
            # trust_env=False: a proxy from the environment must not stand between us and
            # loopback.
            with httpx.Client(timeout=timeout, trust_env=False) as client:
                response = client.get(url)
        except httpx.ConnectError as exc:
            failed.append(f"{url}: {type(exc).__name__}: {exc}")
            continue
        except httpx.HTTPError as exc:
            return False, "; ".join([*failed, f"{url}: {type(exc).__name__}: {exc}"])
        return verdict(url, response)
    return False, "; ".join(failed)


def verdict(url: str, response: httpx.Response) -> tuple[bool, str]:
    """Healthy: a 200 whose body is Docxy's health report (a JSON object with a ``status`` and
    a ``version``, as :func:`docxy.http.health.health` sends even to strangers). Another
    server on that port (host networking, a listener moved onto a port something else holds,
    while the mirror never bound it) answers 200 with anything: that is not the mirror up.
    The renewer's wait for the mirror (``scheduler.renewal.wait_for``) asks the same."""
    if response.status_code != 200:
        return False, f"{url}: HTTP {response.status_code}"
    try:
        document = response.json()
    except ValueError:
        document = None
    if not (
        isinstance(document, dict)
        and isinstance(document.get("status"), str)
        and isinstance(document.get("version"), str)
    ):
        return False, (
            f"{url}: HTTP 200, but not Docxy's health report (another server on that port? "
            "the mirror may not have started: see its log)"
        )
    return True, f"{url}: {document['status']}"


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``docxy health``; ``args.handler(args, config_from_args)`` runs it."""
    health = commands.add_parser("health", help="probe the running mirror's /health (exit 0: up)")
    add_config_arguments(health)
    health.add_argument("--listen", metavar="HOST:PORT", help="the listener to probe")
    health.add_argument("--timeout", type=seconds, default=DEFAULT_TIMEOUT, metavar="SECONDS")
    health.set_defaults(handler=run)


def run(args: argparse.Namespace, load_config: ConfigLoader) -> int:
    try:
        listen = load_config(args).server.listen
    except ConfigError as exc:
        # Said, but no verdict on the mirror running with the settings it started with.
        print(f"docxy: config error: {exc}", file=sys.stderr)
        try:
            listen = configured_listen(args)
        except ConfigError as again:
            print(f"docxy: config error: {again}", file=sys.stderr)
            return EXIT_UNHEALTHY  # Docker reserves a HEALTHCHECK's exit 2
    healthy, said = probe(local_urls(listen), args.timeout)
    print(said, file=sys.stdout if healthy else sys.stderr)
    return EXIT_OK if healthy else EXIT_UNHEALTHY


def configured_listen(
    args: argparse.Namespace, environ: Mapping[str, str] | None = None
) -> HostPort:
    """``server.listen`` alone, from the layers :func:`docxy.config.load_config` reads, in its
    order (``--listen`` > ``--set server.listen`` > ``DOCXY_SERVER_LISTEN`` > the TOML file >
    default): a layer above the file spares reading it (one half written). ConfigError when
    the one that wins is no listener, or the file cannot be read."""
    environ = os.environ if environ is None else environ
    given: list[tuple[object, str]] = [(args.listen, "flag --listen")]
    for item in reversed(args.set):  # the last --set of a key wins, as in main's overrides
        key, sep, value = item.partition("=")
        if sep and key.strip() == "server.listen":
            given.append((value, "flag"))
            break
    given.append((environ.get("DOCXY_SERVER_LISTEN"), "env DOCXY_SERVER_LISTEN"))
    value, source = next(((v, s) for v, s in given if v is not None), (None, ""))
    if value is None:
        value, source = _listen_in_file(args.config or environ.get("DOCXY_CONFIG") or None)
    try:
        return parse_host_port(value)
    except ValueError as exc:
        raise ConfigError(f"server.listen: {exc} ({source})") from None


def _listen_in_file(path: Path | str | None) -> tuple[object, str]:
    """``[server] listen`` in the TOML file at `path`, else the default, with its source."""
    default = SETTINGS["server"]["listen"][1], "default"
    if path is None:
        return default
    try:
        text = Path(path).read_bytes().removeprefix(b"\xef\xbb\xbf").decode("utf-8")
        server = tomllib.loads(text).get("server", {})
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"config file {path}: cannot read server.listen: {exc}") from None
    if not isinstance(server, dict) or "listen" not in server:
        return default
    return server["listen"], f"file {path}"
