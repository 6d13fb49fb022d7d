"""Host names as the mirror compares them: lower case, and a default port is no port.

``ghcr.io``, ``ghcr.io:443`` and ``GHCR.io`` are one host, and ``https://ghcr.io:443`` is
``https://ghcr.io``: a client writes the default port or leaves it out as it likes, and an
operator may too. Every comparison of hosts goes through one of these functions, so no table
holds one host twice under two spellings:

- :func:`host_key`: a mirror host name (a ``Host`` header, an upstream's ``hosts`` entry).
  The mirror serves both schemes and a ``Host`` header does not say which, so ``:443`` and
  ``:80`` are both dropped (an entry that names a port, :func:`takes_any_port` says, still
  takes no other port than those; an IPv6 address is written as :mod:`ipaddress` writes it);
- :func:`url_host` and :func:`canonical_url`: a URL's host (a registry's, which keys the
  cache, tokens and health), without the default port of *its* scheme (``http://x:443`` keeps
  its port);
- :func:`earlier_spellings` and :func:`key_now`: how a registry's host keyed the cache before
  this module (the URL's netloc as written: its default port written out, its case as typed),
  for moving those entries (:meth:`ManifestStore.respell`);
- :func:`origin`: a URL's scheme, host and port, the default port filled in (a redirect keeps
  ``Authorization`` on the same origin only; idle direct connections are kept per origin).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from urllib.parse import urlsplit, urlunsplit

DEFAULT_PORTS = {"http": 80, "https": 443}
#: A mirror host name on either of these ports is the name without a port.
MIRROR_DEFAULT_PORTS = frozenset(DEFAULT_PORTS.values())


def _split(host: str) -> tuple[str, str]:
    """``host[:port]`` → (host, port text, ``""`` for none); ``[::1]:80`` → (``[::1]``, ``80``)."""
    if host.startswith("["):
        end = host.find("]")
        if end < 0:
            return host, ""
        return host[: end + 1], host[end + 1 :].removeprefix(":")
    bare, _, port = host.partition(":")
    return bare, port


def _one_spelling(bare: str) -> str:
    """An IPv6 literal as :mod:`ipaddress` writes it, ``[FD00:0::5]`` → ``[fd00::5]``: one
    address has many spellings, and a ``hosts`` entry written one way must take a request's
    ``Host`` written another. Anything else (a name, an IPv4 address) as it is."""
    if not (bare.startswith("[") and bare.endswith("]")):
        return bare
    try:
        return f"[{ipaddress.IPv6Address(bare[1:-1]).compressed}]"
    except ValueError:  # not an address: a name nothing is configured as
        return bare


def split_host(host: str) -> tuple[str, str]:
    """``host[:port]`` as compared → (host, port as written, ``""`` for none): lower case
    (ASCII only: see :func:`host_key`), without a trailing dot, an IPv6 literal written one
    way. No port is dropped: which one is the default is the caller's to say."""
    host = host.strip(" \t")
    if host.isascii():
        host = host.lower()
    bare, port = _split(host)
    # The fully qualified spelling (RFC 3986), ``ghcr.mirror.`` for ``ghcr.mirror``: one host.
    return _one_spelling(bare.removesuffix(".")), port


def _is_default(port: str, defaults: frozenset[int]) -> bool:
    return port == "" or (port.isascii() and port.isdigit() and int(port) in defaults)


def host_key(host: str) -> tuple[str, str]:
    """A mirror host name → (as compared, without any port), lower case, a default port
    dropped: ``Ghcr.Mirror:443`` → (``ghcr.mirror``, ``ghcr.mirror``); ``[::1]:8080`` →
    (``[::1]:8080``, ``[::1]``). Only ASCII is folded: ``str.lower`` and ``str.strip`` would
    make ``K`` (KELVIN SIGN) a ``k`` and drop a trailing U+00A0, so a name spelled with them
    would be another's; it stays a name nothing is configured as. An IPv6 address is written
    one way: ``[FD00:0::5]`` is ``[fd00::5]``."""
    bare, port = split_host(host)
    if _is_default(port, MIRROR_DEFAULT_PORTS):
        return bare, bare
    return f"{bare}:{port}", bare


def takes_any_port(entry: str) -> bool:
    """Whether a ``hosts`` entry names no port (and so takes its host on any port), rather
    than a port of its own, a default one included: ``ghcr.mirror`` does, ``ghcr.mirror:443``
    does not."""
    return _split(entry.strip())[1] == ""


def url_host(url: str) -> str:
    """The host (and port) a URL names, as registries are compared: ``https://GHCR.io.:443/v2``
    → ``ghcr.io``; ``http://10.0.0.5:5000`` → ``10.0.0.5:5000``. Credentials are not part of
    it: messages, logs and error bodies name a URL's host by it, never its password."""
    parts = urlsplit(url)
    bare, port = _split(parts.netloc.rpartition("@")[2].lower())
    bare = bare.removesuffix(".")  # ``ghcr.io.``, fully qualified, is ``ghcr.io`` (host_key)
    default = DEFAULT_PORTS.get(parts.scheme)
    if _is_default(port, frozenset() if default is None else frozenset({default})):
        return bare
    return f"{bare}:{port}"


def canonical_url(url: str) -> str:
    """``url`` with its host as :func:`url_host` writes it: ``https://GHCR.io:443/v2`` →
    ``https://ghcr.io/v2``. Credentials in it are dropped (settings refuse them anyway)."""
    return urlunsplit(urlsplit(url)._replace(netloc=url_host(url)))


def earlier_spellings(registries: Iterable[str]) -> dict[str, str]:
    """The host each registry URL was keyed by when a written default port stayed in it (before
    :func:`url_host`: the URL's netloc as written) → the key now: ``https://ghcr.io`` (read from
    ``https://ghcr.io:443``) → ``{"ghcr.io:443": "ghcr.io"}``; ``http://x:5000`` → none (its
    key did not change). The other spelling, a default port left out, is the key now."""
    found: dict[str, str] = {}
    for url in registries:
        default = DEFAULT_PORTS.get(urlsplit(url).scheme)
        host = url_host(url)
        if default is not None and _split(host)[1] == "":
            found[f"{host}:{default}"] = host
    return found


def key_now(earlier: str, registries: Iterable[str]) -> str | None:
    """The key now of one of ``registries`` that an earlier version keyed the cache by
    ``earlier``, the URL's netloc as written (before :func:`url_host`, which lower-cases it and
    drops a default port: ``GHCR.io:443``, ``GHCR.io`` or ``ghcr.io:443`` of ``https://ghcr.io``
    → ``ghcr.io``); None if it spells none of them otherwise (the key now is no earlier one)."""
    for url in registries:
        host = url_host(url)
        if earlier != host and url_host(f"{urlsplit(url).scheme}://{earlier}") == host:
            return host
    return None


def origin(url: str) -> tuple[str, str | None, int | None]:
    """Scheme, host name and port of ``url``, the scheme's default port when it names none.
    Raises ValueError for a port out of range."""
    parts = urlsplit(url)
    port = parts.port
    return parts.scheme, parts.hostname, DEFAULT_PORTS.get(parts.scheme) if port is None else port
