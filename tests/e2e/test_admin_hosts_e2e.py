"""``server.admin_hosts`` through a real ``docxy serve``: a scraper using a Compose service
name (``Host: docxy:PORT``) is answered, a name not listed still gets ``403``."""

from __future__ import annotations

import httpx
import pytest

from lab.ports import LOOPBACK, free_port
from tests.conftest import StartMirror

pytestmark = pytest.mark.e2e


def test_a_listed_service_name_is_scraped_and_another_is_refused(
    start_mirror: StartMirror,
) -> None:
    port = free_port()
    start_mirror(
        "--set", f"server.admin_listen={LOOPBACK}:{port}", "--set", "server.admin_hosts=docxy"
    )
    url = f"http://{LOOPBACK}:{port}/metrics"
    listed = httpx.get(url, headers={"Host": f"docxy:{port}"}, timeout=10)
    assert listed.status_code == 200
    assert "docxy_build_info" in listed.text
    other = httpx.get(url, headers={"Host": f"prometheus:{port}"}, timeout=10)
    assert other.status_code == 403
    assert other.json()["errors"][0]["code"] == "DENIED"
    assert "docxy_build_info" not in other.text
