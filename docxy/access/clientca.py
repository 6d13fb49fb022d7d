"""The mirror's own CA for client certificates: ``docxy clients add/rm/list``.

``ca.crt``/``ca.key`` and ``clients.json`` (name → serial and expiry of the one certificate that
name may use) live in ``auth.dir``. The TLS listener asks for a client certificate signed by
this CA (optional, so ``docker login`` clients without one still connect); a request's
certificate maps to a client only while its serial is the one listed for its name, so
``docxy clients rm`` (or issuing a new one for the same name) revokes it at once, without CRLs.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import json
import logging
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from docxy.access.users import valid_name
from docxy.core.bounded import LruDict
from docxy.tls.context import self_signed_builder, write_files_atomic
from docxy.tls.files import write_pair
from docxy.tls.recover import finish_install

log = logging.getLogger(__name__)

CA_CERT = "ca.crt"
CA_KEY = "ca.key"
CA_LOCK = ".ca.lock"
CLIENTS = "clients.json"
KIT_CERT = "client.cert"
KIT_KEY = "client.key"
CA_DAYS = 3650
CLIENT_DAYS = 825


class ClientsFileError(ValueError):
    """``clients.json`` is not a client list (edited by hand?); the message names the file."""


@dataclass(frozen=True, slots=True)
class ClientEntry:
    name: str
    serial: str
    not_after: str


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


#: What a client certificate's key does: sign the TLS handshake (CertificateVerify).
DIGITAL_SIGNATURE = x509.KeyUsage(
    digital_signature=True,
    content_commitment=False,
    key_encipherment=False,
    data_encipherment=False,
    key_agreement=False,
    key_cert_sign=False,
    crl_sign=False,
    encipher_only=False,
    decipher_only=False,
)


def _authority_key_id(
    ca_cert: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey
) -> x509.AuthorityKeyIdentifier:
    """The Authority Key Identifier of a certificate the CA signs: the CA's own Subject Key
    Identifier, or one computed from its key if it has none.

    Without one a strict verifier (``VERIFY_X509_STRICT``, set by Python 3.13's
    ``ssl.create_default_context``) refuses the certificate: "Missing Authority Key
    Identifier". Copied from the CA's extension rather than computed again, so that it matches
    however that one was made: OpenSSL does not take a certificate whose Subject Key Identifier
    differs from the Authority Key Identifier as the issuer.
    """
    try:
        ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    except x509.ExtensionNotFound:
        return x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key())
    return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@contextmanager
def _exclusive(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on the file at `path` (made if missing): one writer at a time,
    across processes (the mirror starting and ``docxy clients add``) and threads alike."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:  # closing it releases the lock
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        yield


PRESENTED_KEPT = 256  # client certificates whose parse is kept


@dataclass(frozen=True, slots=True)
class _Presented:
    serial: str
    name: str | None
    not_after: dt.datetime

    @classmethod
    def parse(cls, der: bytes) -> _Presented | None:
        try:
            cert = x509.load_der_x509_certificate(der)
        except ValueError:
            return None
        names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        name = names[0].value if names else None
        return cls(
            format(cert.serial_number, "x"),
            name if isinstance(name, str) else None,
            cert.not_valid_after_utc,
        )


class ClientCA:
    def __init__(self, dir: Path) -> None:
        self.dir = Path(dir)
        self._clients_sig: tuple[int, int, int] | None = None
        self._by_serial: dict[str, ClientEntry] = {}
        #: why clients.json cannot be used, and the file's signature then (logged once)
        self._broken: tuple[tuple[int, int, int] | None, ClientsFileError] | None = None
        #: what a certificate says (serial, name, expiry), by its DER: a connection presents
        #: the same one on every request, parsed once
        self._presented: LruDict[bytes, _Presented] = LruDict(PRESENTED_KEPT)

    @property
    def cert_path(self) -> Path:
        return self.dir / CA_CERT

    @property
    def clients_path(self) -> Path:
        return self.dir / CLIENTS

    def ensure(self) -> None:
        """Create the CA on first use.

        Written as the TLS pair is (key, then certificate, each whole beside its target
        first), and completed from there by whoever comes next: a crash between the renames,
        or a second start in that moment (the mirror and ``docxy clients add`` at once), meets
        the pending certificate instead of making a second CA whose key would sign for the
        first one's certificate.
        """
        if self._ca_in_place():
            return
        with _exclusive(self.dir / CA_LOCK):
            # A second start waits here while the first writes its CA, then takes that one: two
            # writers at once swapped each other's pending files (the first failed with
            # FileNotFoundError) or one renamed its CA over a CA the other had issued from.
            if not self._ca_in_place():
                self._create()

    def _ca_in_place(self) -> bool:
        return finish_install(self.cert_path, self.dir / CA_KEY) or self.cert_path.exists()

    def _create(self) -> None:
        key = ec.generate_private_key(ec.SECP256R1())
        # The key identifiers come with the builder: a strict verifier requires a CA's own
        # (Subject Key Identifier), beside these two critical extensions.
        cert = (
            self_signed_builder(key, "docxy client CA", CA_DAYS)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(False, False, False, False, False, True, True, False, False),
                critical=True,
            )
            .sign(key, hashes.SHA256())
        )
        pem = cert.public_bytes(serialization.Encoding.PEM)
        write_pair(self.cert_path, self.dir / CA_KEY, pem, _pem_key(key))

    def _ca(self) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
        self.ensure()
        cert = x509.load_pem_x509_certificate(self.cert_path.read_bytes())
        key = serialization.load_pem_private_key((self.dir / CA_KEY).read_bytes(), None)
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        return cert, key

    def entries(self) -> dict[str, ClientEntry]:
        try:
            text = self.clients_path.read_text()
        except FileNotFoundError:
            return {}
        except (OSError, UnicodeDecodeError) as exc:  # permission denied, a directory, ...
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise ClientsFileError(f"{self.clients_path}: unreadable ({reason})") from exc
        try:
            data = json.loads(text)
            return {n: ClientEntry(n, e["serial"], e["not_after"]) for n, e in data.items()}
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ClientsFileError(
                f"{self.clients_path}: not a client list ({type(exc).__name__}: {exc})"
            ) from exc

    def _save(self, entries: dict[str, ClientEntry]) -> None:
        data = {e.name: {"serial": e.serial, "not_after": e.not_after} for e in entries.values()}
        text = json.dumps(data, indent=2, sort_keys=True) + "\n"
        write_files_atomic([(self.clients_path, text.encode(), 0o600)])

    def issue(
        self,
        name: str,
        out: Path,
        *,
        kit_as: Callable[[], AbstractContextManager[object]] = nullcontext,
    ) -> ClientEntry:
        """A new certificate for ``name`` (replacing and so revoking any earlier one), written
        to ``out`` as ``client.cert``, ``client.key`` and ``ca.crt`` (Docker's certs.d names);
        ``kit_as``: under which privileges those three are written (``docxy clients add`` run
        as root writes ``auth.dir`` as its owner, the kit as root)."""
        if not valid_name(name):
            raise ValueError(f"{name!r}: a client name is 1-64 of a-z 0-9 . _ - (first a-z 0-9)")
        ca_cert, ca_key = self._ca()
        key = ec.generate_private_key(ec.SECP256R1())
        now = _now()
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=CLIENT_DAYS))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(DIGITAL_SIGNATURE, critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
            .add_extension(_authority_key_id(ca_cert, ca_key), False)
            .sign(ca_key, hashes.SHA256())
        )
        entry = ClientEntry(
            name, format(cert.serial_number, "x"), cert.not_valid_after_utc.isoformat()
        )
        # The CA first (it is the same one an earlier kit here holds), then the pair as the TLS
        # pair is written: a cut between the two renames leaves the new key beside the old
        # certificate, but with the new certificate whole beside it as .client.cert.pending,
        # which configure-client.sh refuses to install from (run this again).
        ca_pem = self.cert_path.read_bytes()
        with kit_as():
            write_files_atomic([(out / "ca.crt", ca_pem, 0o644)])
            write_pair(
                out / KIT_CERT,
                out / KIT_KEY,
                cert.public_bytes(serialization.Encoding.PEM),
                _pem_key(key),
            )
        with _exclusive(self.dir / CA_LOCK):  # read and written back by one at a time
            entries = self.entries()
            entries[name] = entry
            self._save(entries)
        return entry

    def revoke(self, name: str) -> bool:
        with _exclusive(self.dir / CA_LOCK):
            entries = self.entries()
            if entries.pop(name, None) is None:
                return False
            self._save(entries)
        return True

    def client_of(self, der: bytes) -> str | None:
        """The client name of a certificate the TLS layer verified, if it is still listed.

        :class:`ClientsFileError` when ``clients.json`` cannot be read or parsed: nobody's
        certificate can be checked (logged once per change of the file; the caller answers
        503, as for an unreadable users file).
        """
        presented = self._presented.get(der)
        if presented is None:
            presented = _Presented.parse(der)
            if presented is None:
                return None
            self._presented.set(der, presented)
        entry = self._listed().get(presented.serial)
        if entry is None or presented.not_after < _now():
            return None
        return entry.name if presented.name == entry.name else None

    def _listed(self) -> dict[str, ClientEntry]:
        try:
            st = self.clients_path.stat()
        except FileNotFoundError:
            return {}
        except OSError as exc:
            self._fail(None, ClientsFileError(f"{self.clients_path}: unreadable ({exc.strerror})"))
        sig = (st.st_mtime_ns, st.st_size, st.st_ino)
        if self._broken is not None and self._broken[0] == sig:
            raise self._broken[1]  # the same broken file: not read again for each request
        if sig != self._clients_sig:
            try:
                entries = self.entries()
            except ClientsFileError as exc:  # fail closed: nobody is let in on a guess
                self._fail(sig, exc)
            self._by_serial = {e.serial: e for e in entries.values()}
            self._clients_sig = sig
            self._broken = None
        return self._by_serial

    def _fail(self, sig: tuple[int, int, int] | None, exc: ClientsFileError) -> NoReturn:
        """Raise ``exc``, logged once while the same fault lasts (not once per request)."""
        if self._broken is None or str(self._broken[1]) != str(exc):
            log.error("%s; no client certificate is honoured until it is fixed", exc)
        self._broken = (sig, exc)
        raise exc
