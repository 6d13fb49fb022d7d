"""Progress of long CLI work: plain lines off a terminal, a rich bar on one."""

from __future__ import annotations

import io
import re

import pytest

from docxy.cli.progress import TransferProgress, progress_line


@pytest.mark.parametrize(
    ("done", "total", "line"),
    [
        (0, 1024, "sha256:ab [........] 0 B / 1.0 KiB   0%"),
        (512, 1024, "sha256:ab [####....] 512 B / 1.0 KiB  50%"),
        (1024, 1024, "sha256:ab [########] 1.0 KiB / 1.0 KiB 100%"),
        (2048, 1024, "sha256:ab [########] 2.0 KiB / 1.0 KiB 100%"),
        (300, None, "sha256:ab  300 B"),
    ],
)
def test_progress_line(done: int, total: int | None, line: str) -> None:
    assert progress_line("sha256:ab", done, total, width=8) == line


def test_progress_without_a_tty_prints_a_line_per_update_at_most_once_a_second() -> None:
    now = [0.0]
    stream = io.StringIO()
    progress = TransferProgress(stream, "sha256:ab", 100, clock=lambda: now[0])
    progress.update(10)  # too soon
    now[0] = 1.0
    progress.update(40)
    now[0] = 1.5
    progress.update(60)  # too soon again
    progress.finish(100, "ok")
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2
    assert lines[0].endswith(" 40%")
    assert lines[1].endswith("100%  ok")
    assert "\r" not in stream.getvalue()


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_on_a_terminal_a_bar_is_drawn_and_left_with_its_note() -> None:
    now = [0.0]
    stream = Tty()
    with TransferProgress(stream, "sha256:ab", 2048, clock=lambda: now[0]) as progress:
        now[0] = 0.2
        progress.update(1024)
        drawn = stream.getvalue()
        assert "sha256:ab" in drawn and "1.0/2.0 KiB" in drawn
        progress.finish(2048, "ok")
    text = stream.getvalue()
    plain = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", text)
    last = [part for part in re.split(r"[\r\n]", plain) if part.strip()][-1]
    assert "2.0/2.0 KiB" in last and last.rstrip().endswith("ok")
    assert "\x1b[" in text  # drawn in place, with terminal control codes
    assert "[####" not in text  # not the plain rendering


def test_a_bar_stops_when_the_download_fails() -> None:
    stream = Tty()
    with pytest.raises(OSError), TransferProgress(stream, "sha256:ab", 100) as progress:
        raise OSError("cut")
    assert progress._bar is None
