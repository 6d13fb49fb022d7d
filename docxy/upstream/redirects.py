"""Where an upstream's redirect may lead: the rule both download paths (httpx's, and the fills'
direct ``http.client`` GET) apply to each hop before they follow it.

Two refusals, each a bad redirect (502):

* **No downgrade across the Internet.** Once a request went over HTTPS (an ``https://``
  upstream), no hop of it goes to plain ``http://``: the answer (a manifest by tag, a token)
  would come in clear text from anyone on the path. A plain-HTTP upstream (a LAN registry) may
  redirect to plain HTTP. One exception: a non-public upstream (below) may send a hop to plain
  HTTP at a non-public address (an HTTPS Harbor whose S3 driver sends blobs to plain-HTTP
  MinIO, which docker and containerd follow): inside one LAN, the registry's own choice of
  plain HTTP is no path across the Internet. A hop to a host *name* then connects only to the
  non-public addresses the name resolves to (none: :class:`NonPublicOnly`'s kin
  :class:`PublicOnly`, a bad redirect). A public upstream never downgrades.
* **No way in.** A hop to a loopback, private, link-local, unique-local, shared (CGNAT),
  reserved or unspecified address is followed only when the configured upstream's own host is
  non-public too (the loopback bed, a LAN registry), or when the hop's origin is one the
  upstream's ``ca_origins`` lists (its storage, named by the operator). A public registry (or
  its CDN) does not get the mirror to GET ``169.254.169.254`` or ``127.0.0.1:admin-port`` for
  it, and relay the answer.

The token service an upstream's ``/v2/`` challenge names (its realm) is judged as a hop from
the registry, though the mirror asks it directly, not through a redirect: a public upstream's
realm stays public (judged at connect time for a name, as a hop is), and an HTTPS registry's
realm is plain HTTP only where both are non-public, or on the registry's own host
(:func:`on_registry_host`: Harbor behind a TLS-terminating proxy names its inner
``http://<host>/service/token``; it is asked anonymously, the login withheld, as before the
realm was judged, and a public upstream's is still connected outside only). A plain-HTTP
realm on another host of a public HTTPS registry is not asked. A hostile or compromised
public registry does not get the mirror to GET an inside address by naming it as its realm,
and relay the answer's errors. A realm the operator set (``auth_realm``) is the operator's
choice, and is asked as it is (:meth:`~docxy.upstream.client.UpstreamClient.send`'s
``token_service``).

The upstream's own host is non-public when it is a non-public literal address or
``localhost``, or a name of which ANY address is non-public (:func:`resolves_non_public`): a
dual-stack LAN registry with a private A record and a global AAAA, or a cloud registry reached
through a private interface endpoint, is a LAN registry. That widens nothing: the mirror
connects to the upstream's name at whatever addresses it resolves to, for every request, so an
upstream that controls its own DNS can already point the mirror at an inside address without
any redirect; what the rule keeps from a *public* upstream (every address public) is a way in
it could not have had otherwise. Its verdict is kept per upstream host for a few minutes
(:class:`RegistryVerdicts`; a failed lookup only for seconds), so a LAN registry's redirected
blobs do not each cost a lookup.

The target is judged by its host as written in the URL: a literal address (``127.1`` and
``0x7f000001`` are read as the resolver reads them), or ``localhost`` and its subdomains. A
host *name* is judged where its address is known, at connect time (:class:`HopGuard`): a hop
to a name that must stay public connects only to the public addresses the name resolves to
then (none: :class:`NonPublicOnly`, a bad redirect), so a name pointing inside, or one that
rebinds between two lookups, does not lead there: the fills' direct GET, and httpx's path in
its connection pool (:class:`GuardedPool`, which races a name's addresses as anyio's own
connect does). The upstream's own host, when a name, is looked up (:data:`RESOLVE`) only when
a hop to a non-public address, or a plain-HTTP hop after HTTPS, would otherwise be refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
import ssl
import threading
import time
import typing
from collections.abc import Callable, Iterable, Sequence
from contextvars import ContextVar
from functools import partial
from typing import Any, TypeVar
from urllib.parse import urlsplit

import httpcore
import httpx

from docxy.core.hosts import origin
from docxy.threads import within
from docxy.upstream.framing import closed_after_if_framed_twice

#: How the upstream's own host name is looked up (``socket.getaddrinfo``; tests replace it).
RESOLVE: Callable[..., list[tuple[Any, ...]]] = socket.getaddrinfo
#: How httpx's path looks a guarded hop's host name up to connect (tests replace it).
CONNECT_RESOLVE: Callable[..., list[tuple[Any, ...]]] = socket.getaddrinfo
#: In a request's ``extensions`` (httpx's path): the :class:`HopGuard` its connection is
#: made, or chosen from the pool, under.
HOP_GUARD = "docxy.hop_guard"

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
#: One ``getaddrinfo`` entry: (family, type, proto, canonname, sockaddr).
Entry = TypeVar("Entry", bound=tuple[Any, ...])


def literal_address(host: str) -> Address | None:
    """The address ``host`` spells, as the resolver would read it (``127.1``, ``2130706433``
    and ``0x7f.1`` are all 127.0.0.1: ``getaddrinfo`` takes them without a lookup), or None
    for a name. An IPv4-mapped IPv6 address is its IPv4 one."""
    host = host.strip("[]").split("%", 1)[0]  # an IPv6 zone names no other address
    try:
        found: Address = ipaddress.ip_address(host)
    except ValueError:
        try:
            found = ipaddress.IPv4Address(socket.inet_aton(host))
        except (OSError, ValueError, UnicodeError):
            return None
    if isinstance(found, ipaddress.IPv6Address) and found.ipv4_mapped is not None:
        return found.ipv4_mapped
    return found


#: IPv6 prefixes whose address carries an IPv4 one in its last 32 bits: NAT64's well-known
#: prefix (RFC 6052: a DNS64 resolver's answer for an IPv4-only name) and IPv4-compatible
#: addresses (``::a.b.c.d``, deprecated, still routed by some stacks).
_CARRY_IPV4_LAST = (ipaddress.IPv6Network("64:ff9b::/96"), ipaddress.IPv6Network("::/96"))
#: The local-use NAT64 prefix (RFC 8215): a network's own translator, never a public address
#: (Python 3.11's ``is_global`` says it is).
_LOCAL_NAT64 = ipaddress.IPv6Network("64:ff9b:1::/48")


def embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one carries, which a packet to it reaches: IPv4-mapped
    (``::ffff:a.b.c.d``), 6to4 (``2002:AABB:CCDD::/48``), NAT64 (``64:ff9b::a.b.c.d``) and
    IPv4-compatible (``::a.b.c.d``); None for any other."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if any(address in prefix for prefix in _CARRY_IPV4_LAST):
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def non_public_address(address: Address) -> bool:
    """Whether ``address`` is no public Internet address: loopback, private, link-local,
    unique-local, shared (100.64/10), documentation, reserved, unspecified or multicast. An
    IPv6 address that carries an IPv4 one (:func:`embedded_ipv4`) is judged by that one:
    ``64:ff9b::7f00:1`` (NAT64) and ``2002:a9fe:a9fe::`` (6to4) lead to 127.0.0.1 and
    169.254.169.254 though Python calls their IPv6 forms global."""
    if isinstance(address, ipaddress.IPv6Address):
        if address in _LOCAL_NAT64:
            return True
        carried = embedded_ipv4(address)
        if carried is not None:
            return non_public_address(carried)
    return not address.is_global or address.is_multicast


def non_public_host(host: str | None) -> bool:
    """Whether a URL's host is, as written, a non-public address or ``localhost``."""
    if not host:
        return False
    name = host.lower().rstrip(".")
    if name == "localhost" or name.endswith(".localhost"):
        return True
    address = literal_address(name)
    return address is not None and non_public_address(address)


def resolves_non_public(host: str, seconds: float) -> bool:
    """Whether the name ``host`` resolves (within ``seconds``) to some non-public address; a
    lookup that fails or takes too long says no."""
    return bool(_looked_up(host, seconds))


def _looked_up(host: str, seconds: float) -> bool | None:
    """Whether any address ``host`` resolves to is non-public; None when the lookup failed or
    took longer than ``seconds``. ANY, not every: the mirror connects to the upstream at each of
    them anyway (see the module's docstring), and a LAN registry's name often has a global
    AAAA beside its private A."""
    try:
        found = within(seconds, f"resolve {host}", lambda: RESOLVE(host, None))
    except (OSError, UnicodeError, TimeoutError):
        return None
    addresses = [literal_address(str(entry[4][0])) for entry in found]
    if not addresses:
        return None
    return any(a is not None and non_public_address(a) for a in addresses)


#: Seconds an upstream host's looked-up verdict is kept (:class:`RegistryVerdicts`).
VERDICT_SECONDS = 300.0
#: Seconds a failed lookup's verdict (public) is kept: a moment, so a resolver that is down is
#: not asked by every hop at once, and asked again soon.
FAILED_VERDICT_SECONDS = 10.0
#: Upstream hosts whose verdicts are kept at once (the oldest dropped first).
VERDICT_ENTRIES = 64


class RegistryVerdicts:
    """Whether each upstream's own host is non-public (:func:`registry_non_public`), kept for
    :data:`VERDICT_SECONDS` per host (a failed lookup for :data:`FAILED_VERDICT_SECONDS`), at
    most ``size`` hosts. Thread-safe: both download paths ask it from worker threads."""

    def __init__(
        self,
        *,
        size: int = VERDICT_ENTRIES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._size = size
        self._clock = clock
        self._lock = threading.Lock()
        self._kept: dict[str, tuple[bool, float]] = {}  # host: (verdict, until)

    def __len__(self) -> int:
        with self._lock:
            return len(self._kept)

    def known(self, registry: str) -> bool | None:
        """The verdict on ``registry``'s host without a lookup: a literal address or a kept
        verdict; None when only a lookup can tell."""
        host = urlsplit(registry).hostname
        literal = _literal_verdict(host)
        if literal is not None or host is None:
            return bool(literal)
        with self._lock:
            kept = self._kept.get(host.lower().rstrip("."))
        if kept is not None and self._clock() < kept[1]:
            return kept[0]
        return None

    def non_public(self, registry: str, seconds: float) -> bool:
        """Whether ``registry``'s host is non-public; a name is looked up (within ``seconds``)
        unless its verdict is kept."""
        known = self.known(registry)
        if known is not None:
            return known
        host = (urlsplit(registry).hostname or "").lower().rstrip(".")
        found = _looked_up(host, seconds)
        verdict = bool(found)
        keep = FAILED_VERDICT_SECONDS if found is None else VERDICT_SECONDS
        with self._lock:
            self._kept.pop(host, None)
            self._kept[host] = (verdict, self._clock() + keep)
            while len(self._kept) > self._size:
                del self._kept[next(iter(self._kept))]
        return verdict


def registry_non_public(
    registry: str, seconds: float, verdicts: RegistryVerdicts | None = None
) -> bool:
    """Whether the configured upstream's own host is not public: a non-public literal address
    or ``localhost``, or a name that resolves to some such address (a LAN registry). With
    ``verdicts``, a name's verdict is the one kept there (looked up when it has none)."""
    if verdicts is not None:
        return verdicts.non_public(registry, seconds)
    host = urlsplit(registry).hostname
    literal = _literal_verdict(host)
    if literal is not None or host is None:
        return bool(literal)
    return resolves_non_public(host, seconds)


def _literal_verdict(host: str | None) -> bool | None:
    """Whether a registry's ``host`` is non-public by how it is written (no host: public; a
    literal address or ``localhost``: by its class); None for a name, which only a lookup
    can tell."""
    if not host:
        return False
    if non_public_host(host):
        return True
    if literal_address(host) is not None:
        return False
    return None


def downgrade(target: str, over_https: bool) -> bool:
    """Whether a hop to ``target`` goes to plain HTTP after some hop went over HTTPS."""
    return over_https and urlsplit(target).scheme.lower() == "http"


def on_registry_host(target: str, registry: str) -> bool:
    """Whether ``target`` is on the configured upstream's own host: the same host name (or
    literal address) as ``registry``, on any port, in any scheme. A plain-HTTP token service
    there is the registry's own (Harbor behind a TLS-terminating proxy advertises its inner
    ``http://<host>/service/token``), not another host's: it is judged from a plain-HTTP
    start (:meth:`~docxy.upstream.client.UpstreamClient.send`), a public upstream's still
    connected outside only."""
    host = urlsplit(target).hostname
    own = urlsplit(registry).hostname
    return bool(host) and (host or "").rstrip(".") == (own or "").rstrip(".")


def may_look_up(target: str, over_https: bool) -> bool:
    """Whether :func:`hop_refusal` may look the upstream's host up for a hop to ``target``
    (else it returns at once): a plain-HTTP hop after HTTPS, or one to a non-public host."""
    return downgrade(target, over_https) or non_public_host(urlsplit(target).hostname)


def hop_refusal(
    target: str,
    *,
    over_https: bool,
    registry: str,
    listed: Iterable[str] = (),
    lookup_seconds: float = 5.0,
    verdicts: RegistryVerdicts | None = None,
    realm: bool = False,
) -> str | None:
    """Why a redirect to ``target`` is not followed, or None to follow it. ``over_https``: the
    request went over HTTPS on some hop already; ``registry``: the configured upstream's URL;
    ``listed``: its ``ca_origins``; ``verdicts``: where the upstream host's verdict is kept.
    Blocking only when :func:`may_look_up` says so and the registry is named by a host name
    (its lookup, ``lookup_seconds`` at most, unless its verdict is kept). ``realm``: the target
    is the token service the upstream's ``/v2/`` challenge names, judged as a hop from the
    registry (see the module's docstring); the refusal says so."""
    parts = urlsplit(target)
    if downgrade(target, over_https):
        # Followed only between non-public hosts: a host name is let through here, to be
        # connected at its non-public addresses only (hop_guard's HopGuard, inside_only).
        host = parts.hostname
        inside = non_public_host(host) or (bool(host) and literal_address(host or "") is None)
        if not inside or not registry_non_public(registry, lookup_seconds, verdicts):
            if realm:
                return (
                    f"the upstream's challenge names a plain-HTTP token service ({host}) for "
                    "an HTTPS registry: not asked, a token would come unprotected (only one "
                    "on the registry's own host, or a non-public upstream's at a non-public "
                    "address, may be plain HTTP)"
                )
            return (
                f"the upstream redirected from HTTPS to plain HTTP ({parts.hostname}): not "
                "followed, an answer would come unprotected (only a non-public upstream may "
                "send a hop to plain HTTP, and only to a non-public address)"
            )
        return None
    if not non_public_host(parts.hostname):
        return None
    if origin(target) in {origin(entry) for entry in listed}:
        return None
    if registry_non_public(registry, lookup_seconds, verdicts):
        return None
    if realm:
        return (
            f"the upstream's challenge names a token service at a non-public address "
            f"({parts.hostname}): not asked for a public upstream ({OWN_REALM})"
        )
    return (
        f"the upstream redirected to a non-public address ({parts.hostname}): not followed for "
        "a public upstream (list that origin in the upstream's ca_origins if it is its storage)"
    )


#: What a refused token service's message tells the operator: a realm they set is theirs.
OWN_REALM = "set the upstream's auth_realm to it if the operator means the mirror to ask there"


class NonPublicOnly(OSError):
    """A hop that must stay public (:class:`HopGuard`) named a host that resolved only to
    non-public addresses: nothing was connected to."""


class PublicOnly(NonPublicOnly):
    """A plain-HTTP hop after HTTPS, which must stay inside (:class:`HopGuard`'s
    ``inside_only``), named a host that resolved only to public addresses: nothing was
    connected to. (A :class:`NonPublicOnly`: a bad redirect wherever that one is.)"""


class HopGuard:
    """For a redirect hop to a host *name* that :func:`hop_refusal` let through as written:
    the addresses its connection may go to, judged when the name is resolved to connect
    (DNS rebinding: an earlier lookup says nothing of this one). A non-public address is
    allowed only for an upstream whose own host is non-public (:func:`registry_non_public`,
    asked only once a non-public address turns up, its verdict kept in ``verdicts``).
    ``inside_only`` (a plain-HTTP hop after HTTPS): only non-public addresses are allowed,
    and only for such an upstream."""

    def __init__(
        self,
        host: str,
        registry: str,
        lookup_seconds: float,
        verdicts: RegistryVerdicts | None = None,
        *,
        inside_only: bool = False,
        realm: bool = False,
    ) -> None:
        self.host = host
        self.inside_only = inside_only
        self.realm = realm  # the token service a challenge names: its refusals say so
        self._registry = registry
        self._lookup_seconds = lookup_seconds
        self._verdicts = verdicts if verdicts is not None else RegistryVerdicts()

    def inside_allowed(self) -> bool:
        """Whether the upstream may lead to non-public addresses (its own host is one)."""
        return self._verdicts.non_public(self._registry, self._lookup_seconds)

    def allows(self, address: str) -> bool:
        """Whether a connection may go to ``address`` (a peer's, as a socket gives it)."""
        if self.inside_only:
            return _peer_inside(address) and self.inside_allowed()
        return not _peer_inside(address) or self.inside_allowed()

    def may_look_up(self, address: str) -> bool:
        """Whether :meth:`allows` may look the upstream's host up (block) for ``address``."""
        return self.inside_only or _peer_inside(address)

    def screened(self, found: Sequence[Entry]) -> list[Entry]:
        """The ``getaddrinfo`` entries a connection may try, in their order: the public ones,
        or all of them where non-public addresses are allowed (the non-public ones alone for
        an ``inside_only`` guard). Raises :class:`NonPublicOnly` (:class:`PublicOnly`) when
        none is left."""
        if self.inside_only:
            inside = [entry for entry in found if _inside(entry)] if self.inside_allowed() else []
            if not inside:
                shown = ", ".join(sorted({str(entry[4][0]) for entry in found}))
                if self.realm:
                    raise PublicOnly(
                        f"the upstream's challenge names a plain-HTTP token service at "
                        f"{self.host}, a name that resolved to no address it may go to in clear "
                        f"({shown}): not asked, only one on the registry's own host, or a "
                        "non-public upstream's at a non-public address, may be plain HTTP"
                    )
                raise PublicOnly(
                    f"the upstream redirected from HTTPS to plain HTTP at {self.host}, a name "
                    f"that resolved to no address it may go to in clear ({shown}): not "
                    "followed, only a non-public upstream's hop to a non-public address may be "
                    "plain HTTP"
                )
            return inside
        outside = [entry for entry in found if not _inside(entry)]
        if len(outside) == len(found) or self.inside_allowed():
            return list(found)
        if not outside:
            shown = ", ".join(sorted({str(entry[4][0]) for entry in found}))
            if self.realm:
                raise NonPublicOnly(
                    f"the upstream's challenge names a token service at {self.host}, a name "
                    f"that resolved only to non-public addresses ({shown}): not asked for a "
                    f"public upstream ({OWN_REALM})"
                )
            raise NonPublicOnly(
                f"the upstream redirected to {self.host}, a name that resolved only to "
                f"non-public addresses ({shown}): not followed for a public upstream (list that "
                "origin in the upstream's ca_origins if it is its storage)"
            )
        return outside


def _inside(entry: tuple[Any, ...]) -> bool:
    return _peer_inside(str(entry[4][0]))


def _peer_inside(address: str) -> bool:
    """Whether a connection to ``address`` (as a socket or ``getaddrinfo`` gives it) would
    go inside: a non-public address, or none that can be read."""
    found = literal_address(address)
    return found is None or non_public_address(found)


def hop_guard(
    target: str,
    *,
    registry: str,
    listed: Iterable[str] = (),
    lookup_seconds: float = 5.0,
    verdicts: RegistryVerdicts | None = None,
    over_https: bool = False,
    realm: bool = False,
) -> HopGuard | None:
    """The guard a followed hop to ``target`` connects under, or None where the rule judged
    it whole already: a literal address or ``localhost`` (judged as written), an origin the
    upstream's ``ca_origins`` lists, or the upstream's own origin (its first hop went there
    unguarded). A plain-HTTP hop after HTTPS (``over_https``) to a name is always guarded,
    inside only. ``realm``: the target is the token service a challenge names (its refusals
    say so)."""
    host = urlsplit(target).hostname
    if not host or non_public_host(host) or literal_address(host) is not None:
        return None
    if downgrade(target, over_https):
        return HopGuard(host, registry, lookup_seconds, verdicts, inside_only=True, realm=realm)
    here = origin(target)
    if here == origin(registry) or here in {origin(entry) for entry in listed}:
        return None
    return HopGuard(host, registry, lookup_seconds, verdicts, realm=realm)


# --- httpx's path: the guard in its connection pool ------------------------------------------

#: The pooled connection a request is being sent on, while httpcore may connect it (the
#: backend is called in the request's own task): the guard to connect under, the peer found.
_SENDING: ContextVar[_Guarded | None] = ContextVar("docxy_guarded_connection", default=None)


class GuardedBackend(httpcore.AsyncNetworkBackend):
    """httpcore's network backend, but a connection made for a guarded hop
    (:data:`HOP_GUARD`) is made to an address of the name's that the guard allows, looked up
    here (:data:`CONNECT_RESOLVE`, within the connect timeout); the TLS handshake's SNI and
    the ``Host`` header still name the host (httpcore takes them from the origin). Every
    connection's peer is told to its pooled connection (:class:`_Guarded`)."""

    def __init__(self, inner: httpcore.AsyncNetworkBackend | None = None) -> None:
        self._inner = inner if inner is not None else httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: typing.Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        sending = _SENDING.get()
        guard = sending.guard if sending is not None else None
        connect = partial(
            self._inner.connect_tcp,
            port=port,
            timeout=timeout,
            local_address=local_address,
            socket_options=socket_options,
        )
        if guard is None:
            stream = await connect(host)
        else:
            stream = await _connect_guarded(guard, host, port, timeout, connect)
        if sending is not None:
            peer = stream.get_extra_info("server_addr")
            sending.peer = str(peer[0]) if isinstance(peer, tuple) and peer else None
        return stream

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: typing.Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:  # pragma: no cover - the mirror names no socket path
        return await self._inner.connect_unix_socket(path, timeout, socket_options)

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


#: Seconds a guarded connection's attempt at one address has before the next address's starts
#: beside it (anyio's own ``connect_tcp`` waits as long: RFC 8305's "Connection Attempt
#: Delay"); an attempt that fails starts the next at once.
STAGGER_SECONDS = 0.25


async def _connect_guarded(
    guard: HopGuard,
    host: str,
    port: int,
    timeout: float | None,
    connect: Callable[[str], typing.Awaitable[httpcore.AsyncNetworkStream]],
) -> httpcore.AsyncNetworkStream:
    """Look ``host`` up and connect to the first address ``guard`` allows that answers: the
    lookup and the attempts within ``timeout`` in all, each next address tried
    :data:`STAGGER_SECONDS` after the one before it (or as soon as it failed), as anyio's own
    connect races them; tried one after another, an address that never answers (broken IPv6)
    held each new connection for the whole connect timeout."""
    lookup = partial(CONNECT_RESOLVE, host, port, 0, socket.SOCK_STREAM)
    deadline = None if timeout is None else asyncio.get_running_loop().time() + timeout
    try:
        async with asyncio.timeout_at(deadline):
            found = await asyncio.to_thread(lookup)
    except TimeoutError as exc:
        raise httpcore.ConnectTimeout(f"resolve {host}: no answer in time") from exc
    except (OSError, UnicodeError) as exc:
        raise httpcore.ConnectError(f"resolve {host}: {exc}") from exc
    if guard.inside_only or any(_inside(entry) for entry in found):
        found = await asyncio.to_thread(guard.screened, found)  # it may look a name up
    try:
        async with asyncio.timeout_at(deadline):
            return await _first_to_connect([str(entry[4][0]) for entry in found], connect)
    except TimeoutError as exc:
        raise httpcore.ConnectTimeout(f"connect {host}: no address answered in time") from exc


async def _first_to_connect(
    addresses: list[str],
    connect: Callable[[str], typing.Awaitable[httpcore.AsyncNetworkStream]],
) -> httpcore.AsyncNetworkStream:
    """The stream of the first of ``addresses`` to connect, attempts started
    :data:`STAGGER_SECONDS` apart (the next at once when one fails): the winner cancels the
    others, and a stream one made meanwhile is closed. Raises the last attempt's error when
    all fail."""
    won: list[httpcore.AsyncNetworkStream] = []
    error: list[Exception] = [httpcore.ConnectError("no address found")]
    attempts: list[asyncio.Task[None]] = []
    progress = asyncio.Event()  # an attempt ended: the next may start now

    async def attempt(address: str) -> None:
        try:
            stream = await connect(address)
        except Exception as exc:  # noqa: BLE001 - the caller's, if no address answers
            error[0] = exc
            progress.set()
            return
        if won:  # another won as this one connected
            await stream.aclose()
            return
        won.append(stream)
        progress.set()
        for other in attempts:
            if other is not asyncio.current_task():
                other.cancel()

    try:
        async with asyncio.TaskGroup() as group:
            for address in addresses:
                progress.clear()
                attempts.append(group.create_task(attempt(address), name=f"connect {address}"))
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(STAGGER_SECONDS):
                        await progress.wait()
                if won:
                    break
    except BaseException:
        for stream in won:  # cancelled (the deadline) as one connected
            await stream.aclose()
        raise
    if won:
        return won[0]
    raise error[0]


class DelegatingConnection(httpcore.AsyncConnectionInterface):
    """A pooled httpcore connection that passes every call to the one it wraps: the wrappers
    of the mirror's pool (:class:`_Guarded`, ``trust._Verified``) change only what they mean to."""

    def __init__(self, connection: httpcore.AsyncConnectionInterface) -> None:
        self._connection = connection

    async def handle_async_request(self, request: httpcore.Request) -> httpcore.Response:
        return await self._connection.handle_async_request(request)

    async def aclose(self) -> None:
        await self._connection.aclose()

    def info(self) -> str:
        return self._connection.info()

    def can_handle_request(self, origin: httpcore.Origin) -> bool:
        return self._connection.can_handle_request(origin)

    def is_available(self) -> bool:
        return self._connection.is_available()

    def has_expired(self) -> bool:
        return self._connection.has_expired()

    def is_idle(self) -> bool:
        return self._connection.is_idle()

    def is_closed(self) -> bool:
        return self._connection.is_closed()

    def __repr__(self) -> str:
        return repr(self._connection)


class _Guarded(DelegatingConnection):
    """A pooled connection that knows its peer's address: a guarded request (its
    ``extensions`` carry a :class:`HopGuard`) is not sent on it when the guard does not allow
    that address (a connection a LAN upstream's request made to the same name); it is closed
    instead, and the pool makes the request a new connection, under the guard. An answer
    framed twice (chunked and a Content-Length) closes it once the answer is closed
    (:mod:`docxy.upstream.framing`)."""

    def __init__(self, connection: httpcore.AsyncConnectionInterface) -> None:
        super().__init__(connection)
        self.guard: HopGuard | None = None
        self.peer: str | None = None
        self._refused = False

    async def handle_async_request(self, request: httpcore.Request) -> httpcore.Response:
        guard = request.extensions.get(HOP_GUARD)
        peer = self.peer
        if isinstance(guard, HopGuard) and peer is not None and guard.may_look_up(peer):
            if not await asyncio.to_thread(guard.allows, peer):  # it may look a name up
                self._refused = True  # idle still: the pool closes it as expired
                raise httpcore.ConnectionNotAvailable()
        self.guard = guard if isinstance(guard, HopGuard) else None
        token = _SENDING.set(self)
        try:
            response = await self._connection.handle_async_request(request)
        finally:
            _SENDING.reset(token)
        # Chunked and a Content-Length both: closed after it, never kept (the mirror's choice:
        # its framing may have been tampered with on the way, RFC 9112 6.3).
        return closed_after_if_framed_twice(response, self._connection)

    def can_handle_request(self, origin: httpcore.Origin) -> bool:
        return not self._refused and self._connection.can_handle_request(origin)

    def is_available(self) -> bool:
        return not self._refused and self._connection.is_available()

    def has_expired(self) -> bool:
        refused = self._refused and self._connection.is_idle()
        return refused or self._connection.has_expired()


class GuardedPool(httpcore.AsyncConnectionPool):
    """httpx's connection pool over a :class:`GuardedBackend`, each connection a
    :class:`_Guarded` one."""

    def __init__(self, ssl_context: ssl.SSLContext, limits: httpx.Limits) -> None:
        super().__init__(
            ssl_context=ssl_context,
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            network_backend=GuardedBackend(),
        )

    def create_connection(self, origin: httpcore.Origin) -> httpcore.AsyncConnectionInterface:
        return _Guarded(super().create_connection(origin))


def guarded_transport(
    ssl_context: ssl.SSLContext, limits: httpx.Limits, pool: GuardedPool | None = None
) -> httpx.AsyncHTTPTransport:
    """httpx's own transport (its error mapping, its streams) over ``pool`` (a
    :class:`GuardedPool` with ``ssl_context`` and ``limits`` by default): the one httpx would
    make, but for the pool. (httpx has no setting for its pool: it is its ``_pool``, which the
    transport's only use of it is.)"""
    transport = httpx.AsyncHTTPTransport(verify=ssl_context, trust_env=False, limits=limits)
    if not isinstance(getattr(transport, "_pool", None), httpcore.AsyncConnectionPool):
        raise RuntimeError("this httpx keeps its connection pool elsewhere: docxy needs 0.28")
    transport._pool = pool if pool is not None else GuardedPool(ssl_context, limits)
    return transport
