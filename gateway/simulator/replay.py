"""Replaying a recorded session: reading a JSON-lines recording, and its timing. No I/O
beyond opening the file.

A recording (the gateway's `record = "path"` device option) holds one JSON object per
line: `{"ts": UNIX_SECONDS, "seq": N, "device": NAME, "line": TEXT}`, plus
`"raw": BASE64` when the device's bytes were not valid text. `read_recording()` turns it
into `Entry`s lazily, so a long recording costs no memory; `Replay` says which entries
are due at a given time, at the recording's pace divided by `speed` (0: all at once).
Objects without a `line` (a note or status record a recorder may add) are skipped; a
line that is not a JSON object, or a `ts` that is not a number, is an error naming the
file and line. A `ts` that goes backwards counts as no pause, and so does the start of a
later gateway run appending to the same file (`seq` starting again), however long the
gateway was away.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

MAX_SPEED = 1e6


@dataclass(frozen=True)
class Entry:
    ts: float  # seconds, as recorded
    data: bytes  # the line's bytes with a line end: the raw bytes when it had "raw"
    seq: int | None = None  # the line's number in its gateway run


def parse_entry(text: str, where: str) -> Entry | None:
    """One recording line as an Entry; None for a blank line or an object with no line."""
    if not text.strip():
        return None
    try:
        obj = json.loads(text)
    except ValueError as exc:
        raise ValueError(f"{where}: not JSON ({exc.msg})") from None
    if not isinstance(obj, dict):
        raise ValueError(f"{where}: not a JSON object")
    if "line" not in obj and "raw" not in obj:
        return None
    ts = obj.get("ts")
    if isinstance(ts, bool) or not isinstance(ts, (int, float)) or not math.isfinite(ts):
        raise ValueError(f"{where}: \"ts\" must be a number of seconds, not {ts!r}")
    if "raw" in obj:
        try:
            raw = base64.b64decode(obj["raw"], validate=True)
        except (binascii.Error, TypeError, ValueError):
            raise ValueError(f"{where}: \"raw\" is not base64") from None
    else:
        line = obj["line"]
        if not isinstance(line, str):
            raise ValueError(f"{where}: \"line\" must be a string, not {line!r}")
        raw = line.encode("utf-8", errors="surrogateescape")
    seq = obj.get("seq")
    return Entry(float(ts), raw + b"\n", seq if isinstance(seq, int) and not isinstance(seq, bool) else None)


def parse_recording(lines: Iterable[str], name: str = "recording") -> Iterator[Entry]:
    for lineno, text in enumerate(lines, start=1):
        entry = parse_entry(text, f"{name}:{lineno}")
        if entry is not None:
            yield entry


def read_recording(path: str) -> Iterator[Entry]:
    """The entries of the recording at `path`, read as they are needed.

    The file is opened at the first `next()`; closing the iterator closes it.
    """
    with open(path, encoding="utf-8", errors="surrogateescape") as f:
        yield from parse_recording(f, path)


def check_recording(path: str) -> int:
    """Read the whole recording once; the number of lines it replays. Raises ValueError
    naming the file and line at fault, or for a file that cannot be read."""
    try:
        return sum(1 for _ in read_recording(path))
    except OSError as exc:
        raise ValueError(f"cannot read recording {path}: {exc.strerror or exc}") from None
    except UnicodeError as exc:
        raise ValueError(f"{path}: {exc}") from None


def check_speed(value: str | float) -> float:
    try:
        speed = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"speed must be a number (0: as fast as possible), not {value!r}") from None
    if not 0 <= speed <= MAX_SPEED:
        raise ValueError(f"speed must be between 0 and {MAX_SPEED:g}, not {value!r}")
    return speed


class Replay:
    """When each entry of a recording is due, starting at `start` on `clock`.

    Entry i is due at `start + (ts_i - ts_0) / speed`, less the pauses that do not count
    (see the module's docstring): the schedule is fixed by the recording, so a late
    caller catches up and the pace does not drift. With speed 0
    every entry is due at once; `pop_due()` hands out one at a time, so the caller
    decides how many it takes.
    """

    def __init__(self, entries: Iterable[Entry], speed: float = 1.0, start: float = 0.0):
        self.speed = check_speed(speed)
        self.start = start
        self._entries = iter(entries)
        self._last: Entry | None = None
        self._offset = 0.0  # seconds since the first entry, in the recording's time
        self._next: Entry | None = None
        self._due_at = start
        self.count = 0  # entries handed out
        self.error: str | None = None  # why the replay ended early
        self.finished = False
        self._advance()

    def _advance(self) -> None:
        try:
            entry = next(self._entries, None)
        except (ValueError, OSError) as exc:  # the file changed, or went away
            self.error = str(exc)
            entry = None
        if entry is None:
            self._next = None
            self.finished = True
            self.close()
            return
        last = self._last
        if last is not None and not (entry.seq is not None and last.seq is not None and entry.seq <= last.seq):
            self._offset += max(0.0, entry.ts - last.ts)
        self._last = entry
        self._next = entry
        self._due_at = self.start if self.speed == 0 else self.start + self._offset / self.speed

    @property
    def next_at(self) -> float | None:
        """When the next entry is due (on the caller's clock), None when finished."""
        return None if self._next is None else self._due_at

    def pop_due(self, now: float) -> bytes | None:
        """The next entry's bytes if it is due at `now`, else None."""
        if self._next is None or now < self._due_at:
            return None
        data = self._next.data
        self.count += 1
        self._advance()
        return data

    def close(self) -> None:
        close: Callable[[], None] | None = getattr(self._entries, "close", None)
        if close is not None:
            close()
