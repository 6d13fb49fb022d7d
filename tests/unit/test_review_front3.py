"""Third review of the front: how the mirror starts, serves and stops.

Each test is a fault found in ``docxy/http/server.py`` and ``docxy/http/acme.py``, shown
through the code a start or a request really runs, then mended.
"""

from __future__ import annotations

import errno
import json
import os
import socket
from pathlib import Path

import pytest

from docxy.config import load_config
from docxy.core.errors import ConfigError
from docxy.edge import connections
from docxy.http.server import _HypercornConfig, load_tls
from tests.unit.test_routes import mirror

HOST = "127.0.0.94"


# --- listeners --------------------------------------------------------------------------------


def test_listen_and_tls_listen_on_one_port_is_a_config_error() -> None:
    """``server.listen`` and ``server.tls_listen`` on the same port (a typo, or ``0.0.0.0:443``
    beside ``127.0.0.1:443``): both binds took SO_REUSEADDR and neither socket listened yet,
    so Linux let both bind; the start then died in hypercorn's ``listen()`` with an ``OSError``
    traceback instead of one line naming the setting (exit 2)."""
    hc = _HypercornConfig(tls=None)
    hc._tls = object()  # type: ignore[assignment]  # TLS on: bind is the secure listener
    hc.bind = [f"{HOST}:7700"]
    hc.insecure_bind = [f"{HOST}:7700"]
    hc.bind_keys = {f"{HOST}:7700": ("server.listen", "--listen")}
    try:
        with pytest.raises(ConfigError, match=r"cannot listen on 127\.0\.0\.94:7700: .*in use"):
            hc.create_sockets()
    finally:
        if hc._sockets is not None:
            for sock in [*hc._sockets.secure_sockets, *hc._sockets.insecure_sockets]:
                sock.close()
    assert all(sock.fileno() == -1 for sock in hc._opened)  # the first one closed too


def test_a_listener_that_binds_listens_at_once() -> None:
    """What the start hands hypercorn is a listening socket: a client can connect before
    hypercorn calls ``listen()`` again (which only sets the backlog)."""
    hc = _HypercornConfig(tls=None)
    [sock] = hc._create_sockets([f"{HOST}:7702"])
    try:
        with socket.create_connection((HOST, 7702), timeout=2):
            pass
    finally:
        sock.close()


# --- the bootstrap certificate ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("public_url", "sans"),
    [
        ("https://mirror.example.com:7711", ["mirror.example.com"]),
        ("https://192.0.2.7", ["192.0.2.7"]),
        ("https://[2001:db8:0::7]:7711", ["2001:db8::7"]),
    ],
)
def test_the_own_self_signed_certificate_names_the_public_host(
    tmp_path: Path, public_url: str, sans: list[str]
) -> None:
    """TLS on, no certificate paths, no ``certs.domain``: the mirror's own pair, which its
    clients are told to trust (``configure-client.sh --ca-cert``), named ``localhost``, so every
    client reaching ``public_url`` refused it (x509: certificate is valid for localhost)."""
    config = load_config(
        {
            "server.listen": f"{HOST}:7710",
            "server.tls_listen": f"{HOST}:7711",
            "server.public_url": public_url,
            "cache.dir": str(tmp_path / "cache"),
        },
        environ={},
    )
    tls = load_tls(config)
    assert tls is not None
    assert tls.status()["sans"] == sans
    again = load_tls(config)  # the same pair is served after a restart
    assert again is not None
    assert again.status()["serial"] == tls.status()["serial"]


# --- ACME HTTP-01 -----------------------------------------------------------------------------


@pytest.fixture
def webroot(tmp_path: Path) -> Path:
    challenges = tmp_path / "webroot" / ".well-known" / "acme-challenge"
    challenges.mkdir(parents=True)
    (challenges / "good").write_text("good.thumbprint")
    (tmp_path / "private.key").write_text("do not serve")
    os.symlink(tmp_path / "private.key", challenges / "link")
    os.mkfifo(challenges / "fifo")
    return tmp_path / "webroot"


async def test_an_acme_token_that_is_a_symlink_is_not_followed(webroot: Path) -> None:
    """A link in the webroot (shared with certbot, often a volume others write) served the file
    it points at, anywhere the mirror may read: its TLS key, its users file."""
    async with mirror(settings={"certs.webroot": str(webroot)}) as m:
        response = await m.raw("GET", "/.well-known/acme-challenge/link")
    assert b"do not serve" not in response.body
    assert response.status == 404
    assert json.loads(response.body)["errors"][0]["code"] == "NOT_FOUND"


async def test_an_acme_token_that_is_no_regular_file_does_not_hang_the_mirror(
    webroot: Path,
) -> None:
    """A FIFO named like a token: ``read_bytes`` blocked in ``open()`` on the event loop,
    and the whole mirror with it, until some writer came. Run in a child process so the
    hang, if any, ends with it."""
    import subprocess
    import sys
    import textwrap

    code = textwrap.dedent(
        f"""
        import asyncio, json
        from tests.unit.test_routes import mirror

        async def main():
            async with mirror(settings={{"certs.webroot": {str(webroot)!r}}}) as m:
                r = await m.raw("GET", "/.well-known/acme-challenge/fifo")
                print(r.status, json.loads(r.body)["errors"][0]["code"])

        asyncio.run(main())
        """
    )
    try:
        done = subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            timeout=20,
            cwd=Path(__file__).parents[2],
        )
    except subprocess.TimeoutExpired:
        pytest.fail("the mirror hung on a FIFO in the ACME webroot")
    assert done.stdout.split() == ["404", "NOT_FOUND"], done.stderr


async def test_a_regular_acme_token_is_still_served(webroot: Path) -> None:
    async with mirror(settings={"certs.webroot": str(webroot)}) as m:
        response = await m.raw("GET", "/.well-known/acme-challenge/good")
    assert response.status == 200
    assert response.body == b"good.thumbprint"


def test_an_ipv6_listener_on_a_kernel_without_ipv6_is_a_config_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``server.listen = "[::]:80"`` on a host booted with ``ipv6.disable=1``: making the
    AF_INET6 socket fails (EAFNOSUPPORT) before the bind, outside the handling that turns a
    bind's OSError into one line naming the setting, so the start was a traceback. (The
    kernel's refusal is stood in for: this machine has IPv6.)"""
    real = connections.Listener

    def no_ipv6(family: int, *args: object) -> connections.Listener:
        if family == socket.AF_INET6:
            raise OSError(errno.EAFNOSUPPORT, os.strerror(errno.EAFNOSUPPORT))
        return real(family, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(connections, "Listener", no_ipv6)
    hc = _HypercornConfig(tls=None)
    hc.bind_keys = {"[::]:7720": ("server.listen", "--listen")}
    with pytest.raises(ConfigError) as raised:
        hc._create_sockets([f"{HOST}:7721", "[::]:7720"])
    assert str(raised.value) == (
        "server.listen: cannot listen on [::]:7720: Address family not supported by protocol"
        " (--listen)"
    )
