"""Whether an upstream's answer repeats a secret the mirror sent it.

A registry error relayed to clients (``docxy.core.errors.UpstreamAnswered``, a pass-through
sent with the mirror's own login) answers a request the mirror made with its own credentials:
its ``Authorization`` (a Bearer token got with ``upstream.username``/``password``, or that
Basic login itself). An upstream, or a proxy or WAF before it, whose error page repeats the
request's headers would hand them to anyone asking for a missing tag. :class:`Secrets` finds
them in its text: the whole value, or any run of :data:`ECHO_RUN` of its characters (an echo
cut short), in any case, and also after percent-decoding (an echo of the URL-encoded login).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any
from urllib.parse import unquote

from docxy.core.challenge import Challenge, parse_challenge, split_challenges

#: The shortest run of a secret's characters taken for an echo of it (a value shorter than
#: this, a short password, is looked for whole).
ECHO_RUN = 12


class Secrets:
    """The values a request of the mirror's carried or stands for, never shown: its
    ``repr`` names none, and they are kept only as runs to look for."""

    __slots__ = ("_runs",)

    def __init__(self, values: Iterable[str]) -> None:
        runs: dict[int, set[str]] = {}
        for value in values:
            value = value.strip().casefold()
            width = min(ECHO_RUN, len(value))
            if width:
                found = runs.setdefault(width, set())
                found.update(value[i : i + width] for i in range(len(value) - width + 1))
        self._runs = runs

    def __repr__(self) -> str:
        return "Secrets(...)"

    def __bool__(self) -> bool:
        return bool(self._runs)

    def in_text(self, text: str) -> bool:
        """Whether ``text`` holds a secret, or a run of one."""
        folded = text.casefold()
        decoded = unquote(folded)
        for candidate in (folded, decoded) if decoded != folded else (folded,):
            for width, runs in self._runs.items():
                for i in range(len(candidate) - width + 1):
                    if candidate[i : i + width] in runs:
                        return True
        return False

    def in_value(self, value: Any) -> bool:
        """Whether a decoded JSON ``value`` holds a secret in any string of it (a key too, a
        number's digits: a numeric password), however deep."""
        stack = [value]
        while stack:
            item = stack.pop()
            if isinstance(item, str):
                if self.in_text(item):
                    return True
            elif isinstance(item, dict):
                stack.extend(item.keys())
                stack.extend(item.values())
            elif isinstance(item, list):
                stack.extend(item)
            elif isinstance(item, int | float) and not isinstance(item, bool):
                if self.in_text(repr(item)):
                    return True
        return False


NONE = Secrets(())


def told_headers(headers: Iterable[tuple[str, str]], secrets: Secrets) -> list[tuple[str, str]]:
    """The header fields of an upstream's answer to a request sent with the mirror's own
    credentials that a client may be told: a field whose value holds one of ``secrets``
    (an upstream or proxy repeating the request's ``Authorization`` in a field of its own, a
    cookie) is dropped; a ``WWW-Authenticate`` keeps its challenges, each without a parameter
    that holds one (an ``error_description`` repeating the login): the challenge still says
    where and how to log in. A challenge this cannot read whole, holding one, is dropped.
    The rest (``Retry-After``, ``RateLimit-*``) as they came."""
    told: list[tuple[str, str]] = []
    for key, value in headers:
        if not secrets.in_text(value):
            told.append((key, value))
        elif key.lower() == "www-authenticate":
            kept = [_told_challenge(text, secrets) for text in split_challenges(value)]
            if any(kept):
                told.append((key, ", ".join(text for text in kept if text)))
    return told


def _told_challenge(text: str, secrets: Secrets) -> str | None:
    if not secrets.in_text(text):
        return text
    parsed = parse_challenge(text)
    if parsed is None or secrets.in_text(parsed.scheme):
        return None
    params = {k: v for k, v in parsed.params.items() if not secrets.in_value({k: v})}
    return Challenge(parsed.scheme, params).render()
