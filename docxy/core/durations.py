"""A duration setting's value read as seconds (a pure core).

Every setting that is a length of time (a timeout, a TTL, an interval, a token's life) takes a
bare number of seconds, as it always has (``90``, ``2.5``, ``1e3``, a TOML number), or numbers
with a unit: ``30s``, ``5m``, ``2h``, ``7d``, several together (``1h30m``, each unit once).
Anything else is refused with a message that says the forms taken (:data:`WITH_UNITS`), and
that a bare number is seconds: ``"5 mins"`` or a ``5M`` are not guessed at.
"""

from __future__ import annotations

import math
import re

#: Seconds in each unit a duration may name.
UNITS = {"d": 86400.0, "h": 3600.0, "m": 60.0, "s": 1.0}
#: A duration with units, as refusals say them (after a bare number's "(seconds)").
WITH_UNITS = "one with a unit: 30s, 5m, 2h, 7d (or several: 1h30m)"

_NUMBER = r"(?:\d+(?:\.\d*)?|\.\d+)"
_PART = re.compile(rf"({_NUMBER})\s*([a-z]+)\s*")


def parse_duration(
    value: object, *, zero: bool = False, most: float | None = None, why: str = ""
) -> float:
    """`value` as seconds: finite, above 0 (0 too if `zero`) and at most `most` (`why` says
    why there is a most: ``30 days``). ``ValueError`` saying the forms taken and `value`."""
    seconds = _seconds(value)
    if not math.isfinite(seconds):
        raise ValueError(f"expected a finite number (seconds), or {WITH_UNITS}, got {value!r}")
    if seconds < 0 or (seconds == 0 and not zero):
        wanted = "a number >= 0" if zero else "a positive number"
        raise ValueError(f"expected {wanted} (seconds), or {WITH_UNITS}, got {value!r}")
    if most is not None and seconds > most:
        said = f" ({why})" if why else ""
        whole = int(most) if most.is_integer() else most  # 2592000, not 2.592e+06
        raise ValueError(f"expected at most {whole} seconds{said}, got {value!r}")
    return seconds


def _seconds(value: object) -> float:
    """`value` as seconds, not yet checked to be finite or in range."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise _malformed(value)  # a TOML true, list or table
    if not isinstance(value, str):
        try:
            return float(value)
        except OverflowError:  # an int past the floats: no length of time
            return math.inf
    try:
        return float(value)  # a bare number, as every duration took before units: seconds
    except ValueError:
        pass
    text = value.strip()
    total, at = 0.0, 0
    seen: set[str] = set()
    while at < len(text):
        part = _PART.match(text, at)
        if part is None or part.group(2) not in UNITS or part.group(2) in seen:
            raise _malformed(value)
        seen.add(part.group(2))
        total += float(part.group(1)) * UNITS[part.group(2)]
        at = part.end()
    if not seen:
        raise _malformed(value)
    return total


def _malformed(value: object) -> ValueError:
    return ValueError(f"expected a number (seconds), or {WITH_UNITS}, got {value!r}")
