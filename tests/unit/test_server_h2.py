"""``limits.h2_max_streams``: how many requests one h2c connection may carry at once, handed to
hypercorn (whose own default, 100, would make the connection cap count 100 requests as one)."""

from __future__ import annotations

from pathlib import Path

import pytest

from docxy.config import H2_MAX_STREAMS, load_config
from docxy.core.errors import ConfigError
from docxy.http.server import hypercorn_config


def settings(tmp_path: Path, **values: str) -> dict[str, object]:
    return {"cache.dir": str(tmp_path / "cache"), **values}


def test_the_default_is_well_below_hypercorns(tmp_path: Path) -> None:
    config = load_config(settings(tmp_path), environ={})
    assert config.limits.h2_max_streams == H2_MAX_STREAMS <= 32
    assert hypercorn_config(config, None).h2_max_concurrent_streams == H2_MAX_STREAMS


@pytest.mark.parametrize("value", ["1", "3", "100"])
def test_the_setting_reaches_hypercorn(tmp_path: Path, value: str) -> None:
    config = load_config(settings(tmp_path, **{"limits.h2_max_streams": value}), environ={})
    assert hypercorn_config(config, None).h2_max_concurrent_streams == int(value)
    from_env = load_config(settings(tmp_path), environ={"DOCXY_LIMITS_H2_MAX_STREAMS": value})
    assert from_env.limits.h2_max_streams == int(value)


@pytest.mark.parametrize("value", ["0", "1001", "-1", "many", ""])
def test_bad_values_name_the_setting(tmp_path: Path, value: str) -> None:
    with pytest.raises(ConfigError, match="limits.h2_max_streams"):
        load_config(settings(tmp_path, **{"limits.h2_max_streams": value}), environ={})
