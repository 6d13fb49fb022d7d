"""A network namespace of the test's own, for a mirror address that is not loopback.

dockerd treats every 127.0.0.0/8 registry as insecure and then never presents a client
certificate, so the client-certificate test needs the mirror on an address of its own. This
makes a namespace and a veth pair (HOST_ADDRESS on the host end, NS_ADDRESS inside; private
addresses used only on this pair), and a TCP forwarder whose listening socket lives inside the
namespace (NS_ADDRESS:port) and whose connections go to a port on the host's 127.0.0.1: the
mirror keeps running as every other test's does, and the bytes (TLS included) pass unchanged.
Everything is removed afterwards, even when the test fails.
"""

from __future__ import annotations

import ctypes
import os
import secrets
import socket
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass

CLONE_NEWNET = 0x40000000
HOST_ADDRESS = "10.77.0.1"
NS_ADDRESS = "10.77.0.2"
PREFIX = 30

_libc = ctypes.CDLL("libc.so.6", use_errno=True)


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"setns: {os.strerror(errno)}")


@dataclass(frozen=True)
class Namespace:
    name: str
    address: str


@contextmanager
def namespace() -> Iterator[Namespace]:
    """A new namespace reachable from the host at NS_ADDRESS over its own veth pair."""
    tag = secrets.token_hex(3)
    name, host_end, ns_end = f"dxy{tag}", f"dxh{tag}", f"dxn{tag}"
    _ip("netns", "add", name)
    try:
        _ip("link", "add", host_end, "type", "veth", "peer", "name", ns_end)
        _ip("link", "set", ns_end, "netns", name)
        _ip("addr", "add", f"{HOST_ADDRESS}/{PREFIX}", "dev", host_end)
        _ip("link", "set", host_end, "up")
        _ip("-n", name, "addr", "add", f"{NS_ADDRESS}/{PREFIX}", "dev", ns_end)
        _ip("-n", name, "link", "set", ns_end, "up")
        _ip("-n", name, "link", "set", "lo", "up")
        yield Namespace(name, NS_ADDRESS)
    finally:
        with suppress(subprocess.CalledProcessError):
            _ip("link", "del", host_end)  # takes its peer with it
        _ip("netns", "del", name)


def _listen_inside(ns: Namespace, port: int) -> socket.socket:
    """A listening socket in ``ns`` (setns on a thread of its own, which then ends)."""
    made: list[socket.socket | BaseException] = []

    def make() -> None:
        try:
            with open(f"/var/run/netns/{ns.name}") as target:
                _setns(target.fileno())
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((ns.address, port))
            sock.listen(64)
            made.append(sock)
        except BaseException as exc:  # handed to the caller
            made.append(exc)

    # The thread stays in the namespace and dies; the caller's threads never move.
    thread = threading.Thread(target=make, name="netns-listen")
    thread.start()
    thread.join()
    result = made[0]
    if isinstance(result, BaseException):
        raise result
    return result


def _pipe(source: socket.socket, sink: socket.socket) -> None:
    try:
        while data := source.recv(65536):
            sink.sendall(data)
    except OSError:
        pass
    finally:
        with suppress(OSError):
            sink.shutdown(socket.SHUT_WR)


def _connection(client: socket.socket, upstream: socket.socket) -> None:
    back = threading.Thread(target=_pipe, args=(upstream, client), daemon=True)
    back.start()
    _pipe(client, upstream)
    back.join()
    client.close()
    upstream.close()


@contextmanager
def forwarder(ns: Namespace, port: int, target_port: int) -> Iterator[None]:
    """``ns.address:port`` inside the namespace → ``127.0.0.1:target_port`` on the host."""
    listener = _listen_inside(ns, port)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", target_port), timeout=30)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            threading.Thread(target=_connection, args=(client, upstream), daemon=True).start()

    thread = threading.Thread(target=serve, name="netns-forward", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        with suppress(OSError):
            listener.shutdown(socket.SHUT_RDWR)
        listener.close()
        thread.join(timeout=10)
