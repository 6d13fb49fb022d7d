"""``/setup.sh``: the client set-up script, with this mirror's public URL filled in.

A Docker host is pointed at the mirror with ``curl -fsSL https://mirror.example.com/setup.sh |
sudo bash``. The script is ``scripts/configure-client.sh``, shipped inside the package as
``docxy/data/configure-client.sh``; its ``MIRROR_DEFAULT=""`` line gets ``server.public_url``.
"""

from __future__ import annotations

import re
from functools import cache
from importlib import resources

from quart import Blueprint, Response

from docxy.core.errors import RegistryError
from docxy.http.state import mirror_state

blueprint = Blueprint("setup_script", __name__)

SCRIPT_RESOURCE = "data/configure-client.sh"
PLACEHOLDER = 'MIRROR_DEFAULT=""\n'
# What may stand between double quotes in a shell script without being interpreted.
_SAFE_URL = re.compile(r"https?://[A-Za-z0-9.:\[\]-]+(/[A-Za-z0-9._~/-]*)?")


class SetupScriptError(RegistryError):
    """The script cannot be served (not shipped, or the public URL is not shell-safe)."""


def fill_in(script: str, public_url: str) -> str:
    """The script with ``MIRROR_DEFAULT`` set to ``public_url`` (trailing slash dropped)."""
    url = public_url.rstrip("/")
    if not _SAFE_URL.fullmatch(url):
        raise SetupScriptError(f"server.public_url {url!r} cannot be put in a shell script")
    if script.count(PLACEHOLDER) != 1:
        raise SetupScriptError("the shipped configure-client.sh has no MIRROR_DEFAULT line")
    return script.replace(PLACEHOLDER, f'MIRROR_DEFAULT="{url}"\n')


@cache
def shipped_script() -> str:
    try:
        return resources.files("docxy").joinpath(SCRIPT_RESOURCE).read_text(encoding="utf-8")
    except OSError as exc:
        raise SetupScriptError(f"configure-client.sh is not shipped with docxy: {exc}") from exc


@blueprint.route("/setup.sh", methods=["GET", "HEAD"])
async def setup_script() -> Response:
    body = fill_in(shipped_script(), mirror_state().config.server.public_url)
    response = Response(body, content_type="text/x-shellscript; charset=utf-8")
    response.headers["Cache-Control"] = "no-cache"
    return response
