"""``/.well-known/acme-challenge/<token>``: HTTP-01 tokens that certbot writes into the webroot.

Served on the plain-HTTP listener so the mirror keeps ports 80 and 443 while certbot works.
"""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

from quart import Blueprint, Response

from docxy.core.errors import NotFound
from docxy.http.state import mirror_state

blueprint = Blueprint("acme", __name__)

_TOKEN = re.compile(r"[A-Za-z0-9_-]{1,256}")
CHALLENGE_DIR = ".well-known/acme-challenge"
#: A key authorization is a token, a dot and a thumbprint: under 400 bytes.
MAX_TOKEN_FILE = 4096


@blueprint.route("/.well-known/acme-challenge/<token>", methods=["GET"])
async def acme_challenge(token: str) -> Response:
    webroot = mirror_state().config.certs.webroot
    if webroot is None or not _TOKEN.fullmatch(token):
        raise NotFound("no such ACME challenge")
    data = _read_token(webroot / CHALLENGE_DIR / token)
    if data is None:
        raise NotFound("no such ACME challenge")
    return Response(data, content_type="text/plain")


def _read_token(path: Path) -> bytes | None:
    """The token file certbot wrote, or None: missing, or not a small regular file of its own.
    A symlink is not followed (it served whatever it pointed at: the TLS key, the users file),
    nor a FIFO opened (its ``open()`` blocked the event loop, the whole mirror, until some
    writer came): ``O_NOFOLLOW | O_NONBLOCK``, then a regular file is all that is read."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as file:
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode) or info.st_size > MAX_TOKEN_FILE:
                return None
            return file.read(MAX_TOKEN_FILE)
        except OSError:
            return None
