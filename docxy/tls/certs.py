"""Certificates from an ACME CA through certbot: obtain, renew, install, and `docxy certs`.

certbot does the ACME work. HTTP-01 goes through ``--webroot``: certbot writes the token under
``<webroot>/.well-known/acme-challenge/`` and the mirror serves that directory on its plain-HTTP
listener, so the mirror keeps ports 80 and 443 to itself. certbot runs non-interactively with its
own config/work/logs directories and a time limit; a failure becomes a CertbotError carrying
certbot's own reason. ``install`` copies a lineage's files to the paths the mirror serves,
atomically (an install cut short between the two files is completed at the mirror's start,
:mod:`docxy.tls.recover`); the mirror notices (file watch or SIGHUP) and reloads.

The mirror imports this module for ``renewal_status`` and the CLI for ``register_cli``:
cryptography (``docxy.tls.context``) is imported only by the functions that inspect a pair, so
a mirror without TLS never loads it.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import stat
import subprocess
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from docxy.cli.exits import EXIT_CONFIG, EXIT_FAILED, EXIT_OK
from docxy.cli.owner import Owner
from docxy.config import SECRET_KEYS, Config, check_ca_bundle, env_name
from docxy.core.errors import ConfigError
from docxy.core.stamps import restamped
from docxy.tls.files import PUBLIC_CERTIFICATE, CertError, pending_path, write_pair

if TYPE_CHECKING:
    from docxy.tls.context import CertInfo

log = logging.getLogger(__name__)

T = TypeVar("T")

CERTBOT = "certbot"
TIMEOUT = 300.0
STATUS_FILE = "status.json"  # the renewer's, in certs.config_dir
_NOISE = ("Saving debug log", "Ask for help", "See the logfile", "- - -", "re-run Certbot")


class CertbotError(Exception):
    """certbot failed; the message is what it said went wrong (no secrets in certbot's output),
    :attr:`output` all it said (:func:`docxy.tls.lineage.unreadable` reads it)."""

    def __init__(self, message: str, output: str = "") -> None:
        super().__init__(message)
        self.output = output


def certbot_reason(stdout: str, stderr: str, returncode: int) -> str:
    """Pick the lines of certbot's output that say why it failed."""
    lines = [line.strip() for line in f"{stdout}\n{stderr}".splitlines()]
    ca_problem = [line for line in lines if line.startswith(("Domain:", "Type:", "Detail:"))]
    if ca_problem:
        return _clip(" ".join(ca_problem))
    for i, line in enumerate(lines):
        if "with error:" in line:
            return _clip(line.split("with error:", 1)[1].strip())
        if line.startswith("An unexpected error occurred"):
            return _clip(" ".join(_said(lines[i + 1 : i + 3])))
    return (
        _clip("; ".join(_said(stderr.splitlines()))) or f"certbot exited with status {returncode}"
    )


def _said(lines: list[str]) -> list[str]:
    return [line.strip() for line in lines if line.strip() and not line.startswith(_NOISE)]


def _clip(text: str, limit: int = 600) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _dirs(config_dir: Path) -> list[str]:
    return [
        "--config-dir",
        str(config_dir),
        "--work-dir",
        str(config_dir / "work"),
        "--logs-dir",
        str(config_dir / "logs"),
    ]


def _secret_variable(name: str) -> bool:
    """Whether environment variable ``name`` holds one of the mirror's secrets (not a file's
    path: ``..._PASSWORD_FILE`` names one)."""
    from docxy.upstream.settings import ENV_PREFIX, SECRET

    if name in {env_name(key) for key in SECRET_KEYS}:
        return True
    return name.startswith(ENV_PREFIX) and name.endswith("_" + SECRET.upper())


def run_certbot(args: list[str], *, ca_bundle: Path | None, timeout: float = TIMEOUT) -> str:
    """Run certbot non-interactively; its output on success, CertbotError otherwise. The
    mirror's secrets given in the environment (``DOCXY_UPSTREAM_PASSWORD``,
    ``DOCXY_SHARED_SECRET_KEY``, a named upstream's ``DOCXY_UPSTREAMS_<ID>_PASSWORD``) are not
    passed on: certbot needs none, and its hooks (``scheduler.deploy_hook``, whatever the
    operator runs there) are not to see them."""
    env = {name: value for name, value in os.environ.items() if not _secret_variable(name)}
    if ca_bundle is not None:
        env["REQUESTS_CA_BUNDLE"] = str(ca_bundle)  # the ACME server's TLS, for test CAs
    cmd = [CERTBOT, *args, "--non-interactive"]
    user, group = _as_acting_owner()
    log.info("running certbot %s", args[0])
    try:
        proc = subprocess.run(
            cmd,
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            user=user,
            group=group,
        )
    except FileNotFoundError as exc:
        raise CertbotError(f"certbot {args[0]}: certbot is not installed") from exc
    except subprocess.TimeoutExpired as exc:
        raise CertbotError(f"certbot {args[0]}: no answer within {timeout:g}s") from exc
    if proc.returncode != 0:
        reason = certbot_reason(proc.stdout, proc.stderr, proc.returncode)
        raise CertbotError(f"certbot {args[0]} failed: {reason}", proc.stdout + proc.stderr)
    return proc.stdout + proc.stderr


def _as_acting_owner() -> tuple[int | None, int | None]:
    """``subprocess``'s ``user`` and ``group`` that start certbot as the owner a root
    ``docxy certs`` acts as (:class:`docxy.cli.owner.Owner`: real uid root, effective uid the
    owner's), outright; None otherwise. A child whose real uid is root could be root again: it
    holds root's capabilities after exec, and a shell it starts (certbot's hooks) resets its
    uid to root. The supplementary groups are already the owner's alone (``Owner.acting``),
    and a process whose real uid is root may set both ids to its effective ones."""
    if os.getuid() != 0 or os.geteuid() == 0:
        return None, None
    return os.geteuid(), os.getegid()


def obtain(
    domain: str,
    email: str | None,
    *,
    webroot: Path,
    config_dir: Path,
    acme_server: str | None,
    ca_bundle: Path | None,
    staging: bool,
    dry_run: bool = False,
    timeout: float = TIMEOUT,
    deploy_hook: str | None = None,
) -> Path:
    """Get a certificate for `domain` by HTTP-01 through `webroot`; return its live directory.

    Without `email` the ACME account is registered without a contact: Let's Encrypt stopped
    sending expiry mail in 2025 and the renewer watches expiry itself, so an address is optional.
    `deploy_hook` runs on this issuance as on each renewal's (``scheduler.deploy_hook``).
    """
    if acme_server and staging:
        raise ValueError("give either an ACME server or staging, not both")
    (webroot / ".well-known" / "acme-challenge").mkdir(parents=True, exist_ok=True)
    args = [
        "certonly",
        "--webroot",
        "--webroot-path",
        str(webroot),
        "--domain",
        domain,
        "--cert-name",
        domain,
        *(["--email", email, "--no-eff-email"] if email else ["--register-unsafely-without-email"]),
        "--agree-tos",
        "--keep-until-expiring",
        "--key-type",
        "ecdsa",
        *_dirs(config_dir),
    ]
    if acme_server:
        args += ["--server", acme_server]
    elif staging:
        args.append("--staging")
    if deploy_hook:
        args += ["--deploy-hook", deploy_hook]
    if dry_run:
        args.append("--dry-run")
    if not email:
        log.info("no certs.email: registering the ACME account without an email address")
    run_certbot(args, ca_bundle=ca_bundle, timeout=timeout)
    log.info("certificate for %s obtained", domain)
    return config_dir / "live" / domain


def renew(
    *,
    config_dir: Path,
    ca_bundle: Path | None,
    cert_name: str | None = None,
    deploy_hook: str | None = None,
    force: bool = False,
    dry_run: bool = False,
    timeout: float = TIMEOUT,
    webroot: Path | None = None,
) -> str:
    """Renew what certbot finds due in `config_dir` (it keeps each lineage's ACME server).

    With `cert_name` (the mirror's domain) only that lineage: one left by an earlier domain,
    whose renewal fails once that name no longer leads here, would otherwise fail every run
    (certbot exits 1 if any lineage fails), keep the renewed certificate from being installed,
    and ask the CA for the old name at every retry.

    With `webroot` (certs.webroot, what the mirror serves) the HTTP-01 token goes there, not
    to the webroot the lineage was issued through: certbot keeps that one in its renewal
    configuration, and once certs.webroot had moved every renewal failed (the CA got 404).
    """
    args = ["renew", "--no-random-sleep-on-renew", *_dirs(config_dir)]
    if cert_name:
        args += ["--cert-name", cert_name]
    if webroot is not None:
        # certbot refuses a --webroot-path that is not a directory yet (a new container's)
        (webroot / ".well-known" / "acme-challenge").mkdir(parents=True, exist_ok=True)
        args += ["--webroot-path", str(webroot)]
    if deploy_hook:
        args += ["--deploy-hook", deploy_hook]
    if force:
        args.append("--force-renewal")
    if dry_run:
        args.append("--dry-run")
    return run_certbot(args, ca_bundle=ca_bundle, timeout=timeout)


def install(live_dir: Path, cert_path: Path, key_path: Path) -> bool:
    """Copy a lineage's full chain and key to the served paths; True if anything changed.

    The pair is checked first (CertError if it does not match); the key is written mode 0600.
    CertError too, the served pair kept, for one that has expired or is not valid yet where the
    served one is valid (clients would refuse it).
    A crash part way leaves a state the mirror completes at start (:mod:`docxy.tls.recover`).
    """
    src_cert, src_key = live_dir / "fullchain.pem", live_dir / "privkey.pem"
    try:
        cert_pem, key_pem = src_cert.read_bytes(), src_key.read_bytes()
    except OSError as exc:
        raise CertError(f"lineage {live_dir}: unreadable ({exc.strerror or exc})") from exc
    from docxy.tls.context import (  # cryptography: see above
        clock_behind,
        inspect_pair,
        kept_over_expired,
        kept_over_not_yet_valid,
    )

    issued = inspect_pair(cert_pem, key_pem, src_cert, src_key)
    if _same(cert_path, cert_pem) and _same(key_path, key_pem):
        return False
    served = _served(cert_path, key_path)
    expired = kept_over_expired(issued, served, src_cert)
    if expired is not None:  # never an expired certificate over one clients still take
        raise CertError(expired)
    early = kept_over_not_yet_valid(issued, served, src_cert)
    if early is not None:  # nor one they refuse until its notBefore (the renewer retries)
        raise CertError(early)
    behind = clock_behind(issued, src_cert)
    if behind is not None:  # nothing served that clients take: installed all the same
        log.warning("%s", behind)
    write_pair(cert_path, key_path, cert_pem, key_pem)
    log.info("installed certificate from %s to %s", live_dir, cert_path)
    return True


def _served(cert_path: Path, key_path: Path) -> CertInfo | None:
    """The pair at the served paths, if it is one (None: missing, unreadable or broken)."""
    from docxy.tls.context import inspect_pair

    try:
        return inspect_pair(cert_path.read_bytes(), key_path.read_bytes(), cert_path, key_path)
    except (OSError, CertError):
        return None


def _same(path: Path, data: bytes) -> bool:
    try:
        return path.read_bytes() == data
    except OSError:
        return False


def describe_files(cert_path: Path, key_path: Path, domain: str | None = None) -> dict[str, object]:
    """What `docxy certs status` shows for one cert/key pair (an error instead of failing):
    with ``domain`` (``certs.domain``), whether clients will take it for that name, as
    ``/health`` says it (``served``, ``warning``: :mod:`docxy.tls.trust`)."""
    from docxy.tls.context import inspect_pair

    try:
        info = inspect_pair(cert_path.read_bytes(), key_path.read_bytes(), cert_path, key_path)
    except (OSError, CertError) as exc:
        return {"cert_path": str(cert_path), "error": str(exc)}
    served, warning = info.verdict(domain)
    return {
        "cert_path": str(cert_path),
        **info.as_dict(),
        "served": served,
        "domain": domain,
        "warning": warning,
    }


def stranded_config_dir(config_dir: Path, status: Mapping[str, object]) -> str | None:
    """What to say of a ``certs.config_dir`` its renewer cannot write (root's in the
    appliance's certs volume, made by a root run before the owner was kept): it can neither
    run certbot there nor write its status file, so its own hint reached its log alone, and
    the status file read here (`status`) is an old one or none.

    The renewer is who its status file says wrote it (``uid``, ``gids``: scheduler.runs); a
    root renewer writes anywhere. The same user asks the kernel (:func:`os.access`: ACLs and
    supplementary groups count) and the mode bits by the groups the renewer recorded (it may
    be in one the reader is not); another (root) judges the mode bits by the recorded ids,
    and says nothing of a directory with an ACL. Without a recorded uid (an older renewer's
    file, or none), only the appliance's case is said, to a reader other than root: config_dir
    root's inside a directory of the reader's own (the certs volume of the mirror's user,
    the renewer's too); a host install whose renewer runs as root beside a mirror of another
    user would otherwise be told to give root's certbot tree (account and private keys) to
    the mirror's user. Not the owner of the parent as such: a host install run as root may
    keep config_dir in a directory of the operator's user.

    A config_dir that does not exist is said when the renewer cannot make it
    (:func:`_unmakeable_config_dir`).
    """
    try:
        st = config_dir.stat()
    except FileNotFoundError:
        return _unmakeable_config_dir(config_dir, status)
    except OSError:
        return None
    me, uid, gids = os.geteuid(), status.get("uid"), status.get("gids")
    groups = [g for g in gids if isinstance(g, int)] if isinstance(gids, list) else []
    if not isinstance(uid, int) or isinstance(uid, bool):
        if me == 0 or st.st_uid != 0 or not _owned_by(config_dir.parent, me):
            return None
        uid = me
    if uid == 0:
        return None
    gid: int | None
    if uid == me:
        if os.access(config_dir, os.W_OK | os.X_OK, effective_ids=_EFFECTIVE):
            return None
        if _mode_lets(st, uid, groups):
            return None
        gid = os.getegid()
    else:
        if _mode_lets(st, uid, groups) or _has_acl(config_dir):
            return None
        gid = groups[0] if groups else None
    path = shlex.quote(str(config_dir))
    fix = f"chown -R {uid}:{gid} {path}" if gid is not None else f"chown -R {uid} {path}"
    said = (
        f"certs.config_dir {config_dir} is uid {st.st_uid}'s (mode "
        f"{stat.S_IMODE(st.st_mode):o}) and the renewer, uid {uid}, cannot write it: it can "
        "neither run certbot there nor write its status (what it last wrote, if anything, is "
        "old). "
    )
    try:
        handed_back = st.st_uid == 0 and config_dir.parent.stat().st_uid == uid
    except OSError:
        handed_back = False
    if handed_back:  # docxy.cli.owner.Owner.of: a root run hands it to its parent's owner
        return (
            f"{said}Run `docxy certs renew` as root once (the container: `docker compose exec "
            f"-u 0 docxy docxy certs renew`), which hands it back to uid {uid} where uid "
            f"{uid} owns cache.dir (the mirror's user, as in the image), or `{fix}`"
        )
    return f"{said}Give it to the renewer's user: `{fix}`"


_EFFECTIVE = os.access in os.supports_effective_ids


def _unmakeable_config_dir(config_dir: Path, status: Mapping[str, object]) -> str | None:
    """What to say of a missing ``certs.config_dir`` the renewer cannot make: the renewer makes
    it at its start (its first status), so missing means it could not (the appliance's certs
    volume a bind mount Docker made root's, or another UID's), or it never ran. It can then
    neither run certbot nor write its status, and only the entrypoint's log said so.

    Judged on the nearest directory above that exists, for the renewer its status file names
    (none can exist here: the renewer itself asks with its own ids) or, without one, the reader
    if not root (the appliance's mirror and renewer are one user) and only in the appliance's
    layout: that directory not the reader's, inside one of the reader's own; root says
    nothing. The fix
    named makes config_dir alone, not the directory above (``/var`` on a host install)."""
    top = config_dir.parent
    while not top.exists():
        if top.parent == top:
            return None
        top = top.parent
    me, uid = os.geteuid(), status.get("uid")
    gids = status.get("gids")
    groups = [g for g in gids if isinstance(g, int)] if isinstance(gids, list) else []
    try:
        st = top.stat()
    except OSError:
        return None
    if not isinstance(uid, int) or isinstance(uid, bool):
        # As for an existing config_dir without a record: only the appliance's layout, a
        # volume not the reader's inside a directory of the reader's own (/var/lib/docxy); a
        # host install whose renewer runs as root (/etc/letsencrypt not made yet) is not
        # told to give root's future certbot tree to the mirror's user.
        if me == 0 or st.st_uid == me or not _owned_by(top.parent, me):
            return None
        uid, groups = me, list(dict.fromkeys([os.getegid(), *os.getgroups()]))
    if uid == 0:
        return None
    if uid == me and os.access(top, os.W_OK | os.X_OK, effective_ids=_EFFECTIVE):
        return None
    if _mode_lets(st, uid, groups) or (uid != me and _has_acl(top)):
        return None
    owner = f"{uid}:{groups[0]}" if groups else str(uid)
    path = shlex.quote(str(config_dir))
    return (
        f"certs.config_dir {config_dir} does not exist and the renewer, uid {uid}, cannot make "
        f"it: {top} is uid {st.st_uid}'s (mode {stat.S_IMODE(st.st_mode):o}), so it can neither "
        f"run certbot nor write its status. Make it the renewer's, as root: "
        f"`mkdir -p {path} && chown {owner} {path}` (or `chown -R {owner} {shlex.quote(str(top))}`"
        " where that directory is the renewer's volume)"
    )


def _owned_by(directory: Path, uid: int) -> bool:
    try:
        return directory.stat().st_uid == uid
    except OSError:
        return False


def _mode_lets(st: os.stat_result, uid: int, gids: list[int]) -> bool:
    """Whether the mode bits let `uid` (in `gids`) make files in the directory `st` is of:
    the owner's bits for its owner, the group's for its group, the others' for the rest."""
    if st.st_uid == uid:
        need = stat.S_IWUSR | stat.S_IXUSR
    elif st.st_gid in gids:
        need = stat.S_IWGRP | stat.S_IXGRP
    else:
        need = stat.S_IWOTH | stat.S_IXOTH
    return st.st_mode & need == need


def _has_acl(path: Path) -> bool:
    """Whether `path` has a POSIX access ACL (its entries may let a user the bits do not)."""
    try:
        os.getxattr(path, "system.posix_acl_access")
    except (OSError, AttributeError):
        return False
    return True


#: The times in the renewer's status file; and in its parts, by part.
RENEWAL_TIMES = ("last_run", "last_success", "failing_since", "next_run")
RENEWAL_PART_TIMES = {"set_aside": "at", "certificate": "not_after", "interrupted": "at"}


def renewal_status(config_dir: Path) -> dict[str, object]:
    """The renewer's last status (for /health): last run, last error, next run, certificate
    (its days left and whether it expires soon as of now, not of the renewer's last run).

    Its times as ``/health``'s others (:func:`docxy.core.stamps.utc_stamp`): the file keeps
    ``isoformat()``'s, with microseconds (``scheduler.runs``), in files of every version."""
    path = config_dir / STATUS_FILE
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        data = {"error": f"no renewer status in {path}: {exc.__class__.__name__}"}
    if not isinstance(data, dict):
        data = {"error": f"{path}: not a JSON object"}
    stranded = stranded_config_dir(config_dir, {} if "error" in data else data)
    if stranded is not None:  # /health degraded, `docxy certs status` exit 1; not `refused`
        data["config_dir_unwritable"] = stranded
    if "error" in data:
        return data
    from docxy.tls.context import refreshed

    if isinstance(data.get("certificate"), dict):
        data["certificate"] = refreshed(data["certificate"])
    for key in RENEWAL_TIMES:
        if key in data:
            data[key] = restamped(data[key])
    for part, key in RENEWAL_PART_TIMES.items():
        within = data.get(part)
        if isinstance(within, dict) and key in within:
            within[key] = restamped(within[key])
    return data


#: What the public ``/health`` shows of :func:`renewal_status`: when the renewer ran, how many
#: runs failed since when, when it runs next. Not certbot's words (``last_error``), the refused
#: settings' (``refused``: true), where a lineage was set aside nor why, the certificate file:
#: they name the server's files and settings (``/status.json`` has them).
PUBLIC_RENEWAL = (
    "last_run",
    "last_success",
    "failures",
    "failing_since",
    "next_run",
    "reload_pending",
)
#: The public ``error`` of a renewer status that cannot be read (the admin's names the file).
NO_RENEWAL_STATUS = "no renewer status"


def public_renewal(status: dict[str, object]) -> dict[str, object]:
    """The ``renewal`` part of the public ``/health``, of :func:`renewal_status`'s."""
    if "error" in status:
        unread: dict[str, object] = {"error": NO_RENEWAL_STATUS}
        if status.get("config_dir_unwritable"):  # the words stay on /status.json
            unread["config_dir_unwritable"] = True
        return unread
    shown = {key: status[key] for key in PUBLIC_RENEWAL if key in status}
    certificate = status.get("certificate")
    if isinstance(certificate, dict):
        if "error" in certificate:  # the served files could not be read
            shown["certificate"] = {"unreadable": True}
        else:
            told = {key: certificate[key] for key in PUBLIC_CERTIFICATE if key in certificate}
            shown["certificate"] = {**told, "clients_refuse": bool(certificate.get("warning"))}
    set_aside = status.get("set_aside")
    if isinstance(set_aside, dict):  # when (its reason is certbot's words, moved_to a path)
        shown["set_aside"] = {"at": set_aside.get("at")}
    interrupted = status.get("interrupted")
    if isinstance(interrupted, dict):
        shown["interrupted"] = {key: interrupted.get(key) for key in ("at", "signal")}
    if status.get("refused"):
        shown["refused"] = True
    if status.get("config_dir_unwritable"):  # stranded_config_dir: the renewer is stuck
        shown["config_dir_unwritable"] = True
    return shown


# --- `docxy certs ...` ------------------------------------------------------------------------


def register_cli(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``docxy certs obtain|renew|status``; ``args.handler(args, config_from_args)`` runs it."""
    certs = subparsers.add_parser("certs", help="obtain, renew and inspect the TLS certificate")
    certs.add_argument("--config", type=Path, help="TOML config file (default: $DOCXY_CONFIG)")
    certs.add_argument(
        "--set", metavar="SECTION.KEY=VALUE", action="append", default=[], help="any setting"
    )
    certs.set_defaults(handler=run_cli, no_library_prefix=False, no_cache=False)
    sub = certs.add_subparsers(dest="certs_command", metavar="ACTION", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        # Also after the action, as `docxy cache ls --config` takes it (SUPPRESS: not given
        # here, the one given before the action stays); `--set` there goes to a list of its own,
        # joined after the one given before the action by run_cli (the last wins).
        p.add_argument("--config", type=Path, default=argparse.SUPPRESS, help="TOML config file")
        p.add_argument(
            "--set",
            dest="set_after",
            metavar="SECTION.KEY=VALUE",
            action="append",
            default=[],
            help="any setting",
        )
        p.add_argument("--config-dir", type=Path, help="certbot's directory (certs.config_dir)")
        p.add_argument("--ca-bundle", type=Path, help="CA bundle for the ACME server's TLS")
        # Not tls.cert_path overrides: the files need not exist yet.
        p.add_argument("--cert", dest="install_cert", type=Path, help="cert file (tls.cert_path)")
        p.add_argument("--key", dest="install_key", type=Path, help="key file (tls.key_path)")

    obtain_p = sub.add_parser("obtain", help="get a certificate by HTTP-01 through the webroot")
    obtain_p.add_argument("--domain", help="the mirror's DNS name (certs.domain)")
    obtain_p.add_argument("--email", help="ACME account contact (certs.email; optional)")
    obtain_p.add_argument("--staging", action="store_true", help="Let's Encrypt staging")
    obtain_p.add_argument("--acme-server", help="ACME directory URL (certs.acme_server)")
    obtain_p.add_argument("--webroot", type=Path, help="served webroot (certs.webroot)")
    obtain_p.add_argument("--dry-run", action="store_true", help="certbot --dry-run")
    common(obtain_p)
    renew_p = sub.add_parser("renew", help="renew what is due and install it")
    renew_p.add_argument("--force", action="store_true", help="renew even if not due")
    renew_p.add_argument("--dry-run", action="store_true", help="certbot --dry-run")
    # A lineage certbot cannot renew (docxy.tls.lineage) is obtained anew, through these:
    renew_p.add_argument("--webroot", type=Path, help="served webroot (certs.webroot)")
    renew_p.add_argument("--acme-server", help="ACME directory URL (certs.acme_server)")
    renew_p.add_argument("--email", help="ACME account contact (certs.email; optional)")
    common(renew_p)
    common(sub.add_parser("status", help="show the installed certificate as JSON"))


def run_cli(args: argparse.Namespace, load: Callable[[argparse.Namespace], Config]) -> int:
    """Run one ``docxy certs`` action; `load` is the CLI's flags+env+TOML config loader."""
    flags = {
        "certs.domain": getattr(args, "domain", None),
        "certs.email": getattr(args, "email", None),
        "certs.acme_server": getattr(args, "acme_server", None),
        "certs.webroot": getattr(args, "webroot", None),
        "certs.config_dir": args.config_dir,
        "certs.ca_bundle": args.ca_bundle,
    }
    given = [*args.set, *getattr(args, "set_after", [])]  # before the action, then after it
    args.set = [*given, *(f"{k}={v}" for k, v in flags.items() if v is not None)]
    try:
        return _dispatch(args, load(args))
    except ConfigError as exc:  # a setting missing or wrong: exit 2, as `docxy serve` does
        print(f"docxy certs {args.certs_command}: config error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except (CertbotError, CertError, ValueError) as exc:  # ValueError: the lineage's state
        print(f"docxy certs {args.certs_command}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except OSError as exc:  # a webroot, config dir or certificate path it may not write
        where = f": {exc.filename}" if exc.filename else ""
        print(f"docxy certs {args.certs_command}: {exc.strerror or exc}{where}", file=sys.stderr)
        return EXIT_FAILED


NO_TLS = (
    "no certificate is managed here: TLS is not configured (tls.cert_path and tls.key_path are"
    " not set), so the mirror serves plain HTTP only. For HTTPS in the container appliance set"
    " DOCXY_DOMAIN in .env (the entry point derives the rest); elsewhere set tls.cert_path and"
    " tls.key_path (env DOCXY_TLS_CERT_PATH and DOCXY_TLS_KEY_PATH, or --cert and --key here)"
)


def _renewer_refusal(config_dir: Path | None, domain: str | None) -> str | None:
    """Why the renewer refuses its settings and schedules nothing, from its status file
    (``refused``: ``scheduler.main.hold``); None when it does not say so. Without a
    ``domain``, only a refusal written without one (as the mirror's /health shows it:
    ``docxy.http.server.renewal_provider``): one left by a renewer that had a domain stands
    for settings no renewer reads any more."""
    if config_dir is None:
        return None
    status = renewal_status(config_dir)
    refused = status.get("refused")
    if not refused or (domain is None and status.get("domain", "") is not None):
        return None
    return str(refused)


def _renewer_stuck(config_dir: Path | None, domain: str | None) -> str | None:
    """Why the renewer cannot write ``certs.config_dir`` (:func:`stranded_config_dir`, as
    ``renewal_status`` says it); None when it can, or without a ``domain`` (no renewer works
    there then, as the mirror's /health does not look: ``docxy.http.server.renewal_provider``)."""
    if config_dir is None or domain is None:
        return None
    stuck = renewal_status(config_dir).get("config_dir_unwritable")
    return str(stuck) if stuck else None


def required(value: T | None, key: str) -> T:
    """`value`, or ConfigError naming the unset `key` and where to give it."""
    if value is None:
        env = "DOCXY_" + key.replace(".", "_").upper()
        raise ConfigError(f"{key}: not set (give the flag, env {env} or the TOML key)")
    return value


def _dispatch(args: argparse.Namespace, config: Config) -> int:
    certs = config.certs
    cert_path: Path | None = args.install_cert or config.tls.cert_path
    key_path: Path | None = args.install_key or config.tls.key_path
    if args.certs_command == "status":
        # Read first: without TLS the refusal recorded in the renewer's status file is often
        # why there is none, and the operator asking was told "no TLS" alone.
        halted = _renewer_refusal(certs.config_dir, certs.domain)
        if halted is not None:
            print(
                f"docxy certs {args.certs_command}: the renewer refuses its settings and "
                f"renews nothing: {halted}",
                file=sys.stderr,
            )
        stuck = _renewer_stuck(certs.config_dir, certs.domain)
        if stuck is not None:  # scheduled, and failing at every run
            print(f"docxy certs {args.certs_command}: {stuck}", file=sys.stderr)
        if cert_path is None and key_path is None:
            raise ConfigError(NO_TLS)
        cert, key = required(cert_path, "tls.cert_path"), required(key_path, "tls.key_path")
        described = describe_files(cert, key, certs.domain)
        if halted is not None:
            described["renewer_refused"] = halted
        if stuck is not None:
            described["renewer_config_dir_unwritable"] = stuck
        print(json.dumps(described, indent=2))
        failed = "error" in described or halted is not None or stuck is not None
        return EXIT_FAILED if failed else EXIT_OK  # shown either way; a script sees the failure
    from docxy.tls.lineage import Lineage  # which imports this module

    for setting, refusal in config.renewer_errors:  # certbot is told certs.email, as the renewer
        if setting.startswith("certs."):
            raise ConfigError(refusal)
    lineage = Lineage.of(certs, staging=getattr(args, "staging", False))
    if lineage.staging and lineage.acme_server:
        raise ConfigError("give either an ACME server (certs.acme_server) or --staging, not both")
    if args.certs_command == "obtain":
        required(certs.webroot, "certs.webroot")
    # Run as root (`docker compose exec -u 0 docxy docxy certs renew`), certbot, what is set
    # aside and the installed pair are the owner's of their directory (the renewer's and the
    # mirror's user), and what an earlier root run left root's is handed back to it: root's,
    # the renewer failed at its next run (EACCES) and the mirror could not read its key. On a
    # host install whose directories are root's, all runs as root, as before. A root that may
    # not change its uid (cap_drop) fails here, saying how to run it (an OSError: run_cli).
    mirror = config.cache.dir  # its owner is the mirror's user: the only one root acts as
    owner = certbots_owner(lineage.config_dir, lineage.webroot, mirror=mirror)
    with owner.acting():
        # certs.ca_bundle, as certbot's user will read it: said here, not by its failing TLS
        check_ca_bundle(config)
        if args.certs_command == "obtain":
            # As the renewer does: an issued lineage is renewed (when due), never issued over
            # into <domain>-0001; one certbot cannot go on from is set aside and obtained anew.
            lineage.ensure(dry_run=args.dry_run)
        else:
            lineage.renew(force=args.force, dry_run=args.dry_run)
    live = lineage.live
    if lineage.set_aside is not None:
        aside = lineage.set_aside
        print(f"set aside to {aside.moved_to} and obtained anew: {aside.reason}")
    print(live)
    if cert_path is not None and key_path is not None and not args.dry_run:
        with pairs_owner(cert_path, key_path, mirror=mirror).acting():
            changed = install(live, cert_path, key_path)
        print(f"{'installed' if changed else 'unchanged'}: {cert_path}")
    return EXIT_OK


def certbots_owner(
    config_dir: Path, webroot: Path | None, *, mirror: Path | None, also: Path | None = None
) -> Owner:
    """Whom a run as root acts as for certbot's work (:class:`docxy.cli.owner.Owner`): the
    owner of `config_dir`, the renewer's user, once what earlier root runs left root's there
    (and in the webroot's ``.well-known/``, where that user's certbot writes its tokens) is
    handed over to it. Root itself where that directory is root's (a host install), where that
    owner is not the mirror's user (the owner of `mirror`, cache.dir: a login user's directory
    holding a root mirror's), or where `also`, a directory the same run writes in, is not that
    owner's (as before: all as root)."""
    owner = Owner.of(config_dir, mirror=mirror)
    if also is not None and Owner.of(also, mirror=mirror).uid != owner.uid:
        return Owner(0, 0, config_dir)
    owner.hand_over_tree(config_dir)
    if webroot is not None and Owner.of(webroot, mirror=mirror).uid == owner.uid:
        owner.hand_over_tree(webroot / ".well-known")
    return owner


def pairs_owner(cert_path: Path, key_path: Path, *, mirror: Path | None) -> Owner:
    """Whom a run as root writes the served pair as: the owner of its directory where that is
    the mirror's user (the owner of `mirror`, cache.dir), once the files an older root run
    left root's there are handed over to it."""
    served = Owner.of(cert_path.parent, mirror=mirror)
    served.hand_over(cert_path.parent, _pair_names(cert_path))
    if key_path.parent != cert_path.parent:
        keys = Owner.of(key_path.parent, mirror=mirror)
        keys.hand_over(key_path.parent, _pair_names(key_path))
    return served


def _pair_names(path: Path) -> list[str]:
    """`path`'s name and its pending one's (:func:`docxy.tls.files.write_pair`): what a root
    run of an older version may have left root's in its directory."""
    return [path.name, pending_path(path).name]
