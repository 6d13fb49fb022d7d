"""``docxy``: the command line. ``main(argv) -> int`` so tests can call it directly."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from docxy import __version__
from docxy.cli import access as accesscli
from docxy.cli import cache as cachecli
from docxy.cli import healthcheck, warm
from docxy.cli.exits import EXIT_CONFIG, EXIT_FAILED, EXIT_INTERRUPTED
from docxy.config import Config, check_tls_files, describe, load_config, renewer_refuses
from docxy.core.errors import ConfigError
from docxy.logs import log_to_stderr
from docxy.tls import certs

# flag dest → config key
FLAG_KEYS = {
    "listen": "server.listen",
    "tls_listen": "server.tls_listen",
    "public_url": "server.public_url",
    "upstream": "upstream.registry",
    "auth_realm": "upstream.auth_realm",
    "upstreams": "upstreams",
    "cert": "tls.cert_path",
    "key": "tls.key_path",
    "cache_dir": "cache.dir",
    "log_level": "log.level",
}


class Parser(argparse.ArgumentParser):
    """An ArgumentParser that takes no abbreviations: ``--config`` after ``certs status`` was
    read as its ``--config-dir``, ``--password`` as ``--password-stdin``. Every sub-parser is
    one too (``add_subparsers`` makes them of the parent's class)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = Parser(
        prog="docxy", description="A self-hosted Docker registry mirror and pull-through cache."
    )
    parser.add_argument("--version", action="version", version=f"docxy {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    serve = commands.add_parser("serve", help="run the mirror")
    serve.add_argument("--config", type=Path, help="TOML config file (default: $DOCXY_CONFIG)")
    serve.add_argument("--listen", metavar="HOST:PORT", help="plain-HTTP listener")
    serve.add_argument("--tls-listen", metavar="HOST:PORT", help="HTTPS listener")
    serve.add_argument("--public-url", metavar="URL", help="the URL clients reach the mirror at")
    serve.add_argument("--upstream", metavar="URL", help="upstream registry base URL")
    serve.add_argument("--auth-realm", metavar="URL", help="upstream token service")
    serve.add_argument(
        "--upstreams",
        metavar="NAME[=URL],...",
        help="more upstreams: presets (ghcr.io, quay.io, ...) or NAME=URL",
    )
    serve.add_argument(
        "--no-library-prefix",
        action="store_true",
        help="do not add library/ to one-component names",
    )
    serve.add_argument("--cert", metavar="PATH", help="TLS certificate chain (PEM)")
    serve.add_argument("--key", metavar="PATH", help="TLS private key (PEM)")
    serve.add_argument("--cache-dir", metavar="DIR")
    serve.add_argument("--no-cache", action="store_true", help="forward every request")
    serve.add_argument("--log-level", metavar="LEVEL")
    serve.add_argument(
        "--set",
        metavar="SECTION.KEY=VALUE",
        action="append",
        default=[],
        help="any setting, e.g. --set upstream.read_timeout=120 (repeatable)",
    )
    serve.add_argument(
        "--show-config", action="store_true", help="print the settings and their sources, then exit"
    )
    cachecli.register(commands)
    warm.register(commands)
    certs.register_cli(commands)
    accesscli.register(commands)
    healthcheck.register(commands)
    return parser


def config_from_args(args: argparse.Namespace) -> Config:
    overrides: dict[str, object] = {}
    for item in getattr(args, "set", []):  # commands without --set have none
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"--set {item}: expected SECTION.KEY=VALUE (flag)")
        overrides[key.strip()] = value
    for dest, key in FLAG_KEYS.items():
        value = getattr(args, dest, None)
        if value is not None:
            overrides[key] = value
    if getattr(args, "no_library_prefix", False):  # serve's own flags
        overrides["upstream.library_prefix"] = False
    if getattr(args, "no_cache", False):
        overrides["cache.enabled"] = False
    return load_config(overrides, args.config)


def setup_logging(level: str) -> None:
    log_to_stderr(level)  # times in UTC (docxy.logs)
    # Libraries' own lines: httpx's name every URL (a CDN's signed query), botocore's signer
    # every bucket request's signature, hpack every header of a client's HTTP/2 request (its
    # Authorization, with limits.h2_max_streams allowing h2c); none is one line per event.
    for noisy in ("httpx", "httpcore", "botocore", "hpack"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _flushed(code: int) -> int:
    """``code``, once what the command printed has gone out; 1 if its reader went away
    (``| head``): found here, not at the interpreter's own flush at exit (an 'Exception
    ignored' line there, and exit 120)."""
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        return _output_closed()
    return code


def _output_closed() -> int:
    """Nothing more to print to a reader that went away: the command could not say all."""
    _stdout_to_devnull()
    return EXIT_FAILED


def _stdout_to_devnull() -> None:
    """Point standard output at /dev/null: what is still buffered for the closed pipe would
    fail again at exit (Python's advice for SIGPIPE, which it ignores)."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):  # no file descriptor (a test's captured stdout)
        pass


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --version, --help, usage errors: argparse has printed already
        return _flushed(exc.code if isinstance(exc.code, int) else EXIT_CONFIG)
    if args.command is None:
        parser.print_help()
        return _flushed(EXIT_CONFIG)
    # cache, warm, users, clients, tokens and health load the config themselves
    handler = getattr(args, "handler", None)
    try:
        if handler is not None:
            return _flushed(int(handler(args, config_from_args)))
        config = config_from_args(args)
        check_tls_files(config)  # here, not in every command's load: serve reads the pair
        if args.show_config:
            # What serve refuses before it listens, from the settings alone: the appliance's
            # entry point runs this to stop on a refused setting before supervisord does.
            from docxy.access.gate import refuse_plain_http

            refuse_plain_http(config)
            for key, value, source in describe(config):
                print(f"{key} = {value}  ({source})")
            for key, refusal in config.renewer_errors:  # shown at its default above
                print(f"docxy: warning: {refusal}: {renewer_refuses(key)}", file=sys.stderr)
            return _flushed(0)
    except ConfigError as exc:
        print(f"docxy: config error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except KeyboardInterrupt:  # Ctrl-C in warm's downloads, a password prompt...
        print("docxy: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # `docxy cache ls | head`: the reader has all it wanted
        return _output_closed()
    # SIGHUP asks a running mirror to reload its certificate (docxy.http.server), and the
    # renewer sends it after each renewal, also while the mirror starts: until the mirror can
    # answer it, it is ignored (its default action would end the mirror).
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    setup_logging(config.log.level)
    for key, refusal in config.renewer_errors:
        logging.getLogger("docxy").warning("%s: %s", refusal, renewer_refuses(key))
    from docxy.http.server import run

    try:
        asyncio.run(run(config))
    except ConfigError as exc:
        print(f"docxy: config error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except KeyboardInterrupt:
        return 0
    return 0
