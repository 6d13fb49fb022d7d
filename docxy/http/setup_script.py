"""``/setup.sh``: the client set-up script, with this mirror's public URL filled in.

A Docker host is pointed at the mirror with ``curl -fsSL https://mirror.example.com/setup.sh |
sudo bash``. The script is ``scripts/configure-client.sh``, shipped inside the package as
``docxy/data/configure-client.sh``; its ``MIRROR_DEFAULT=""`` line gets ``server.public_url``
and its ``REGISTRIES_DEFAULT=""`` line the registries the mirror fronts (``docker.io``,
``[upstream]``'s registry host when it is not Docker Hub, then each of ``upstreams`` as
``NAME=REGISTRY-URL``), so containerd gets a ``hosts.toml`` for each.
"""

from __future__ import annotations

import re
from functools import cache
from importlib import resources

from quart import Blueprint, Response

from docxy.config import Config
from docxy.core.errors import RegistryError
from docxy.core.hosts import url_host
from docxy.http.health import for_strangers
from docxy.http.state import mirror_state
from docxy.upstream.presets import DEFAULT_NAME, PRESETS

blueprint = Blueprint("setup_script", __name__)

SCRIPT_RESOURCE = "data/configure-client.sh"
PLACEHOLDER = 'MIRROR_DEFAULT=""\n'
REGISTRIES_PLACEHOLDER = 'REGISTRIES_DEFAULT=""\n'
# What may stand between double quotes in a shell script without being interpreted.
_SAFE_URL = re.compile(r"https?://[A-Za-z0-9.:\[\]-]+(/[A-Za-z0-9._~/-]*)?")
# One registry for the script's --registry: NAME[:PORT] or NAME[:PORT]=http(s)://HOST[:PORT]
# (no path); containerd reads the hosts.toml of an image named with a port from certs.d/HOST:PORT.
_SAFE_REGISTRY = re.compile(
    r"[a-z0-9](?:[a-z0-9.-]*[a-z0-9])?(?::[0-9]{1,5})?(?:=https?://[A-Za-z0-9.:\[\]-]+)?"
)


class SetupScriptError(RegistryError):
    """The script cannot be served (not shipped, or the public URL is not shell-safe)."""


def registries_of(config: Config, *, urls: bool = True) -> tuple[str, ...]:
    """The registries this mirror fronts, as the script's ``--registry`` takes them: Docker Hub
    (``[upstream]``, whose hosts.toml falls back to Docker Hub itself), ``[upstream]``'s own
    registry host when it is not Docker Hub and ``urls`` (containerd sends ``?ns=`` that host
    for images named by it, which picks ``[upstream]``), then each of ``upstreams``, with its
    registry URL (just the name, meaning ``https://NAME``, when the URL has a path the script's
    form cannot carry, or without ``urls``)."""
    entries = [DEFAULT_NAME]
    names = {upstream.name for upstream in config.upstreams}
    default_host = url_host(config.upstream.registry)
    # Not for strangers (urls off): that host is the internal registry's address.
    hub = url_host(PRESETS[DEFAULT_NAME].registry)
    if urls and default_host not in (hub, *names):
        entry = _entry(default_host, config.upstream.registry, urls=urls)
        # An address the script's form cannot carry (IPv6): no hosts.toml rather than none
        # at all, as fill_in would refuse the whole script.
        if _SAFE_REGISTRY.fullmatch(entry):
            entries.append(entry)
    entries += [_entry(u.name, u.registry, urls=urls) for u in config.upstreams]
    return tuple(entries)


def _entry(name: str, registry: str, *, urls: bool) -> str:
    """``NAME=URL`` for the script's ``--registry``, or ``NAME`` when the URL cannot go."""
    entry = f"{name}={registry.rstrip('/')}"
    return entry if urls and _SAFE_REGISTRY.fullmatch(entry) else name


def fill_in(script: str, public_url: str, registries: tuple[str, ...] = (DEFAULT_NAME,)) -> str:
    """The script with ``MIRROR_DEFAULT`` set to ``public_url`` (trailing slash dropped) and
    ``REGISTRIES_DEFAULT`` to ``registries``."""
    url = public_url.rstrip("/")
    if not _SAFE_URL.fullmatch(url):
        raise SetupScriptError(f"server.public_url {url!r} cannot be put in a shell script")
    for registry in registries:
        if not _SAFE_REGISTRY.fullmatch(registry):
            raise SetupScriptError(f"upstream {registry!r} cannot be put in a shell script")
    for line in (PLACEHOLDER, REGISTRIES_PLACEHOLDER):
        if script.count(line) != 1:
            raise SetupScriptError(f"the shipped configure-client.sh has no {line.strip()} line")
    script = script.replace(PLACEHOLDER, f'MIRROR_DEFAULT="{url}"\n')
    return script.replace(REGISTRIES_PLACEHOLDER, f'REGISTRIES_DEFAULT="{" ".join(registries)}"\n')


@cache
def shipped_script() -> str:
    try:
        return resources.files("docxy").joinpath(SCRIPT_RESOURCE).read_text(encoding="utf-8")
    except OSError as exc:
        raise SetupScriptError(f"configure-client.sh is not shipped with docxy: {exc}") from exc


@blueprint.route("/setup.sh", methods=["GET", "HEAD"])
async def setup_script() -> Response:
    state = mirror_state()
    config = state.config
    # Strangers (users mode, an address off access.allow) learn no upstream URL here either,
    # as on /health: an internal registry's address stays inside. Their hosts.toml falls back
    # to https://NAME; --registry NAME=URL on the client gives the real one.
    registries = registries_of(config, urls=not for_strangers(state))
    body = fill_in(shipped_script(), config.server.public_url, registries)
    response = Response(body, content_type="text/x-shellscript; charset=utf-8")
    response.headers["Cache-Control"] = "no-cache"
    return response
