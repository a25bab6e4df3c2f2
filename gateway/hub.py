"""Fan-out for one device: its clients, its numbered line history, its state.

Everything here runs on the I/O loop thread (gateway/manager.py): `publish()` numbers
a device's lines, keeps the last `history` of them, and queues each line's frame (built
once per format, shared by every client) for each client; `attach()` replays what a new
client asked for before it joins the live fan-out, so the lines it is replayed and the
live lines that follow neither overlap nor leave a gap. Queuing never blocks. The lock
only keeps readers on other threads (/metrics, /api/devices) consistent.
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from enum import Enum
from typing import TYPE_CHECKING, Callable, Protocol

from . import frames, telemetry
from .codec import Line, decode

if TYPE_CHECKING:
    from .wsadapter import ClientSocket

FORMATS = ("text", "json", "binary")


def _json_frame(msg: dict) -> bytes:
    return frames.text(json.dumps(msg, separators=(",", ":")))


def _text_frame(payload: bytes) -> bytes:
    n = len(payload)
    if n < 126:  # a device line usually: skip frames.frame's general case
        return _SHORT_TEXT[n] + payload
    return frames.frame(frames.TEXT, payload)


_SHORT_TEXT = [bytes((0x80 | frames.TEXT, n)) for n in range(126)]


class State(Enum):
    CONNECTED = "connected"
    RECONNECTING = "reconnecting"
    DISCONNECTED = "disconnected"
    EXTERNAL = "external"  # held by an RFC 2217 client (gateway/rfc2217.py): clients watch, cannot write


class Subscriber(Protocol):
    fmt: str
    outbox: "ClientSocket | None"  # its connection, for flow control (full, slow)

    def deliver(self, items: list[bytes]) -> None: ...


class Listener(Protocol):
    """A telemetry sink, metrics or a recording, fed by every hub it is added to.

    Both methods run on the I/O loop thread, `on_records` under the hub lock:
    they may only queue (each sink has its own queue and thread), never block.
    """

    def on_records(self, device: str, records: list["Record"]) -> None: ...

    def on_state(self, device: str, state: State) -> None: ...


#: Records of a device's history beyond its newest HOT are compacted (Record.compact):
#: their frames and parsed data were for the fan-out, which is over by then.
HOT = 32


class Record:
    """A numbered device line and its frames, each built at most once.

    Held in a history, a record older than the newest HOT is compacted: its frames and
    parsed data are dropped and its line kept as the bytes the device sent (the text is
    decoded again when asked for). 1,000 devices with 1,000 lines of history each then
    hold about 230 bytes a line instead of about 1,100 (bench/perf/fleet.py, W6 memory).
    Readers on other threads (the sinks) may see a record before or after it is
    compacted: every accessor reads each slot once, and compact() writes the packed form
    before it lets go of the line."""

    __slots__ = ("seq", "ts", "_line", "_data", "_frames", "device", "_text", "_encoding")

    def __init__(self, device: str, seq: int, ts: float, line: Line):
        self.device = device
        self.seq = seq
        self.ts = ts
        self._line: Line | bytes = line  # bytes: compacted (the line as sent; see `line`)
        self._encoding = ""  # the device's encoding, once compacted
        self._data: dict | None | bool = False  # False: not parsed yet
        self._frames: dict[str, bytes] | None = None  # json, binary: built when first asked for
        self._text: bytes | None = None  # the text frame (built in publish for text clients)

    @property
    def line(self) -> Line:
        line = self._line
        if type(line) is bytes:
            return _unpack(line, self._encoding)
        return line

    def compact(self, encoding: str) -> None:
        """Drop what the fan-out needed; keep the line as the bytes sent (on the loop)."""
        line = self._line
        if type(line) is bytes or line.raw.endswith(_EOL):
            return  # done already, or a line whose end could not be told from its bytes
        self._encoding = encoding
        self._line = line.raw + line.end
        self._text = self._frames = None
        self._data = False

    def text_frame(self) -> bytes:
        f = self._text
        if f is None:
            line = self._line
            if type(line) is bytes:  # compacted: built for a replay, not kept
                line = _unpack(line, self._encoding)
                return _text_frame(line.text.encode("utf-8")) if line.valid else frames.binary(line.raw)
            f = self._text = _text_frame(line.text.encode("utf-8")) if line.valid else frames.binary(line.raw)
        return f

    @property
    def data(self) -> dict | None:
        data = self._data
        if data is False:
            line = self._line
            if type(line) is bytes:  # compacted: parsed again, not kept
                line = _unpack(line, self._encoding)
                return telemetry.parse(line.text) if line.valid else None
            data = self._data = telemetry.parse(line.text) if line.valid else None
        return data

    def frame(self, fmt: str) -> bytes:
        if fmt == "text":
            return self.text_frame()
        if type(self._line) is bytes:  # compacted: built for a replay, not kept
            return self._build(fmt)
        built = self._frames
        if built is None:
            built = self._frames = {}
        f = built.get(fmt)
        if f is None:
            f = built[fmt] = self._build(fmt)
        return f

    def _build(self, fmt: str) -> bytes:
        line = self.line
        if fmt == "binary":
            return frames.binary(line.wire)
        msg = {"type": "line", "device": self.device, "seq": self.seq, "ts": round(self.ts, 3), "line": line.text}
        data = self.data
        if data is not None:
            msg["data"] = data
        if not line.valid:
            msg["raw"] = line.raw_base64()
        return _json_frame(msg)


_EOL = (b"\r", b"\n")


def _unpack(wire: bytes, encoding: str) -> Line:
    """A compacted record's line: its bytes split at the line end (the decoder ends a
    line at any CR or LF, so its own bytes never end with one: compact() checks), then
    decoded as the device's decoder did."""
    cut = 2 if wire.endswith(b"\r\n") else 1 if wire.endswith((b"\n", b"\r")) else 0
    raw = wire[:len(wire) - cut]
    text, valid = decode(raw, encoding)
    return Line(raw, wire[len(raw):], text, valid)


class Hub:
    def __init__(self, device: str, run: str, history: int = 1000, encoding: str = "utf-8"):
        self.device = device
        self.run = run
        self.encoding = encoding  # the device's, for compacted records (Record.compact)
        self.lock = threading.Lock()
        self.history: deque[Record] = deque(maxlen=history)
        self.seq = 0
        self.state = State.DISCONNECTED
        self.holder: str | None = None  # who holds the device while EXTERNAL
        self.partial = b""  # bytes of the line the device is in the middle of
        self._subs: dict[str, list[Subscriber]] = {fmt: [] for fmt in FORMATS}
        self._reply_to: tuple[Subscriber, object, Callable[[], None]] | None = None
        self.listeners: list[Listener] = []  # set before the device starts

    # -- clients --------------------------------------------------------------------

    @property
    def clients(self) -> int:
        return sum(len(s) for s in self._subs.values())

    def hello(self, client_id: int, role: str = "control") -> bytes:
        msg = {
            "type": "hello", "client": client_id, "device": self.device,
            "run": self.run, "seq": self.seq, "state": self.state.value, "role": role,
        }
        if self.holder is not None:
            msg["by"] = self.holder
        return _json_frame(msg)

    def attach(self, sub: Subscriber, client_id: int, history: int | None = None,
               since: int | None = None, run: str | None = None, role: str = "control") -> None:
        """Replay what the client asked for, then add it to the live fan-out."""
        with self.lock:
            items: list[bytes] = []
            if sub.fmt == "json":
                items.append(self.hello(client_id, role))
            records, gap = self._replay(history, since, run)
            if gap is not None and sub.fmt == "json":
                items.append(_json_frame({"type": "gap", "device": self.device, **gap}))
            items.extend(rec.frame(sub.fmt) for rec in records)
            if sub.fmt == "binary" and self.partial and records is not None and (history or since is not None):
                items.append(frames.binary(self.partial))
            if items:
                sub.deliver(items)
            self._subs[sub.fmt].append(sub)

    def _replay(self, history, since, run) -> tuple[list[Record], dict | None]:
        held = self.history
        if since is None and run is None:
            if not history:
                return [], None
            return list(held)[-history:], None
        since = since or 0
        first_held = held[0].seq if held else self.seq + 1
        if run is not None and run != self.run:
            # The gateway restarted since the client last saw it: its numbers mean
            # nothing here. Say so, and give it everything held.
            return list(held), {"reason": "gateway restarted", "run": self.run, "from": 1, "to": first_held - 1}
        if since > self.seq:
            return list(held), {"reason": "sequence ahead of this gateway (restarted?)", "run": self.run,
                                "from": 1, "to": first_held - 1}
        gap = None
        if since + 1 < first_held:
            gap = {"reason": "lines dropped from history", "from": since + 1, "to": first_held - 1}
        return [rec for rec in held if rec.seq > since], gap

    def subscribers(self) -> list[Subscriber]:
        with self.lock:
            return [sub for subs in self._subs.values() for sub in subs]

    def detach(self, sub: Subscriber) -> None:
        with self.lock:
            try:
                self._subs[sub.fmt].remove(sub)
            except ValueError:
                pass
            if self._reply_to is not None and self._reply_to[0] is sub:
                done = self._reply_to[2]
                self._reply_to = None
                done()

    def full_outboxes(self) -> list["ClientSocket"]:
        """This device's clients with half their queue waiting, not known as slow."""
        with self.lock:
            return [ob for subs in self._subs.values() for sub in subs
                    if (ob := getattr(sub, "outbox", None)) is not None and ob.full and not ob.slow]

    # -- requests -------------------------------------------------------------------

    def expect_reply(self, sub: Subscriber, request_id: object, done: Callable[[], None]) -> None:
        """Route the device's next line to `sub` as a reply; then call `done()` (also
        when `sub` leaves first)."""
        with self.lock:
            self._reply_to = (sub, request_id, done)

    def cancel_reply(self) -> bool:
        """Give up waiting; True if the reply had not come."""
        with self.lock:
            waiting, self._reply_to = self._reply_to is not None, None
        return waiting

    # -- the thread that reads the device ----------------------------------------------

    def publish(self, chunk: bytes, lines: list[Line], partial: bytes) -> None:
        now = time.time()
        device = self.device
        with self.lock:
            self.partial = partial
            seq = self.seq
            records = [Record(device, seq + i, now, line) for i, line in enumerate(lines, 1)]
            self.seq = seq + len(records)
            history = self.history
            history.extend(records)
            cold = len(history) - HOT  # history[cold - 1] has just left the newest HOT
            if cold > 0:
                if len(records) == 1:
                    history[cold - 1].compact(self.encoding)
                else:
                    for i in range(cold - 1, max(cold - 1 - len(records), -1), -1):
                        history[i].compact(self.encoding)
            if records and self._reply_to is not None:
                sub, request_id, done = self._reply_to
                self._reply_to = None
                first = records[0].line
                sub.deliver([_json_frame({"type": "reply", "id": request_id, "line": first.text})])
                done()
            for fmt, subs in self._subs.items():
                if not subs:
                    continue
                if fmt == "text":
                    items = [rec.text_frame() for rec in records]
                elif fmt == "binary":
                    items = [frames.binary(chunk)] if chunk else []
                else:
                    items = [rec.frame(fmt) for rec in records]
                if items:
                    for sub in subs:
                        sub.deliver(items)
            if records:
                for listener in self.listeners:
                    listener.on_records(self.device, records)

    def publish_status(self, state: State, by: str | None = None) -> None:
        """A new state; `by` names the holder of an EXTERNAL device."""
        with self.lock:
            if state is self.state and by == self.holder:
                return
            self.state = state
            self.holder = by
            subs = list(self._subs["json"])
            for listener in self.listeners:
                listener.on_state(self.device, state)
        if subs:
            msg = {"type": "status", "device": self.device, "state": state.value}
            if by is not None:
                msg["by"] = by
            item = [_json_frame(msg)]
            for sub in subs:
                sub.deliver(item)
