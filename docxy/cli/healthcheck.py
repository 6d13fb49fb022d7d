"""``docxy health``: ask the configured plain-HTTP listener for ``/health``.

The container's ``HEALTHCHECK`` runs it, so the probe follows ``server.listen`` wherever the
operator moved it. A wildcard listener is asked on loopback: ``0.0.0.0`` at 127.0.0.1, and
``[::]`` at 127.0.0.1 then ``::1``. The mirror's ``[::]`` socket is dual-stack (it turns
``IPV6_V6ONLY`` off itself, whatever ``net.ipv6.bindv6only`` says), and IPv4 loopback exists
where IPv6 loopback may not (containers often run with ``net.ipv6.conf.lo.disable_ipv6=1``);
an address that refuses the connection or cannot be used is followed by the other. Exit
codes: 0 the mirror answered 200 with its health report (``ok`` or ``degraded``: it serves),
1 it did not answer, not with 200, or not with Docxy's report (another server on that port),
2 config error.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from docxy.cli.exits import EXIT_FAILED, EXIT_OK
from docxy.cli.options import ConfigLoader, add_config_arguments, seconds
from docxy.config import HostPort

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
    config = load_config(args)  # a ConfigError is docxy's (main) to report
    healthy, said = probe(local_urls(config.server.listen), args.timeout)
    print(said, file=sys.stdout if healthy else sys.stderr)
    return EXIT_OK if healthy else EXIT_UNHEALTHY
