"""The server's TLS context, reloadable while connections are open.

A reload reads the certificate and key files once, checks the pair (parsed with `cryptography`),
and loads the same bytes into a new context of their own, which becomes
:attr:`ReloadableTLS.context`. The edge takes that attribute for each new handshake
(``docxy.edge.connections``): new handshakes get the new certificate, established connections
keep theirs. Nothing is ever loaded into a
context in service: a failed `load_cert_chain` would leave it half-loaded, and OpenSSL keeps one
certificate per key type in a context, so a new ECDSA pair loaded over an RSA one (or the reverse)
would leave the old certificate served to every client that prefers the old type.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import logging
import os
import re
import ssl
import stat
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from docxy.core.stamps import aware, utc_stamp
from docxy.tls import trust
from docxy.tls.files import PUBLIC_CERTIFICATE, write_pair
from docxy.tls.files import CertError as CertError  # its callers import it here
from docxy.tls.files import write_files_atomic as write_files_atomic  # its callers import it here

log = logging.getLogger(__name__)

ALPN = ["http/1.1"]

#: A certificate "expires soon" with less than this left, or a sixth of its lifetime if less
#: (a short-lived one). certbot renews a 90-day certificate at 30 days left: at 7, renewals have
#: failed for more than three weeks.
EXPIRY_WARNING = dt.timedelta(days=7)
#: How long a self-signed pair that could not be renewed (written or loaded) is left alone.
OWN_RETRY = dt.timedelta(hours=1)
#: How long the files may hold a pair the mirror refuses before ``/health`` says so (``warning``,
#: ``degraded``): longer than a read between an installer's two renames or a network volume's
#: passing error, which the next look serves; far shorter than the weeks a renewed certificate
#: refused went unseen, until the old one was days from its end.
RELOAD_GRACE = dt.timedelta(hours=1)


@dataclass(frozen=True)
class CertInfo:
    """What a user wants to know about a served certificate."""

    subject: str
    sans: tuple[str, ...]
    serial: str
    not_after: dt.datetime
    fingerprint: str
    not_before: dt.datetime | None = None
    #: Issued by itself (its issuer is its subject): the bootstrap pair, the mirror's own.
    self_signed: bool = False
    #: Issued by a CA that names itself a test CA: Let's Encrypt's staging CA puts
    #: ``(STAGING)`` before its names (:data:`STAGING_MARK`), and no client trusts it.
    staging: bool = False
    #: Shaped as the mirror writes its own (:func:`_self_signed_pems`): an EC key, and exactly
    #: the key identifiers, one name and critical basic constraints that say it is no CA.
    #: ``openssl req -x509`` writes ``CA:TRUE``: a pair made by hand so is never the mirror's.
    mirror_shaped: bool = False
    #: Its issuer's certificate is in the served file too (or it is its own issuer): a leaf
    #: served without its intermediate is refused by clients that do not fetch it (Go's).
    issuer_included: bool = True
    #: The validity of that issuer's certificate, as served (None: not served, or its own).
    issuer_not_before: dt.datetime | None = None
    issuer_not_after: dt.datetime | None = None
    issuer: str = ""

    def out_of_date(self, now: dt.datetime | None = None) -> str | None:
        """Why clients refuse the chain as of ``now`` for its dates, not its names: the
        certificate not valid yet, or the intermediate that issued it served outside its
        validity, or the certificate expired (None: none of these). An expired one degraded
        ``/health`` through :meth:`expires_soon` alone: ``clients_refuse`` stayed false and
        ``warning`` null while every client refused it.

        Said whatever the certificate is (a CA's, the mirror's own, one installed by hand): no
        client takes it. Only the issuer's certificate is looked at, not those above it: a
        client stops at a root it trusts, so an expired cross-signature further up the chain
        (Let's Encrypt's of 2021) is passed over by most."""
        now = now or _utcnow()
        refused = "clients refuse it (x509: certificate has expired or is not yet valid)"
        clock = (
            "this host's clock, or the CA's, is wrong (check its time sync: timedatectl); a"
            " client whose clock is right takes it if this host's is behind"
        )
        if self.not_after <= now:
            return f"the certificate expired at {utc_stamp(self.not_after)}: {refused}"
        if self.not_before is not None and self.not_before > now:
            return (
                f"the certificate is not valid before {utc_stamp(self.not_before)}, by this"
                f" host's clock {_ahead(self.not_before - now)} from now: {refused}; {clock}"
            )
        if self.issuer_not_after is not None and self.issuer_not_after <= now:
            return (
                f"the intermediate that issued the certificate ({self.issuer}) expired at"
                f" {utc_stamp(self.issuer_not_after)}: {refused}; install the chain the CA"
                " issues now (certbot's current fullchain.pem: `docxy certs renew --force`)"
            )
        if self.issuer_not_before is not None and self.issuer_not_before > now:
            return (
                f"the intermediate that issued the certificate ({self.issuer}) is not valid"
                f" before {utc_stamp(self.issuer_not_before)}, by this host's clock"
                f" {_ahead(self.issuer_not_before - now)} from now: {refused}; {clock}"
            )
        return None

    def verdict(self, domain: str | None) -> tuple[str, str | None]:
        """What is served (:func:`docxy.tls.trust.served_kind`) and why clients refuse it: for
        its names and issuer (:func:`docxy.tls.trust.verdict`), then for its dates
        (:meth:`out_of_date`); None: nothing."""
        served, refused = trust.verdict(
            self.self_signed,
            self.sans,
            domain,
            staging=self.staging,
            issuer_included=self.issuer_included,
        )
        said = [why for why in (refused, self.out_of_date()) if why is not None]
        return served, "; ".join(said) or None

    def expires_soon(self, now: dt.datetime | None = None) -> bool:
        """Less than :data:`EXPIRY_WARNING` left (a sixth of its lifetime if less), or expired."""
        return expires_soon(self.not_after, self.not_before, now)

    def days_left(self, now: dt.datetime | None = None) -> float:
        return days_left(self.not_after, now)

    def as_dict(self) -> dict[str, object]:
        return {
            "subject": self.subject,
            "sans": list(self.sans),
            "serial": self.serial,
            "not_before": utc_stamp(self.not_before),
            "not_after": utc_stamp(self.not_after),
            "days_left": self.days_left(),
            "expires_soon": self.expires_soon(),
        }


def expires_soon(
    not_after: dt.datetime, not_before: dt.datetime | None, now: dt.datetime | None = None
) -> bool:
    """:meth:`CertInfo.expires_soon` of a certificate valid from ``not_before`` (None: not
    known, the margin is :data:`EXPIRY_WARNING`) to ``not_after``."""
    now = now or dt.datetime.now(dt.UTC)
    margin = EXPIRY_WARNING
    if not_before is not None:
        margin = min(margin, (not_after - not_before) / 6)
    return not_after - now < margin


def _ahead(delta: dt.timedelta) -> str:
    """A time ahead in words: ``3.0 h``, ``2.5 days``."""
    hours = delta.total_seconds() / 3600
    return f"{hours:.1f} h" if hours < 48 else f"{hours / 24:.1f} days"


def days_left(not_after: dt.datetime, now: dt.datetime | None = None) -> float:
    now = now or dt.datetime.now(dt.UTC)
    return round((not_after - now).total_seconds() / 86400, 2)


def refreshed(described: dict[str, object], now: dt.datetime | None = None) -> dict[str, object]:
    """``described`` (an :meth:`CertInfo.as_dict` written earlier, as the renewer's status file
    keeps it) with its ``days_left`` and ``expires_soon`` as of ``now``: they were as of its
    writing, hours ago. Left as it is if its ``not_after`` is not a time with an offset."""
    after, before = aware(described.get("not_after")), aware(described.get("not_before"))
    if after is None or (before is None and described.get("not_before") is not None):
        return described
    now_told = {
        "days_left": days_left(after, now),
        "expires_soon": expires_soon(after, before, now),
    }
    return {key: now_told.get(key, value) for key, value in described.items()}


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _within(elapsed: dt.timedelta, limit: dt.timedelta) -> bool:
    """Whether `elapsed` (since a warning or an attempt) is less than `limit`. A negative one is
    not: the clock stepped back since, and the quiet time counted from the old clock would
    last the whole step (a clock a month ahead, then set right: a month without warnings)."""
    return dt.timedelta(0) <= elapsed < limit


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise CertError(f"{what} {path}: unreadable ({exc.strerror or exc})") from exc


def inspect_pair(cert_pem: bytes, key_pem: bytes, cert_path: Path, key_path: Path) -> CertInfo:
    """Parse a PEM chain and key, check they belong together, describe the leaf certificate."""
    try:
        chain = x509.load_pem_x509_certificates(cert_pem)
    except ValueError as exc:
        raise CertError(f"certificate {cert_path}: not a PEM certificate ({exc})") from exc
    begun = cert_pem.count(b"-----BEGIN CERTIFICATE-----")
    if begun != len(chain):  # the parser drops an unfinished last block: a file being copied
        raise CertError(
            f"certificate {cert_path}: {len(chain)} of its {begun} certificates are whole "
            "(still being written?)"
        )
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise CertError(f"key {key_path}: not an unencrypted PEM private key") from exc
    leaf = chain[0]
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    der = serialization.Encoding.DER
    try:
        # Parsed on first use: a key of a type cryptography does not know, an extension that
        # is not what its OID says (an IP address entry one byte long), one given twice.
        leaf_key = leaf.public_key().public_bytes(der, spki)
        info = describe(leaf)
    except (ValueError, TypeError, UnsupportedAlgorithm, x509.DuplicateExtension) as exc:
        raise CertError(f"certificate {cert_path}: cannot be read ({exc})") from exc
    if leaf_key != key.public_key().public_bytes(der, spki):
        raise CertError(f"key {key_path} does not match certificate {cert_path}")
    if leaf.issuer == leaf.subject:
        return info
    issuer = next((c for c in chain[1:] if c.subject == leaf.issuer), None)
    if issuer is None:
        return replace(info, issuer_included=False)
    return replace(
        info,
        issuer_not_before=issuer.not_valid_before_utc,
        issuer_not_after=issuer.not_valid_after_utc,
        issuer=issuer.subject.rfc4514_string(),
    )


def kept_over_expired(
    new: CertInfo, served: CertInfo | None, cert_path: Path, now: dt.datetime | None = None
) -> str | None:
    """Why the certificate at ``cert_path`` (``new``) must not replace the one ``served``:
    it has expired and that one has not (a restored backup, a lineage whose renewals failed
    for months, a ``cp`` of the wrong files); None when it may (nothing better is served)."""
    now = now or _utcnow()
    if served is None or new.not_after > now or served.not_after <= now:
        return None
    return (
        f"certificate {cert_path} expired at {utc_stamp(new.not_after)}: the one served "
        f"(serial {served.serial}, valid until {utc_stamp(served.not_after)}) is kept"
    )


def kept_over_not_yet_valid(
    new: CertInfo, served: CertInfo | None, cert_path: Path, now: dt.datetime | None = None
) -> str | None:
    """Why the certificate at ``cert_path`` (``new``) must not replace the one ``served`` yet:
    it is not valid yet by this host's clock (the CA's clock ahead of this host's, or this
    host's behind) and the one served is valid now; None when it may (nothing valid is served).
    Installed, clients whose clocks agree with this host's refused it until its notBefore; kept
    out, a later run installs it once it is valid.

    A CA's certificate always replaces a pair no client trusts anyway (:func:`untrusted_over`:
    the self-signed bootstrap pair of a first issuance): a host whose clock is behind by more
    than the CA's backdating (Let's Encrypt's, an hour) kept serving the bootstrap pair, where
    clients, whose clocks are right, would have taken the new one."""
    now = now or _utcnow()
    if served is None or new.not_before is None or new.not_before <= now:
        return None
    if served.not_after <= now or (served.not_before is not None and served.not_before > now):
        return None
    if untrusted_over(new, served):
        return None
    return (
        f"certificate {cert_path} is not valid before {utc_stamp(new.not_before)}, by this "
        f"host's clock {_ahead(new.not_before - now)} from now (this host's clock, or the "
        f"CA's, is wrong: check its time sync): the one served (serial {served.serial}, valid "
        f"until {utc_stamp(served.not_after)}) is kept, and the new one installed by a run once "
        "it is valid"
    )


def _waiting(info: CertInfo) -> dict[str, object]:
    """``tls.waiting`` in /health: the pair at the served paths, not valid yet."""
    return {"serial": info.serial, "not_before": utc_stamp(info.not_before)}


def untrusted_over(new: CertInfo, served: CertInfo) -> bool:
    """Whether ``served`` is a pair no client trusts (self-signed: the mirror's bootstrap pair;
    or from a staging CA) and ``new`` one a CA issued that is not such: a CA's certificate
    clients may take, whatever this host's clock says of it, is better served."""
    if new.self_signed:
        return False
    return served.self_signed or (served.staging and not new.staging)


def clock_behind(new: CertInfo, cert_path: Path, now: dt.datetime | None = None) -> str | None:
    """The warning for installing ``new`` (at ``cert_path``) before its notBefore by this host's
    clock (nothing served that clients take: :func:`kept_over_not_yet_valid` let it through);
    None when it is valid now."""
    now = now or _utcnow()
    if new.not_before is None or new.not_before <= now:
        return None
    return (
        f"installing certificate {cert_path}, not valid before {utc_stamp(new.not_before)}, by "
        f"this host's clock {_ahead(new.not_before - now)} from now: this host's clock looks "
        "behind (check its time sync: timedatectl); clients whose clocks are right take it"
    )


#: A private key's PEM block (``PRIVATE KEY``, ``EC PRIVATE KEY``, ``RSA PRIVATE KEY``).
_KEY_BLOCK = re.compile(
    rb"-----BEGIN ([A-Z ]*)PRIVATE KEY-----.+?-----END \1PRIVATE KEY-----", re.DOTALL
)


def chain_fingerprint(cert_pem: bytes) -> str:
    """SHA-256 over every certificate of a PEM chain, in order: two chains with the same leaf
    but other intermediates (the leaf alone, then the full chain) differ."""
    digest = hashes.Hash(hashes.SHA256())
    for cert in x509.load_pem_x509_certificates(cert_pem):
        digest.update(cert.fingerprint(hashes.SHA256()))
    return digest.finalize().hex()


def describe(cert: x509.Certificate) -> CertInfo:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = [*san.get_values_for_type(x509.DNSName)]
        names += [str(ip) for ip in san.get_values_for_type(x509.IPAddress)]
    except x509.ExtensionNotFound:
        names = []
    return CertInfo(
        subject=cert.subject.rfc4514_string(),
        sans=tuple(names),
        serial=format(cert.serial_number, "x"),
        not_after=cert.not_valid_after_utc,
        fingerprint=cert.fingerprint(hashes.SHA256()).hex(),
        not_before=cert.not_valid_before_utc,
        self_signed=cert.issuer == cert.subject,
        staging=from_staging(cert.issuer),
        mirror_shaped=_mirror_shaped(cert),
    )


#: The extensions :func:`_self_signed_pems` writes, and no other.
_OWN_EXTENSIONS = frozenset(
    {
        x509.SubjectKeyIdentifier,
        x509.AuthorityKeyIdentifier,
        x509.SubjectAlternativeName,
        x509.BasicConstraints,
    }
)


def _mirror_shaped(cert: x509.Certificate) -> bool:
    """Whether ``cert`` is shaped as the mirror's own (:attr:`CertInfo.mirror_shaped`)."""
    try:
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints)
        kinds = {type(extension.value) for extension in cert.extensions}
    except (x509.ExtensionNotFound, ValueError):
        return False
    return (
        constraints.critical
        and not constraints.value.ca
        and kinds == _OWN_EXTENSIONS
        and isinstance(cert.public_key(), ec.EllipticCurvePublicKey)
    )


#: How Let's Encrypt's staging CA marks the names of its roots and intermediates (and so the
#: issuer of every certificate it issues): "(STAGING) Ersatz Edamame E1", "(STAGING) Let's
#: Encrypt".
STAGING_MARK = "(STAGING)"


def from_staging(issuer: x509.Name) -> bool:
    """Whether a certificate with this issuer comes from Let's Encrypt's staging CA: its
    common name or its organization starts with :data:`STAGING_MARK`."""
    for oid in (NameOID.COMMON_NAME, NameOID.ORGANIZATION_NAME):
        for attribute in issuer.get_attributes_for_oid(oid):
            value = attribute.value
            if isinstance(value, str) and value.startswith(STAGING_MARK):
                return True
    return False


def _new_context() -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    # Every suite left is strong, so the client chooses (Python's default is the server's
    # order, which puts AES-256 first): Docker's Go client asks for AES-128-GCM, cheaper for
    # both ends on every byte of a layer, and a client without AES hardware asks for ChaCha20.
    ctx.options &= ~ssl.OP_CIPHER_SERVER_PREFERENCE
    ctx.set_alpn_protocols(ALPN)
    return ctx


def ask_for_client_certificates(ctx: ssl.SSLContext, ca: Path) -> None:
    """Ask each client for a certificate issued by ``ca`` (``docxy clients add``), without
    requiring one: clients that have none (``docker login`` users) still connect, and the app
    decides what they may do. A certificate from another issuer fails the handshake."""
    try:
        ctx.load_verify_locations(cafile=str(ca))
    except (OSError, ssl.SSLError) as exc:
        raise CertError(f"client CA {ca}: unusable ({exc})") from exc
    ctx.verify_mode = ssl.CERT_OPTIONAL


def _load(ctx: ssl.SSLContext, cert_pem: bytes, key_pem: bytes, cert_path: Path) -> None:
    """Load exactly these bytes (not whatever the files hold by now) into `ctx`.

    OpenSSL takes only a path, so they go to an anonymous memory file (``memfd``, named by
    ``/proc/self/fd``): the key is never written to a filesystem. Only where there is none
    (no memfd or no ``/proc``) a 0600 temp file holds them, removed once loaded.
    """
    unloadable = f"certificate {cert_path}: cannot be loaded"
    fd = -1
    if hasattr(os, "memfd_create") and os.path.isdir("/proc/self/fd"):
        try:
            fd = os.memfd_create("docxy-tls", os.MFD_CLOEXEC)
        except OSError:  # a kernel or sandbox without it
            fd = -1
    on_disk = fd < 0
    if on_disk:
        try:
            fd, name = tempfile.mkstemp(prefix="docxy-tls-", suffix=".pem")  # mode 0600
        except OSError as exc:  # a full or read-only temp directory
            raise CertError(f"{unloadable} ({exc.strerror or exc})") from exc
    else:
        name = f"/proc/self/fd/{fd}"
    try:
        with open(fd, "wb", closefd=False) as fh:
            # The key alone: OpenSSL serves the first certificate of the file it is given, and
            # a key file may hold one too (key and certificate in one PEM, an older issuance).
            found = _KEY_BLOCK.search(key_pem)
            key_only = found.group(0) if found is not None else key_pem
            fh.write(key_only.rstrip(b"\n") + b"\n" + cert_pem)
        ctx.load_cert_chain(name)
    except ssl.SSLError as exc:
        raise CertError(f"certificate {cert_path}: rejected by OpenSSL ({exc.reason})") from exc
    except OSError as exc:  # the temp file's write (ENOSPC): never a bare error past reload()
        raise CertError(f"{unloadable} ({exc.strerror or exc})") from exc
    finally:
        os.close(fd)
        if on_disk:
            os.unlink(name)


#: Mode bits of a private key file that let others than its owner and group read it, or others
#: than its owner change it: 0644 (a ``cp`` under the usual umask), 0666, 0660. 0600 and 0640
#: (Debian's ssl-cert group) are fine.
KEY_EXPOSED_BITS = 0o027


def key_exposure(key_path: Path) -> str | None:
    """Why the key file's mode lets others at it (its mode, said), or None: fine or not known."""
    try:
        mode = stat.S_IMODE(key_path.stat().st_mode)
    except OSError:
        return None
    if not mode & KEY_EXPOSED_BITS:
        return None
    who = "every local user may read it" if mode & 0o004 else "others than its owner may change it"
    return f"private key {key_path} has mode {mode:04o}: {who} (chmod 600, or 640 for a group)"


def _file_signature(*paths: Path) -> tuple[tuple[int, int, int, int], ...]:
    """What changes when a file is replaced or rewritten, and (ctime) when its owner or mode
    does: a pair the mirror could not read, fixed by chmod or chown, is tried again."""
    sig = []
    for path in paths:
        try:
            st = path.stat()
            sig.append((st.st_mtime_ns, st.st_ctime_ns, st.st_size, st.st_ino))
        except OSError:
            sig.append((0, 0, -1, 0))
    return tuple(sig)


class ReloadableTLS:
    """The newest certificate's context (:attr:`context`, taken for each new handshake) and
    what it takes to replace it safely."""

    def __init__(
        self,
        cert_path: Path,
        key_path: Path,
        client_ca: Path | None = None,
        own: SelfSignedPair | ServedBootstrap | None = None,
        domain: str | None = None,
        hosts: Mapping[str, tuple[str, ...]] | None = None,
    ) -> None:
        self.cert_path = Path(cert_path)
        self.key_path = Path(key_path)
        self.client_ca = client_ca
        #: The mirror's own self-signed pair, served from these paths: renewed while serving
        #: (a :class:`ServedBootstrap` only while the files hold the mirror's own).
        self.own = own
        #: The name the renewer installs a CA's certificate for at these paths (certs.domain):
        #: one self-signed or for another name is refused by clients (:mod:`docxy.tls.trust`).
        self.domain = domain
        #: Other names clients reach the mirror by: each upstream's ``hosts``, by setting
        #: (``upstreams.<name>.hosts``); each one the certificate lacks is said.
        self.hosts: Mapping[str, tuple[str, ...]] = dict(hosts or {})
        self._own_tried: dt.datetime | None = None  # when a new one was last written (or not)
        self._signature = _file_signature(self.cert_path, self.key_path)
        #: Replaced (never changed) by a reload: take it per handshake, never keep it.
        self.context, self._info, self._chain = self._loaded()
        self._key_exposed: str | None = None  # what was said of the key's mode, once
        self._warn_if_key_exposed()
        self._last_reload = _utcnow()
        self._last_error: str | None = None
        #: Since when the files hold a pair that cannot be served (None: they serve).
        self._failing_since: dt.datetime | None = None
        self._warned: tuple[str, dt.datetime] | None = None  # serial and time of the last warning
        #: The files' pair, not valid yet while the one served is (:meth:`reload`): served at
        #: the first look after its notBefore.
        self._waiting: CertInfo | None = None
        log.info("TLS certificate loaded from %s: %s", self.cert_path, self._summary())
        self._warn_if_refused()
        self.warn_if_expiring()

    def _loaded(self) -> tuple[ssl.SSLContext, CertInfo, str]:
        """A new context serving the files' pair (checked first), its description and chain."""
        cert_pem = _read(self.cert_path, "certificate")
        key_pem = _read(self.key_path, "key")
        info = inspect_pair(cert_pem, key_pem, self.cert_path, self.key_path)
        context = _new_context()
        if self.client_ca is not None:
            ask_for_client_certificates(context, self.client_ca)
        _load(context, cert_pem, key_pem, self.cert_path)
        return context, info, chain_fingerprint(cert_pem)

    def _summary(self) -> str:
        info = self._info
        return (
            f"subject={info.subject} sans={','.join(info.sans)} serial={info.serial} "
            f"not_after={utc_stamp(info.not_after)}"
        )

    def reload(self) -> bool:
        """Serve the files' current pair: True if the certificate changed.

        On CertError the old certificate stays in service and the error shows in status();
        the files count as not seen yet, so the watch tries them again (a read that failed
        for a passing reason, on a network volume say, left the renewed pair unserved until
        the old one expired).

        A pair refused while the files changed under the read is read once more: an installer
        renames the new key into place, then the new certificate (:func:`write_pair`, certbot's
        live/ links), and a read between the two got the old certificate with the new key.
        """
        signature = _file_signature(self.cert_path, self.key_path)
        try:
            try:
                context, info, chain = self._loaded()
            except CertError:
                moved = _file_signature(self.cert_path, self.key_path)
                if moved == signature:
                    raise
                signature = moved  # replaced while read: once more, as they are now
                context, info, chain = self._loaded()
            expired = kept_over_expired(info, self._info, self.cert_path)
            if expired is not None:
                raise CertError(expired)
        except CertError as exc:
            self._waiting = None
            self._last_error = str(exc)
            now = _utcnow()
            if self._failing_since is None or self._failing_since > now:  # or the clock stepped
                self._failing_since = now
            raise
        self._last_error = None
        self._failing_since = None
        if kept_over_not_yet_valid(info, self._info, self.cert_path) is not None:
            self._wait_for(info)  # the files count as not seen: each look tries them again
            return False
        self._waiting = None
        self._signature = signature
        self._warn_if_key_exposed()  # a chmod alone reloads the same pair: said then too
        if chain == self._chain:  # the whole chain: a fixed intermediate is a change too
            return False
        self.context, self._info, self._chain = context, info, chain
        self._last_reload = _utcnow()
        log.info("TLS certificate reloaded from %s: %s", self.cert_path, self._summary())
        self._warn_if_refused()
        return True

    @property
    def waiting(self) -> CertInfo | None:
        """The files' pair, kept waiting for its notBefore (None: none waits)."""
        return self._waiting

    def _wait_for(self, info: CertInfo) -> None:
        """Keep the valid pair served over the files' one, not valid yet by this host's clock
        (a pair put in place by hand, a CA's clock ahead): clients whose clocks agree refuse
        it until then. It was served at once. Said once per certificate; /health shows it as
        ``tls.waiting``; the first look (or SIGHUP) after its notBefore serves it."""
        if self._waiting is None or self._waiting.serial != info.serial:
            assert info.not_before is not None  # kept_over_not_yet_valid
            log.warning(
                "TLS: the certificate %s (serial %s) is not valid before %s, by this host's "
                "clock %s from now: still serving serial %s (valid until %s), the new one "
                "from then (if this host's clock is behind: check its time sync)",
                self.cert_path,
                info.serial,
                utc_stamp(info.not_before),
                _ahead(info.not_before - _utcnow()),
                self._info.serial,
                utc_stamp(self._info.not_after),
            )
        self._waiting = info

    def _refusal(self) -> tuple[str, str | None]:
        """What is served and why clients refuse it (:meth:`CertInfo.verdict`)."""
        return self._info.verdict(self.domain)

    def _stuck(self, now: dt.datetime | None = None) -> str | None:
        """Why the files' pair, refused for :data:`RELOAD_GRACE` or longer, is not served; None
        while it serves or was refused only just now."""
        since, error = self._failing_since, self._last_error
        if since is None or error is None or (now or _utcnow()) - since < RELOAD_GRACE:
            return None
        return (
            f"the certificate files have held a pair the mirror refuses since"
            f" {utc_stamp(since)}: {error}; still serving serial {self._info.serial}, valid"
            f" until {utc_stamp(self._info.not_after)} (tried again at each look and on SIGHUP)"
        )

    def _warn_if_key_exposed(self) -> None:
        """Log, once per mode, a served key file others may read or change."""
        exposed = key_exposure(self.key_path)
        if exposed is not None and exposed != self._key_exposed:
            log.warning("TLS: %s", exposed)
        self._key_exposed = exposed

    def _warn_if_refused(self) -> None:
        """Log, once per certificate loaded, that clients will refuse it, for the domain and
        for each upstream ``hosts`` name it does not name."""
        refused = self._refusal()[1]
        if refused is not None:
            log.warning("TLS %s: %s", self.cert_path, refused)
        lacking = self._hosts_refusal()
        if lacking is not None:
            log.warning("TLS %s: %s", self.cert_path, lacking)

    def _uncovered(self) -> dict[str, tuple[str, ...]]:
        """The upstreams' ``hosts`` names the served certificate does not name, by setting."""
        return trust.uncovered(self._info.sans, self.hosts)

    def _hosts_refusal(self) -> str | None:
        return trust.hosts_refusal(self._uncovered(), self._info.sans)

    def warn_if_expiring(self, now: dt.datetime | None = None) -> None:
        """Log a warning, once every 24 hours, while the served certificate expires soon:
        renewals that keep failing show in the mirror's own log, not only in the renewer's."""
        now = now or _utcnow()
        info = self._info
        if not info.expires_soon(now):
            return
        if self._warned is not None and self._warned[0] == info.serial:
            if _within(now - self._warned[1], dt.timedelta(days=1)):
                return
        self._warned = (info.serial, now)
        why = "it has not been renewed (see the renewer's log and `renewal` in /health)"
        if self._last_error is not None:  # renewed, maybe, but not servable: not the renewer's
            why = f"the files hold a pair the mirror refuses ({self._last_error})"
        elif self._waiting is not None:  # renewed: the new pair waits for its notBefore
            waiting = self._waiting
            assert waiting.not_before is not None  # kept_over_not_yet_valid
            why = (
                f"a new certificate (serial {waiting.serial}) is in place already, but not"
                f" valid before {utc_stamp(waiting.not_before)}, and is served from then"
                " (if this host's clock is behind: check its time sync)"
            )
        if info.not_after <= now:  # not "expires in -10.0 days"
            log.warning(
                "TLS certificate %s (serial %s) expired %.1f days ago, at %s: %s",
                self.cert_path,
                info.serial,
                -info.days_left(now),
                utc_stamp(info.not_after),
                why,
            )
            return
        log.warning(
            "TLS certificate %s (serial %s) expires in %.1f days, at %s: %s",
            self.cert_path,
            info.serial,
            info.days_left(now),
            utc_stamp(info.not_after),
            why,
        )

    def renew_own_if_due(self, now: dt.datetime | None = None) -> bool:
        """Write a new self-signed pair when the mirror's own (:attr:`own`) is near its end:
        the watch then loads it like any new pair (a renewed Let's Encrypt certificate), so a
        mirror running for months never serves it out. True if it wrote one. At most once an
        hour (:data:`OWN_RETRY`): a pair that cannot be written or loaded is not retried at
        every tick."""
        now = now or _utcnow()
        own = self.own
        if own is None or not own.due(self._info, now):
            return False
        if self._own_tried is not None and _within(now - self._own_tried, OWN_RETRY):
            return False
        self._own_tried = now
        try:
            made = own.refresh()  # False: the files hold an issued pair by now (not served yet)
        except OSError as exc:
            log.error("TLS: cannot write a new self-signed certificate in %s: %s", own.dir, exc)
            return False
        if made:
            log.warning(
                "TLS: the self-signed certificate %s (serial %s) ends at %s: made a new one;"
                " clients that trust the old one must fetch the new one",
                self.cert_path,
                self._info.serial,
                utc_stamp(self._info.not_after),
            )
        return made

    def status(self) -> dict[str, object]:
        """The ``tls`` part of ``/status.json`` (:func:`public_status`: of ``/health``).
        ``warning`` says in words why clients refuse it (``clients_refuse``) and why the
        files' pair is not served (``reload_refused``: refused for :data:`RELOAD_GRACE`)."""
        served, refused = self._refusal()
        stuck = self._stuck()
        said = [why for why in (refused, stuck) if why is not None]
        # Not in ``warning``: a name routed by host is one of the mirror's ways in, and
        # /health keeps saying whether the mirror's own name is served (the status page shows it).
        lacking = self._uncovered()
        return {
            "cert_path": str(self.cert_path),
            "served": served,
            "domain": self.domain,
            "warning": "; ".join(said) or None,
            "clients_refuse": refused is not None,
            "reload_refused": stuck is not None,
            **self._info.as_dict(),
            "last_reload": utc_stamp(self._last_reload),
            "last_error": self._last_error,
            "reload_failing_since": utc_stamp(self._failing_since),
            "waiting": None if self._waiting is None else _waiting(self._waiting),
            "hosts_uncovered": [host for hosts in lacking.values() for host in hosts],
            "hosts_warning": trust.hosts_refusal(lacking, self._info.sans),
        }

    async def watch(self, interval: float) -> None:
        """Reload whenever the files change (mtime, ctime, size or inode), after renewing the
        mirror's own self-signed pair if it is due; log failures, never stop."""
        crashed: str | None = None  # the last unexpected error, said once
        while True:
            await asyncio.sleep(interval)
            try:
                self._watch_once()
            except Exception as exc:  # a watch that ends leaves renewals unserved for good
                said = f"{type(exc).__name__}: {exc}"
                if said != crashed:
                    log.exception("TLS watch failed (still watching): %s", said)
                crashed = said
            else:
                crashed = None

    def _watch_once(self) -> None:
        """One look of :meth:`watch`: the expiry warning, the own pair's renewal, a reload."""
        self.warn_if_expiring()
        self.renew_own_if_due()
        if _file_signature(self.cert_path, self.key_path) == self._signature:
            return
        before = self._last_error
        try:
            self.reload()
        except CertError as exc:
            if str(exc) != before:  # tried again each look: said once per error
                serial = self._info.serial
                log.warning("TLS reload failed, still serving serial %s: %s", serial, exc)


#: What the public ``/health`` shows of :meth:`ReloadableTLS.status`: what is served, its
#: validity and why clients refuse it, as booleans and times. Not ``cert_path``, nor
#: ``last_error`` and ``warning``, whose words name the files and say what to run.
PUBLIC_STATUS = (
    *PUBLIC_CERTIFICATE,
    "clients_refuse",
    "reload_refused",
    "last_reload",
    "waiting",  # a pair not valid yet: its serial and notBefore, no path
    "reload_failing_since",
)


def public_status(status: dict[str, object]) -> dict[str, object]:
    """The ``tls`` part of the public ``/health``, of :meth:`ReloadableTLS.status`'s."""
    return {key: status[key] for key in PUBLIC_STATUS if key in status}


def self_signed_builder(
    key: ec.EllipticCurvePrivateKey, common_name: str, days: float
) -> x509.CertificateBuilder:
    """A certificate for ``key`` issued by itself, valid from five minutes ago (clock skew) for
    ``days``: the common part of the bootstrap certificate and the client CA.

    It names its key (Subject Key Identifier) and, as its own issuer, the same key as the
    signer's (Authority Key Identifier), as RFC 5280 asks and as ``openssl req -x509`` writes
    them. A strict verifier (``VERIFY_X509_STRICT``, which Python 3.13's
    ``ssl.create_default_context`` sets) requires the first of a CA and matches the identifiers
    along a chain; the caller adds basic constraints and key usage, which differ between the two.
    """
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = _utcnow()
    public = key.public_key()
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(public), critical=False)
    )


def self_signed(
    dir: Path,
    hostname: str,
    *,
    cert_name: str = "selfsigned-cert.pem",
    key_name: str = "selfsigned-key.pem",
    key_dir: Path | None = None,
    days: float = 90,
) -> tuple[Path, Path]:
    """Write a bootstrap self-signed ECC certificate and key for `hostname` into `dir` (the
    key into `key_dir` when given: ``tls.key_path`` may be in another directory)."""
    cert_path, key_path = (
        Path(dir) / cert_name,
        Path(dir if key_dir is None else key_dir) / key_name,
    )
    write_pair(cert_path, key_path, *_self_signed_pems(hostname, days))
    log.warning("wrote a self-signed bootstrap certificate for %s to %s", hostname, cert_path)
    return cert_path, key_path


def _self_signed_pems(hostname: str, days: float) -> tuple[bytes, bytes]:
    """A new self-signed ECC certificate for `hostname` and its key, both PEM."""
    key = ec.generate_private_key(ec.SECP256R1())
    try:
        alt: x509.GeneralName = x509.IPAddress(ipaddress.ip_address(hostname))
    except ValueError:
        alt = x509.DNSName(hostname)
    # No key usage: a strict verifier asks it only of a CA, and this is none (it is a server's
    # certificate that clients hold as their trust anchor for the mirror).
    cert = (
        self_signed_builder(key, hostname[:64], days)
        .add_extension(x509.SubjectAlternativeName([alt]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


#: The life of the mirror's own self-signed certificate (TLS on, no certificate paths), in days.
SELF_SIGNED_DAYS = 90.0


@dataclass(frozen=True)
class SelfSignedPair:
    """The mirror's own self-signed pair in `dir` for `hostname`: kept while it serves, made
    anew when a third of its life or less is left (certbot's margin: 30 of 90 days), at start
    (:meth:`kept`) and while the mirror runs (:meth:`ReloadableTLS.watch`).

    Clients that trust the mirror's own certificate (``configure-client.sh`` fetches it) keep
    trusting it across restarts; a new one is made when it is near its end or for another host.
    """

    dir: Path
    hostname: str
    days: float = SELF_SIGNED_DAYS

    @property
    def cert_path(self) -> Path:
        return self.dir / "selfsigned-cert.pem"

    @property
    def key_path(self) -> Path:
        return self.dir / "selfsigned-key.pem"

    @property
    def margin(self) -> dt.timedelta:
        return dt.timedelta(days=self.days) / 3

    def kept(self) -> tuple[Path, Path]:
        """The pair in `dir` if it still serves (see :func:`_reusable`), else a new one."""
        reason = _reusable(self.cert_path, self.key_path, self.hostname, self.margin)
        if reason is None:
            log.info(
                "TLS: keeping the self-signed certificate %s for %s", self.cert_path, self.hostname
            )
            return self.cert_path, self.key_path
        log.info("TLS: making a new self-signed certificate: %s", reason)
        return self.renew()

    def due(self, served: CertInfo, now: dt.datetime) -> bool:
        """Whether the served certificate (this pair's) is within the margin of its end."""
        return served.not_after - now < self.margin

    def renew(self) -> tuple[Path, Path]:
        return self_signed(self.dir, self.hostname, days=self.days)

    def refresh(self) -> bool:
        """A new pair in `dir` (:meth:`ReloadableTLS.renew_own_if_due`); always written."""
        self.renew()
        return True


#: The longest life of a certificate the mirror makes (:func:`_self_signed_pems`: 90 days from
#: five minutes ago), with room for the seconds its dates are cut to.
OWN_LIFETIME = dt.timedelta(days=90, minutes=10)


def made_by_the_mirror(info: CertInfo) -> bool:
    """Whether ``info`` is of a pair the mirror made itself (:func:`_self_signed_pems`): issued
    by itself, its subject the common name of its one name and nothing else, for 90 days at
    most, shaped as it writes them (:attr:`CertInfo.mirror_shaped`). Not a CA's certificate,
    nor one made by hand (``openssl req -x509``, which says ``CA:TRUE``, whatever its days,
    more in its subject, more names): those the mirror never writes over."""
    if not (info.self_signed and info.mirror_shaped) or len(info.sans) != 1:
        return False
    if info.not_before is None:
        return False
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, info.sans[0][:64])])
    if info.subject != name.rfc4514_string():
        return False
    return info.not_after - info.not_before <= OWN_LIFETIME


@dataclass(frozen=True)
class ServedBootstrap:
    """The self-signed pair served at ``tls.cert_path``/``tls.key_path`` for ``certs.domain``
    until the renewer installs the first issued certificate there.

    Written at start when there is none, or anew when the pair there is the mirror's own
    (:func:`made_by_the_mirror`) for another name (``certs.domain`` corrected before the first
    issuance) or near its end; renewed in place while the mirror runs, as :class:`SelfSignedPair`
    (issuance can keep failing for months: DNS not pointed here yet, and clients told to trust
    this certificate with ``--ca-cert`` then refused it at its end). Each write happens under
    the lock the renewer's install takes (:func:`docxy.tls.files.write_pair`) and only while
    the files still hold the mirror's own pair: an issued one is never written over.
    """

    cert_path: Path
    key_path: Path
    hostname: str
    days: float = SELF_SIGNED_DAYS

    @property
    def dir(self) -> Path:
        return self.cert_path.parent

    @property
    def margin(self) -> dt.timedelta:
        return dt.timedelta(days=self.days) / 3

    def kept(self) -> bool:
        """At start: True if a new pair was written (see the class). A pair there that is not
        the mirror's own is left without taking the lock: its directory need not be readable
        to serve it (only the files), as before there was a bootstrap to renew."""
        if self.cert_path.exists() and self.key_path.exists() and self._files_own() is None:
            return False
        return self._write(self._replaceable_at_start)

    def due(self, served: CertInfo, now: dt.datetime) -> bool:
        """Whether the served certificate is the mirror's own and within the margin of its end."""
        return made_by_the_mirror(served) and served.not_after - now < self.margin

    def refresh(self) -> bool:
        """A new pair in place of the mirror's own; False (nothing written) when the files hold
        another by now: the renewer's first install came between two looks of the watch."""
        if self._write(lambda: self._files_own() is not None):
            return True
        log.info("TLS: %s holds a certificate the mirror did not make: kept", self.cert_path)
        return False

    def _write(self, only_if: Callable[[], bool]) -> bool:
        cert_pem, key_pem = _self_signed_pems(self.hostname, self.days)
        if not write_pair(self.cert_path, self.key_path, cert_pem, key_pem, only_if=only_if):
            return False
        log.warning(
            "wrote a self-signed bootstrap certificate for %s to %s", self.hostname, self.cert_path
        )
        return True

    def _files_own(self) -> CertInfo | None:
        """The files' pair if it is the mirror's own (readable, matching), else None."""
        cert, key = self.cert_path, self.key_path
        try:
            info = inspect_pair(cert.read_bytes(), key.read_bytes(), cert, key)
        except (OSError, CertError):
            return None  # not the mirror's to mend: the served pair's load says what is wrong
        return info if made_by_the_mirror(info) else None

    def _replaceable_at_start(self) -> bool:
        if not (self.cert_path.exists() and self.key_path.exists()):
            return True  # first start (the renewer's first install did not come first)
        info = self._files_own()
        if info is None:
            return False
        if info.sans != (self.hostname,):
            log.info("TLS: %s names %s, not %s", self.cert_path, info.sans[0], self.hostname)
            return True
        if info.not_after - _utcnow() < self.margin:
            log.info("TLS: %s expires at %s", self.cert_path, utc_stamp(info.not_after))
            return True
        return False


def _reusable(cert_path: Path, key_path: Path, hostname: str, margin: dt.timedelta) -> str | None:
    """Why the pair cannot be kept, or None: unreadable or mismatched, names another host, or
    less than `margin` left (a third of a new one's lifetime, certbot's: 30 of 90 days)."""
    if not cert_path.exists():
        return f"none in {cert_path.parent} yet"
    try:
        info = inspect_pair(
            _read(cert_path, "certificate"), _read(key_path, "key"), cert_path, key_path
        )
    except CertError as exc:
        return str(exc)
    if info.sans != (hostname,):
        return f"{cert_path} names {', '.join(info.sans) or 'no host'}, not {hostname}"
    if info.not_after - _utcnow() < margin:
        return f"{cert_path} expires at {utc_stamp(info.not_after)}"
    return None
