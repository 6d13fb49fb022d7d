"""A running mirror tells an h2c client (HTTP/2 with prior knowledge, plain TCP) the stream
limit of ``limits.h2_max_streams``: what one connection may carry at once."""

from __future__ import annotations

import socket

import h2.config
import h2.connection
import h2.events
import h2.settings
import pytest

from tests.bed import Mirror
from tests.conftest import StartMirror

pytestmark = pytest.mark.e2e


def advertised_streams(mirror: Mirror) -> int | None:
    """The server's SETTINGS_MAX_CONCURRENT_STREAMS, read from its first SETTINGS frame."""
    connection = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    connection.initiate_connection()
    with socket.create_connection(("127.0.0.1", mirror.port), timeout=30) as sock:
        sock.sendall(connection.data_to_send())
        while data := sock.recv(65536):
            for event in connection.receive_data(data):
                if isinstance(event, h2.events.RemoteSettingsChanged):
                    code = h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS
                    changed = event.changed_settings.get(code)
                    return None if changed is None else changed.new_value
    return None


@pytest.mark.parametrize("setting", [None, "3"])
def test_h2c_clients_are_told_the_configured_stream_limit(
    start_mirror: StartMirror, setting: str | None
) -> None:
    extra = () if setting is None else ("--set", f"limits.h2_max_streams={setting}")
    mirror = start_mirror(*extra)
    expected = 8 if setting is None else int(setting)
    assert advertised_streams(mirror) == expected  # hypercorn's own default would say 100
