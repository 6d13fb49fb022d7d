"""Observability review: the cache figures while the blob index is read at start, ``docxy
health`` on a config error, and the README's list of recent-error kinds."""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from docxy.cache.blobs import DiskBlobStore, Walked
from docxy.cli.exits import EXIT_OK
from docxy.cli.healthcheck import EXIT_UNHEALTHY
from docxy.cli.main import main
from docxy.observe.metrics import ERROR_KINDS
from tests.unit.test_observe_routes import BLOB, blob_path, stack

ROOT = Path(__file__).resolve().parents[2]
GUARD = 10.0
# This review's own loopback address and ports (other helpers run beside it).
HOST = "127.0.111.1"
HEALTHY_PORT = 13031
CLOSED_PORT = 13032


async def test_the_cache_figures_say_they_are_partial_while_the_index_is_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """/status.json, /health and the page showed a cache of 0 B (the blobs found so far) with
    nothing saying the count was not done; /metrics leaves those figures out meanwhile."""
    async with stack(tmp_path) as mirror:
        assert (await mirror.get(blob_path())).status == 200
        await mirror.committed()
    release = threading.Event()
    walk = DiskBlobStore._walk

    def slow(self: DiskBlobStore, *, strict: bool = False) -> Walked:
        release.wait(GUARD)  # a big cache on a slow disk: the walk takes a while
        return walk(self, strict=strict)

    monkeypatch.setattr(DiskBlobStore, "_walk", slow)
    try:
        async with stack(tmp_path) as mirror:
            _, body = await mirror.admin_get("/status.json")
            assert json.loads(body)["cache"]["index_ready"] is False
            public = json.loads((await mirror.get("/health")).body)["cache"]
            assert public["index_ready"] is False
            _, page = await mirror.admin_get("/status")
            assert "counting…" in page
            assert "0 B <small>" not in page  # not an empty cache
            release.set()
            assert mirror.observer.state.cache is not None
            await mirror.observer.state.cache.blobs.indexed()
            _, body = await mirror.admin_get("/status.json")
            cache = json.loads(body)["cache"]
            assert (cache["index_ready"], cache["bytes"]) == (True, len(BLOB))
            _, page = await mirror.admin_get("/status")
            assert "counting…" not in page
    finally:
        release.set()


@contextmanager
def health_answer(port: int) -> Iterator[None]:
    """A stand-in for the running mirror's ``/health`` on this review's loopback address."""

    class Health(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            body = b'{"status": "ok", "version": "test"}'
            self.send_response(200 if self.path == "/health" else 404)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002
            pass

    server = ThreadingHTTPServer((HOST, port), Health)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield
    finally:
        server.shutdown()
        server.server_close()
        thread.join(GUARD)


UNRELATED = {
    "cache.max_size": '[cache]\nmax_size = "lots"\n',
    "tls.cert_path": (
        '[tls]\ncert_path = "/nonexistent/docxy/cert.pem"\nkey_path = "/nonexistent/docxy/k.pem"\n'
    ),
}


@pytest.mark.usefixtures("clean_docxy_env")
@pytest.mark.parametrize("key", sorted(UNRELATED))
def test_docxy_health_ignores_a_setting_the_probe_does_not_need(
    key: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A config file being edited, or a certificate being replaced, marked a healthy running
    mirror unhealthy (exit 2, which Docker reserves): the probe needs ``server.listen`` only."""
    config = tmp_path / "docxy.toml"
    config.write_text(f'[server]\nlisten = "{HOST}:{HEALTHY_PORT}"\n' + UNRELATED[key])
    monkeypatch.setenv("DOCXY_CONFIG", str(config))
    with health_answer(HEALTHY_PORT):
        assert main(["health", "--timeout", "5"]) == EXIT_OK
    out, err = capsys.readouterr()
    assert f"{HOST}:{HEALTHY_PORT}/health: ok" in out
    # A config error is still said; the TLS pair is none for the probe: only docxy serve and
    # the renewer read it, so only they look (test_review_cli1).
    assert (key in err) is (key != "tls.cert_path")


@pytest.mark.usefixtures("clean_docxy_env")
@pytest.mark.parametrize(
    "toml",
    [
        '[server]\nlisten = "nowhere"\n',  # the listener itself is wrong
        "[server\nlisten = ",  # a file half written: no listener to be found in it
    ],
)
def test_docxy_health_on_a_config_error_is_unhealthy_not_exit_2(
    toml: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Docker reserves a HEALTHCHECK's exit 2; unhealthy is 1, the error on stderr."""
    config = tmp_path / "docxy.toml"
    config.write_text(toml)
    monkeypatch.setenv("DOCXY_CONFIG", str(config))
    assert main(["health", "--timeout", "2"]) == EXIT_UNHEALTHY
    assert "config error" in capsys.readouterr().err


@pytest.mark.usefixtures("clean_docxy_env")
def test_docxy_health_follows_the_listener_from_the_environment_over_a_broken_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The container sets DOCXY_SERVER_LISTEN: a config file half written does not hide it,
    and the file's listener would not win over it anyway; nothing there: unhealthy."""
    config = tmp_path / "docxy.toml"
    config.write_text('[server]\nlisten = "127.0.111.1:1"\n[cache\n')
    monkeypatch.setenv("DOCXY_CONFIG", str(config))
    monkeypatch.setenv("DOCXY_SERVER_LISTEN", f"{HOST}:{CLOSED_PORT}")
    assert main(["health", "--timeout", "2"]) == EXIT_UNHEALTHY
    err = capsys.readouterr().err
    assert f"{HOST}:{CLOSED_PORT}/health" in err and "config error" in err
    with health_answer(HEALTHY_PORT):
        assert main(["health", "--timeout", "5", "--listen", f"{HOST}:{HEALTHY_PORT}"]) == EXIT_OK


def recorded_kinds() -> set[str]:
    """Every kind the status page's recent errors can show: the counted ones (each
    ``UpstreamHealth.failed`` kind and the observer's 429/5xx, docxy_upstream_errors_total's
    kinds), and those put straight on an upstream health's list."""
    found = set(ERROR_KINDS)
    appended = re.compile(r"recent_failures\.append\(\(.*?\"([a-z_]+)\"")
    for path in (ROOT / "docxy").rglob("*.py"):
        found.update(appended.findall(path.read_text()))
    return found


def readme_kinds() -> set[str]:
    readme = (ROOT / "README.md").read_text()
    found = re.search(r"recent upstream\s+errors \(the last 20", readme)
    assert found is not None
    paragraph = readme[found.start() : readme.index("\n\n", found.start())]
    lead = "each have a `kind`:"
    said = paragraph[paragraph.index(lead) + len(lead) :]
    bare = said
    while re.search(r"\([^()]*\)", bare):  # what is said of each kind, in brackets
        bare = re.sub(r"\([^()]*\)", "", bare)
    return set(re.findall(r"`([a-z_]+)`", bare))


def test_the_readme_lists_every_recent_error_kind() -> None:
    """``login_refused`` (the token service refused the mirror's own login) was left out."""
    kinds = recorded_kinds()
    assert {"login_refused", "not_registry", "bad_answer", "timeout"} <= kinds  # the scan works
    assert readme_kinds() == kinds
