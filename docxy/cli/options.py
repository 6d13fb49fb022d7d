"""The options every command that reads the mirror's settings shares (``--config``, ``--set``);
``docxy.cli.main.config_from_args`` turns them into a :class:`docxy.config.Config`."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

from docxy.config import Config, parse_seconds

ConfigLoader = Callable[[argparse.Namespace], Config]
"""What a command's ``run`` is handed to load the settings (``main.config_from_args``)."""


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, help="TOML config file (default: $DOCXY_CONFIG)")
    parser.add_argument(
        "--set", metavar="SECTION.KEY=VALUE", action="append", default=[], help="any setting"
    )


def seconds(text: str) -> float:
    """An argparse type: a duration above 0, as the settings take it, seconds or with a unit
    (``90``, ``2m``: :func:`docxy.config.parse_seconds`): 0, negative or nan is a usage error,
    exit 2, not a traceback from the socket."""
    try:
        return parse_seconds(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
