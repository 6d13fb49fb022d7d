"""``docxy warm``'s TLS settings for its connections to the mirror: the CAs it trusts (certifi's,
or ``SSL_CERT_FILE``'s; ``--ca-file``'s too), the same verify flags on every Python, and the
client certificate it presents (``--client-cert``: a file and its key, or a kit directory from
``docxy clients add``). A file or variable it cannot use is a ValueError saying which and why
(``docxy warm`` exits 2 with it)."""

from __future__ import annotations

import os
import ssl
from pathlib import Path

import httpx

#: A client kit's files (``docxy.access.clientca``'s names, not imported: it loads
#: cryptography and bcrypt, and ``docxy serve`` loads this module).
KIT_CERT, KIT_KEY = "client.cert", "client.key"


def mirror_ssl_context(
    ca_file: str | None = None, client_cert: str | None = None, client_key: str | None = None
) -> ssl.SSLContext:
    """The TLS settings of warm's connections (the mirror, its token realm, a redirect):
    httpx's defaults (certifi's CAs, or ``SSL_CERT_FILE``'s or ``SSL_CERT_DIR``'s in their
    place: :func:`_default_context`; hostnames checked), with the CAs of ``ca_file`` trusted
    too and the client certificate ``client_cert`` (its key in ``client_key``) presented to a
    server that asks for one. ValueError, saying which file (or variable) and why, if a file
    cannot be read or holds no certificate, or a key that does not fit.

    The verify flags are those of the mirror's upstream connections, the same on every Python
    (see :func:`docxy.upstream.client.upstream_ssl_context` for why): Python 3.13's default
    context is strict and refused a mirror certificate without key identifiers that 3.11 and
    3.12 took; partial chains are allowed, so an intermediate CA in ``ca_file`` is an anchor.
    """
    context = _default_context()
    # The two lines of upstream_ssl_context (docxy/upstream/client.py): keep them alike.
    context.verify_flags &= ~ssl.VERIFY_X509_STRICT
    context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    if ca_file is not None:
        pem = _pem_text(ca_file, "--ca-file")
        try:
            context.load_verify_locations(cadata=pem)
        except ssl.SSLError as exc:
            raise ValueError(f"--ca-file {ca_file}: no usable PEM certificate ({exc})") from None
    if client_cert is not None and client_key is not None:
        for path, option in ((client_cert, "--client-cert"), (client_key, "--client-key")):
            _pem_text(path, option)  # readable, and text: a clear message for each file
        try:
            context.load_cert_chain(client_cert, client_key, password=_no_passphrase)
        except _Encrypted:
            raise ValueError(
                f"--client-key {client_key}: the key is encrypted; warm takes an unencrypted "
                f"key (as docxy clients add writes it)"
            ) from None
        except ssl.SSLError as exc:
            raise ValueError(
                f"--client-cert {client_cert} --client-key {client_key}: not a certificate and "
                f"its key ({exc})"
            ) from None
    return context


def _default_context() -> ssl.SSLContext:
    """httpx's default context: certifi's CAs, or those of ``SSL_CERT_FILE`` (else of
    ``SSL_CERT_DIR``) in their place. ValueError naming the variable if it cannot be used (a
    traceback before; a directory that is not there trusted no CA at all)."""
    cert_file, cert_dir = os.environ.get("SSL_CERT_FILE"), os.environ.get("SSL_CERT_DIR")
    if not cert_file and cert_dir and not Path(cert_dir).is_dir():
        raise ValueError(f"SSL_CERT_DIR={cert_dir}: not a directory (it replaces certifi's CAs)")
    try:
        return httpx.create_ssl_context()
    except ssl.SSLError as exc:  # an OSError too: first
        raise ValueError(f"SSL_CERT_FILE={cert_file}: no usable PEM certificate ({exc})") from None
    except OSError as exc:
        raise ValueError(
            f"SSL_CERT_FILE={cert_file}: cannot read it ({exc.strerror or exc})"
        ) from None


class _Encrypted(Exception):
    """The client key asks for a passphrase (warm has none to give)."""


def _no_passphrase() -> str:
    """``load_cert_chain``'s password callback: without one, OpenSSL would prompt on the
    terminal for an encrypted key."""
    raise _Encrypted


def _pem_text(path: str, option: str) -> str:
    """The file at ``path`` as text, or ValueError naming ``option`` and why."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ValueError(f"{option} {path}: cannot read it ({exc.strerror or exc})") from None
    if b"-----BEGIN " not in data:
        raise ValueError(f"{option} {path}: not a PEM file (no -----BEGIN line)")
    return data.decode("ascii", "replace")


def client_pair(cert: str | None, key: str | None) -> tuple[str | None, str | None]:
    """``--client-cert`` and ``--client-key`` as the certificate's and the key's paths: a kit
    directory (``docxy clients add --out DIR``) stands for its ``client.cert`` and
    ``client.key``, as for ``configure-client.sh --client-cert DIR``."""
    if cert is not None and Path(cert).is_dir():
        if key is not None:
            raise ValueError(f"--client-cert {cert} is a kit directory: it holds the key too")
        return str(Path(cert) / KIT_CERT), str(Path(cert) / KIT_KEY)
    if cert is not None and key is None and not Path(cert).exists():  # a mistyped kit?
        _pem_text(cert, "--client-cert")  # the ValueError saying why it cannot be read
    if (cert is None) != (key is None):
        raise ValueError(
            "--client-cert CERT and --client-key KEY go together "
            "(or --client-cert DIR: a kit from docxy clients add)"
        )
    return cert, key
