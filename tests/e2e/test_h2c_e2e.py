"""HTTP/2 over plain TCP (h2c) against a running mirror: refused by default, both ways in
(the preface, ``Upgrade: h2c``), with nothing reaching the app; allowed with
``limits.h2_max_streams``, whose stream limit the client is told."""

from __future__ import annotations

import socket

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.settings
import pytest

from lab.mirror import Mirror
from tests.conftest import StartMirror

pytestmark = pytest.mark.e2e

UPGRADE = (
    b"GET /v2/ HTTP/1.1\r\nHost: mirror\r\nConnection: Upgrade, HTTP2-Settings\r\n"
    b"Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n"
)


def prior_knowledge(mirror: Mirror) -> list[h2.events.Event]:
    """Open an HTTP/2 connection with prior knowledge; every event until the server closes."""
    connection = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    connection.initiate_connection()
    events: list[h2.events.Event] = []
    with socket.create_connection(("127.0.0.1", mirror.port), timeout=30) as sock:
        sock.sendall(connection.data_to_send())
        while data := sock.recv(65536):
            events += connection.receive_data(data)
            if any(isinstance(e, h2.events.RemoteSettingsChanged) for e in events):
                if not any(isinstance(e, h2.events.ConnectionTerminated) for e in events):
                    break  # allowed: the settings are what we came for
    return events


def test_h2c_is_refused_by_default(start_mirror: StartMirror) -> None:
    mirror = start_mirror()
    events = prior_knowledge(mirror)
    ended = [e for e in events if isinstance(e, h2.events.ConnectionTerminated)]
    assert [e.error_code for e in ended] == [h2.errors.ErrorCodes.HTTP_1_1_REQUIRED]
    with socket.create_connection(("127.0.0.1", mirror.port), timeout=30) as sock:
        sock.sendall(UPGRADE)
        answer = b""
        while data := sock.recv(65536):
            answer += data
    assert answer.endswith(b"\x00\x00\x00\x0d")  # a GOAWAY with HTTP_1_1_REQUIRED ends it
    assert "GET /v2/" not in mirror.log_text()  # the upgrade's request never reached the app


def test_h2c_clients_are_told_the_configured_stream_limit(start_mirror: StartMirror) -> None:
    mirror = start_mirror("--set", "limits.h2_max_streams=3")
    events = prior_knowledge(mirror)
    settings = [e for e in events if isinstance(e, h2.events.RemoteSettingsChanged)]
    code = h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS
    assert settings[0].changed_settings[code].new_value == 3  # hypercorn's own: 100
    assert not any(isinstance(e, h2.events.ConnectionTerminated) for e in events)


@pytest.mark.parametrize("allowed", [False, True], ids=["refused", "allowed"])
@pytest.mark.parametrize("settings", [b"AAA", b"AAQA", b"AAIAAAAF"])  # base64, frame, value
def test_an_upgrade_whose_settings_cannot_be_read_is_closed_quietly(
    start_mirror: StartMirror, allowed: bool, settings: bytes
) -> None:
    """Each was an ERROR traceback in the log (h2's exception out of hypercorn's connection
    task), for anybody sending one line."""
    mirror = start_mirror(*(["--set", "limits.h2_max_streams=3"] if allowed else []))
    with socket.create_connection(("127.0.0.1", mirror.port), timeout=30) as sock:
        sock.sendall(UPGRADE.replace(b"AAMAAABkAAQAAP__", settings))
        answer = b""
        while data := sock.recv(65536):
            answer += data
    assert answer.startswith(b"HTTP/1.1 101 ")  # hypercorn's, before the settings are read
    with socket.create_connection(("127.0.0.1", mirror.port), timeout=30) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: mirror\r\nConnection: close\r\n\r\n")
        assert sock.recv(65536).startswith(b"HTTP/1.1 200 ")  # still serving
    log = mirror.log_text()
    assert "Traceback" not in log and "ERROR" not in log, log
