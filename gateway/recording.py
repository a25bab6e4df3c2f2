"""The recording format: a device's lines as JSON lines, one object per line. No I/O
besides `read()`.

    {"ts": 1767262800.123456, "seq": 17, "device": "sim", "line": "temp=21.5 hum=40"}
    {"ts": 1767262800.2, "seq": 18, "device": "sim", "line": "\\ufffd\\ufffdboot", "raw": "//5ib290"}

`ts` is the time the gateway read the line (UNIX seconds, float), `seq` its number in
that gateway run (a later run appending to the same file starts at 1 again), `line` the
text without its terminator. A line that was not valid in the device's encoding also
carries `raw`, its bytes in base64; its `line` then holds replacement characters. The
recorder (gateway/sinks/recording.py) writes this; the simulator replays it.
"""

from __future__ import annotations

import base64
import binascii
import json
from json.encoder import encode_basestring_ascii as _quote
from collections.abc import Iterator
from dataclasses import dataclass

from .codec import Line


@dataclass(frozen=True)
class Entry:
    """One recorded line."""

    ts: float
    seq: int
    device: str
    line: str
    raw: bytes | None = None  # set when the line was not valid text

    def payload(self, encoding: str = "utf-8") -> bytes:
        """The line's bytes as the device sent them, without the terminator."""
        if self.raw is not None:
            return self.raw
        return self.line.encode(encoding, errors="replace")


def encode(device: str, seq: int, ts: float, line: Line) -> str:
    """One recording line for a device line, with its newline.

    ASCII only (other characters as \\uXXXX escapes), so no reader splits a line at
    U+2028 or the like. Built by hand rather than with json.dumps: three times faster,
    and the recorder writes every line a device sends.
    """
    head = f'{{"ts": {round(ts, 6)!r}, "seq": {int(seq)}, "device": {_quote(device)}, "line": {_quote(line.text)}'
    if line.valid:
        return head + "}\n"
    return f'{head}, "raw": "{line.raw_base64()}"}}\n'


def decode(text: str) -> Entry:
    """Parse one recording line; ValueError saying what is wrong."""
    try:
        obj = json.loads(text)
    except ValueError as exc:
        raise ValueError(f"not JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise ValueError("not a JSON object")
    for key, kinds in (("ts", (int, float)), ("seq", (int,)), ("device", (str,)), ("line", (str,))):
        value = obj.get(key)
        if not isinstance(value, kinds) or isinstance(value, bool):
            raise ValueError(f"{key!r} missing or of the wrong type: {value!r}")
    raw = None
    if "raw" in obj:
        if not isinstance(obj["raw"], str):
            raise ValueError(f"'raw' is not a base64 string: {obj['raw']!r}")
        try:
            raw = base64.b64decode(obj["raw"], validate=True)
        except binascii.Error as exc:
            raise ValueError(f"'raw' is not base64: {exc}") from None
    return Entry(float(obj["ts"]), obj["seq"], obj["device"], obj["line"], raw)


def read(path: str, device: str | None = None) -> Iterator[Entry]:
    """The entries of a recording in file order (only `device`'s, if given).

    Blank lines are skipped; a malformed line raises ValueError naming the file and line.
    """
    with open(path, encoding="utf-8") as fh:
        for number, text in enumerate(fh, 1):
            if not text.strip():
                continue
            try:
                entry = decode(text)
            except ValueError as exc:
                raise ValueError(f"{path}:{number}: {exc}") from None
            if device is None or entry.device == device:
                yield entry
