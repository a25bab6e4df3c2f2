"""Client-to-server WebSocket frames in, events out (RFC 6455). No I/O, no threads.

    reader = FrameReader(max_message=65536)
    for event in reader.feed(data):   # Message, Ping, Pong, Close or Fail, in order
        ...

`feed()` takes whatever a read brought (part of a frame, many frames, frames split
anywhere) and returns the events those bytes complete. After a `Close` or `Fail` the
reader is `closed` and ignores everything else. Server frames are built by frames.py.

Two parsers, one frame each, never a frame split between them:
- the common frame (FIN + text or binary, masked, within `max_message`, no fragmented
  message pending) is parsed here inline: header arithmetic, one big-integer XOR (or
  wsaccel when importable), `isascii()` before a UTF-8 decode: about 3 us a frame.
  A read that is exactly one such short frame takes a shortcut without the loop.
- every other frame (control frames, fragments, anything malformed) goes to ws4py's
  own parser, `ws4py.streaming.Stream`, fed exactly the number of bytes it asks for
  next (bytes past the current frame would end up in its payload, the next frame
  lost). This layer reads each header first and applies the rules ws4py 0.6.0 gets
  wrong or leaves out:
  - masking, checked on the header: ws4py checks it only when there is a payload, so
    it accepts an unmasked empty frame;
  - fragmentation state, checked on the header before ws4py sees it: ws4py tests the
    pending message's truthiness (`Message.__len__`), so it accepts a new data frame
    after an empty first fragment, and a pending text fragment that ends inside a
    character makes its parser raise UnicodeDecodeError;
  - UTF-8 of a completed text message is checked again here: ws4py skips its
    end-of-message check when the last fragment is empty;
  - close frames: code and reason are judged here from the frame's own payload
    (RFC 6455 5.5.1, 7.4): ws4py turns a 1-byte payload or a forbidden code into a
    close with code 1005, refuses 1012-1014, accepts 1016-2999 (unassigned), and checks
    the reason with the UTF-8 validator of a pending text message. So ws4py's
    `VALID_CLOSING_CODES` does not matter here, and this module leaves it alone;
  - the message size limit (ws4py has none): 1009 as soon as a header, or the pending
    fragments plus the next header, announce more than `max_message` bytes, before the
    payload is read. Protocol errors of the same header win (1002): the checks above,
    then ws4py's own on the header bytes, then the size.

ws4py 0.6.0 internals relied on (tests/test_ws4py_internals.py fails if one changes):
- `ws4py.streaming.Stream()` with its defaults (`expect_masking=True`).
- `Stream.receiver()` is a generator: `next()` returns the number of bytes it wants
  (1 for a new frame); `send(chunk)` of at most that many bytes returns the next count.
  A frame asks 1, 1, [2 or 8], [4 if masked], [payload length if > 0]; after the last
  piece of a frame it has processed that frame and asks 1 for the next one. Bytes sent
  past the payload it asked for are taken into that payload (why it is fed exactly).
- the header checks raise inside the frame parser on the header bytes and land in
  `Stream.errors` (a list of CloseControlMessage with `.code` and `.reason`) as code
  1002: reserved bits (on byte 1), reserved opcodes (byte 1), fragmented control frames
  (byte 1), control frames over 125 bytes (byte 2), a 64-bit length with its top bit
  set (after the 8 length bytes).
- after the piece that ends a data or control frame, its outcome is in the Stream:
  `errors` (1007 for invalid UTF-8 in a text fragment), `has_message` (`message` is
  there and completed), `message` (TextMessage/BinaryMessage with `.data` bytes,
  `.is_binary`, `.completed`; later fragments extend it; this layer sets it back to
  None once complete, as ws4py's WebSocket.process does), `pings` / `pongs` (lists of
  control messages with `.data` bytes; this layer empties them). A close frame's
  outcome (`closing`, or a 1007 in `errors`) is not read: this layer judges close
  frames itself.
"""

from __future__ import annotations

from dataclasses import dataclass

from ws4py.streaming import Stream

__all__ = ["FrameReader", "Message", "Ping", "Pong", "Close", "Fail"]

try:  # optional C unmasking (not maintained any more: never required)
    from wsaccel.xormask import XorMaskerSimple as _WsaccelMasker
except ImportError:  # pragma: no cover - depends on the environment
    _WsaccelMasker = None


# -- events ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Message:
    """A complete text or binary message; text is valid UTF-8 (still bytes)."""

    data: bytes
    binary: bool


@dataclass(frozen=True, slots=True)
class Ping:
    payload: bytes


@dataclass(frozen=True, slots=True)
class Pong:
    payload: bytes


@dataclass(frozen=True, slots=True)
class Close:
    """The peer's valid close frame; `code` is None when it had no payload."""

    code: int | None
    reason: str


@dataclass(frozen=True, slots=True)
class Fail:
    """The peer broke the protocol or a limit: close with `code`, then drop the connection."""

    code: int  # 1002, 1007 or 1009 (1011 only if ws4py's parser raised: a bug)
    reason: str


Event = Message | Ping | Pong | Close | Fail

PROTOCOL_ERROR, INVALID_DATA, TOO_BIG, INTERNAL_ERROR = 1002, 1007, 1009, 1011

_new = object.__new__
_set_data = Message.__dict__["data"].__set__
_set_binary = Message.__dict__["binary"].__set__


def _message(data: bytes, binary: bool) -> Message:
    """Message(data, binary) at about half the cost of a frozen dataclass's __init__
    (0.45 us instead of 0.8 us here): the fast path makes one per frame."""
    m = _new(Message)
    _set_data(m, data)
    _set_binary(m, binary)
    return m


def close_code_allowed(code: int) -> bool:
    """May a peer send this close code (RFC 6455 7.4.1-7.4.2 and the IANA registry)?"""
    return 1000 <= code <= 1003 or 1007 <= code <= 1014 or 3000 <= code <= 4999


def _unmask(key: bytes, data: bytes) -> bytes:
    """XOR `data` with the 4-byte masking `key` (RFC 6455 5.3), as one big-integer XOR."""
    n = len(data)
    keys = key * ((n >> 2) + 1)
    return (int.from_bytes(data, "little") ^ int.from_bytes(keys[:n], "little")).to_bytes(n, "little")


if _WsaccelMasker is not None:  # pragma: no cover - depends on the environment

    def _unmask(key: bytes, data: bytes) -> bytes:  # noqa: F811
        return bytes(_WsaccelMasker(key).process(data))


# -- the reader ------------------------------------------------------------------------


class FrameReader:
    """One client connection's incoming frames. Not thread-safe: one reader per socket."""

    def __init__(self, max_message: int = 65536) -> None:
        self.max_message = max_message
        self.closed = False
        self._parts: list[bytes] = []  # bytes received, not parsed yet
        self._have = 0  # their total length
        self._want = 2  # parse again once this many bytes are here
        self._pending: int | None = None  # opcode of the fragmented message in progress
        self._pending_size = 0  # its bytes so far
        self._stream: Stream | None = None  # ws4py's parser, made on the first rare frame
        self._parser = None
        self._need = 0  # bytes ws4py's parser asks for next
        self._need_header = True  # the next rare frame's header is still to be checked

    @property
    def buffered(self) -> int:
        """Bytes held for a frame not complete yet (0: the last feed ended on a frame end).

        What wsadapter calls a message `alone` in its read: feed() returned one Message,
        and buffered == 0.
        """
        return self._have

    def feed(self, data: bytes) -> list[Event]:
        """The events completed by `data`, in order; [] once closed."""
        if self.closed or not data:
            return []
        n = len(data) - 6
        if 0 <= n < 126 and not self._have and data[1] == 0x80 | n and (data[0] == 0x81 or data[0] == 0x82) \
                and self._pending is None and n <= self.max_message:
            # The read is exactly one short, masked, unfragmented text or binary frame:
            # the same checks as in _parse, without its loop.
            payload = _unmask(data[2:6], data[6:])
            if data[0] == 0x82 or payload.isascii():
                return [_message(payload, data[0] == 0x82)]
        if self._have:
            self._parts.append(data)
            self._have += len(data)
            if self._have < self._want:
                return []  # a frame still incomplete: join the pieces once, when it is
            data = b"".join(self._parts)
            self._parts = []
            self._have = 0
        events: list[Event] = []
        rest = self._parse(data, events)
        if rest and not self.closed:
            self._parts = [rest]
            self._have = len(rest)
        return events

    # -- parsing ---------------------------------------------------------------------------

    def _parse(self, buf: bytes, events: list) -> bytes:
        """Append the events of the whole frames in `buf`; return the unparsed tail."""
        pos, end = 0, len(buf)
        max_message = self.max_message
        while True:
            if end - pos < 2:
                self._want = 2
                break
            b0, b1 = buf[pos], buf[pos + 1]
            n = b1 & 0x7F
            head = 2 if n < 126 else 4 if n == 126 else 10
            if b1 & 0x80:
                head += 4
            if end - pos < head:
                self._want = head
                break
            if n == 126:
                n = int.from_bytes(buf[pos + 2:pos + 4], "big")
            elif n == 127:
                n = int.from_bytes(buf[pos + 2:pos + 10], "big")
            stop = pos + head + n
            # FIN + text/binary, masked, within the limit, no fragmented message pending.
            if (b0 == 0x81 or b0 == 0x82) and b1 & 0x80 and n <= max_message and self._pending is None:
                if stop > end:
                    self._want = stop - pos
                    break  # the rest of this frame is still to come
                payload = _unmask(buf[pos + head - 4:pos + head], buf[pos + head:stop]) if n else b""
                if b0 == 0x81 and not payload.isascii():
                    try:
                        payload.decode("utf-8")
                    except UnicodeDecodeError:
                        self._fail(events, INVALID_DATA, "invalid UTF-8 in a text message")
                        break
                events.append(_message(payload, b0 == 0x82))
                pos = stop
                continue
            # Any other frame: its header is checked here, then the whole frame goes to ws4py.
            if not self._rare_header(buf, pos, head, b0, b1, n, events):
                break
            if stop > end:
                self._want = stop - pos
                break
            self._rare_payload(buf, pos + head, stop, b0 & 0x0F == 0x8, events)
            if self.closed:
                break
            pos = stop
        return buf[pos:] if pos < end and not self.closed else b""

    def _rare_header(self, buf: bytes, pos: int, head: int, b0: int, b1: int, n: int, events: list) -> bool:
        """Check the header of a frame the fast path did not take; False once failed.

        Runs once per frame: a header already checked while its payload was awaited is
        not checked (nor fed to ws4py) again. The checks ws4py lacks come first (so ws4py
        never sees a frame that would trip it), then ws4py reads the header (reserved
        bits and opcodes, control frame rules, 64-bit length), then the size limit.
        """
        if not self._need_header:
            return True
        self._need_header = False
        opcode = b0 & 0x0F
        if not b1 & 0x80:
            self._fail(events, PROTOCOL_ERROR, "unmasked client frame")
            return False
        if opcode == 0 and self._pending is None:
            self._fail(events, PROTOCOL_ERROR, "continuation frame without a message to continue")
            return False
        if (opcode == 1 or opcode == 2) and self._pending is not None:
            self._fail(events, PROTOCOL_ERROR, "new data frame inside a fragmented message")
            return False
        if not self._feed_ws4py(buf, pos, pos + head, events):
            return False
        if opcode < 3 and self._pending_size + n > self.max_message:
            self._fail(events, TOO_BIG, f"message larger than {self.max_message} bytes")
            return False
        return True

    def _rare_payload(self, buf: bytes, start: int, stop: int, is_close: bool, events: list) -> None:
        """Feed a rare frame's payload (whole) to ws4py and turn its outcome into events."""
        self._need_header = True
        if start < stop and not self._feed_ws4py(buf, start, stop, events, not is_close):
            return
        s = self._stream
        if is_close:  # ws4py's verdict (closing, or a 1007 error) is not used: see above
            self._close(buf, start, stop, events)
            return
        if s.pings:
            events.extend(Ping(bytes(p.data)) for p in s.pings)
            s.pings = []
        elif s.pongs:
            events.extend(Pong(bytes(p.data)) for p in s.pongs)
            s.pongs = []
        elif s.has_message:
            m = s.message
            s.message = None
            self._pending = None
            self._pending_size = 0
            data = bytes(m.data)
            if not m.is_binary and not data.isascii():
                try:  # ws4py skips the end-of-message check when the last fragment is empty
                    data.decode("utf-8")
                except UnicodeDecodeError:
                    self._fail(events, INVALID_DATA, "invalid UTF-8 in a text message")
                    return
            events.append(Message(data, m.is_binary))
        elif s.message is not None:  # a fragment: the message goes on
            m = s.message
            self._pending = 0x2 if m.is_binary else 0x1
            self._pending_size = len(m.data)

    def _close(self, buf: bytes, start: int, stop: int, events: list) -> None:
        """The peer's close frame, judged on its own payload (not on ws4py's verdict)."""
        payload = _unmask(buf[start - 4:start], buf[start:stop]) if stop > start else b""
        if not payload:
            self._end(events, Close(None, ""))
        elif len(payload) == 1:
            self._fail(events, PROTOCOL_ERROR, "close frame with a 1-byte payload")
        else:
            code = int.from_bytes(payload[:2], "big")
            if not close_code_allowed(code):
                self._fail(events, PROTOCOL_ERROR, f"close code {code} is not allowed on the wire")
                return
            try:
                reason = payload[2:].decode("utf-8")
            except UnicodeDecodeError:
                self._fail(events, INVALID_DATA, "invalid UTF-8 in a close reason")
                return
            self._end(events, Close(code, reason))

    def _feed_ws4py(self, buf: bytes, pos: int, stop: int, events: list, check: bool = True) -> bool:
        """Feed buf[pos:stop] to ws4py's parser, exactly as many bytes as it asks for at a time.

        False once the connection has failed (ws4py found an error, or broke); with
        `check` False, errors ws4py reports are left to the caller.
        """
        if self._parser is None:
            self._stream = Stream()
            self._parser = self._stream.receiver()
            self._need = next(self._parser)
        s = self._stream
        while pos < stop:
            take = min(self._need, stop - pos)
            try:
                self._need = self._parser.send(buf[pos:pos + take])
            except Exception as exc:  # a bug of ours or ws4py's: fail this connection only
                self._fail(events, INTERNAL_ERROR, f"frame parser failed: {exc!r}")
                return False
            pos += take
            if s.errors and check:
                error = s.errors[0]
                reason = error.reason
                if isinstance(reason, (bytes, bytearray)):
                    reason = bytes(reason).decode("utf-8", "replace")
                self._fail(events, error.code, reason or "protocol error")
                return False
        return True

    def _fail(self, events: list, code: int, reason: str) -> None:
        self._end(events, Fail(code, reason))

    def _end(self, events: list, event) -> None:
        events.append(event)
        self.closed = True
        self._parts = []
        self._have = 0
        self._stream = self._parser = None
