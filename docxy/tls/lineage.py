"""certbot's lineage of the mirror's domain: renewed, or set aside and obtained anew.

certbot keeps a lineage in three places of its config directory: ``renewal/<domain>.conf`` (how
to renew it: the CA, the account, the webroot, where its files are), ``live/<domain>/`` (links
to the newest files) and ``archive/<domain>/`` (every version). Without a usable renewal
configuration certbot can renew the lineage no more, nor simply issue over it (certbot 2.1
against pebble, ``tests/e2e/test_renewal_faults_e2e.py``):

    configuration gone        ``renew --cert-name`` fails "No certificate found with name ..."
                              at every run; ``certonly`` refuses while live/ and archive/ stay
    configuration broken      cut short, not parseable, or naming files that are not there (a
                              config directory moved, live/ deleted): ``renew`` skips it ("...
                              is broken", "1 parse failure(s)", exit 1); ``certonly`` succeeds,
                              into a new lineage ``<domain>-0001`` that nothing installs, and
                              another at each run after

:class:`Lineage` renews; in those cases it moves what is left of the lineage to
``orphaned/<UTC time>/`` in the config directory (the links in live/ are relative, so they still
resolve there) and obtains a new certificate through the webroot, in the same call. The renewer
(:mod:`scheduler.renewal`), ``docxy certs renew`` and ``docxy certs obtain`` all go through
here (:meth:`Lineage.ensure`: renewed once issued, else obtained). certbot itself judges a
configuration broken (its "parse failure"): its rules are not copied here.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from docxy.core.errors import ConfigError
from docxy.tls import certs

if TYPE_CHECKING:
    from docxy.config import CertsConfig

log = logging.getLogger(__name__)

ORPHANED = "orphaned"  # in certs.config_dir
_PARSE_FAILURES = re.compile(r"\b[1-9][0-9]* parse failure")
_CERTBOTS_WORDS = re.compile(r"The error was: (.+)|produced an unexpected error: (.+?)\.? Skipping")


@dataclass(frozen=True)
class SetAside:
    """A lineage moved out of certbot's way: why, where to, when."""

    reason: str
    moved_to: Path
    at: dt.datetime

    def as_dict(self) -> dict[str, object]:
        """For the renewer's status file (and so /status.json; the public /health: ``at``)."""
        return {"at": self.at.isoformat(), "reason": self.reason, "moved_to": str(self.moved_to)}


def unreadable(exc: certs.CertbotError) -> str | None:
    """What certbot said of a renewal configuration it could not read, when that is why ``renew``
    failed ("N parse failure(s)"); None for any other failure (a CA that refused, no network)."""
    if not _PARSE_FAILURES.search(exc.output):
        return None
    found = _CERTBOTS_WORDS.search(exc.output)
    said = next((words for words in found.groups() if words), "") if found else ""
    said = said.strip()
    return said if len(said) <= 300 else said[:299] + "…"


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@dataclass
class Lineage:
    """The lineage of ``domain`` in certbot's ``config_dir``, and what obtaining it anew takes.

    After a call, :attr:`set_aside` says what was moved out of certbot's way, if anything, even
    when obtaining the new certificate then failed.
    """

    config_dir: Path
    domain: str
    webroot: Path | None = None  # None: a lineage certbot cannot renew stays as it is
    email: str | None = None
    acme_server: str | None = None
    ca_bundle: Path | None = None
    timeout: float = certs.TIMEOUT
    staging: bool = False  # a new certificate from Let's Encrypt's staging CA
    set_aside: SetAside | None = field(default=None, init=False)

    @classmethod
    def of(
        cls, config: CertsConfig, *, staging: bool = False, timeout: float = certs.TIMEOUT
    ) -> Lineage:
        """The lineage ``[certs]`` names, with all certbot is told from there: the one place
        the renewer and ``docxy certs`` turn settings into certbot's. ConfigError naming
        certs.config_dir or certs.domain when not set."""
        return cls(
            certs.required(config.config_dir, "certs.config_dir"),
            certs.required(config.domain, "certs.domain"),
            webroot=config.webroot,
            email=config.email,
            acme_server=config.acme_server,
            ca_bundle=config.ca_bundle,
            timeout=timeout,
            staging=staging,
        )

    @property
    def live(self) -> Path:
        return self.config_dir / "live" / self.domain

    @property
    def renewal_conf(self) -> Path:
        return self.config_dir / "renewal" / f"{self.domain}.conf"

    def issued(self) -> bool:
        return (self.live / "fullchain.pem").exists()

    def renew(
        self,
        *,
        deploy_hook: str | None = None,
        force: bool = False,
        dry_run: bool = False,
    ) -> None:
        """``certbot renew`` of this lineage alone, or, if certbot cannot renew it (see the
        module docstring), set it aside and obtain a new one. CertbotError for certbot's other
        failures; with nothing moved, ValueError for a dry run and ConfigError for no webroot."""
        if self.issued() and not self.renewal_conf.exists():
            trouble = f"certbot's renewal configuration {self.renewal_conf} is missing"
        else:
            try:
                certs.renew(
                    config_dir=self.config_dir,
                    ca_bundle=self.ca_bundle,
                    cert_name=self.domain,
                    deploy_hook=deploy_hook,
                    force=force,
                    dry_run=dry_run,
                    timeout=self.timeout,
                    webroot=self.webroot,
                )
                return
            except certs.CertbotError as exc:
                said = unreadable(exc)
                if said is None:
                    raise
            trouble = (
                f"certbot's renewal configuration {self.renewal_conf} is broken (certbot: {said})"
            )
        if dry_run:
            raise ValueError(
                f"{trouble}: run without --dry-run to move the lineage to"
                f" {self.config_dir / ORPHANED}/ and obtain a new certificate through the webroot"
            )
        self._need_webroot(trouble)
        self._set_aside(trouble)
        self._obtain(deploy_hook=deploy_hook)

    def ensure(self, *, deploy_hook: str | None = None, dry_run: bool = False) -> None:
        """A certificate for the domain, however the lineage stands: renewed (when due) once
        issued, else obtained; what certbot cannot go on from is set aside either way. The
        renewer's run and ``docxy certs obtain``."""
        if self.issued():
            self.renew(deploy_hook=deploy_hook, dry_run=dry_run)
        else:
            self.obtain(deploy_hook=deploy_hook, dry_run=dry_run)

    def obtain(self, *, deploy_hook: str | None = None, dry_run: bool = False) -> None:
        """A first certificate for the domain. What an earlier lineage left (a renewal
        configuration whose live/ is gone, an archive/) is set aside first: certbot would
        otherwise issue into ``<domain>-0001``, which nothing installs. With nothing moved,
        ConfigError for no webroot, ValueError for a dry run that would have to move it."""
        left = [path for path in self._parts() if path.exists()]
        self._need_webroot("no certificate has been obtained yet")
        if left:
            names = ", ".join(str(path.relative_to(self.config_dir)) for path in left)
            trouble = f"{self.live / 'fullchain.pem'} is missing but {names} remain"
            if dry_run:
                raise ValueError(
                    f"{trouble}: run without --dry-run to move them to"
                    f" {self.config_dir / ORPHANED}/ and obtain a new certificate"
                )
            self._set_aside(trouble)
        self._obtain(deploy_hook=deploy_hook, dry_run=dry_run)

    def _parts(self) -> tuple[Path, Path, Path]:
        return self.renewal_conf, self.live, self.config_dir / "archive" / self.domain

    def _need_webroot(self, trouble: str) -> None:
        """ConfigError naming the setting when there is no webroot to obtain through: the
        operator's to give (``docxy certs`` exits 2), not a state of the lineage."""
        if self.webroot is None:
            raise ConfigError(
                "certs.webroot: not set (give --webroot, env DOCXY_CERTS_WEBROOT or the TOML"
                f" key); {trouble}, and a new certificate is obtained through the webroot (the"
                " directory the mirror serves /.well-known/acme-challenge/ from)"
            )

    def _obtain(self, *, deploy_hook: str | None = None, dry_run: bool = False) -> None:
        """certbot certonly; `deploy_hook` too: a hook passed to renewals only never ran for the
        first certificate, nor for one obtained in place of a lineage set aside."""
        assert self.webroot is not None  # _need_webroot
        certs.obtain(
            self.domain,
            self.email,
            webroot=self.webroot,
            config_dir=self.config_dir,
            acme_server=self.acme_server,
            ca_bundle=self.ca_bundle,
            staging=self.staging,
            dry_run=dry_run,
            timeout=self.timeout,
            deploy_hook=deploy_hook,
        )

    def _set_aside(self, reason: str) -> None:
        """Move the lineage's files to a new folder of ``orphaned/`` and say so in one line."""
        at = _utcnow()
        aside = _new_folder(self.config_dir / ORPHANED, at.strftime("%Y%m%dT%H%M%SZ"))
        for path in self._parts():
            target = aside / path.relative_to(self.config_dir)
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                path.rename(target)
            except FileNotFoundError:
                pass  # not there (or set aside just now by another run)
        self.set_aside = SetAside(reason, aside, at)
        log.warning(
            "%s, so the certificate lineage of %s cannot be renewed: moved it to %s and"
            " obtaining a new certificate",
            reason,
            self.domain,
            aside,
        )


def _new_folder(parent: Path, stamp: str) -> Path:
    """``parent/stamp``, or ``stamp-2``, ``-3``... if taken: made here, so two runs in the same
    second (the renewer and ``docxy certs renew``) never share one. Mode 0700: an archive holds
    private keys (certbot's own are 0700)."""
    parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    n = 1
    while True:
        folder = parent / (stamp if n == 1 else f"{stamp}-{n}")
        try:
            folder.mkdir(mode=0o700)
        except FileExistsError:
            n += 1
            continue
        return folder
