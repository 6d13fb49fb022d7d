"""``limits.h2_max_streams``: 0 (the default) refuses HTTP/2 over plain TCP (h2c); a number
allows it with that many requests at once on one connection, handed to hypercorn (whose own
default, 100, would make the connection cap count 100 requests as one)."""

from __future__ import annotations

from pathlib import Path

import hypercorn.protocol
import pytest
from hypercorn.protocol.h2 import H2Protocol

from docxy.config import H2_MAX_STREAMS, load_config
from docxy.core.errors import ConfigError
from docxy.edge import h2c
from docxy.http.server import hypercorn_config


def settings(tmp_path: Path, **values: str) -> dict[str, object]:
    return {"cache.dir": str(tmp_path / "cache"), **values}


def test_h2c_is_refused_by_default(tmp_path: Path) -> None:
    config = load_config(settings(tmp_path), environ={})
    assert config.limits.h2_max_streams == H2_MAX_STREAMS == 0


@pytest.mark.parametrize("value", ["1", "3", "100"])
def test_the_setting_reaches_hypercorn(tmp_path: Path, value: str) -> None:
    config = load_config(settings(tmp_path, **{"limits.h2_max_streams": value}), environ={})
    assert hypercorn_config(config, None).h2_max_concurrent_streams == int(value)
    from_env = load_config(settings(tmp_path), environ={"DOCXY_LIMITS_H2_MAX_STREAMS": value})
    assert from_env.limits.h2_max_streams == int(value)


@pytest.mark.parametrize("value", ["1001", "-1", "many", ""])
def test_bad_values_name_the_setting(tmp_path: Path, value: str) -> None:
    with pytest.raises(ConfigError, match="limits.h2_max_streams"):
        load_config(settings(tmp_path, **{"limits.h2_max_streams": value}), environ={})


def test_install_swaps_the_class_hypercorn_switches_to(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hypercorn.protocol, "H2Protocol", H2Protocol)
    h2c.install()
    assert vars(hypercorn.protocol)["H2Protocol"] is h2c.H2cRefused
    h2c.install()  # twice is fine
    h2c.install(refuse=False)  # limits.h2_max_streams > 0
    assert vars(hypercorn.protocol)["H2Protocol"] is h2c.H2cChecked
    monkeypatch.setattr(hypercorn.protocol, "H2Protocol", object)
    with pytest.raises(RuntimeError, match="hypercorn"):
        h2c.install()


@pytest.mark.parametrize(
    ("settings", "readable"),
    [
        (b"AAMAAABkAAQAAP__", True),
        (b"", True),
        (b"AAA", False),
        (b"AAQA", False),
        (b"AAIAAAAF", False),
    ],
)
def test_which_http2_settings_headers_are_taken(settings: bytes, readable: bool) -> None:
    assert h2c.readable_settings(settings) is readable
