"""Which upstream a request is for: ``?ns=``, the mirror host name, or a path prefix.

Pure: strings in, an :class:`Upstream` out, or :class:`UpstreamUnknown` before anything is sent.
Only configured upstreams can ever be chosen; what a client writes only *selects* one of them::

    ?ns=ghcr.io                          containerd's hosts.toml mirror (``:443`` or not,
                                         whatever scheme the upstream is fetched with)
    ?ns=registry.lab.example             [upstream]'s own registry host, as docker.io is
    Host: ghcr.mirror.example.com        one of an upstream's ``hosts`` (``:443`` or not)
    /v2/ghcr.io/owner/img/...            a path prefix: ``owner/img`` on ghcr.io
    /v2/owner/img/...                    none of these: ``[upstream]`` (Docker Hub)

A first component that looks like a registry host (it has a dot) but names no configured
upstream is refused, never sent to the default as a repository name. Names reach this module
already checked against the distribution grammar (``docxy.core.names``), so ``@``, ``:``, ``%``
and ``..`` cannot occur in a prefix.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl

from docxy.core.challenge import scope_repository
from docxy.core.errors import ClientError
from docxy.core.hosts import host_key, split_host, takes_any_port, url_host
from docxy.core.names import upstream_name
from docxy.upstream.client import Upstream

if TYPE_CHECKING:
    from docxy.config import Config


#: The port an image name's registry host has when it names none (the Docker reference
#: grammar's default, HTTPS's), whichever scheme the upstream is fetched with.
NS_DEFAULT_PORT = 443


class UpstreamUnknown(ClientError):
    """A request names an upstream this mirror is not configured for."""

    status = 404
    code = "NAME_UNKNOWN"


@dataclass(frozen=True, slots=True)
class Route:
    """The upstream chosen, the name as that upstream knows it (before ``library/``), and the
    prefix the client wrote in front of it (``None`` unless chosen by path prefix)."""

    upstream: Upstream
    name: str
    prefix: str | None = None


class Upstreams:
    """The configured upstreams: ``[upstream]`` first, then ``upstreams`` in order."""

    def __init__(self, default: Upstream, others: Iterable[Upstream] = ()) -> None:
        self.default = default
        self.by_name: dict[str, Upstream] = {default.name: default}
        self.by_host: dict[str, Upstream] = {}  # entries that name a port, as compared
        self.any_port: dict[str, Upstream] = {}  # entries that name none
        for upstream in others:
            self.by_name[upstream.name] = upstream
            for host in upstream.hosts:
                table = self.any_port if takes_any_port(host) else self.by_host
                table[host_key(host)[0]] = upstream
        # What ?ns= may say: every name, and [upstream]'s registry host too, which is what
        # containerd sends for an image named by it (``registry.lab.example/app`` with a
        # hosts.toml for that host) when [upstream] is not Docker Hub. A name wins over it.
        self.by_ns: dict[str, Upstream] = {_ns_key(url_host(default.registry)): default}
        self.by_ns |= {_ns_key(name): upstream for name, upstream in self.by_name.items()}

    def all(self) -> list[Upstream]:
        return list(self.by_name.values())

    def named(self, name: str) -> Upstream:
        """The upstream ``name`` (an ``?ns=``, a realm's ``?upstream=``) names, compared as a
        host (``docxy.core.hosts``): ``GHCR.io`` is ``ghcr.io``, and so is ``ghcr.io:443`` (as
        containerd may write the registry of an image reference that names its port), for
        every upstream: ``?ns=`` names the image's registry host, whose default port is 443
        whatever scheme the mirror fetches it with (``registry.lab.example`` may be fetched
        from ``http://10.0.0.5:5000``). Any other port is part of the name (``:5000``, and
        ``:80`` too). ``[upstream]``'s registry host names it too."""
        found = self._by_ns(name)
        if found is None:
            raise UpstreamUnknown(
                "this mirror has no such upstream", {"upstream": name[:100], "known": self.names()}
            )
        return found

    def _by_ns(self, name: str) -> Upstream | None:
        bare, port = split_host(name)
        if not port:
            return self.by_ns.get(bare)
        found = self.by_ns.get(f"{bare}:{port}")
        if found is not None:
            return found
        # An image name's registry host without a port is on 443 (containerd's default), so
        # :443 is no port; not so :80, which names another registry than the one on 443.
        return self.by_ns.get(bare) if _is_ns_default(port) else None

    def names(self) -> list[str]:
        return list(self.by_name)

    def for_host(self, host: str | None) -> Upstream | None:
        """The upstream whose ``hosts`` list the request's host, if any: the entry for the
        host and its port, else one that names no port, which takes the host on any port. A
        default port is no port (``docxy.core.hosts``), in the entry and in the request alike:
        ``HOST:443`` takes ``HOST``, ``HOST:443`` and ``HOST:80``, but not ``HOST:8443``."""
        if not host or not (self.by_host or self.any_port):
            return None
        full, bare = host_key(host)
        return self.by_host.get(full) or self.any_port.get(bare)

    def route(self, name: str, *, ns: str | None = None, host: str | None = None) -> Route:
        """The upstream for repository ``name`` (``""`` for ``/v2/`` itself)."""
        if ns is not None:
            return Route(self.named(ns), name)
        by_host = self.for_host(host)
        if by_host is not None:
            return Route(by_host, name)
        return self.by_prefix(name)

    def qualified(self, name: str, *, ns: str | None = None, host: str | None = None) -> str:
        """Repository ``name`` as the repository rules and the status page know it, however
        the request picks its upstream: Docker Hub's with ``library/``, another upstream's
        behind that upstream's name (``ghcr.io/owner/img``). Raises :class:`UpstreamUnknown`."""
        route = self.route(name, ns=ns, host=host)
        upstream = route.upstream
        plain = upstream_name(route.name, upstream.library_prefix)
        return plain if upstream.is_default else f"{upstream.name}/{plain}"

    def by_prefix(self, name: str) -> Route:
        first, slash, rest = name.partition("/")
        if not slash:
            return Route(self.default, name)
        found = self.by_name.get(first)
        if found is not None:
            return Route(found, rest, first)
        if "." in first:
            raise UpstreamUnknown(
                "this mirror has no such upstream", {"upstream": first, "known": self.names()}
            )
        return Route(self.default, name)

    def for_token(self, named: str | None, scopes: Iterable[str]) -> Upstream:
        """The upstream a token request is for: the realm's ``?upstream=``, else the one every
        repository scope names by prefix (a client that pulls ``mirror/ghcr.io/owner/img``
        asks the realm of the mirror's ``/v2/`` for ``repository:ghcr.io/owner/img:pull``)."""
        if named is not None:
            return self.named(named)
        chosen: Upstream | None = None
        for text in scopes:
            for scope in text.split(" "):
                repository = scope_repository(scope)
                if repository is None:
                    continue
                upstream = self.by_prefix(repository).upstream
                if chosen is not None and upstream is not chosen:
                    raise ClientError(
                        "one token request cannot name repositories of two upstreams",
                        {"upstreams": [chosen.name, upstream.name]},
                    )
                chosen = upstream
        return chosen or self.default


def _ns_key(name: str) -> str:
    """A name (or registry host) as ?ns= lookups compare it; a port, any port, kept."""
    bare, port = split_host(name)
    return f"{bare}:{port}" if port else bare


def _is_ns_default(port: str) -> bool:
    return port.isascii() and port.isdigit() and int(port) == NS_DEFAULT_PORT


def configured_upstreams(config: Config) -> Upstreams:
    """The upstreams ``config`` sets: ``[upstream]``, then ``upstreams`` in order."""
    others = [Upstream.from_config(named) for named in config.upstreams]
    return Upstreams(Upstream.from_config(config.upstream), others)


def request_picks(scope: Mapping[str, Any]) -> tuple[str | None, str | None]:
    """``(ns, host)`` of an ASGI request, as the routes read them (``request.args``' first
    ``ns``, the ``Host`` header): what :meth:`Upstreams.route` takes besides the name."""
    query = scope.get("query_string", b"").decode("latin-1")
    pairs = parse_qsl(query, keep_blank_values=True)
    ns = next((value for key, value in pairs if key == "ns"), None)
    host = next((v.decode("latin-1") for k, v in scope.get("headers", ()) if k == b"host"), None)
    return ns, host
