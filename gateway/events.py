"""`WS /ws/_events` (json): one stream of the gateway's own events, so a dashboard of
many devices needs one connection (SPEC section 8).

    {"type": "hello", "client": ID, "role": ROLE}                          first
    {"type": "port", "event": "added" | "removed", "port": {...}}         ports.py's fields
    {"type": "device", "event": "added" | "removed" | "state", "device": NAME, "state": ...}
    {"type": "pong"}                                                     to {"type": "ping"}

Everything here runs on the I/O loop thread. The connection is a `ClientSocket` like a
device's (gateway/wsadapter.py); `EventClient` is its client protocol, a subscriber of
the gateway-wide `EventHub`, which builds each event's frame once and queues it for every
subscriber (`Gateway.device_watchers` and the port watcher feed it).
"""

from __future__ import annotations

import json
import logging

from . import frames

log = logging.getLogger(__name__)

NAME = "_events"  # /ws/_events: a device name cannot start with "_" (config.NAME_RE)


def _frame(msg: dict) -> bytes:
    return frames.text(json.dumps(msg, separators=(",", ":")))


class EventHub:
    """The subscribers of /ws/_events (loop thread only)."""

    def __init__(self):
        self._subs: list[EventClient] = []

    @property
    def clients(self) -> int:
        return len(self._subs)

    def attach(self, sub: "EventClient") -> None:
        sub.deliver([_frame({"type": "hello", "client": sub.id, "role": sub.role})])
        self._subs.append(sub)

    def detach(self, sub: "EventClient") -> None:
        try:
            self._subs.remove(sub)
        except ValueError:
            pass

    def publish(self, event: dict) -> None:
        if not self._subs:
            return
        item = [_frame(event)]
        for sub in self._subs:
            sub.deliver(item)


class _NoDevice:
    """What a connection's flow control asks of its client's device (wsadapter
    `_set_full`): this stream reads no device, so nothing is paused."""

    name = NAME
    full_clients = 0

    def room(self) -> None:
        pass


class EventClient:
    """The client protocol of one /ws/_events connection: it only listens."""

    fmt = "json"

    def __init__(self, client_id: int, hub: EventHub, role: str, peer: str):
        self.id = client_id
        self.hub = hub
        self.role = role
        self.peer = peer
        self.link = _NoDevice()
        self.outbox = None

    def __repr__(self) -> str:
        return f"<event client {self.id} {self.peer}>"

    def opened(self, outbox) -> None:
        self.outbox = outbox
        self.hub.attach(self)

    def closed(self) -> None:
        self.hub.detach(self)

    def deliver(self, items: list[bytes]) -> None:
        if self.outbox is not None:
            self.outbox.send_frames(items, True)

    def send_json(self, msg: dict) -> None:
        self.deliver([_frame(msg)])

    def error(self, request_id, error: str) -> None:
        msg = {"type": "error", "error": error}
        if request_id is not None:
            msg["id"] = request_id
        self.send_json(msg)

    def on_message(self, data: bytes, is_binary: bool, alone: bool = False) -> None:
        msg = None
        if not is_binary:
            try:
                msg = json.loads(data)
            except ValueError:
                pass
        if isinstance(msg, dict) and msg.get("type") == "ping":
            reply = {"type": "pong"}
            if "id" in msg:
                reply["id"] = msg["id"]
            self.send_json(reply)
            return
        self.error(msg.get("id") if isinstance(msg, dict) else None,
                   'this stream only sends events; it takes {"type": "ping"} and nothing else')
