"""``docxy health``: ask the configured plain-HTTP listener for ``/health``.

The container's ``HEALTHCHECK`` runs it, so the probe follows ``server.listen`` wherever the
operator moved it (a wildcard listener is asked on loopback). Exit codes: 0 the mirror answered
200 (``ok`` or ``degraded``: it serves), 1 it did not answer or not with 200, 2 config error.
"""

from __future__ import annotations

import argparse
import sys

from docxy.cli.exits import EXIT_FAILED, EXIT_OK
from docxy.cli.options import ConfigLoader, add_config_arguments
from docxy.config import HostPort

EXIT_UNHEALTHY = EXIT_FAILED
DEFAULT_TIMEOUT = 5.0


def local_url(listen: HostPort, path: str = "/health") -> str:
    """The URL this host reaches `listen` at: loopback for a wildcard address."""
    host = listen.host
    if listen.is_wildcard:
        host = "::1" if host == "::" else "127.0.0.1"
    host = f"[{host}]" if ":" in host else host
    return f"http://{host}:{listen.port}{path}"


def probe(url: str, timeout: float) -> tuple[bool, str]:
    """(healthy, what to print): healthy when `url` answers 200."""
    import httpx  # here: the certificate renewer imports local_url and stays small without it

    try:
        # trust_env=False: a proxy from the environment must not stand between us and loopback.
        with httpx.Client(timeout=timeout, trust_env=False) as client:
            response = client.get(url)
    except httpx.HTTPError as exc:
        return False, f"{url}: {type(exc).__name__}: {exc}"
    if response.status_code != 200:
        return False, f"{url}: HTTP {response.status_code}"
    try:
        status = response.json().get("status", "?")
    except ValueError:
        status = "?"
    return True, f"{url}: {status}"


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``docxy health``; ``args.handler(args, config_from_args)`` runs it."""
    health = commands.add_parser("health", help="probe the running mirror's /health (exit 0: up)")
    add_config_arguments(health)
    health.add_argument("--listen", metavar="HOST:PORT", help="the listener to probe")
    health.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, metavar="SECONDS")
    health.set_defaults(handler=run)


def run(args: argparse.Namespace, load_config: ConfigLoader) -> int:
    config = load_config(args)  # a ConfigError is docxy's (main) to report
    healthy, said = probe(local_url(config.server.listen), args.timeout)
    print(said, file=sys.stdout if healthy else sys.stderr)
    return EXIT_OK if healthy else EXIT_UNHEALTHY
