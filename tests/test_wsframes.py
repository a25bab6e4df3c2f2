"""gateway/wsframes.py: bytes in, events out. No sockets, no threads.

The Hypothesis test at the end compares every event with wsproto's FrameProtocol in
server mode, a second, independent parser. Where wsproto 1.3.2 and RFC 6455 (or the
gateway's rules) differ, the RFC is followed and the reference is adapted, on purpose:

- Close code 1014 (Bad Gateway, in the IANA registry that RFC 6455 section 11.7 set up):
  wsproto fails it with 1002 ("unknown reserved code", its CloseReason enum stops at
  1013 plus 1015). We accept it, as 1012 and 1013. The reference is fed 1013 instead.
- Message size: wsproto has no limit. Our 1009 is decided on a data frame's header,
  after the header's protocol checks; the reference applies the same rule on top of
  wsproto, to a header wsproto accepted and whose fragmentation state is valid.
- Non-minimal length encodings (a 16-bit length under 126, a 64-bit one under 65536):
  wsproto fails them with 1002. RFC 6455 5.2 tells senders to use the minimal form but
  tells receivers nothing; ws4py and today's wsadapter accept them, and so do we
  (test_non_minimal_lengths_are_accepted). The generator makes minimal lengths only.
- A continuation without a message, or a new message inside one, is failed (1002) on
  its header here; wsproto fails it on the frame's first payload byte (the same code,
  later). The reference fails a header-only frame of that kind itself.
- Where wsproto checks less: nothing found. Both fail the same frame with the same code
  in every case generated (unmasked, reserved bits and opcodes, control frame rules,
  64-bit length top bit, fragmentation state, UTF-8 across fragments, close payloads).
"""

from __future__ import annotations

import struct

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from ws4py import streaming
from wsproto.frame_protocol import FrameProtocol, Opcode, ParseFailed

from gateway import wsframes
from gateway.wsframes import Close, Fail, FrameReader, Message, Ping, Pong

KEY = b"\x37\xfa\x21\x3d"
CONT, TEXT, BINARY, CLOSE, PING, PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
RSV1, RSV2, RSV3 = 0x40, 0x20, 0x10


def mask(key: bytes, data: bytes) -> bytes:
    """Independent of the module's _unmask on purpose."""
    return bytes(b ^ key[i & 3] for i, b in enumerate(data))


def frame(opcode: int, payload: bytes = b"", *, fin: bool = True, masked: bool = True, rsv: int = 0,
          key: bytes = KEY, length: int | None = None, form: int | None = None) -> bytes:
    """A client frame. `length` overrides the declared payload length (payload is then
    what follows the header, possibly nothing); `form` forces 7, 16 or 64 length bits."""
    n = len(payload) if length is None else length
    b0 = (0x80 if fin else 0) | rsv | opcode
    m = 0x80 if masked else 0
    form = form or (7 if n < 126 else 16 if n < 65536 else 64)
    if form == 7:
        head = bytes((b0, m | n))
    elif form == 16:
        head = struct.pack("!BBH", b0, m | 126, n)
    else:
        head = struct.pack("!BBQ", b0, m | 127, n)
    if not masked:
        return head + payload
    return head + key + mask(key, payload)


def close_frame(code: int | None, reason: bytes = b"") -> bytes:
    return frame(CLOSE, b"" if code is None else struct.pack("!H", code) + reason)


def feed_chunks(chunks, max_message: int = 65536) -> list:
    reader = FrameReader(max_message=max_message)
    events = []
    for chunk in chunks:
        events += reader.feed(chunk)
    assert reader.closed == bool(events and isinstance(events[-1], (Close, Fail)))
    return events


def split_at(data: bytes, offsets) -> list[bytes]:
    cuts = [0, *sorted(set(offsets)), len(data)]
    return [data[a:b] for a, b in zip(cuts, cuts[1:])]


def offsets_to_try(data: bytes) -> list[int]:
    """Every offset of a short stream; of a long one, every offset near its start and
    end (where headers are) and a stride through the rest."""
    if len(data) <= 600:
        return list(range(1, len(data)))
    edge = list(range(1, 20)) + list(range(len(data) - 20, len(data)))
    return edge + list(range(20, len(data) - 20, 7919))


def assert_same_however_split(data: bytes, expected: list, max_message: int = 65536) -> None:
    assert feed_chunks([data], max_message) == expected
    for k in offsets_to_try(data):
        assert feed_chunks([data[:k], data[k:]], max_message) == expected, f"split at {k}"


def assert_same_byte_by_byte(data: bytes, expected: list, max_message: int = 65536) -> None:
    assert feed_chunks([data[i:i + 1] for i in range(len(data))], max_message) == expected


def payload_of(size: int, binary: bool) -> bytes:
    if binary:
        return bytes(range(256)) * (size // 256) + bytes(range(size % 256))
    chunk = "héllo, wörld ✓ ".encode()  # multi-byte characters: frames split them too
    data = chunk * (size // len(chunk) + 1)
    data = data[:size]
    while True:  # cut back to a whole character, pad with ASCII to the exact size
        try:
            data.decode("utf-8")
            break
        except UnicodeDecodeError:
            data = data[:-1]
    return data + b"a" * (size - len(data))


# -- every event kind ------------------------------------------------------------------


def test_every_event_kind():
    data = (frame(TEXT, b"hello") + frame(BINARY, b"\x00\xff") + frame(PING, b"p")
            + frame(PONG, b"q") + close_frame(1000, "bye ✓".encode()))
    assert feed_chunks([data]) == [Message(b"hello", False), Message(b"\x00\xff", True), Ping(b"p"),
                                   Pong(b"q"), Close(1000, "bye ✓")]
    assert feed_chunks([frame(PING)]) == [Ping(b"")]
    assert feed_chunks([frame(PONG)]) == [Pong(b"")]
    assert feed_chunks([close_frame(None)]) == [Close(None, "")]
    assert feed_chunks([close_frame(4999)]) == [Close(4999, "")]
    assert feed_chunks([frame(TEXT, b"x", masked=False)]) == [Fail(1002, "unmasked client frame")]


def test_events_are_small_frozen_dataclasses():
    event = Message(b"x", False)
    with pytest.raises(AttributeError):
        event.data = b"y"
    assert not hasattr(event, "__dict__")
    assert Fail(1002, "r") == Fail(1002, "r") and hash(Close(None, "")) == hash(Close(None, ""))


def test_the_one_frame_shortcut_and_the_loop_agree():
    for payload in (b"", b"LED ON", "é".encode(), b"x" * 125):
        for opcode in (TEXT, BINARY):
            data = frame(opcode, payload)
            expected = [Message(payload, opcode == BINARY)]
            assert FrameReader().feed(data) == expected  # alone: the shortcut
            assert FrameReader().feed(data + frame(PING)) == expected + [Ping(b"")]  # the loop
    reader = FrameReader()
    assert reader.feed(frame(TEXT, b"ab")[:3]) == []
    assert reader.feed(frame(TEXT, b"ab")[3:] + frame(TEXT, b"cd")) == [Message(b"ab", False), Message(b"cd", False)]


# -- sizes: 7-, 16- and 64-bit lengths, text and binary ----------------------------------

SIZES = [0, 125, 126, 127, 65535, 65536, 70000]


@pytest.mark.parametrize("binary", [False, True], ids=["text", "binary"])
@pytest.mark.parametrize("size", SIZES)
def test_messages_of_every_length_form(size, binary):
    payload = payload_of(size, binary)
    data = frame(BINARY if binary else TEXT, payload)
    expected = [Message(payload, binary)]
    assert_same_however_split(data, expected, max_message=70000)
    assert_same_byte_by_byte(data, expected, max_message=70000)
    # the same message in fragments (through ws4py), a ping in between
    third = size // 3
    data = (frame(BINARY if binary else TEXT, payload[:third], fin=False) + frame(PING, b"!")
            + frame(CONT, payload[third:2 * third], fin=False) + frame(CONT, payload[2 * third:]))
    assert_same_however_split(data, [Ping(b"!"), Message(payload, binary)], max_message=70000)


def test_message_of_exactly_max_message_bytes_passes_one_more_fails():
    assert feed_chunks([frame(BINARY, b"x" * 300)], max_message=300) == [Message(b"x" * 300, True)]
    assert feed_chunks([frame(BINARY, b"x" * 301)], max_message=300)[0].code == 1009
    fragments = frame(TEXT, b"a" * 200, fin=False) + frame(CONT, b"b" * 100)
    assert feed_chunks([fragments], max_message=300) == [Message(b"a" * 200 + b"b" * 100, False)]
    fragments = frame(TEXT, b"a" * 200, fin=False) + frame(CONT, b"b" * 101)
    assert feed_chunks([fragments], max_message=300)[0].code == 1009


# -- ordinary and rare frames in one read --------------------------------------------------


MIXES = {
    "ping between fragments": (
        frame(TEXT, b"abc", fin=False) + frame(PING, b"are you there") + frame(CONT, b"def"),
        [Ping(b"are you there"), Message(b"abcdef", False)]),
    "text after a fragmented binary": (
        frame(BINARY, b"\x01", fin=False) + frame(CONT, b"\x02", fin=False) + frame(CONT, b"\x03")
        + frame(TEXT, b"next"),
        [Message(b"\x01\x02\x03", True), Message(b"next", False)]),
    "close after data": (
        frame(TEXT, b"LED ON") + frame(BINARY, b"\x00") + close_frame(1001, b"going"),
        [Message(b"LED ON", False), Message(b"\x00", True), Close(1001, "going")]),
    "pong, empty fragments, character split across fragments": (
        frame(PONG, b"t") + frame(TEXT, b"", fin=False) + frame(CONT, "é".encode()[:1], fin=False)
        + frame(PONG) + frame(CONT, "é".encode()[1:], fin=False) + frame(CONT, b"") + frame(TEXT, b"z"),
        [Pong(b"t"), Pong(b""), Message("é".encode(), False), Message(b"z", False)]),
    "close in the middle of a character of a fragmented text": (  # ws4py alone says 1007
        frame(TEXT, b"ok \xe2\x9c", fin=False) + close_frame(1000) + frame(CONT, b"\x93"),
        [Close(1000, "")]),
    "fast frames around a 16-bit fragmented binary": (
        frame(TEXT, b"a") + frame(BINARY, b"x" * 200, fin=False) + frame(CONT, b"y" * 300)
        + frame(TEXT, b"b") + close_frame(None),
        [Message(b"a", False), Message(b"x" * 200 + b"y" * 300, True), Message(b"b", False), Close(None, "")]),
}


@pytest.mark.parametrize("name", MIXES)
def test_mixed_frames_in_one_read(name):
    data, expected = MIXES[name]
    assert_same_however_split(data, expected)
    assert_same_byte_by_byte(data, expected)


# -- failures --------------------------------------------------------------------------------

FAILS = {
    "unmasked text": (frame(TEXT, b"hi", masked=False), 1002),
    "unmasked empty binary": (frame(BINARY, b"", masked=False), 1002),  # ws4py alone accepts it
    "unmasked ping": (frame(PING, b"", masked=False), 1002),
    "unmasked continuation": (frame(TEXT, b"a", fin=False) + frame(CONT, b"b", masked=False), 1002),
    "rsv1": (frame(TEXT, b"hi", rsv=RSV1), 1002),
    "rsv2": (frame(BINARY, b"hi", rsv=RSV2), 1002),
    "rsv3 on a ping": (frame(PING, b"", rsv=RSV3), 1002),
    **{f"reserved opcode {op:#x}": (frame(op, b"x"), 1002) for op in (3, 4, 5, 6, 7, 0xB, 0xC, 0xD, 0xE, 0xF)},
    "ping of 126 bytes": (frame(PING, b"x" * 126), 1002),
    "close of 126 bytes": (frame(CLOSE, b"\x03\xe8" + b"x" * 124), 1002),
    "fragmented ping": (frame(PING, b"x", fin=False), 1002),
    "fragmented close": (frame(CLOSE, b"\x03\xe8", fin=False), 1002),
    "continuation without a start": (frame(CONT, b"x"), 1002),
    "empty continuation without a start": (frame(CONT, b""), 1002),
    "continuation after a complete message": (frame(TEXT, b"a") + frame(CONT, b"b"), 1002),
    "text inside a fragmented binary": (frame(BINARY, b"a", fin=False) + frame(TEXT, b"b"), 1002),
    "binary inside a fragmented text": (frame(TEXT, b"a", fin=False) + frame(BINARY, b"b"), 1002),
    "text after an empty first fragment": (frame(BINARY, b"", fin=False) + frame(TEXT, b"b"), 1002),  # ws4py misses it
    "binary after a text fragment ending mid-character": (  # ws4py's parser raises on it
        frame(TEXT, "é".encode()[:1], fin=False) + frame(BINARY, b"b"), 1002),
    "close with a 1-byte payload": (frame(CLOSE, b"\x03"), 1002),
    "64-bit length with its top bit set": (frame(BINARY, length=1 << 63), 1002),
    "invalid UTF-8 text": (frame(TEXT, b"\xff"), 1007),
    "invalid UTF-8 text, long": (frame(TEXT, b"a" * 300 + b"\xc3\x28"), 1007),
    "surrogate in text": (frame(TEXT, b"\xed\xa0\x80"), 1007),
    "overlong in text": (frame(TEXT, b"\xc0\xaf"), 1007),
    "invalid UTF-8 in the second fragment": (frame(TEXT, b"ok", fin=False) + frame(CONT, b"\xff"), 1007),
    "character split across fragments, never finished": (
        frame(TEXT, b"\xe2\x9c", fin=False) + frame(CONT, b"!"), 1007),
    "text ending mid-character, empty last fragment": (  # ws4py misses it
        frame(TEXT, b"\xe2\x9c", fin=False) + frame(PING) + frame(CONT, b""), 1007),
    "invalid UTF-8 close reason": (close_frame(1000, b"\xff"), 1007),
}
FORBIDDEN_CLOSE_CODES = [0, 1, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535]
ALLOWED_CLOSE_CODES = [1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014, 3000, 3999, 4000, 4999]


@pytest.mark.parametrize("name", FAILS)
def test_failures(name):
    data, code = FAILS[name]
    events = feed_chunks([data])
    assert not any(isinstance(e, (Close, Fail)) for e in events[:-1])
    assert isinstance(events[-1], Fail) and events[-1].code == code, events
    assert events[-1].reason
    assert_same_however_split(data, events)


@pytest.mark.parametrize("code", FORBIDDEN_CLOSE_CODES)
def test_close_codes_forbidden_on_the_wire(code):
    assert_same_however_split(close_frame(code, b"r"), [Fail(1002, f"close code {code} is not allowed on the wire")])


@pytest.mark.parametrize("code", ALLOWED_CLOSE_CODES)
def test_close_codes_allowed(code):
    assert_same_however_split(close_frame(code, "r✓".encode()), [Close(code, "r✓")])


@pytest.mark.parametrize("extended", [False, True], ids=["ws4py list", "ws4py list + 1012-1014"])
def test_close_codes_do_not_depend_on_ws4py_valid_closing_codes(monkeypatch, extended):
    codes = [1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011] + ([1012, 1013, 1014] if extended else [])
    monkeypatch.setattr(streaming, "VALID_CLOSING_CODES", codes)
    assert feed_chunks([close_frame(1014)]) == [Close(1014, "")]
    assert feed_chunks([close_frame(1016)])[0].code == 1002
    assert feed_chunks([frame(TEXT, b"a", fin=False) + close_frame(1000, b"\xc3")])[-1].code == 1007


def test_buffered_counts_the_bytes_of_an_incomplete_frame():
    reader = FrameReader()
    data = frame(TEXT, b"abc") + frame(BINARY, b"x" * 300)
    assert reader.feed(data[:12]) == [Message(b"abc", False)] and reader.buffered == 3
    assert reader.feed(data[12:-1]) == [] and reader.buffered == len(data) - 10
    assert reader.feed(data[-1:]) == [Message(b"x" * 300, True)] and reader.buffered == 0
    assert reader.feed(frame(PING)[:1]) == [] and reader.buffered == 1
    assert reader.feed(frame(PING)[1:] + frame(TEXT, length=1 << 30)) == [Ping(b""),
                                                                           Fail(1009, "message larger than 65536 bytes")]
    assert reader.buffered == 0


def test_nothing_is_returned_after_a_fail():
    reader = FrameReader()
    assert reader.feed(frame(TEXT, b"a") + frame(TEXT, b"b", rsv=RSV1) + frame(TEXT, b"c") + frame(PING)) \
        == [Message(b"a", False), Fail(1002, "protocol error")]
    assert reader.closed
    assert reader.feed(frame(TEXT, b"d")) == []
    assert reader.feed(frame(TEXT, b"d") + frame(PING)) == []


def test_nothing_is_returned_after_a_close():
    reader = FrameReader()
    assert reader.feed(frame(TEXT, b"a") + close_frame(1000) + frame(TEXT, b"b")) == [Message(b"a", False),
                                                                                       Close(1000, "")]
    assert reader.closed
    assert reader.feed(frame(TEXT, b"c")) == []
    assert reader.feed(b"") == []


def test_a_broken_ws4py_parser_fails_the_connection_not_the_caller(monkeypatch):
    class Broken(streaming.Stream):
        def receiver(self):
            yield 1
            raise RuntimeError("boom")

    monkeypatch.setattr(wsframes, "Stream", Broken)
    events = feed_chunks([frame(PING, b"x")])
    assert len(events) == 1 and events[0].code == 1011


# -- 1009 from the header alone ----------------------------------------------------------------


@pytest.mark.parametrize("length", [65537, 1 << 20, (1 << 63) - 1])
def test_1009_from_the_header_alone(length):
    header = frame(BINARY, length=length)  # no payload follows
    assert len(header) == 14
    for chunks in ([header], [header[i:i + 1] for i in range(14)]):
        assert feed_chunks(chunks) == [Fail(1009, "message larger than 65536 bytes")]
    assert feed_chunks([frame(TEXT, length=300, form=16)], max_message=200)[0].code == 1009


def test_1009_from_the_running_total_of_a_fragmented_message():
    reader = FrameReader(max_message=1000)
    assert reader.feed(frame(TEXT, b"a" * 600, fin=False)) == []
    assert reader.feed(frame(PING, b"x")) == [Ping(b"x")]
    assert reader.feed(frame(CONT, b"b" * 300, fin=False)) == []
    assert reader.feed(frame(CONT, length=101)) == [Fail(1009, "message larger than 1000 bytes")]


@pytest.mark.parametrize("name, header", [
    ("unmasked", frame(BINARY, length=1 << 40, masked=False)),
    ("reserved bit", frame(BINARY, length=1 << 40, rsv=RSV1)),
    ("continuation without a start", frame(CONT, length=1 << 40)),
    ("top bit of the length", frame(BINARY, length=1 << 63)),
])
def test_a_protocol_error_in_the_same_header_wins_over_1009(name, header):
    assert feed_chunks([header])[0].code == 1002


def test_a_frame_within_the_limit_waits_for_its_payload():
    data = frame(BINARY, b"z" * 60000)
    reader = FrameReader()
    assert reader.feed(data[:14]) == []
    assert reader.feed(data[14:-1]) == []
    assert reader.feed(data[-1:]) == [Message(b"z" * 60000, True)]


# -- where we knowingly differ from wsproto -------------------------------------------------------


def test_non_minimal_lengths_are_accepted():
    """RFC 6455 5.2 asks senders for the minimal form; receivers are not told to fail.
    wsproto fails these with 1002; ws4py and today's wsadapter accept them, so do we."""
    for data in (frame(TEXT, b"hi", form=16), frame(TEXT, b"hi", form=64), frame(BINARY, b"x" * 200, form=64),
                 frame(TEXT, b"a", fin=False, form=16) + frame(CONT, b"b", form=64)):
        assert_same_however_split(data, feed_chunks([data]))
    assert feed_chunks([frame(TEXT, b"hi", form=16)]) == [Message(b"hi", False)]
    assert feed_chunks([frame(BINARY, b"x" * 200, form=64)]) == [Message(b"x" * 200, True)]
    assert feed_chunks([frame(TEXT, b"a", fin=False, form=16) + frame(CONT, b"b", form=64)]) == [Message(b"ab", False)]
    with pytest.raises(ParseFailed):
        wsproto_events(frame(TEXT, b"hi", form=16))


def test_close_1014_is_accepted_where_wsproto_refuses_it():
    assert feed_chunks([close_frame(1014, b"bad gateway")]) == [Close(1014, "bad gateway")]
    with pytest.raises(ParseFailed):
        wsproto_events(close_frame(1014))


# -- Hypothesis: against wsproto ------------------------------------------------------------------


def wsproto_events(data: bytes) -> list:
    """wsproto's frames for `data`, raw (raises ParseFailed)."""
    protocol = FrameProtocol(client=False, extensions=[])
    protocol.receive_bytes(data)
    return list(protocol.received_frames())


class Reference:
    """Events per wsproto's FrameProtocol (server mode), plus our 1009 rule."""

    def __init__(self, max_message: int) -> None:
        self.protocol = FrameProtocol(client=False, extensions=[])
        self.max_message = max_message
        self.events: list = []
        self.parts: list = []  # the data of the message in progress
        self.pending: Opcode | None = None
        self.size = 0  # bytes of the message in progress, as sent
        self.closed = False

    def feed_frame(self, spec: dict) -> None:
        if self.closed:
            return
        data = spec.get("reference", spec["data"])
        try:
            self._receive(data[:spec["head"]])
            opcode = spec["opcode"]
            if opcode in (CONT, TEXT, BINARY):
                if (opcode == CONT) != (self.pending is not None):
                    if spec["head"] == len(data) and spec["length"]:
                        # header only: wsproto would fail it on the first payload byte; we
                        # fail it on the header (same code, earlier)
                        self._end(("fail", 1002))
                        return
                elif self.size + spec["length"] > self.max_message:
                    self._end(("fail", 1009))
                    return
            self._receive(data[spec["head"]:])
            if opcode in (CONT, TEXT, BINARY):  # raw bytes: wsproto holds back a split character
                self.size = self.size + spec["length"] if self.pending is not None else 0
        except ParseFailed as exc:
            self._end(("fail", int(exc.code)))
            return
        if spec.get("close_as") and self.events and self.events[-1] == ("close", 1013, spec["reason"]):
            self.events[-1] = ("close", spec["close_as"], spec["reason"])

    def _receive(self, data: bytes) -> None:
        if self.closed or not data:
            return
        self.protocol.receive_bytes(data)
        for f in self.protocol.received_frames():
            if f.opcode is Opcode.PING:
                self.events.append(("ping", bytes(f.payload)))
            elif f.opcode is Opcode.PONG:
                self.events.append(("pong", bytes(f.payload)))
            elif f.opcode is Opcode.CLOSE:
                code, reason = f.payload
                self._end(("close", None if code == 1005 else int(code), reason))
                return
            else:
                payload = f.payload.encode("utf-8") if isinstance(f.payload, str) else bytes(f.payload)
                self.parts.append(payload)
                self.pending = f.opcode
                if f.message_finished:
                    self.events.append(("message", b"".join(self.parts), f.opcode is Opcode.BINARY))
                    self.parts, self.pending = [], None

    def _end(self, event) -> None:
        self.events.append(event)
        self.closed = True


def normalized(events: list) -> list:
    out = []
    for e in events:
        if isinstance(e, Message):
            out.append(("message", e.data, e.binary))
        elif isinstance(e, Ping):
            out.append(("ping", e.payload))
        elif isinstance(e, Pong):
            out.append(("pong", e.payload))
        elif isinstance(e, Close):
            out.append(("close", e.code, e.reason))
        else:
            out.append(("fail", e.code))  # reasons differ between parsers: codes do not
    return out


def spec_of(opcode: int, payload: bytes = b"", *, reference: bytes | None = None, **kw) -> dict:
    data = frame(opcode, payload, **kw)
    length = kw.get("length", len(payload))
    head = len(data) - len(payload) if kw.get("length") is None else len(data)
    spec = {"data": data, "opcode": opcode, "head": head, "length": length}
    if reference is not None:
        spec["reference"] = frame(opcode, reference, **kw)
    return spec


SIZE_CLASSES = ["7-bit"] * 12 + ["16-bit"] * 3 + ["64-bit"]


@st.composite
def payloads(draw, text: bool) -> bytes:
    size_class = draw(st.sampled_from(SIZE_CLASSES))
    if text and draw(st.integers(0, 9)):  # mostly valid UTF-8, sometimes anything
        seed = draw(st.text(min_size=1, max_size=6)).encode("utf-8", "surrogatepass")
    else:
        seed = draw(st.binary(min_size=1, max_size=6))
    if size_class == "7-bit":
        return (seed * 20)[:draw(st.integers(0, 40))] if draw(st.booleans()) else seed[:draw(st.integers(0, 6))]
    target = draw(st.integers(126, 400)) if size_class == "16-bit" else draw(st.integers(65536, 66000))
    return seed * (target // len(seed) + 1)  # whole seeds: valid text stays valid


@st.composite
def control_frames(draw) -> dict:
    kind = draw(st.sampled_from(["ping", "pong", "close"]))
    payload = draw(st.binary(max_size=20))
    if kind != "close":
        return spec_of(PING if kind == "ping" else PONG, payload)
    shape = draw(st.sampled_from(["empty", "one byte", "code", "code", "code"]))
    if shape == "empty":
        return spec_of(CLOSE)
    if shape == "one byte":
        return spec_of(CLOSE, payload[:1] or b"\x03")
    code = draw(st.sampled_from(ALLOWED_CLOSE_CODES + FORBIDDEN_CLOSE_CODES))
    reason = draw(st.text(max_size=10)).encode("utf-8", "surrogatepass") if draw(st.integers(0, 4)) \
        else draw(st.binary(max_size=6))
    spec = spec_of(CLOSE, struct.pack("!H", code) + reason)
    if code == 1014:  # wsproto lacks 1014: it judges 1013 in its place (see the module docstring)
        spec = spec_of(CLOSE, struct.pack("!H", code) + reason, reference=struct.pack("!H", 1013) + reason)
        try:
            spec.update(close_as=1014, reason=reason.decode("utf-8"))
        except UnicodeDecodeError:
            pass
    return spec


@st.composite
def messages(draw) -> list:
    """One data message, maybe fragmented, maybe with control frames between fragments."""
    binary = draw(st.booleans())
    data = draw(payloads(text=not binary))
    cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=3)))
    pieces = [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)])]
    specs = []
    for i, piece in enumerate(pieces):
        specs.append(spec_of((BINARY if binary else TEXT) if i == 0 else CONT, piece, fin=i == len(pieces) - 1))
        if i < len(pieces) - 1 and draw(st.integers(0, 3)) == 0:
            specs.append(draw(control_frames()))
    return specs


@st.composite
def broken_frames(draw) -> list:
    kind = draw(st.sampled_from(["unmasked", "rsv", "opcode", "long control", "fragmented control",
                                 "continuation", "continuation", "huge", "top bit"]))
    payload = draw(st.binary(max_size=10))
    if kind == "unmasked":
        return [spec_of(draw(st.sampled_from([TEXT, BINARY, CONT, PING, CLOSE])), payload, masked=False)]
    if kind == "rsv":
        return [spec_of(draw(st.sampled_from([TEXT, BINARY, PING])), payload,
                        rsv=draw(st.sampled_from([RSV1, RSV2, RSV3, RSV1 | RSV3])))]
    if kind == "opcode":
        return [spec_of(draw(st.sampled_from([3, 4, 5, 6, 7, 0xB, 0xC, 0xD, 0xE, 0xF])), payload)]
    if kind == "long control":
        return [spec_of(draw(st.sampled_from([PING, PONG, CLOSE])), b"\x03\xe8" + bytes(draw(st.integers(124, 130))))]
    if kind == "fragmented control":
        return [spec_of(draw(st.sampled_from([PING, PONG, CLOSE])), b"\x03\xe8", fin=False)]
    if kind == "continuation":
        return [spec_of(CONT, payload, fin=draw(st.booleans()))]
    if kind == "huge":  # header only: the stream ends there
        return [spec_of(draw(st.sampled_from([TEXT, BINARY, CONT])), length=draw(st.integers((1 << 17) + 1, 1 << 40)),
                        fin=draw(st.booleans())), "end"]
    return [spec_of(BINARY, length=(1 << 63) + draw(st.integers(0, 1000))), "end"]


@st.composite
def open_fragments(draw) -> list:
    """A first fragment left open: the next data frame must be a continuation."""
    binary = draw(st.booleans())
    return [spec_of(BINARY if binary else TEXT, draw(payloads(text=not binary)), fin=False)]


@st.composite
def streams(draw) -> tuple[list, int]:
    group = st.sampled_from(["message"] * 4 + ["control"] * 2 + ["broken", "open"]).flatmap(
        lambda kind: {"message": messages(), "control": control_frames().map(lambda spec: [spec]),
                      "broken": broken_frames(), "open": open_fragments()}[kind])
    groups = draw(st.lists(group, min_size=1, max_size=6))
    specs = []
    for group in groups:
        for spec in group:
            if spec == "end":
                return specs, draw(st.sampled_from([300, 1 << 17]))
            specs.append(spec)
    return specs, draw(st.sampled_from([300, 1 << 17]))


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(streams(), st.data())
def test_events_match_wsproto(stream, data):
    specs, max_message = stream
    reference = Reference(max_message)
    for spec in specs:
        reference.feed_frame(spec)
    raw = b"".join(spec["data"] for spec in specs)
    offsets = data.draw(st.lists(st.integers(0, len(raw)), max_size=6), label="split at")
    events = feed_chunks(split_at(raw, offsets), max_message)
    assert normalized(events) == reference.events
    event(f"ends with {reference.events[-1][0] + (str(reference.events[-1][1]) if reference.events[-1][0] == 'fail' else '') if reference.events else 'nothing'}")
    event(f"{sum(e[0] == 'message' for e in reference.events)} messages")
    event(f"largest frame: {'64' if max(s['length'] for s in specs) > 65535 else '16' if max(s['length'] for s in specs) > 125 else '7'}-bit")
