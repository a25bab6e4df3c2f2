"""The MQTT sink (`[mqtt]` in the config): each device's lines, telemetry and state on a
broker, and lines from the broker written to the device.

Per device NAME, under the configured PREFIX:

- `PREFIX/NAME/rx`: each line's raw bytes, without terminator (QoS 0);
- `PREFIX/NAME/telemetry`: `{"ts": ..., "seq": N, "data": {...}}` for telemetry lines (QoS 0);
- `PREFIX/NAME/status`: `{"state": "connected" | "reconnecting" | "disconnected", "ts": ...,
  "gateway": ID}`, retained, QoS 1, published at every change and after every
  (re)connect. There is no per-device last will: the gateway's own
  `PREFIX/_gateway/ID/status` (gateway/broker.py) carries the will, `{"state": "offline"}`,
  so a reader of a device's status also follows its gateway's (ID is in the payload);
- `PREFIX/NAME/tx`: subscribed (QoS 1); each line of a message is written to the device,
  through the device's allowlist. A retained command waiting on the broker when the
  sink subscribes is ignored (it would run again at every reconnect).
- with `discovery = true`, Home Assistant discovery: a retained sensor config under
  `DISCOVERY_PREFIX/sensor/NODE/KEY/config` for each numeric key the first time it is
  seen, and its value on `PREFIX/NAME/telemetry/KEY`; available while both the gateway's
  and the device's status say so (`availability_mode: all`).

Devices of kind `mqtt` are skipped: what a gateway read from the broker is never
published back (no loops). A device added at run time gets its topics at its first
state change.

All devices share the gateway's one connection to the broker (gateway/broker.py), whose
network thread is paho's. The device reader only appends records to a bounded deque per
device (`buffer` lines; when full the oldest are dropped and counted); the "mqtt-sink"
thread publishes them while the broker is connected, with at most WINDOW QoS 0 messages
per device handed to paho and not yet written, so a slow broker cannot make paho's own
queue grow without bound. Messages paho held when a connection broke are counted as
dropped too. Nothing here calls paho while holding `_cond`: paho calls back into us
holding its own locks.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from collections import deque
from dataclasses import dataclass

from paho.mqtt.client import MQTT_ERR_NO_CONN

from ..codec import LineError, encode_line, split_client_text
from ..config import MqttConfig
from ..device import WriteRequest
from ..hub import Record, State
from ..transports.mqtt import gateway_status_topic
from .base import Sink

log = logging.getLogger(__name__)

WINDOW = 1000  # QoS 0 messages handed to paho per device and not yet written to the socket (about)
REFILL = WINDOW // 2  # lines taken per batch, once no more than this many messages are in flight
MAX_DISCOVERY_KEYS = 200  # Home Assistant sensors announced per device
STOP_FLUSH = 2.0  # seconds stop() spends at most publishing what is still queued


@dataclass
class MqttStats:
    connected: bool = False
    connects: int = 0  # successful connections to the broker (reconnects = connects - 1)
    published: int = 0  # messages handed to paho (rx, telemetry, status, discovery)
    dropped: int = 0  # lines dropped (buffer full) plus messages lost with a broken connection
    commands: int = 0  # lines from PREFIX/NAME/tx queued for the device
    commands_refused: int = 0  # lines from tx not written (device offline, allowlist, encoding, retained)

    @property
    def reconnects(self) -> int:
        return max(0, self.connects - 1)


def slug(text: str) -> str:
    """An id Home Assistant accepts: letters, digits, '_' and '-'."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", text)


def discovery_config(cfg: MqttConfig, device: str, kind: str, key: str, gateway_id: str) -> tuple[str, dict]:
    """Home Assistant's MQTT discovery topic and payload for one numeric telemetry key:
    available while the gateway is online and the device connected."""
    node = slug(f"{cfg.prefix}_{device}")
    obj = slug(key)
    base = f"{cfg.prefix}/{device}"
    return f"{cfg.discovery_prefix}/sensor/{node}/{obj}/config", {
        "name": key,
        "unique_id": f"{node}_{obj}",
        "state_topic": f"{base}/telemetry/{key}",
        "state_class": "measurement",
        "availability": [
            {"topic": gateway_status_topic(cfg.prefix, gateway_id),
             "value_template": "{{ 'online' if value_json.state == 'online' else 'offline' }}"},
            {"topic": f"{base}/status",
             "value_template": "{{ 'online' if value_json.state == 'connected' else 'offline' }}"},
        ],
        "availability_mode": "all",
        "device": {"identifiers": [node], "name": device, "model": f"{kind}:// device", "manufacturer": "gateway"},
        "origin": {"name": "gateway"},
    }


class _Channel:
    """One device's topics, queue and counters."""

    def __init__(self, sink: "MqttSink", name: str, kind: str, state: State):
        cfg = sink.config
        self.sink = sink
        self.name = name
        self.kind = kind
        base = f"{cfg.prefix}/{self.name}"
        self.topic_rx, self.topic_telemetry = f"{base}/rx", f"{base}/telemetry"
        self.topic_status, self.topic_tx = f"{base}/status", f"{base}/tx"
        self.queue: deque[Record] = deque(maxlen=max(1, cfg.buffer))  # guarded by sink._cond
        self.state: State = state  # the newest state; guarded by sink._cond
        self.status_due = True  # publish the status at the next chance
        self.stats = MqttStats(connected=sink.conn.connected)
        # Only the sink's thread touches these:
        self.inflight: deque[tuple[object, int]] = deque()  # (MQTTMessageInfo, epoch)
        self.status_info = None
        self.known_keys: dict[str, None] = {}  # numeric keys announced, in order
        self.announced_epoch = -1  # the connection they were last announced on
        self.subscription = sink.conn.subscribe(self.topic_tx, 1, self._on_message)

    # -- paho's thread --------------------------------------------------------------------

    def _on_message(self, msg) -> None:
        stats = self.stats
        link = self.sink.links().get(self.name)
        if link is None:
            stats.commands_refused += 1
            return
        if msg.retain:
            stats.commands_refused += 1
            log.warning("mqtt: ignored a retained message on %s (commands must not be retained)", msg.topic)
            return
        cfg = link.config
        try:
            text = msg.payload.decode(cfg.encoding)
        except UnicodeDecodeError:
            stats.commands_refused += 1
            log.warning("mqtt: %s: message is not valid %s; not written", msg.topic, cfg.encoding)
            return
        allow = getattr(link, "allow", None)
        for line in split_client_text(text):
            try:
                if allow is not None and not allow.allows(line):
                    raise LineError(f"line not allowed on device {self.name}")
                data = encode_line(line, cfg.encoding, cfg.eol_bytes, cfg.max_line)
            except LineError as exc:
                stats.commands_refused += 1
                log.warning("mqtt: %s: %s", msg.topic, exc)
                continue
            error = link.submit(WriteRequest(data))
            if error is None:
                stats.commands += 1
            else:
                stats.commands_refused += 1
                log.info("mqtt: %s: not written: %s", msg.topic, error)


class MqttSink(Sink):
    thread_name = "mqtt-sink"

    def __init__(self, config: MqttConfig, gateway, conn):
        """`conn`: the gateway's connection to the `[mqtt] url` broker (gateway/broker.py)."""
        self.config = config
        self.conn = conn
        self.gateway_id = gateway.gateway_id
        self.links = lambda: gateway.links  # replaced as a whole when devices come and go
        self._cond = threading.Condition()
        self._stopping = False
        self._stop_deadline = 0.0
        self.epoch = 0  # +1 per connection (guarded by _cond)
        self._wake_mids: set[int] = set()  # on_publish of one of these wakes the sink's thread
        self.channels: dict[str, _Channel] = {}  # replaced, never changed in place
        for name, link in gateway.links.items():
            self._add_channel(name, link.config.kind, link.state)
        self._thread = threading.Thread(target=self._run, name=self.thread_name)

    def _add_channel(self, name: str, kind: str, state: State) -> _Channel | None:
        if kind == "mqtt":
            return None
        with self._cond:
            ch = self.channels.get(name)
            if ch is None:
                ch = _Channel(self, name, kind, state)
                self.channels = {**self.channels, name: ch}
            return ch

    @property
    def stats(self) -> dict[str, MqttStats]:
        return {name: ch.stats for name, ch in self.channels.items()}

    def buffered(self, device: str) -> int:
        return len(self.channels[device].queue)

    # -- paho's thread: the shared connection came or went ----------------------------------

    def _on_broker(self, up: bool) -> None:
        with self._cond:
            if up:
                self.epoch += 1
            for ch in self.channels.values():
                if up:
                    ch.stats.connects += 1
                    ch.status_due = True
                ch.stats.connected = up
            self._cond.notify_all()
        if up:
            log.info("mqtt %s: devices published under %s/", self.conn.describe(), self.config.prefix)

    def _on_publish(self, mid) -> None:
        if mid in self._wake_mids or self._stopping:  # read unlocked: a miss costs one short wait
            with self._cond:
                self._cond.notify_all()

    # -- hub.Listener: the device's reader thread -------------------------------------------

    def on_records(self, device: str, records: list[Record]) -> None:
        ch = self.channels.get(device)
        if ch is None:
            return
        with self._cond:
            queue = ch.queue
            over = len(queue) + len(records) - queue.maxlen
            queue.extend(records)  # a full deque drops its oldest
            if over > 0:
                ch.stats.dropped += over
            self._cond.notify_all()

    def on_state(self, device: str, state: State) -> None:
        ch = self.channels.get(device)
        if ch is None:
            link = self.links().get(device)
            if link is None or (ch := self._add_channel(device, link.config.kind, state)) is None:
                return
        with self._cond:
            ch.state = state
            ch.status_due = True
            self._cond.notify_all()

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self) -> None:
        for name, ch in self.channels.items():
            link = self.links().get(name)
            with self._cond:
                if link is not None:
                    ch.state = link.state
        self.conn.watch(self._on_broker)
        self.conn.on_published(self._on_publish)
        if self.conn.connected:
            self._on_broker(True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Publish what is queued (at most STOP_FLUSH s); the gateway then closes the
        connection (gateway/broker.py)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            self._stopping = True
            self._stop_deadline = time.monotonic() + min(STOP_FLUSH, timeout / 2)
            self._cond.notify_all()
        if self._thread.ident is not None:
            self._thread.join(max(0.1, deadline - time.monotonic()))
            if self._thread.is_alive():
                log.warning("mqtt: thread %s did not stop within %.1f s", self._thread.name, timeout)
        self.conn.unwatch(self._on_broker)
        self.conn.on_published(None)

    # -- the sink's thread ------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            for ch in self.channels.values():
                self._prune(ch)
            jobs = []
            with self._cond:
                stopping = self._stopping
                for ch in self.channels.values():
                    if not ch.stats.connected:
                        continue
                    status = None
                    if ch.status_due:
                        ch.status_due = False
                        status = ch.state
                    records = []
                    if len(ch.inflight) <= REFILL:  # refill in batches, not a message at a time
                        records = [ch.queue.popleft() for _ in range(min(REFILL, len(ch.queue)))]
                    if status is not None or records or (self.config.discovery and ch.announced_epoch != self.epoch):
                        jobs.append((ch, self.epoch, status, records))
                if not jobs:
                    if stopping and (self._flushed() or time.monotonic() >= self._stop_deadline):
                        return
                    armed = self._arm_wake_up()
                    if armed or stopping:
                        self._cond.wait(0.05)
                    elif any(ch.inflight for ch in self.channels.values()):
                        self._cond.wait(1.0)  # to forget (or count as lost) what paho still holds
                    else:
                        self._cond.wait()  # idle: woken by a record, a state or the broker
                    continue
            for ch, epoch, status, records in jobs:
                try:
                    self._publish(ch, epoch, status, records)
                except Exception:  # a bug here must not stop the other devices' publishing
                    log.exception("mqtt: publishing for device %s failed", ch.name)
            if stopping and time.monotonic() >= self._stop_deadline:
                return

    def _arm_wake_up(self) -> bool:
        """For each device with lines waiting on a full window, ask its on_publish to wake
        us when the window is half free (with _cond held). True if any was armed; the wait
        is then short, since paho may have written that message just before we asked."""
        wake = set()
        for ch in self.channels.values():
            if ch.queue and len(ch.inflight) > REFILL:
                wake.add(ch.inflight[len(ch.inflight) - REFILL - 1][0].mid)
        self._wake_mids = wake
        return bool(wake) or self._stopping

    def _flushed(self) -> bool:
        """Nothing left that could still reach the broker (called with _cond held)."""
        for ch in self.channels.values():
            if not ch.stats.connected:
                continue
            if ch.queue or ch.status_due or ch.inflight:
                return False
            if ch.status_info is not None and not ch.status_info.is_published():
                return False
        return True

    def _prune(self, ch: _Channel) -> None:
        """Forget the messages paho wrote; count those a broken connection took."""
        inflight = ch.inflight
        lost = 0
        while inflight:
            info, epoch = inflight[0]
            if info.is_published():
                inflight.popleft()
            elif epoch != self.epoch or not ch.stats.connected:
                inflight.popleft()
                lost += 1
            else:
                break
        if lost:
            with self._cond:
                ch.stats.dropped += lost

    def _send(self, ch: _Channel, epoch: int, topic: str, payload, qos: int = 0, retain: bool = False):
        info = self.conn.publish(topic, payload, qos=qos, retain=retain)
        if info.rc == MQTT_ERR_NO_CONN and qos:
            ch.stats.published += 1  # paho holds it and sends it after the reconnect
            return None
        if info.rc:
            with self._cond:
                ch.stats.dropped += 1
            return None
        ch.stats.published += 1
        if qos == 0:
            ch.inflight.append((info, epoch))
        return info

    def _publish(self, ch: _Channel, epoch: int, status: State | None, records: list[Record]) -> None:
        discovery = self.config.discovery
        if status is not None:
            payload = json.dumps({"state": status.value, "ts": round(time.time(), 3), "gateway": self.gateway_id})
            ch.status_info = self._send(ch, epoch, ch.topic_status, payload, qos=1, retain=True)
        if discovery and ch.announced_epoch != epoch:
            ch.announced_epoch = epoch  # a new connection: the broker may have lost them
            for key in ch.known_keys:
                self._announce(ch, epoch, key)
        for record in records:
            self._send(ch, epoch, ch.topic_rx, record.line.raw)
            data = record.data
            if data is None:
                continue
            payload = json.dumps({"ts": round(record.ts, 3), "seq": record.seq, "data": data}, separators=(",", ":"))
            self._send(ch, epoch, ch.topic_telemetry, payload)
            if discovery:
                for key, value in _numbers(data).items():
                    if key not in ch.known_keys:
                        if len(ch.known_keys) >= MAX_DISCOVERY_KEYS:
                            continue
                        ch.known_keys[key] = None
                        self._announce(ch, epoch, key)
                    self._send(ch, epoch, f"{ch.topic_telemetry}/{key}", value)

    def _announce(self, ch: _Channel, epoch: int, key: str) -> None:
        topic, config = discovery_config(self.config, ch.name, ch.kind, key, self.gateway_id)
        self._send(ch, epoch, topic, json.dumps(config), qos=1, retain=True)


def _numbers(data: dict) -> dict[str, str]:
    """The numeric keys of a telemetry line usable as topic levels, values as payloads."""
    out = {}
    for key, value in data.items():
        if isinstance(value, bool):
            text = "1" if value else "0"
        elif isinstance(value, (int, float)):
            text = json.dumps(value)
        else:
            continue
        if key and not any(c in key for c in "#+\x00") and not key.startswith("/") and not key.endswith("/"):
            out[key] = text
    return out
