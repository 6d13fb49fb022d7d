"""The connection layer's parts that need no running server: the cap's arithmetic, the
descriptor limit, the hypercorn hook and the kernel's send queue."""

from __future__ import annotations

import asyncio
import resource
import socket
import ssl
from collections.abc import Iterator

import hypercorn.asyncio.run as hypercorn_run
import pytest
from hypercorn.asyncio.tcp_server import TCPServer

from docxy.access.peer import PeerCertTCPServer
from docxy.core.cidr import parse_networks
from docxy.edge import connections
from docxy.edge.connections import BUSY, CLIENT_BUSY, ConnectionGuard, EdgeTCPServer, connection_cap


def test_the_cap_counts_and_refuses_over_it() -> None:
    guard = ConnectionGuard(max_connections=2, send_timeout=5.0)
    assert guard.admit() and guard.admit()
    assert not guard.admit()
    guard.release()
    assert guard.admit()
    assert (guard.open, guard.refused) == (2, 1)


def test_the_cap_per_address_counts_ipv6_by_64_and_spares_trusted_proxies() -> None:
    guard = ConnectionGuard(
        max_connections=100, send_timeout=5.0, per_client=2, trusted=parse_networks("10.0.0.9")
    )
    first = guard.admit(("2001:db8:1:2::1", 4000, 0, 0))
    assert first and guard.admit(("2001:db8:1:2:ffff::7", 4001, 0, 0))  # the same /64
    refused = guard.admit(("2001:db8:1:2::3", 4002, 0, 0))
    assert not refused and refused.refusal == CLIENT_BUSY and guard.refused_per_client == 1
    assert guard.admit(("2001:db8:1:3::1", 4003, 0, 0))  # another /64
    assert all(guard.admit(("10.0.0.9", port)) for port in range(10))  # the proxy: total only
    guard.release(first)
    assert guard.admit(("::ffff:192.0.2.1", 1)) and guard.admit(("192.0.2.1", 2))
    assert not guard.admit(("192.0.2.1", 3))  # mapped or not, one address
    assert guard.admit(("2001:db8:1:2::3", 4004, 0, 0))  # the place `first` left
    assert guard.open == 15


def test_one_ipv6_site_cannot_fill_the_whole_cap() -> None:
    """The cap per address counts an IPv6 client by its /64, and a home's /56 (a business's
    /48) holds 256 (65536) of them: one such holder opened 128 connections from each of eight
    /64s and filled the 1000 of max_connections (every other client then got 503). Its /48
    holds at most SITE_FACTOR clients' caps, and never over half of the total."""
    guard = ConnectionGuard(max_connections=1000, send_timeout=5.0, per_client=128)
    admitted = [
        guard.admit((f"2001:db8:7:{net:x}::{host:x}", 4000, 0, 0))
        for net in range(8)
        for host in range(1, 129)
    ]
    taken = [place for place in admitted if place]
    assert len(taken) == guard.site_cap() == 500
    assert guard.admit(("2001:db8:8::1", 1, 0, 0))  # another /48
    assert guard.admit(("192.0.2.1", 1))  # IPv4: its address alone, as before
    guard.release(taken[0])
    assert guard.admit(("2001:db8:7:9::1", 4000, 0, 0))  # the place it left, in the same /48
    assert guard.open == 502


def test_the_cap_fits_the_descriptor_limit(caplog: pytest.LogCaptureFixture) -> None:
    assert connection_cap(100, 100_000) == 100
    lowered = connection_cap(10_000, 1024)
    assert lowered == (1024 - connections.RESERVED_FDS) // connections.FDS_PER_CONNECTION
    assert "lowered" in caplog.text
    assert connection_cap(10, 10) == 1


def test_the_soft_descriptor_limit_is_raised_to_the_hard_one() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(soft, 256), hard))
        raised = connections.raise_fd_limit()
        assert raised == min(hard, connections.MAX_FD_LIMIT)
        assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] == raised
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@pytest.fixture
def hypercorn_server() -> Iterator[None]:
    before = hypercorn_run.TCPServer  # type: ignore[attr-defined]
    yield
    setattr(hypercorn_run, "TCPServer", before)  # noqa: B010


@pytest.mark.parametrize("installed", [TCPServer, PeerCertTCPServer, EdgeTCPServer])
def test_install_extends_whichever_known_server_is_there(
    hypercorn_server: None, installed: type
) -> None:
    setattr(hypercorn_run, "TCPServer", installed)  # noqa: B010
    connections.install()
    assert hypercorn_run.TCPServer is EdgeTCPServer  # type: ignore[attr-defined]
    assert issubclass(EdgeTCPServer, PeerCertTCPServer)  # client certificates still noted


def test_install_refuses_an_unknown_server(hypercorn_server: None) -> None:
    setattr(hypercorn_run, "TCPServer", object)  # noqa: B010
    with pytest.raises(RuntimeError, match="update docxy.edge"):
        connections.install()


@pytest.mark.parametrize(("answer", "status"), [(BUSY, 503), (CLIENT_BUSY, 429)])
def test_the_busy_answer_is_a_whole_registry_error(answer: bytes, status: int) -> None:
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(f"HTTP/1.1 {status} ".encode())
    assert f"content-length: {len(body)}".encode() in head
    assert b"retry-after: 1" in head and b'"TOOMANYREQUESTS"' in body
    assert b"\r\ndocker-distribution-api-version: registry/2.0\r\n" in head  # as every answer


def test_the_kernel_send_queue_is_read() -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:
        receiver_side = socket.socket()
        receiver_side.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        receiver_side.connect(server.getsockname())
        sender, _ = server.accept()
        with sender, receiver_side:
            assert connections._kernel_queue(sender) == 0
            sender.setblocking(False)
            try:
                while True:  # until the receiver's window and our send buffer are full
                    sender.send(b"x" * 65536)
            except BlockingIOError:
                pass
            assert connections._kernel_queue(sender) > 0  # written, not taken
    assert connections._kernel_queue(object()) == 0  # no descriptor: nothing known


def _listener(host: str, port: int = 0) -> connections.Listener:
    sock = connections.Listener(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen()
    return sock


async def test_the_listener_that_accepted_a_connection_decides_tls() -> None:
    """An IPv4 wildcard TLS listener and a plain one on ::1 at the same port (they bind side
    by side): a connection to ::1 is the plain listener's, though its local address has the
    TLS listener's port and a wildcard matches any host. asyncio accepts with the listener's
    own accept(), so the connection's socket tells which listener it came from."""
    tls = _listener("0.0.0.0")
    port = tls.getsockname()[1]
    plain = _listener("::1", port)
    listeners = connections.TLSListeners.of(lambda: ssl.create_default_context(), [tls], 5.0)
    seen: dict[str, bool] = {}  # the address a connection was made to → taken for TLS
    done = asyncio.Event()

    async def served(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        listener = connections.accepted_by(writer.get_extra_info("socket"))
        seen[writer.get_extra_info("sockname")[0]] = listeners.serves(listener)
        writer.close()
        if len(seen) == 2:
            done.set()

    servers = [await asyncio.start_server(served, sock=sock) for sock in (tls, plain)]
    try:
        for host in ("::1", "127.0.0.1"):
            _, writer = await asyncio.open_connection(host, port)
            writer.close()
        await asyncio.wait_for(done.wait(), 30)
    finally:
        for server in servers:
            server.close()
            await server.wait_closed()
    assert seen == {"::1": False, "127.0.0.1": True}
    assert connections.accepted_by(object()) is None


def test_a_tls_listener_that_cannot_tell_its_connections_is_refused() -> None:
    with socket.socket() as plain_socket, pytest.raises(TypeError, match="Listener"):
        connections.TLSListeners.of(lambda: ssl.create_default_context(), [plain_socket], 5.0)
