"""How a count written as text is parsed: one rule for every query parameter, URL option
and flag that holds a whole number (history=, since=, max_line=, pace_ms=, --port, a
Host header's port, ...).

ASCII digits only. `str.isdigit()` is true for "²" and "١٢", and `int()` accepts
" 12", "+12", "1_000" and Arabic-Indic digits: neither is the rule here.
"""

from __future__ import annotations

DIGITS = frozenset("0123456789")


def parse_count(text: str, low: int = 0, high: int | None = None) -> int:
    """`text` as a whole number from `low` to `high`; ValueError (a one-line reason) if not."""
    if not isinstance(text, str) or not text or not DIGITS.issuperset(text) or len(text) > 20:
        raise ValueError(f"expected a whole number written with the digits 0-9, not {text!r}")
    value = int(text)
    if value < low or (high is not None and value > high):
        raise ValueError(f"expected {low} to {high}, not {value}" if high is not None else f"expected at least {low}, not {value}")
    return value
