"""Telemetry parsing (SPEC section 5): a device line in, a flat dict of values out. No I/O.

A line is telemetry when it is a JSON object, or `key=value` / `key:value` pairs
separated by spaces or commas (`temp=21.5 hum=40 led=1`). Nested JSON keys flatten with
`.`; values are numbers, booleans or strings. `metrics()` keeps what a dashboard can plot.
"""

from __future__ import annotations

import json
import math
import re

Value = float | int | bool | str

_INT = re.compile(r"[+-]?[0-9]+")
_FLOAT = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_PAIR = re.compile(r"\s*([A-Za-z_][\w.\-/]*)\s*[=:]\s*(\"[^\"]*\"|[^\s,]*)\s*(?:,|\s|$)")


def _scalar(text: str) -> Value:
    if len(text) >= 2 and text[0] == text[-1] == '"':
        return text[1:-1]
    low = text.lower()
    if low in ("true", "on"):
        return True
    if low in ("false", "off"):
        return False
    # ASCII digits only: int() and float() also take "1_000" and Arabic-Indic digits,
    # which no device means as a number.
    if _INT.fullmatch(text):
        return int(text)
    if not _FLOAT.fullmatch(text):
        return text
    value = float(text)
    return value if math.isfinite(value) else text


def _flatten(obj: dict, prefix: str, out: dict[str, Value]) -> None:
    for key, value in obj.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            _flatten(value, name + ".", out)
        elif isinstance(value, (bool, int, float, str)):
            if isinstance(value, float) and not math.isfinite(value):
                continue
            out[name] = value
        # lists and nulls are not telemetry values


def parse(line: str) -> dict[str, Value] | None:
    """The telemetry values in `line`, or None when it is not telemetry."""
    stripped = line.strip()
    if not stripped:
        return None
    if stripped[0] == "{":
        try:
            obj = json.loads(stripped)
        except ValueError:
            return None
        if not isinstance(obj, dict):
            return None
        out: dict[str, Value] = {}
        _flatten(obj, "", out)
        return out or None
    pos = 0
    out = {}
    n = len(stripped)
    while pos < n:
        m = _PAIR.match(stripped, pos)
        if not m or m.end() == pos:
            return None
        key, value = m.group(1), m.group(2)
        if value == "":
            return None
        out[key] = _scalar(value)
        pos = m.end()
    return out or None


def metrics(data: dict[str, Value]) -> dict[str, float]:
    """The plottable values: numbers as they are, booleans as 0/1, strings left out."""
    out = {}
    for key, value in data.items():
        if isinstance(value, bool):
            out[key] = 1.0 if value else 0.0
        elif isinstance(value, (int, float)):
            out[key] = float(value)
    return out
