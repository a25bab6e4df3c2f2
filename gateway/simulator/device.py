"""The simulated device's line protocol (SPEC section 7), with no I/O.

`SimulatedDevice.handle(line)` returns the lines the device answers; `telemetry_due(now)`
says when the periodic telemetry line is owed. The in-process transport (`sim://`) and
the standalone simulator (`python -m gateway.simulator`) both drive this one class, and
the sample firmware in `firmware_notes/` answers the same way.

One key is the simulator's own: `GET fw` answers `fw=<id>`, the first 12 hex digits of
the SHA-256 of the image in the simulated flash (gateway/simulator/flash.py), or
`fw=none` when the flash holds none; the link sets `firmware` at each boot.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable, Iterable, Iterator

KEYS = ("temp", "hum", "led", "uptime")
MAX_GO = 10_000_000

# The protocol is ASCII, as an 8-bit microcontroller reads it (firmware_notes/protocol.md):
# ASCII whitespace, ASCII case-folding of command words, ASCII digits, no underscores.
SPACES = " \t\n\v\f\r"
_UPPER = str.maketrans("abcdefghijklmnopqrstuvwxyz", "ABCDEFGHIJKLMNOPQRSTUVWXYZ")
_COUNT = re.compile(r"[+-]?[0-9]+")
_SECONDS = re.compile(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?")


def ascii_upper(text: str) -> str:
    return text.translate(_UPPER)


def parse_count(text: str) -> int | None:
    """A `GO` count: ASCII digits with an optional sign, 0 to MAX_GO; else None."""
    if not _COUNT.fullmatch(text):
        return None
    digits = text.lstrip("+-").lstrip("0")
    if len(digits) > len(str(MAX_GO)):  # no int() of thousands of digits
        return None
    count = -int(digits or "0") if text.startswith("-") else int(digits or "0")
    return count if 0 <= count <= MAX_GO else None


def go_lines(count: int) -> Iterator[str]:
    """The `GO N` burst: `t=<i> v=<value>` for i = 1..N."""
    for i in range(1, count + 1):
        yield f"t={i} v={math.sin(i / 100):.4f}"


class SimulatedDevice:
    def __init__(self, interval: float = 1.0, clock: Callable[[], float] = time.monotonic):
        if not math.isfinite(interval) or interval < 0:
            raise ValueError("interval must be a finite number of seconds >= 0")
        self.clock = clock
        self.default_interval = float(interval)
        self.firmware: str | None = None  # the flashed image's id, as booted
        self.reboot()

    def reboot(self) -> None:
        """A reset: uptime from 0, the LED off, the telemetry interval back to its default."""
        self.started = self.clock()
        self.interval = self.default_interval
        self.led = 0
        self._next_telemetry = self.started + self.interval

    # -- values -----------------------------------------------------------------------

    def uptime(self) -> int:
        return int(self.clock() - self.started)

    def value(self, key: str) -> str:
        t = self.clock() - self.started
        if key == "temp":
            return f"{21.5 + 1.5 * math.sin(t / 30):.2f}"
        if key == "hum":
            return f"{40 + 5 * math.sin(t / 50):.1f}"
        if key == "led":
            return str(self.led)
        if key == "uptime":
            return str(int(t))
        if key == "fw":
            return self.firmware or "none"
        raise KeyError(key)

    def telemetry_line(self) -> str:
        return " ".join(f"{key}={self.value(key)}" for key in KEYS)

    # -- periodic telemetry -----------------------------------------------------------

    def seconds_to_telemetry(self) -> float | None:
        """Seconds until the next telemetry line, or None when it is off."""
        if self.interval <= 0:
            return None
        return max(0.0, self._next_telemetry - self.clock())

    def telemetry_due(self) -> str | None:
        """The telemetry line if it is due now (and schedule the next one)."""
        if self.interval <= 0:
            return None
        now = self.clock()
        if now < self._next_telemetry:
            return None
        self._next_telemetry += self.interval
        if self._next_telemetry <= now:  # we were not asked for a while: do not catch up
            self._next_telemetry = now + self.interval
        return self.telemetry_line()

    # -- commands ---------------------------------------------------------------------

    def handle(self, line: str) -> Iterable[str]:
        """The lines the device answers to `line` (an iterator for `GO N`)."""
        words = line.strip(SPACES).split(" ", 1)
        cmd = ascii_upper(words[0])
        arg = words[1].strip(SPACES) if len(words) > 1 else ""
        if cmd == "PING" and not arg:
            return ["PONG"]
        if cmd == "ECHO":
            # ECHO <text> answers <text> exactly as sent after the first space.
            return [line.split(" ", 1)[1] if " " in line else ""]
        if cmd == "LED" and ascii_upper(arg) in ("ON", "OFF"):
            self.led = 1 if ascii_upper(arg) == "ON" else 0
            return [f"OK LED {ascii_upper(arg)}", f"led={self.led}"]
        if cmd == "GET" and arg:
            try:
                return [f"{arg}={self.value(arg)}"]
            except KeyError:
                return [f"ERR unknown key: {arg}"]
        if cmd == "SET":
            return self._set(arg)
        if cmd == "GO":
            count = parse_count(arg)
            if count is None:
                return [f"ERR bad count: {arg}"]
            return go_lines(count)
        return [f"ERR unknown command: {line}"]

    def _set(self, arg: str) -> list[str]:
        parts = [part for part in re.split(f"[{SPACES}]+", arg) if part]
        if len(parts) != 2 or parts[0] != "interval":
            return [f"ERR unknown setting: {arg}"]
        if not _SECONDS.fullmatch(parts[1]):  # not inf, nan, 0x10, 1_0 or Unicode digits
            return [f"ERR bad interval: {parts[1]}"]
        interval = float(parts[1])
        if not math.isfinite(interval) or interval < 0:
            return [f"ERR bad interval: {parts[1]}"]
        self.interval = interval
        self._next_telemetry = self.clock() + interval
        return [f"OK interval {parts[1]}"]
