"""Whether an upstream's answer repeats a secret the mirror sent it.

A registry error relayed to clients (``docxy.core.errors.UpstreamAnswered``, a pass-through
sent with the mirror's own login) answers a request the mirror made with its own credentials:
its ``Authorization`` (a Bearer token got with ``upstream.username``/``password``, or that
Basic login itself). An upstream, or a proxy or WAF before it, whose error page repeats the
request's headers would hand them to anyone asking for a missing tag. :class:`Secrets` finds
them in its text, in any case, and also after percent-decoding (an echo of the URL-encoded
login): what the request carried (its token, its Basic base64) as any run of :data:`ECHO_RUN`
of its characters (an echo cut short); what only stands for it (``user:password``, a long
password) whole (:func:`~docxy.upstream.tokens.login_secrets` says which is which).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any
from urllib.parse import unquote

from docxy.core.challenge import Challenge, parse_challenge, split_challenges

#: The shortest run of a secret's characters taken for an echo of it (a value shorter than
#: this is looked for whole).
ECHO_RUN = 12


class Secrets:
    """The values a request of the mirror's carried or stands for, never shown: its
    ``repr`` names none. ``runs``: each looked for as any run of :data:`ECHO_RUN` of its
    characters (a shorter one whole): an opaque credential the request carried, whose every
    run is as unlikely in an innocent text as the whole. ``whole``: each looked for whole
    only: a value made of words a registry's message may hold in part (a username names
    repositories and tags, ``mycompanyrobot-v2``)."""

    __slots__ = ("_runs", "_whole")

    def __init__(self, runs: Iterable[str], whole: Iterable[str] = ()) -> None:
        found: dict[int, set[str]] = {}
        for value in runs:
            value = value.strip().casefold()
            width = min(ECHO_RUN, len(value))
            if width:
                found.setdefault(width, set()).update(
                    value[i : i + width] for i in range(len(value) - width + 1)
                )
        self._runs = found
        self._whole = {value.strip().casefold() for value in whole} - {""}

    def __repr__(self) -> str:
        return "Secrets(...)"

    def __bool__(self) -> bool:
        return bool(self._runs or self._whole)

    def in_text(self, text: str) -> bool:
        """Whether ``text`` holds a secret, or a run of one."""
        folded = text.casefold()
        decoded = unquote(folded)
        for candidate in (folded, decoded) if decoded != folded else (folded,):
            if any(value in candidate for value in self._whole):
                return True
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
