"""Open client connections from the kernel's socket tables: a fake /proc, then the real one."""

from __future__ import annotations

import asyncio
import os
import socket
import threading
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest

from docxy.config import load_config
from docxy.http.state import MirrorState
from docxy.observe import Observer, connections, create_admin_app
from docxy.observe.connections import Budget, ConnectionCounter, open_connections, table
from docxy.tasks import spawn
from docxy.upstream.client import Upstream
from tests.unit.turns import until

HEADER = (
    "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  inode\n"
)


def row(local_port: int, state: str, inode: int) -> str:
    return (
        f"   0: 0100007F:{local_port:04X} 0100007F:D431 {state} 00000000:00000000 00:00000000 "
        f"00000000     0        0 {inode} 1 0000000000000000 20 4 30 10 -1\n"
    )


def fake_proc(tmp_path: Path, tcp: list[str], tcp6: list[str] | None, owned: list[int]) -> Path:
    (tmp_path / "net").mkdir()
    (tmp_path / "fd").mkdir()
    (tmp_path / "net" / "tcp").write_text(HEADER + "".join(tcp))
    if tcp6 is not None:
        (tmp_path / "net" / "tcp6").write_text(HEADER + "".join(tcp6))
    for n, inode in enumerate(owned):
        os.symlink(f"socket:[{inode}]", tmp_path / "fd" / str(n + 3))
    os.symlink("/dev/null", tmp_path / "fd" / "0")
    return tmp_path


def test_counts_established_sockets_of_this_process_on_the_listener_ports(tmp_path: Path) -> None:
    proc = fake_proc(
        tmp_path,
        tcp=[
            row(8080, "0A", 100),  # the listening socket
            row(8080, "01", 101),  # a client connection
            row(8080, "01", 102),  # another
            row(8080, "06", 103),  # TIME_WAIT: gone
            row(8080, "01", 999),  # another process's (not in our fds)
            row(40000, "01", 104),  # our own outgoing connection to the upstream
        ],
        tcp6=[row(8443, "01", 105)],
        owned=[100, 101, 102, 103, 104, 105],
    )
    assert open_connections([8080], proc) == 2
    assert open_connections([8080, 8443], proc) == 3
    assert open_connections([9999], proc) == 0


def test_no_ipv6_table_is_fine_and_no_proc_is_unknown(tmp_path: Path) -> None:
    proc = fake_proc(tmp_path, tcp=[row(80, "01", 7)], tcp6=None, owned=[7])
    assert open_connections([80], proc) == 1
    assert open_connections([80], tmp_path / "missing") is None


def test_malformed_rows_are_skipped(tmp_path: Path) -> None:
    path = tmp_path / "tcp"
    path.write_text(HEADER + "garbage\n   0: 0100007F:ZZZZ x 01 a b c d e 5\n" + row(80, "01", 5))
    assert list(table(path, Budget())) == [(80, "01", "5")]


@pytest.mark.skipif(not Path("/proc/self/net/tcp").exists(), reason="needs Linux /proc")
def test_a_real_connection_is_counted_while_open() -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        assert open_connections([port]) == 0
        with socket.create_connection(("127.0.0.1", port)) as client:
            accepted, _ = server.accept()
            with accepted:
                assert open_connections([port]) == 1  # the accepted side; not the client's
            del client
        assert open_connections([port]) == 0


@pytest.mark.skipif(not Path("/proc/self/net/tcp").exists(), reason="needs Linux /proc")
async def test_the_admin_routes_count_in_a_worker_thread_and_right(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The tables can take long to read on a busy host: never on the event loop, which would
    stall every request meanwhile. The figure is still the real one: the listener's
    established connections, not the clients' own ends nor a closed one."""
    read_on: list[int] = []
    read = connections.table

    def watched(*args: Any) -> Iterator[tuple[int, str, str]]:
        read_on.append(threading.get_ident())
        return read(*args)

    monkeypatch.setattr(connections, "table", watched)
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        config = load_config(
            {"server.listen": f"127.0.0.1:{port}", "cache.dir": str(tmp_path)}, environ={}
        )
        observer = Observer(MirrorState(config, Upstream.from_config(config.upstream)))
        admin = create_admin_app(observer).test_client()
        with ExitStack() as held:
            for _ in range(4):
                held.enter_context(socket.create_connection(("127.0.0.1", port)))
                held.enter_context(server.accept()[0])
            with socket.create_connection(("127.0.0.1", port)) as gone:
                server.accept()[0].close()
                del gone
            metrics = await (await admin.get("/metrics")).get_data(as_text=True)
            report = await (await admin.get("/status.json")).get_json()
    assert read_on and threading.get_ident() not in read_on
    assert "docxy_open_connections 4.0" in metrics.splitlines()
    assert report["traffic"]["open_connections"] == 4


def test_tables_longer_than_the_budget_are_unknown_not_a_part_count(tmp_path: Path) -> None:
    rows = [row(8080, "01", 100 + n) for n in range(50)]
    proc = fake_proc(tmp_path, tcp=rows, tcp6=None, owned=list(range(100, 150)))
    assert open_connections([8080], proc, Budget(max_bytes=10_000)) == 50
    assert open_connections([8080], proc, Budget(max_bytes=len(HEADER) + 10 * len(rows[0]))) is None
    ticks = iter(range(1000))
    slow = Budget(seconds=0.5, clock=lambda: float(next(ticks)))  # a second per look
    assert open_connections([8080], proc, slow) is None


async def test_scrapes_at_once_share_one_read() -> None:
    calls: list[list[int]] = []
    release = threading.Event()

    def count(ports: list[int]) -> int:
        calls.append(ports)
        assert release.wait(30)
        return 7

    counter = ConnectionCounter(lambda: [8080], count)
    scrapes = [spawn(f"scrape-{n}", counter.refresh()) for n in range(3)]
    await until(lambda: counter.joined == 2)
    release.set()
    assert await asyncio.gather(*scrapes) == [7, 7, 7]
    assert calls == [[8080]] and counter.last == 7
