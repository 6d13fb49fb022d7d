"""The self-signed certificate of a mirror with TLS on and no certificate paths: kept across
restarts while it is good, made anew only when it is near its end or names another host, at
start and while the mirror runs."""

from __future__ import annotations

import asyncio
import datetime as dt
import stat
from pathlib import Path

import pytest

from docxy.config import Config, load_config
from docxy.http.server import load_tls
from docxy.tls import context
from docxy.tls.certs import describe_files
from docxy.tls.context import self_signed
from lab.ports import LOOPBACK, free_port
from tests.unit.test_tls import client_context, connect, poll, serial_of, tls_echo_server


def config(tmp_path: Path, **settings: object) -> Config:
    tls_port = free_port()
    return load_config(
        {
            "server.listen": f"{LOOPBACK}:{free_port()}",
            "server.tls_listen": f"{LOOPBACK}:{tls_port}",
            # the host the mirror's own certificate names (the clients' name for it)
            "server.public_url": f"https://localhost:{tls_port}",
            "cache.dir": str(tmp_path / "cache"),
            **settings,
        },
        environ={},
    )


def served_serial(config: Config) -> str:
    tls = load_tls(config)
    assert tls is not None
    return str(tls.status()["serial"])


def test_a_restart_serves_the_same_self_signed_certificate(tmp_path: Path) -> None:
    """Each start made a new one: every client that trusts it had to fetch it again."""
    cfg = config(tmp_path)
    first = served_serial(cfg)
    assert served_serial(cfg) == first
    key = tmp_path / "docxy-tls" / "selfsigned-key.pem"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600


def test_a_self_signed_certificate_near_its_end_is_replaced(tmp_path: Path) -> None:
    """One with less than a third of its lifetime left (certbot's margin) is made anew."""
    cert, key = self_signed(tmp_path / "docxy-tls", "localhost", days=20)
    old = describe_files(cert, key)["serial"]
    tls = load_tls(config(tmp_path))
    assert tls is not None
    assert tls.status()["serial"] != old
    assert float(str(tls.status()["days_left"])) > 80


def test_a_self_signed_certificate_for_another_host_is_replaced(tmp_path: Path) -> None:
    self_signed(tmp_path / "docxy-tls", "old.example")
    tls = load_tls(config(tmp_path))
    assert tls is not None
    assert tls.status()["sans"] == ["localhost"]


def test_a_broken_self_signed_pair_is_replaced(tmp_path: Path) -> None:
    cert, _ = self_signed(tmp_path / "docxy-tls", "localhost")
    cert.write_text("not a certificate")
    tls = load_tls(config(tmp_path))
    assert tls is not None
    assert tls.status()["sans"] == ["localhost"]


async def test_a_running_mirror_renews_its_self_signed_certificate(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A mirror running past the pair's margin (a third of its life left) kept serving it until
    a restart, up to its end. Here a pair that lives 6 s: past 4 s the watch writes a new one
    and new handshakes get it, as they get a renewed Let's Encrypt certificate."""
    monkeypatch.setattr(context, "SELF_SIGNED_DAYS", 6 / 86400)
    tls = load_tls(config(tmp_path))
    assert tls is not None
    cert = tmp_path / "docxy-tls" / "selfsigned-cert.pem"
    first = tmp_path / "first.pem"
    first.write_bytes(cert.read_bytes())
    async with tls_echo_server(tls) as port, asyncio.TaskGroup() as tg:
        _, writer, before = await connect(port, client_context(first))
        writer.close()
        watcher = tg.create_task(tls.watch(0.05), name="tls-watch")
        await poll(lambda: tls.status()["serial"] != before)
        _, writer, after = await connect(port, client_context(cert))  # trusts the new one only
        writer.close()
        watcher.cancel()
    assert after == serial_of(cert) != before
    assert stat.S_IMODE((tmp_path / "docxy-tls" / "selfsigned-key.pem").stat().st_mode) == 0o600


def test_a_self_signed_pair_is_renewed_once_an_hour_at_most(tmp_path: Path) -> None:
    """A new pair that does not make the served one new (it cannot be loaded, say) is not
    written again at every tick of the watch."""
    own = context.SelfSignedPair(tmp_path / "docxy-tls", "localhost", days=90)
    tls = context.ReloadableTLS(*own.kept(), own=own)
    now = dt.datetime.now(dt.UTC)
    assert tls.renew_own_if_due(now) is False  # 90 days left
    late = now + dt.timedelta(days=61)
    assert tls.renew_own_if_due(late) is True
    assert tls.renew_own_if_due(late + dt.timedelta(minutes=59)) is False
    assert tls.renew_own_if_due(late + dt.timedelta(minutes=61)) is True
    plain = context.ReloadableTLS(own.cert_path, own.key_path)  # tls.cert_path: not its own
    assert plain.renew_own_if_due(late) is False


def test_a_clock_set_back_does_not_put_the_next_self_signed_pair_off(tmp_path: Path) -> None:
    """An attempt made while the clock ran a day ahead: its hour of quiet was counted from
    that future time, so no new pair for a day after the clock was set right."""
    own = context.SelfSignedPair(tmp_path / "docxy-tls", "localhost", days=90)
    tls = context.ReloadableTLS(*own.kept(), own=own)
    late = dt.datetime.now(dt.UTC) + dt.timedelta(days=61)  # within its last 30 days
    assert tls.renew_own_if_due(late + dt.timedelta(days=1)) is True  # a day ahead
    assert tls.renew_own_if_due(late) is True  # set right: due, tried again


def test_a_first_start_with_the_key_in_another_directory_bootstraps_both_paths(
    tmp_path: Path,
) -> None:
    """``tls.key_path`` beside no certificate (``/etc/ssl/private``): the bootstrap key went
    beside the certificate, the mirror then found none at ``key_path`` and would not start,
    so no certificate could be obtained through it either."""
    cert = tmp_path / "certs" / "fullchain.pem"
    key = tmp_path / "private" / "privkey.pem"
    cfg = config(
        tmp_path,
        **{
            "tls.cert_path": str(cert),
            "tls.key_path": str(key),
            "certs.domain": "mirror.example.com",
        },
    )
    tls = load_tls(cfg)
    assert tls is not None
    assert cert.is_file() and key.is_file()
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert not (cert.parent / key.name).exists()  # no stray key beside the certificate
