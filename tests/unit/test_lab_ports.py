"""The lab's free ports (lab/ports.py): outside the ephemeral range, free on every address."""

from __future__ import annotations

import socket

import pytest

from lab import ports


def test_a_port_handed_out_is_outside_the_ephemeral_range_and_binds_on_the_wildcard() -> None:
    """A port from the ephemeral range (as bind to port 0 gives) could be an outgoing
    connection's local port by the time a child bound it: a CI run's mirror could not listen
    on 0.0.0.0 at a port found free on 127.0.0.1 a moment before."""
    port = ports.free_port()
    where = ports.stretches()
    if where:  # (a host whose every port is ephemeral gets the kernel's pick)
        assert any(low <= port < top for low, top in where)
    with socket.socket() as sock:
        sock.bind(("0.0.0.0", port))


def test_a_port_taken_on_the_wildcard_is_not_handed_out(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        busy = taken.getsockname()[1]
        taken.listen()
        picked: list[int] = []
        random = ports._pick.randrange

        def pick(low: int, top: int) -> int:  # the busy port first, then as before
            picked.append(busy if not picked else random(low, top))
            return picked[-1]

        monkeypatch.setattr(ports, "ephemeral_range", lambda: (65536, 65536))
        monkeypatch.setattr(ports._pick, "randrange", pick)
        assert ports.free_port() != busy
        assert picked[0] == busy


@pytest.mark.parametrize(
    ("span", "stretches"),
    [
        ((32768, 60999), [(10000, 32768), (61000, 65536)]),
        ((1024, 65535), []),  # a host that made every port ephemeral: the kernel's pick
        ((1024, 61000), [(61001, 65536)]),
        ((10500, 64999), []),
    ],
)
def test_ports_are_picked_outside_the_ephemeral_range_where_there_is_room(
    monkeypatch: pytest.MonkeyPatch, span: tuple[int, int], stretches: list[tuple[int, int]]
) -> None:
    monkeypatch.setattr(ports, "ephemeral_range", lambda: span)
    assert ports.stretches() == stretches
    port = ports.free_port()
    if stretches:
        assert any(low <= port < top for low, top in stretches)


def test_no_two_calls_name_the_same_port() -> None:
    given = [ports.free_port() for _ in range(50)]
    assert len(set(given)) == 50


def test_on_own_port_goes_past_taken_ports_and_stays_below_the_handed_out_ones() -> None:
    tried: list[int] = []

    def bind(port: int) -> int:
        tried.append(port)
        if len(tried) < 3:
            raise OSError("taken")
        return port

    assert ports.on_own_port(bind) == tried[-1]
    assert len(tried) == 3 and len(set(tried)) == 3
    assert all(port in ports.OWN_PORTS and port < ports.LOWEST for port in tried)


def test_on_own_port_says_so_when_every_try_is_taken() -> None:
    def taken(port: int) -> int:
        raise OSError(f"{port} taken")

    with pytest.raises(RuntimeError, match="no free port below 10000 in 4 tries"):
        ports.on_own_port(taken, tries=4)


def test_bound_socket_binds_the_host_at_a_free_own_port() -> None:
    with ports.bound_socket("127.0.0.75") as first, ports.bound_socket("127.0.0.75") as second:
        (host, port), (_, other) = first.getsockname(), second.getsockname()
        assert host == "127.0.0.75" and port in ports.OWN_PORTS and other != port
