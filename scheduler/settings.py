"""The renewer's settings: its own flags (or ``DOCXY_SCHEDULER_*`` env) plus the mirror's config.

Domain, e-mail, webroot, certbot directory, CA bundle and the served cert/key paths come from the
mirror's own config (``[certs]``, ``[tls]``, ``DOCXY_CERTS_*``, ``DOCXY_TLS_*``) so the two
processes cannot disagree about them.
"""

from __future__ import annotations

import argparse
import os
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from docxy.certs import STATUS_FILE
from docxy.config import load_config
from docxy.errors import ConfigError
from docxy.healthcheck import local_url


@dataclass(frozen=True)
class Settings:
    domain: str | None
    email: str | None
    webroot: Path | None
    config_dir: Path
    acme_server: str | None
    ca_bundle: Path | None
    cert_path: Path | None
    key_path: Path | None
    hours: tuple[int, int]  # the two daily runs...
    minute: int  # ...at this minute: picked at random unless given
    interval: float | None  # instead of the daily runs (tests)
    retry_base: float
    retry_max: float
    pidfile: Path | None
    reload_command: str | None
    deploy_hook: str | None
    certbot_timeout: float
    once: bool
    wait_for_mirror: str | None = None  # poll this URL until it answers before a first issuance

    @property
    def status_file(self) -> Path:
        return self.config_dir / STATUS_FILE  # read by the mirror: docxy.certs.renewal_status


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m scheduler", description=__doc__)
    p.add_argument("--config", type=Path, help="the mirror's TOML config (default $DOCXY_CONFIG)")
    p.add_argument("--hour", help="first daily run's hour 0-11 (default random)")
    p.add_argument("--minute", help="daily runs' minute (default random)")
    p.add_argument("--interval", help="run every N seconds instead of twice a day")
    p.add_argument("--retry-base", help="first retry after N seconds (default 300)")
    p.add_argument("--retry-max", help="longest wait between retries (default 6h)")
    p.add_argument("--pidfile", type=Path, help="send SIGHUP to the mirror's pid in this file")
    p.add_argument("--reload-command", help="run this to make the mirror reload instead")
    p.add_argument("--deploy-hook", help="extra certbot --deploy-hook command")
    p.add_argument("--certbot-timeout", help="seconds per certbot run (default 300)")
    p.add_argument("--once", action="store_true", help="one run, then exit (status 1 if failed)")
    p.add_argument(
        "--wait-for-mirror",
        action="store_true",
        help="before a first issuance, wait until the mirror's plain-HTTP listener answers "
        "(it serves the HTTP-01 token; when both start together, asking the CA first fails)",
    )
    return p


def _flag_or_env(value: object, name: str, environ: Mapping[str, str]) -> str | None:
    if value is not None:
        return str(value)
    return environ.get(f"DOCXY_SCHEDULER_{name.upper()}") or None


def load(argv: Sequence[str] | None, environ: Mapping[str, str] | None = None) -> Settings:
    environ = os.environ if environ is None else environ
    args = build_parser().parse_args(argv)
    config = load_config(None, args.config, environ)

    def opt(name: str) -> str | None:
        return _flag_or_env(getattr(args, name), name, environ)

    def number(name: str, default: float, *, positive: bool = False) -> float:
        text = opt(name)
        if text is None:
            return default
        try:
            value = float(text)
        except ValueError:
            raise ConfigError(f"scheduler.{name}: expected a number, got {text!r}") from None
        if value < 0 or (positive and value == 0):
            bound = "> 0" if positive else ">= 0"
            raise ConfigError(f"scheduler.{name}: expected a number {bound}, got {text!r}")
        return value

    if config.certs.config_dir is None:
        raise ConfigError("certs.config_dir: not set (env DOCXY_CERTS_CONFIG_DIR or [certs])")
    wait = args.wait_for_mirror or (opt("wait_for_mirror") or "").lower() in ("1", "true", "yes")
    hour = int(number("hour", random.randrange(12))) % 12
    pidfile, reload_command = opt("pidfile"), opt("reload_command")
    return Settings(
        domain=config.certs.domain,
        email=config.certs.email,
        webroot=config.certs.webroot,
        config_dir=config.certs.config_dir,
        acme_server=config.certs.acme_server,
        ca_bundle=config.certs.ca_bundle,
        cert_path=config.tls.cert_path,
        key_path=config.tls.key_path,
        hours=(hour, hour + 12),
        minute=int(number("minute", random.randrange(60))) % 60,
        interval=number("interval", 0.0) or None,
        retry_base=number("retry_base", 300.0, positive=True),
        retry_max=number("retry_max", 6 * 3600.0, positive=True),
        pidfile=Path(pidfile) if pidfile else None,
        reload_command=reload_command,
        deploy_hook=opt("deploy_hook"),
        certbot_timeout=number("certbot_timeout", 300.0, positive=True),
        once=args.once,
        wait_for_mirror=local_url(config.server.listen) if wait else None,
    )
