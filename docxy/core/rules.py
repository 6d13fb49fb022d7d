"""Repository rules: which repositories the mirror serves (``access.repositories``/``deny``).

A pattern is a repository name in which ``*`` stands for any run of characters within one path
component and ``**`` for any run across components: ``library/*`` is every official image,
``myorg/**`` everything under ``myorg/``, ``*`` every one-component name. Names are compared
as the upstream sees them, so ``redis`` is ``library/redis`` (``upstream.library_prefix``).

A name is served when no deny pattern matches it and, if there are allow patterns, one of them
does. Patterns are checked against the repository grammar when the settings load, so a typo
stops start-up instead of silently matching nothing.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field

# A path component of a repository name (``names._COMPONENT``) in which ``*`` may stand: in every
# component, so that ``library/redis-``, which no name matches, is refused like ``redis-``. One
# run of [a-z0-9*] per stretch between separators, so a text has one way to match: with a second
# way for a run of ``*`` (an ``|\*+`` alternative) a refused pattern took time doubling with
# each ``*`` (26 of them: 20 s) before it was refused.
_COMPONENT = r"[a-z0-9*]+(?:(?:[._]|__|-+)[a-z0-9*]+)*"
_PATTERN = re.compile(rf"{_COMPONENT}(?:/{_COMPONENT})*")
MAX_PATTERN = 255


@dataclass(frozen=True, slots=True)
class Pattern:
    text: str
    regex: re.Pattern[str] = field(compare=False, repr=False)

    def matches(self, name: str) -> bool:
        return self.regex.fullmatch(name) is not None


def parse_pattern(text: str) -> Pattern:
    """``library/*`` → a :class:`Pattern`; raises ValueError for anything else."""
    text = text.strip()
    if not text or len(text) > MAX_PATTERN or _PATTERN.fullmatch(text) is None:
        raise ValueError(f"not a repository pattern (lower-case name, * and **): {text!r}")
    if "***" in text:
        raise ValueError(f"not a repository pattern (*** is ambiguous): {text!r}")
    parts = re.split(r"(\*\*|\*)", text)
    regex = "".join(
        "[^/]*" if part == "*" else ".*" if part == "**" else re.escape(part) for part in parts
    )
    return Pattern(text, re.compile(regex))


@dataclass(frozen=True, slots=True)
class Patterns:
    """A list of patterns; shown as the operator wrote it (``library/*, myorg/**``)."""

    patterns: tuple[Pattern, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.patterns)

    def __str__(self) -> str:
        return ", ".join(pattern.text for pattern in self.patterns)

    def match(self, name: str) -> Pattern | None:
        """The first pattern matching ``name``, or None."""
        return next((p for p in self.patterns if p.matches(name)), None)


def parse_patterns(value: str | Iterable[str]) -> Patterns:
    """A comma-separated string (env, flags) or a list of strings (TOML)."""
    items = value.split(",") if isinstance(value, str) else list(value)
    patterns = []
    for item in items:
        if not isinstance(item, str):
            raise ValueError(f"expected pattern strings, got {item!r}")
        if item.strip():
            patterns.append(parse_pattern(item))
    return Patterns(tuple(patterns))


@dataclass(frozen=True, slots=True)
class RepositoryRules:
    allow: Patterns = Patterns()
    deny: Patterns = Patterns()

    def __bool__(self) -> bool:
        return bool(self.allow or self.deny)

    def refusal(self, name: str) -> str | None:
        """Why ``name`` is not served, for the client to read; None when it is served."""
        denied = self.deny.match(name)
        if denied is not None:
            return f"repository {name} is not served by this mirror (denied by {denied.text})"
        if self.allow and self.allow.match(name) is None:
            return f"repository {name} is not served by this mirror (it serves {self.allow})"
        return None
