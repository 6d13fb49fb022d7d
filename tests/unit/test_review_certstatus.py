"""``docxy certs status`` and a renewer's refusal of its own settings, by the domain its status
file says it was written for (c5a50f8 taught the mirror's /health that; ``certs status`` still
reported a refusal left by a renewer that had a domain, ``DOCXY_DOMAIN`` since removed, which
no renewer reads any more: exit 1 where /health said ok)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from docxy.tls import certs


def written(config_dir: Path, **status: object) -> Path:
    (config_dir / certs.STATUS_FILE).write_text(json.dumps(status))
    return config_dir


@pytest.mark.parametrize(
    ("file_domain", "domain", "shown"),
    [
        ("mirror.test", "mirror.test", True),  # as before, with a domain
        (None, None, True),  # a renewer without a domain holds: said
        ("mirror.test", None, False),  # left by one with a domain: no renewer reads it
        ("absent", None, False),  # a file from before c5a50f8: as /health, not said
        ("absent", "mirror.test", True),
    ],
)
def test_a_refusal_is_said_as_the_mirrors_health_says_it(
    tmp_path: Path, file_domain: str | None, domain: str | None, shown: bool
) -> None:
    status: dict[str, object] = {"refused": "scheduler.interval: not a duration"}
    if file_domain != "absent":
        status["domain"] = file_domain
    said = certs._renewer_refusal(written(tmp_path, **status), domain)
    assert (said == "scheduler.interval: not a duration") is shown, said


def test_no_refusal_is_none(tmp_path: Path) -> None:
    assert certs._renewer_refusal(written(tmp_path, domain=None, failures=0), None) is None
    assert certs._renewer_refusal(None, "mirror.test") is None
