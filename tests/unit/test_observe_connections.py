"""Open client connections from the kernel's socket tables: a fake /proc, then the real one."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from docxy.observe.connections import open_connections, table

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
    assert list(table(path)) == [(80, "01", "5")]


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
