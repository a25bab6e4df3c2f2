"""One WebSocket client of one device: the protocol of SPEC section 4, no socket code.

Everything here runs on the I/O loop thread (gateway/manager.py), which serves every
client: `on_message` parses and checks what the client sent and queues the lines for the
device (DeviceLink.submit: written at the end of the loop round, never waited for);
frames for the client are queued on its connection (wsadapter.ClientSocket), sent at the
end of the round.

Signals, in json mode, control and admin roles (SPEC section 8), each answered
`{"type": "ack", "signal": KIND, "id": N}` once done or `{"type": "error", ...}`:
`{"type": "signals", "dtr": true, "rts": false}`, `{"type": "break", "ms": 250}`,
`{"type": "reset"}` (the device's `reset` sequence), `{"type": "bootloader"}`.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass

from . import frames
from .codec import LineError, check_line, encode_line, split_client_text
from .device import DeviceLink, WriteRequest
from .security import RateLimit, may_send
from .signals import MAX_MS, Step

log = logging.getLogger(__name__)

MAX_REPLY_TIMEOUT = 60.0
SIGNAL_TYPES = ("signals", "break", "reset", "bootloader")

# A text frame of printable ASCII only is one line, the same bytes in every encoding the
# shortcut below is taken for, and needs no decoding, splitting or checking.
NOT_PRINTABLE_ASCII = re.compile(rb"[^\x20-\x7e]")
ASCII_ENCODINGS = {"utf-8", "utf8", "ascii", "us-ascii", "latin-1", "latin1", "iso-8859-1", "cp1252"}


@dataclass(frozen=True)
class Options:
    """What the client asked for in the handshake URL."""

    fmt: str = "text"
    history: int | None = None
    since: int | None = None
    run: str | None = None
    role: str = "control"


class Client:
    def __init__(self, client_id: int, link: DeviceLink, options: Options, peer: str,
                 stats=None, lines_per_second: float = 0):
        self.id = client_id
        self.link = link
        self.fmt = options.fmt
        self.options = options
        self.peer = peer
        self.stats = stats
        self.outbox = None  # the connection (wsadapter.ClientSocket), once open
        self.lines_in = 0
        self.rate = RateLimit(lines_per_second) if lines_per_second > 0 else None
        self.dropped = False  # closed by the gateway: what it still sent is ignored
        self.relink(link)

    def relink(self, link: DeviceLink) -> None:
        """Write to `link` from now on (the device was reopened with other settings)."""
        self.link = link
        cfg = link.config
        self._eol = cfg.eol_bytes
        # The common case of text mode, taken without decoding: a control client, a
        # device with no allowlist and an ASCII-compatible encoding.
        self._plain_text = (self.options.fmt == "text" and may_send(self.options.role) and not link.allow
                            and cfg.encoding.lower() in ASCII_ENCODINGS)

    def __repr__(self) -> str:
        return f"<client {self.id} {self.peer} {self.link.name}/{self.fmt}>"

    # -- lifecycle (called by the ws4py adapter) --------------------------------------

    def opened(self, outbox) -> None:
        self.outbox = outbox
        o = self.options
        self.link.hub.attach(self, self.id, history=o.history, since=o.since, run=o.run, role=o.role)

    def closed(self) -> None:
        self.link.hub.detach(self)

    # -- to the client ----------------------------------------------------------------

    def deliver(self, items: list[bytes]) -> None:
        """Device lines (the hub): sent at once when nothing waits before them."""
        ob = self.outbox
        if ob is not None:
            ob.send_frames(items, True)

    def send_json(self, msg: dict) -> None:
        """Acks, errors, replies, pongs: sent with the rest of the loop round's frames."""
        ob = self.outbox
        if ob is not None:
            ob.send_frames([frames.text(json.dumps(msg, separators=(",", ":")))])

    def acked(self, request: WriteRequest) -> None:
        if self.fmt == "json" and request.id is not None:
            self.send_json({"type": "ack", "id": request.id})

    def failed(self, request: WriteRequest, error: str) -> None:
        self.error(request.id, error)

    def error(self, request_id, error: str) -> None:
        if self.fmt == "json":
            msg = {"type": "error", "error": error}
            if request_id is not None:
                msg["id"] = request_id
            self.send_json(msg)
        else:
            log.info("client %s: %s", self, error)

    # -- from the client --------------------------------------------------------------

    def refuse(self, request_id, error: str) -> None:
        """A line that will not be written: say why, and count it."""
        if self.stats is not None:
            self.stats.lines_refused += 1
        self.error(request_id, error)

    def on_message(self, data: bytes, is_binary: bool, alone: bool = False) -> None:
        """A message from the client (`alone`: the only one its read brought)."""
        if self.dropped:
            return
        if self._plain_text and not is_binary and len(data) <= self.link.config.max_line \
                and not NOT_PRINTABLE_ASCII.search(data):
            line = bytes(data) + self._eol
            if alone and self.rate is None and self.link.write_now(line):
                self.lines_in += 1  # the only line of its read: written at once
                return
            self._submit(WriteRequest(line))
            return
        if self.fmt == "json" and not is_binary and b'"type"' in data:
            if self._on_control(data):
                return
        if not may_send(self.options.role):
            self.refuse(self._id_of(data, is_binary), f"role {self.options.role} may not send to the device")
            return
        if self.fmt == "binary":
            # Raw bytes, no line handling: a device with an allowlist takes none.
            if self.link.allow:
                self.refuse(None, f"device {self.link.name} takes only lines matching its allowlist")
                return
            self._submit(WriteRequest(bytes(data)))
            return
        if is_binary and self.fmt == "text":
            # One line, its bytes as they are (not text in any encoding), plus eol.
            self._binary_line(bytes(data))
            return
        if is_binary:
            self.error(None, "json mode takes text frames holding JSON")
            return
        text = bytes(data).decode("utf-8")  # ws4py already refused invalid UTF-8 (1007)
        if self.fmt == "text":
            # Every line is checked before any is written: a refused line refuses the frame.
            try:
                payloads = [self._checked(line) for line in split_client_text(text)]
            except LineError as exc:
                self.refuse(None, f"{exc}; nothing of this message was written")
                return
            for payload in payloads:
                if not self._submit(WriteRequest(payload)):
                    return
            return
        self._on_json(text)

    def _on_control(self, data: bytes) -> bool:
        """`{"type": "ping"}` gets `{"type": "pong"}`: a keepalive a page can see
        (browsers answer WebSocket pings themselves and never tell the page). Signals
        (SIGNAL_TYPES) go to the device. False: not a control message."""
        try:
            msg = json.loads(data)
        except ValueError:
            return False
        if not isinstance(msg, dict) or "line" in msg:
            return False
        kind = msg.get("type")
        if kind == "ping":
            reply = {"type": "pong"}
            if "id" in msg:
                reply["id"] = msg["id"]
            self.send_json(reply)
            return True
        if kind in SIGNAL_TYPES:
            self._on_signal(kind, msg)
            return True
        return False

    def _on_signal(self, kind: str, msg: dict) -> None:
        request_id = msg.get("id")
        if not may_send(self.options.role):
            self.refuse(request_id, f"role {self.options.role} may not send signals to the device")
            return
        steps = None
        if kind == "signals":
            values = {}
            for key in ("dtr", "rts"):
                value = msg.get(key)
                if value is not None and not isinstance(value, bool):
                    self.error(request_id, f'expected "{key}" to be true or false')
                    return
                values[key] = value
            if values["dtr"] is None and values["rts"] is None:
                self.error(request_id, 'expected "dtr" or "rts" (true: asserted, false: released)')
                return
            steps = (Step("signals", values["dtr"], values["rts"]),)
        elif kind == "break":
            ms = msg.get("ms", 250)
            if isinstance(ms, bool) or not isinstance(ms, int) or not 1 <= ms <= MAX_MS:
                self.error(request_id, f'expected "ms" to be a whole number of milliseconds from 1 to {MAX_MS}')
                return
            steps = (Step("break", ms=ms),)
        error = self.link.signal(kind, self, request_id, steps)
        if error is not None:
            self.signalled(kind, request_id, error)

    def signalled(self, kind: str, request_id, error: str | None) -> None:
        """The device link played a signal sequence (or could not)."""
        if error is not None:
            self.error(request_id, error)
            return
        if self.fmt == "json":
            msg = {"type": "ack", "signal": kind}
            if request_id is not None:
                msg["id"] = request_id
            self.send_json(msg)

    def _on_json(self, text: str) -> None:
        try:
            msg = json.loads(text)
        except ValueError as exc:
            self.error(None, f"not JSON: {exc}")
            return
        if not isinstance(msg, dict):
            self.error(None, 'expected an object such as {"line": "PING", "id": 1}')
            return
        request_id = msg.get("id")
        line = msg.get("line")
        if line is None and "type" in msg:
            self.error(request_id, f"unknown type {msg['type']!r} (known: ping, {', '.join(SIGNAL_TYPES)})")
            return
        if not isinstance(line, str):
            self.error(request_id, 'expected "line" to be a string')
            return
        reply = msg.get("reply", False)
        timeout = msg.get("timeout", 2.0)
        if not isinstance(reply, bool):
            self.error(request_id, 'expected "reply" to be true or false')
            return
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 < timeout <= MAX_REPLY_TIMEOUT:
            self.error(request_id, f'expected "timeout" to be seconds between 0 and {MAX_REPLY_TIMEOUT:g}')
            return
        try:
            check_line(line)
            payload = self._checked(line)
        except LineError as exc:
            self.refuse(request_id, str(exc))
            return
        self._submit(WriteRequest(payload, self, request_id, reply, float(timeout)))

    def _binary_line(self, data: bytes) -> None:
        cfg = self.link.config
        if self.link.allow:
            self.refuse(None, f"device {self.link.name} takes only lines matching its allowlist")
            return
        if any(b in data for b in b"\r\n"):
            self.refuse(None, "a binary frame is one line: it may not hold CR or LF")
            return
        if len(data) > cfg.max_line:
            self.refuse(None, f"line is {len(data)} bytes, over max_line {cfg.max_line}")
            return
        self._submit(WriteRequest(data + cfg.eol_bytes))

    def _checked(self, line: str) -> bytes:
        """The device bytes for `line`, once the device's allowlist let it through."""
        cfg = self.link.config
        if not self.link.allow.allows(line):
            raise LineError(f"line not allowed on device {self.link.name}")
        return encode_line(line, cfg.encoding, cfg.eol_bytes, cfg.max_line)

    @staticmethod
    def _id_of(data: bytes, is_binary: bool):
        if is_binary or not data.startswith(b"{"):
            return None
        try:
            msg = json.loads(data)
        except ValueError:
            return None
        return msg.get("id") if isinstance(msg, dict) else None

    def _submit(self, request: WriteRequest) -> bool:
        if request.client is None:
            request.client = self
        rate = self.rate
        if rate is not None and not rate.allow():
            if self.stats is not None:
                self.stats.rate_limited += 1
            if rate.persistent:
                log.warning("client %s: over %g lines/s for too long, closing with 1008", self, rate.rate)
                self.dropped = True
                if self.outbox is not None:
                    self.outbox.close(1008, "rate limit exceeded")
            else:
                self.refuse(request.id, f"rate limit: at most {rate.rate:g} lines per second")
            return False
        self.lines_in += 1
        error = self.link.submit(request)
        if error is not None:
            self.error(request.id, error)
            return False
        return True
