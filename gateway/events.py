"""`WS /ws/_events` (json): one stream of the gateway's own events, so a dashboard of
many devices needs one connection (SPEC section 8).

    {"type": "hello", "client": ID, "role": ROLE, "gateway": GATEWAY_ID}   first
    {"type": "port", "event": "added" | "removed", "port": {...}}         ports.py's fields
    {"type": "device", "event": "added" | "state", "device": NAME, "state": STATE,
     "kind": KIND, "owner": GATEWAY_ID, "remote": BOOL}
    {"type": "device", "event": "removed", "device": NAME}
    {"type": "devices", "gateway": GATEWAY_ID, "devices": [{"name": NAME, "state": ...,
     "kind": ..., "owner": ..., "remote": ...}, ...]}                    to {"type": "devices"}
    {"type": "pong"}                                                     to {"type": "ping"}

The list without a race: a client that sends {"type": "devices"} gets every device as it
is when the loop reads that request; the events after that answer in the stream are the
changes since, in order (both are made on the loop). A `state` event for a device not in
the list is one removed meanwhile: its `removed` follows; an `added` for a device already
listed is one the list caught before its event.

Everything here runs on the I/O loop thread. The connection is a `ClientSocket` like a
device's (gateway/wsadapter.py); `EventClient` is its client protocol, a subscriber of
the gateway-wide `EventHub`, which builds each event's frame once and queues it for every
subscriber (`Gateway.device_watchers` and the port watcher feed it).
"""

from __future__ import annotations

import json
import logging
from typing import Callable

from . import frames

log = logging.getLogger(__name__)

NAME = "_events"  # /ws/_events: a device name cannot start with "_" (config.NAME_RE)


def _frame(msg: dict) -> bytes:
    return frames.text(json.dumps(msg, separators=(",", ":")))


class EventHub:
    """The subscribers of /ws/_events (loop thread only)."""

    def __init__(self, gateway_id: str = "", snapshot: Callable[[], list[dict]] = list):
        self._subs: list[EventClient] = []
        self.gateway_id = gateway_id
        self.snapshot = snapshot  # the devices as {"type": "devices"} lists them, on the loop

    @property
    def clients(self) -> int:
        return len(self._subs)

    def attach(self, sub: "EventClient") -> None:
        sub.deliver([_frame({"type": "hello", "client": sub.id, "role": sub.role, "gateway": self.gateway_id})])
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
        kind = msg.get("type") if isinstance(msg, dict) else None
        if kind == "ping":
            self.answer(msg, {"type": "pong"})
        elif kind == "devices":
            self.answer(msg, {"type": "devices", "gateway": self.hub.gateway_id, "devices": self.hub.snapshot()})
        else:
            self.error(msg.get("id") if isinstance(msg, dict) else None,
                       'this stream only sends events; it takes {"type": "ping"}, {"type": "devices"} and nothing else')

    def answer(self, request: dict, reply: dict) -> None:
        """Send `reply` to `request`, with the request's `id` when it had one."""
        if "id" in request:
            reply["id"] = request["id"]
        self.send_json(reply)
