"""SeaweedFS (``lab.objectstore``) for one test module, on a loopback address and a port range
of its own (a review's range: fixed, so never one another module or a CI run uses)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

import lab
import lab.objectstore as lab_objectstore
import lab.ports as lab_ports
import lab.service as lab_service
from tests.unavailable import skip_or_fail


@contextmanager
def weed_on(workdir: Path, host: str, ports: range) -> Iterator[lab_objectstore.ObjectStore]:
    """The store in ``workdir``, its listeners on ``host`` at ports of ``ports``; skipped
    without ``weed`` (a failure under DOCXY_REQUIRE_E2E=1, as in CI); stopped at the end."""
    handed = iter(ports)

    def port_in_range(_: str = host) -> int:
        for port in handed:
            if lab_ports._bindable(host, port):
                return port
        raise RuntimeError(f"no free port left in {ports}")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(lab_objectstore, "LOOPBACK", host)
        patch.setattr(lab_service, "LOOPBACK", host)
        patch.setattr(lab_objectstore, "free_port", port_in_range)
        try:
            store = lab_objectstore.start_objectstore(workdir)
        except lab.Unavailable as exc:
            skip_or_fail(str(exc))
        try:
            assert store.url.startswith(f"http://{host}:")
            yield store
        finally:
            store.stop()
