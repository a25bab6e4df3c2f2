"""Devices of every gateway on one broker, found by themselves (`[mqtt] discover = true`).

Each gateway announces its own devices with a retained `PREFIX/NAME/meta/ID` (ID: its
gateway id), `{"owner": ID, "name": NAME, "kind": ..., "buttons": [...], "state": ...,
"topic": "PREFIX/NAME", "ts": ...}`, again at each state change and after each
reconnect, and clears it (an empty retained message) when the device is removed. It
subscribes to `PREFIX/+/meta/+` and lists each device announced by another gateway as a
remote device: an `mqtt://BROKER/PREFIX/NAME?owner=ID` device with `owner = ID`, added
and removed through `Gateway.add_device` / `remove_device`, read and written through the
gateway's one broker connection (transports/mqtt.py follows the owner's status and its
gateway's will).

Names: a remote device is called NAME unless this gateway already has a device of that
name (its own, or a remote one of another owner); then `NAME@ID` (a configured name
cannot hold "@"), and the clash is logged.

Threads: the meta messages arrive on paho's thread, which only queues them; adding and
removing devices (which waits for the I/O loop) runs on one worker, "discovery-1",
started when first needed and stopped with the gateway. Device events come on the loop
and only publish (paho queues).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import replace
from urllib.parse import urlsplit

from .config import GATEWAY_ID, NAME_RE, Button, DeviceConfig
from .workers import Workers

log = logging.getLogger(__name__)

MAX_BUTTONS = 32  # buttons taken from one meta message
MAX_REMOTE = 10000  # remote devices listed at most (a broker full of announcements stays bounded)


class Discovery:
    def __init__(self, gateway, conn):
        self.gateway = gateway
        self.conn = conn
        self.prefix = gateway.config.mqtt.prefix
        self.own_id = gateway.gateway_id
        parts = urlsplit(gateway.config.mqtt.url)
        self.broker_url = f"mqtt://{parts.netloc}"
        self.remotes: dict[tuple[str, str], str] = {}  # (owner, name) -> local name; the worker's
        self.announced: set[str] = set()  # own devices with a meta on the broker (loop and paho's thread)
        self.worker = Workers("discovery", 1)
        self._lock = threading.Lock()  # remotes, and adding or removing a remote device
        self._sub = None

    def meta_topic(self, name: str, owner: str) -> str:
        return f"{self.prefix}/{name}/meta/{owner}"

    # -- lifecycle (the gateway's thread) ----------------------------------------------------

    def start(self) -> None:
        self.gateway.device_watchers.append(self._on_device_event)
        self.conn.watch(self._on_broker)
        self._sub = self.conn.subscribe(f"{self.prefix}/+/meta/+", 1, self._on_meta)
        if self.conn.connected:
            self._on_broker(True)

    def stop(self, timeout: float = 5.0) -> None:
        """Before the devices stop: no more remote devices come or go."""
        try:
            self.gateway.device_watchers.remove(self._on_device_event)
        except ValueError:
            pass
        self.conn.unwatch(self._on_broker)
        if self._sub is not None:
            self.conn.unsubscribe(self._sub)
        self.worker.stop(timeout)

    # -- announcing this gateway's devices (loop, or paho's thread after a connect) --------

    def _own_links(self):
        return [link for link in self.gateway.links.values() if not link.config.owner and link.config.kind != "mqtt"]

    def _announce(self, link) -> None:
        cfg = link.config
        meta = {"owner": self.own_id, "name": cfg.name, "kind": cfg.kind,
                "buttons": [{"label": b.label, "line": b.line} for b in cfg.buttons],
                "state": link.state.value, "topic": f"{self.prefix}/{cfg.name}", "ts": round(time.time(), 3)}
        self.announced.add(cfg.name)
        self.conn.publish(self.meta_topic(cfg.name, self.own_id), json.dumps(meta), qos=1, retain=True)

    def _withdraw(self, name: str) -> None:
        self.announced.discard(name)
        self.conn.publish(self.meta_topic(name, self.own_id), b"", qos=1, retain=True)

    def _on_broker(self, up: bool) -> None:
        if up:
            for link in self._own_links():
                self._announce(link)

    def _on_device_event(self, event: dict) -> None:
        name = event.get("device")
        if event.get("type") != "device" or not name:
            return
        if event["event"] == "removed":
            if name in self.announced:
                self._withdraw(name)
            return
        link = self.gateway.links.get(name)
        if link is not None and not link.config.owner and link.config.kind != "mqtt" and self.conn.connected:
            self._announce(link)

    # -- other gateways' devices ------------------------------------------------------------

    def _on_meta(self, msg) -> None:
        """paho's thread: queue it for the worker."""
        rest = msg.topic[len(self.prefix) + 1:]
        parts = rest.split("/")
        if len(parts) != 3 or parts[1] != "meta":
            return
        name, owner = parts[0], parts[2]
        payload = bytes(msg.payload)
        if owner == self.own_id:
            if payload and name not in self.announced and msg.retain:
                # Left by an earlier run of this gateway for a device it no longer has.
                self.worker.submit(lambda: self._clear_stale(name), _logged)
            return
        self.worker.submit(lambda: self._remote(name, owner, payload), _logged)

    def _clear_stale(self, name: str) -> None:
        link = self.gateway.links.get(name)
        if link is None or link.config.owner or link.config.kind == "mqtt":
            log.info("discovery: clearing the announcement of device %s, which this gateway no longer has", name)
            self.conn.publish(self.meta_topic(name, self.own_id), b"", qos=1, retain=True)

    def _configured_as(self, name: str) -> str | None:
        """The name of a configured mqtt:// device (not a discovered one) that reaches
        device `name` on this broker and prefix, if any."""
        wanted = (self.conn.broker, self.prefix, name)
        for local, link in self.gateway.links.items():
            if not link.config.owner and _topic_base(link.transport) == wanted:
                return local
        return None

    def make_room(self, name: str) -> None:
        """A device of this gateway is about to be added as `name` (POST /api/devices, a
        reload): a remote device listed under that name moves to NAME@OWNER, since this
        gateway's own devices keep their names. Any thread but the loop."""
        with self._lock:
            link = self.gateway.links.get(name)
            if link is None or not link.config.owner:
                return
            owner = link.config.owner
            key = next((k for k, v in self.remotes.items() if v == name), None)
            moved = f"{name}@{owner}"
            log.warning("discovery: device %s of this gateway takes the name of gateway %s's device; "
                        "that one is shown as %s from now on", name, owner, moved)
            self.gateway.remove_device(name)
            try:
                self.gateway.add_device(replace(link.config, name=moved))
            except ValueError as exc:
                log.warning("discovery: device %s of gateway %s not listed: %s", name, owner, exc)
                moved = None
            if key is not None:
                if moved is None:
                    del self.remotes[key]
                else:
                    self.remotes[key] = moved

    def _remote(self, name: str, owner: str, payload: bytes) -> None:
        """The worker: add, keep or remove the remote device (owner, name)."""
        with self._lock:
            self._remote_locked(name, owner, payload)

    def _remote_locked(self, name: str, owner: str, payload: bytes) -> None:
        key = (owner, name)
        if not payload:
            local = self.remotes.pop(key, None)
            if local is not None:
                log.info("discovery: device %s of gateway %s was removed there", name, owner)
                try:
                    self.gateway.remove_device(local)
                except KeyError:
                    pass
            return
        try:
            meta = json.loads(payload)
            if not isinstance(meta, dict):
                raise ValueError("not an object")
        except ValueError as exc:
            log.warning("discovery: %s: not a meta message (%s); ignored", self.meta_topic(name, owner), exc)
            return
        buttons = _buttons(meta.get("buttons"))
        if key in self.remotes:  # known: its state comes with its status topic; buttons may change
            local = self.remotes[key]
            link = self.gateway.links.get(local)
            if link is not None and link.config.buttons != buttons:
                self.gateway.update_device(local, replace(link.config, buttons=buttons))
            return
        if not NAME_RE.match(name) or not GATEWAY_ID.fullmatch(owner):
            log.warning("discovery: %s: the device name or gateway id is not valid here; ignored",
                        self.meta_topic(name, owner))
            return
        if len(self.remotes) >= MAX_REMOTE:
            log.warning("discovery: device %s of gateway %s not listed: %d remote devices already", name, owner,
                        MAX_REMOTE)
            return
        configured = self._configured_as(name)
        if configured is not None:
            log.info("discovery: device %s of gateway %s is configured here as %s; not listed twice",
                     name, owner, configured)
            return
        local = name
        if name in self.gateway.links:
            local = f"{name}@{owner}"
            taken = self.gateway.links[name].config.owner or self.own_id
            log.warning("discovery: device %s of gateway %s clashes with device %s of gateway %s; shown here as %s "
                        "(both use the topics %s/%s/...: rename one)", name, owner, name, taken, local, self.prefix, name)
        dev = DeviceConfig(name=local, url=f"{self.broker_url}/{self.prefix}/{name}?owner={owner}",
                           buttons=buttons, owner=owner)
        try:
            self.gateway.add_device(dev)
        except ValueError as exc:
            log.warning("discovery: device %s of gateway %s not added: %s", name, owner, exc)
            return
        self.remotes[key] = local
        log.info("discovery: device %s of gateway %s listed as %s", name, owner, local)


def _topic_base(transport) -> tuple | None:
    """(broker, prefix, name) of an mqtt:// transport, else None."""
    if not getattr(transport, "pushes", False):
        return None
    return transport.broker, transport.prefix, transport.name


def _buttons(value) -> tuple[Button, ...]:
    if not isinstance(value, list):
        return ()
    out = []
    for b in value[:MAX_BUTTONS]:
        if isinstance(b, dict) and isinstance(b.get("label"), str) and isinstance(b.get("line"), str):
            out.append(Button(b["label"], b["line"]))
    return tuple(out)


def _logged(result, error: BaseException | None) -> None:
    if error is not None:
        log.error("discovery: %r", error)
