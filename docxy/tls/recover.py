"""Completing a certificate install that was cut short, before the mirror loads the pair.

:func:`docxy.tls.files.write_pair` renames the new key into place, then the new certificate.
A crash or power loss between the two leaves a key and a certificate that do not match, and a
mirror that refuses to start with them (a config error: under supervisord, FATAL and the
container down, the renewer that would repair it with it). The new certificate is still
beside its target, whole (:func:`docxy.tls.files.pending_path`): the mirror completes the
install at start, so it comes up with the pair the renewer meant to serve. A mismatched pair
with no pending file to complete it stays an error, as a live reload of one stays refused.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from docxy.tls.context import CertError, inspect_pair
from docxy.tls.files import pending_path

log = logging.getLogger(__name__)


def matching(cert_path: Path, key_path: Path) -> bool:
    """Whether both files are readable and hold a certificate chain and its key."""
    try:
        inspect_pair(cert_path.read_bytes(), key_path.read_bytes(), cert_path, key_path)
    except (OSError, CertError):
        return False
    return True


def finish_install(cert_path: Path, key_path: Path) -> bool:
    """Complete an install cut short between its renames; True if it did.

    Nothing is done when the served pair matches (a pending pair left by a crash before the
    first rename stays for the renewer's next install), nor when no pending file makes it match.
    """
    if matching(cert_path, key_path):
        return False
    cert_new, key_new = pending_path(cert_path), pending_path(key_path)
    for cert, key in ((cert_new, key_path), (cert_path, key_new), (cert_new, key_new)):
        if (cert, key) == (cert_path, key_path) or not matching(cert, key):
            continue
        for source, target in ((key, key_path), (cert, cert_path)):
            if source == target:
                continue
            try:
                os.replace(source, target)
            except FileNotFoundError:
                pass  # the renewer, installing right now, renamed it first
            except OSError as exc:  # a directory the mirror may not write: say why, refuse
                log.error("TLS: cannot complete the install cut short at %s: %s", target, exc)
                return False
        log.warning(
            "TLS: %s and %s did not match (an install cut short); completed it with %s",
            cert_path,
            key_path,
            cert if cert != cert_path else key,
        )
        return True
    return False
