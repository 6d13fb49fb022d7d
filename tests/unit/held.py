"""A method held, in whatever thread calls it, until the test lets it go."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from tests.unit.test_cache_blobs import GUARD


@dataclass
class Held:
    """Calls of a held method wait for :attr:`release` (for at most ``GUARD``)."""

    release: threading.Event = field(default_factory=threading.Event)
    entered: threading.Event = field(default_factory=threading.Event)  # a call is waiting
    threads: list[int] = field(default_factory=list)  # who called it
    held: list[bool] = field(default_factory=list)  # whether each call was released in time


def hold(monkeypatch: pytest.MonkeyPatch, owner: type, name: str) -> Held:
    """Make ``owner.name`` wait for the returned :class:`Held`'s release before it runs."""
    held = Held()
    original: Callable[..., Any] = getattr(owner, name)

    def slow(self: object, *args: Any, **kwargs: Any) -> Any:
        held.threads.append(threading.get_ident())
        held.entered.set()
        held.held.append(held.release.wait(GUARD))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(owner, name, slow)
    return held
