"""The line codec: bytes from a device in, lines out; lines from clients in, bytes out.

No I/O and no threads: a `LineDecoder` is fed whatever a transport read and returns the
complete lines it now holds. Reading accepts LF, CRLF and CR; a run longer than
`max_line` without a line end is cut into `max_line` pieces (counted), so a device that
never sends a line end cannot make the gateway buffer without bound.
"""

from __future__ import annotations

import base64
import re
from typing import NamedTuple

EOLS = {"lf": b"\n", "crlf": b"\r\n", "cr": b"\r"}


class LineError(ValueError):
    """A client line that cannot be written to the device (the message says why)."""


class Line(NamedTuple):
    """One line read from a device (immutable; a named tuple: about a third of a frozen
    dataclass's cost to create, and every device line is one).

    `raw` holds the line's bytes without its terminator, `end` the terminator as read
    (b"" for a piece cut at `max_line` or the tail flushed at end of stream), `text` the
    line decoded with replacement characters, and `valid` whether decoding needed none.
    """

    raw: bytes
    end: bytes
    text: str
    valid: bool

    @property
    def wire(self) -> bytes:
        """The bytes exactly as the device sent them."""
        return self.raw + self.end

    def raw_base64(self) -> str:
        return base64.b64encode(self.raw).decode("ascii")


_new_line = tuple.__new__  # _new_line(Line, (raw, end, text, valid)): skips NamedTuple's Python __new__


def decode(raw: bytes, encoding: str) -> tuple[str, bool]:
    """Decode a device line; invalid bytes become U+FFFD and `valid` is False."""
    try:
        return raw.decode(encoding), True
    except UnicodeDecodeError:
        return raw.decode(encoding, errors="replace"), False


class LineDecoder:
    """Split a byte stream into `Line`s.

    A CR is a line end on its own, but a CR followed by LF is one line end, even when
    the LF arrives in a later `feed()`: the decoder remembers it just saw a CR and eats
    one LF that starts the next chunk.
    """

    def __init__(self, encoding: str = "utf-8", max_line: int = 4096):
        if max_line < 1:
            raise ValueError("max_line must be at least 1")
        self.encoding = encoding
        self.max_line = max_line
        self._buf = bytearray()
        self._after_cr = False
        self.cut_lines = 0  # pieces delivered because they reached max_line
        self.invalid_lines = 0  # lines that were not valid in `encoding`

    @property
    def pending(self) -> bytes:
        """Bytes read but not yet part of a complete line."""
        return bytes(self._buf) if self._buf else b""

    def _make(self, raw: bytes, end: bytes) -> Line:
        text, valid = decode(raw, self.encoding)
        if not valid:
            self.invalid_lines += 1
        return _new_line(Line, (raw, end, text, valid))

    def feed(self, data: bytes) -> list[Line]:
        if not data:
            return []
        if data[-1] == 10 and not self._buf and not self._after_cr and data.count(b"\n") == 1:
            # The chunk is one whole line (a reply, usually): no splitting.
            cr = data.count(b"\r")
            if not cr:
                raw, end = data[:-1], b"\n"
            elif cr == 1 and data[-2] == 13:
                raw, end = data[:-2], b"\r\n"
            else:
                raw = None
            if raw is not None and len(raw) <= self.max_line:
                return [self._make(raw, end)]
        if not self._after_cr and b"\r" not in data:
            lines = self._feed_lf(data)
            if lines is not None:
                return lines
        return self._feed_any(data)

    def _feed_lf(self, data: bytes) -> list[Line] | None:
        """The common case, LF line ends only and no line over max_line: split in C.
        None when it does not apply (nothing consumed)."""
        parts = data.split(b"\n")
        rest = parts.pop()  # after the last LF: the start of the next line
        buf = self._buf
        if not parts:
            if len(buf) + len(rest) > self.max_line:
                return None
            buf += rest
            return []
        if buf:
            parts[0] = bytes(buf) + parts[0]
        if len(rest) > self.max_line or max(map(len, parts)) > self.max_line:
            return None
        buf.clear()
        buf += rest
        encoding = self.encoding
        lines = []
        append = lines.append
        for raw in parts:
            try:
                append(_new_line(Line, (raw, b"\n", raw.decode(encoding), True)))
            except UnicodeDecodeError:
                self.invalid_lines += 1
                append(_new_line(Line, (raw, b"\n", raw.decode(encoding, errors="replace"), False)))
        return lines

    def _feed_any(self, data: bytes) -> list[Line]:
        lines: list[Line] = []
        start = 0
        if self._after_cr:
            self._after_cr = False
            if data[:1] == b"\n":
                # The LF of a CRLF split across two reads: the line was already delivered.
                start = 1
        buf = self._buf
        n = len(data)
        i = start
        while i < n:
            # Find the next CR or LF from i.
            lf = data.find(b"\n", i)
            cr = data.find(b"\r", i)
            if lf < 0 and cr < 0:
                buf += data[i:]
                break
            j = lf if cr < 0 else cr if lf < 0 else min(lf, cr)
            buf += data[i:j]
            if data[j] == 13:  # CR
                if j + 1 < n:
                    end = b"\r\n" if data[j + 1] == 10 else b"\r"
                else:
                    end = b"\r"
                    self._after_cr = True
            else:
                end = b"\n"
            self._cut(lines)
            lines.append(self._make(bytes(buf), end))
            buf.clear()
            i = j + len(end)
        self._cut(lines)
        return lines

    def _cut(self, lines: list[Line]) -> None:
        """Deliver `max_line` pieces while the buffer holds more than that."""
        buf = self._buf
        while len(buf) > self.max_line:
            piece = bytes(buf[: self.max_line])
            del buf[: self.max_line]
            self.cut_lines += 1
            lines.append(self._make(piece, b""))

    def flush(self) -> list[Line]:
        """End of a message or of the stream: deliver what is left as a line."""
        self._after_cr = False
        if not self._buf:
            return []
        line = self._make(bytes(self._buf), b"")
        self._buf.clear()
        return [line]

    def reset(self) -> None:
        """Forget a partial line (the device went away mid-line)."""
        self._buf.clear()
        self._after_cr = False


LINE_BREAK = re.compile(r"\r\n|\r|\n")


def split_client_text(text: str) -> list[str]:
    """A text frame (or an MQTT command) holding several lines is written as several lines.

    Only LF, CRLF and CR end a line (SPEC section 4), not the other breaks
    `str.splitlines()` knows (VT, FF, FS, GS, RS, NEL, U+2028, U+2029), which a device
    takes as ordinary characters. A trailing line break does not add an empty line
    ("PING\\n" is one line); an empty frame is one empty line.
    """
    lines = LINE_BREAK.split(text)
    if len(lines) > 1 and lines[-1] == "":
        lines.pop()
    return lines


def check_line(line: str) -> None:
    """Refuse a json-mode line that would not reach the device as one line."""
    for ch, name in (("\r", "CR"), ("\n", "LF"), ("\x00", "NUL")):
        if ch in line:
            raise LineError(f"line holds a {name} character")


def encode_line(line: str, encoding: str, eol: bytes, max_line: int) -> bytes:
    """A client line as the bytes to write to the device."""
    try:
        data = line.encode(encoding)
    except UnicodeEncodeError as exc:
        raise LineError(f"line cannot be encoded as {encoding}: {exc.reason}") from None
    if len(data) > max_line:
        raise LineError(f"line is {len(data)} bytes, over max_line {max_line}")
    return data + eol
