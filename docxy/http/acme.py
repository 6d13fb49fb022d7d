"""``/.well-known/acme-challenge/<token>``: HTTP-01 tokens that certbot writes into the webroot.

Served on the plain-HTTP listener so the mirror keeps ports 80 and 443 while certbot works.
"""

from __future__ import annotations

import re

from quart import Blueprint, Response

from docxy.core.errors import NotFound
from docxy.http.state import mirror_state

blueprint = Blueprint("acme", __name__)

_TOKEN = re.compile(r"[A-Za-z0-9_-]{1,256}")
CHALLENGE_DIR = ".well-known/acme-challenge"


@blueprint.route("/.well-known/acme-challenge/<token>", methods=["GET"])
async def acme_challenge(token: str) -> Response:
    webroot = mirror_state().config.certs.webroot
    if webroot is None or not _TOKEN.fullmatch(token):
        raise NotFound("no such ACME challenge")
    try:
        data = (webroot / CHALLENGE_DIR / token).read_bytes()
    except OSError:
        raise NotFound("no such ACME challenge") from None
    return Response(data, content_type="text/plain")
