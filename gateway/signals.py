"""Modem-control signal sequences (DTR, RTS, BREAK): a device's `reset` key, and the
ESP download-mode sequence, as steps the device link plays with loop timers. No I/O.

A sequence is a string of steps separated by spaces or commas, played in order:

    D0, D1     release / assert DTR        R0, R1     release / assert RTS
    W<ms>      wait <ms> milliseconds      B<ms>      BREAK for <ms> milliseconds

DTR and RTS steps with no wait between them are set together, in one call. "Assert"
is pyserial's `dtr = True` (the line's voltage goes low). At most 32 steps, each wait
or break at most 5000 ms.

Named sequences (`reset = "esp"` is the default for serial and simulated devices):

    esp         D0 R1 W100 R0            EN pulsed low through RTS, DTR released: the
                                         NodeMCU / Wemos auto-reset circuit
    dtr         D0 W250 D1 W50           Arduino: DTR asserted after a pause; the
                                         capacitor on RESET turns the edge into a pulse
    none        (nothing: reset answers an error)
    bootloader  D0 R1 W100 D1 R0 W50 D0  esptool's classic reset into the ROM loader:
                                         EN released while GPIO0 is held low by DTR
"""

from __future__ import annotations

import re
from dataclasses import dataclass

MAX_STEPS = 32
MAX_MS = 5000

NAMED = {
    "esp": "D0 R1 W100 R0",
    "dtr": "D0 W250 D1 W50",
    "none": "",
}
BOOTLOADER = "D0 R1 W100 D1 R0 W50 D0"

_STEP = re.compile(r"^(?:([DR])([01])|([WB])([0-9]{1,4}))$")


@dataclass(frozen=True)
class Step:
    kind: str  # "signals", "wait" or "break"
    dtr: bool | None = None
    rts: bool | None = None
    ms: int = 0


def parse_sequence(text: str) -> tuple[Step, ...]:
    """`"D0 R1 W100 R0"` (or a name in NAMED) as steps; ValueError says what is wrong."""
    text = NAMED.get(text.strip().lower(), text)
    words = [w for w in re.split(r"[\s,]+", text.strip()) if w]
    if len(words) > MAX_STEPS:
        raise ValueError(f"at most {MAX_STEPS} steps, not {len(words)}")
    steps: list[Step] = []
    for word in words:
        m = _STEP.match(word.upper())
        if m is None:
            raise ValueError(f"unknown step {word!r}: expected D0, D1, R0, R1, W<ms> or B<ms> "
                             f"(or one of {', '.join(NAMED)})")
        if m.group(1):
            on = m.group(2) == "1"
            last = steps[-1] if steps else None
            if last is not None and last.kind == "signals":  # set together with the one before
                steps[-1] = Step("signals", on if m.group(1) == "D" else last.dtr, on if m.group(1) == "R" else last.rts)
            else:
                steps.append(Step("signals", on if m.group(1) == "D" else None, on if m.group(1) == "R" else None))
        else:
            ms = int(m.group(4))
            if ms > MAX_MS:
                raise ValueError(f"step {word!r}: at most {MAX_MS} ms")
            steps.append(Step("wait" if m.group(3) == "W" else "break", ms=ms))
    return tuple(steps)

