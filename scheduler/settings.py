"""The renewer's settings: ``[scheduler]`` in the mirror's own settings table, plus its flags.

``scheduler.*`` is checked like every other setting (``docxy.config``: a mistyped
``DOCXY_SCHEDULER_*`` variable or an out-of-range hour is refused: ``--once`` exits 2, the
long-running renewer stays up without scheduling a run and says why, :func:`held`; the mirror
starts with its default and logs a warning; ``docxy serve --show-config`` lists them). Domain,
e-mail, webroot, certbot directory, CA bundle and the served cert/key paths come from
``[certs]`` and ``[tls]``, so the two processes cannot disagree.
"""

from __future__ import annotations

import argparse
import os
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from docxy.cli.healthcheck import local_urls
from docxy.config import RUN_REFUSES, CertsConfig, load_config
from docxy.core.errors import ConfigError

#: docxy.tls.certs.STATUS_FILE (a test holds them equal): importing that module here would load
#: cryptography into the idle renewer.
STATUS_FILE = "status.json"


@dataclass(frozen=True)
class Settings:
    certs: CertsConfig  # certs.config_dir set (checked at load); certbot's, through Lineage.of
    cert_path: Path | None
    key_path: Path | None
    cache_dir: Path  # the mirror's: its owner is the mirror's user (docxy.cli.owner)
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
    #: Before each run, poll these URLs (the plain-HTTP listener's, each address this host
    #: reaches it at: 127.0.0.1 and ::1 for ``[::]``) until one answers; empty: no wait.
    wait_for_mirror: tuple[str, ...] = ()
    #: Why every run fails before certbot (a wrong ``certs.email``: :data:`RUN_REFUSES`), shown
    #: in the status file and /health; the renewer keeps running, and so does the container.
    refused: str | None = None
    #: Why the renewer's own settings are refused (a bad ``[scheduler]`` one: :func:`held`):
    #: the renewer then stays up and schedules no run, and says so in the status file, on
    #: /health (``degraded``) and in ``docxy certs status``.
    halted: str | None = None

    @property
    def domain(self) -> str | None:
        return self.certs.domain

    @property
    def config_dir(self) -> Path:
        assert self.certs.config_dir is not None  # load
        return self.certs.config_dir

    @property
    def status_file(self) -> Path:
        return self.config_dir / STATUS_FILE  # read by the mirror: docxy.certs.renewal_status


#: ``--help``'s text, for the user (the module's docstring is for its reader).
DESCRIPTION = (
    "Renew the mirror's TLS certificate with certbot: once at start, then twice a day (or "
    "every --interval seconds), retrying with backoff after a failure. A new certificate is "
    "installed where the mirror reads it, and the mirror told to reload (--pidfile or "
    "--reload-command)."
)
EPILOG = (
    "Settings: these flags, then DOCXY_SCHEDULER_* variables, then [scheduler] in the "
    "mirror's config file; the domain, e-mail and certificate paths come from its [certs] "
    "and [tls]. `docxy serve --show-config` lists them all."
)


def build_parser() -> argparse.ArgumentParser:
    # No abbreviations, as in docxy's own CLI (docxy.cli.main.Parser, not imported: it would
    # load the mirror's CLI into the renewer): `--reload CMD` is not --reload-command.
    p = argparse.ArgumentParser(
        prog="python -m scheduler", description=DESCRIPTION, epilog=EPILOG, allow_abbrev=False
    )
    p.add_argument("--config", type=Path, help="the mirror's TOML config (default $DOCXY_CONFIG)")
    p.add_argument("--hour", help="first daily run's hour 0-11 (default random)")
    p.add_argument("--minute", help="daily runs' minute 0-59 (default random)")
    p.add_argument("--interval", help="run every N seconds instead of twice a day")
    p.add_argument("--retry-base", help="first retry after N seconds (default 300)")
    p.add_argument("--retry-max", help="longest wait between retries (default 6h)")
    p.add_argument("--pidfile", help="send SIGHUP to the mirror's pid in this file")
    p.add_argument("--reload-command", help="run this to make the mirror reload instead")
    p.add_argument("--deploy-hook", help="extra certbot --deploy-hook command")
    p.add_argument("--certbot-timeout", help="seconds per certbot run (default 300)")
    p.add_argument("--once", action="store_true", help="one run, then exit (status 1 if failed)")
    p.add_argument(
        "--wait-for-mirror",
        action="store_true",
        default=None,
        help="before each run, wait until the mirror's plain-HTTP listener answers (it serves "
        "the HTTP-01 token of an issuance or a renewal; when both start together, asking the "
        "CA first fails)",
    )
    return p


#: Flags that set a ``scheduler.*`` setting (the rest of the table comes from env and TOML).
FLAG_KEYS = (
    "hour",
    "minute",
    "interval",
    "retry_base",
    "retry_max",
    "pidfile",
    "reload_command",
    "deploy_hook",
    "certbot_timeout",
    "wait_for_mirror",
)


def load(argv: Sequence[str] | None, environ: Mapping[str, str] | None = None) -> Settings:
    """The renewer's settings: flags > env ``DOCXY_SCHEDULER_*`` > ``[scheduler]`` > defaults,
    checked like every other setting (:mod:`docxy.config`)."""
    return _load(argv, environ, renewer=True)


def held(argv: Sequence[str] | None, environ: Mapping[str, str] | None = None) -> Settings | None:
    """After :func:`load` refused the renewer's own settings: the settings as the mirror takes
    them (each bad renewer-only one at its default), with :attr:`Settings.halted` saying why;
    None when the refusal is not the renewer's alone (the mirror refuses it too, or
    ``certs.config_dir`` is not set: there is no status file to write).

    A renewer that exited on a bad ``[scheduler]`` setting went FATAL under supervisord,
    whose listener then stopped the container: the mirror, which only warns of it, stopped
    serving pulls for a setting of the renewal, and the container restarted in a loop."""
    try:
        settings = _load(argv, environ, renewer=False)
    except ConfigError:
        return None
    return settings if settings.halted is not None else None


def _load(argv: Sequence[str] | None, environ: Mapping[str, str] | None, renewer: bool) -> Settings:
    environ = os.environ if environ is None else environ
    args = build_parser().parse_args(argv)
    overrides = {
        f"scheduler.{name}": getattr(args, name)
        for name in FLAG_KEYS
        if getattr(args, name) is not None
    }
    config = load_config(overrides, args.config, environ, renewer=renewer)
    if config.certs.config_dir is None:
        raise ConfigError("certs.config_dir: not set (env DOCXY_CERTS_CONFIG_DIR or [certs])")
    own = config.scheduler
    hour = random.randrange(12) if own.hour is None else own.hour
    return Settings(
        certs=config.certs,
        cert_path=config.tls.cert_path,
        key_path=config.tls.key_path,
        cache_dir=config.cache.dir,
        hours=(hour, hour + 12),
        minute=random.randrange(60) if own.minute is None else own.minute,
        interval=own.interval,
        retry_base=own.retry_base,
        retry_max=own.retry_max,
        pidfile=own.pidfile,
        reload_command=own.reload_command,
        deploy_hook=own.deploy_hook,
        certbot_timeout=own.certbot_timeout,
        once=args.once,
        wait_for_mirror=tuple(local_urls(config.server.listen)) if own.wait_for_mirror else (),
        refused=next((why for key, why in config.renewer_errors if key in RUN_REFUSES), None),
        halted="; ".join(why for key, why in config.renewer_errors if key not in RUN_REFUSES)
        or None,
    )
