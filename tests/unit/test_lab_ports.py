"""The lab's free ports (lab/ports.py): below the ephemeral range, free on every address."""

from __future__ import annotations

import socket

import pytest

from lab import ports


def test_a_port_handed_out_is_below_the_ephemeral_range_and_binds_on_the_wildcard() -> None:
    """A port from the ephemeral range (as bind to port 0 gives) could be an outgoing
    connection's local port by the time a child bound it: a CI run's mirror could not listen
    on 0.0.0.0 at a port found free on 127.0.0.1 a moment before."""
    port = ports.free_port()
    assert ports.LOWEST <= port < ports._ephemeral_start()
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

        monkeypatch.setattr(ports, "_ephemeral_start", lambda: 65536)
        monkeypatch.setattr(ports._pick, "randrange", pick)
        assert ports.free_port() != busy
        assert picked[0] == busy


def test_no_two_calls_name_the_same_port() -> None:
    given = [ports.free_port() for _ in range(50)]
    assert len(set(given)) == 50
