"""One MQTT connection per broker, shared by everything in the gateway that speaks MQTT.

The MQTT sink, every `mqtt://` device and discovery (gateway/discovery.py) on one broker
use one paho client, `BrokerConnection`, made by the gateway's `BrokerPool` the first time
something asks for that broker (its URL's host, port, scheme and credentials). Its one
network thread is paho's own, "paho-mqtt-client-gateway-ID-RUN" (`loop_start`), which
reconnects with backoff (0.2 s doubling to 5 s); 1,000 `mqtt://` devices cost one
connection and one thread, not 1,000.

On the `[mqtt] url` broker (the "home" broker) the connection also carries the
gateway's availability: the retained `PREFIX/_gateway/ID/status`, `{"state": "online"}`
after each connect, `{"state": "offline"}` at a clean stop, and the same as the last
will, which the broker publishes when the gateway dies without saying goodbye.

Users of the connection:

    conn.subscribe(topic_filter, qos, callback)  # callback(msg) on paho's thread; -> handle
    conn.unsubscribe(handle)
    conn.watch(callback)                         # callback(up: bool) on every (dis)connect
    conn.publish(topic, payload, qos, retain)    # paho's MQTTMessageInfo
    conn.on_published(callback)                  # callback(mid): the sink's flow control
    conn.publish_acked(topic, payload, done)     # QoS 1; done(error or None) once PUBACKed
    conn.connected                               # bool

Callbacks run on paho's thread, with none of our locks held: they must only queue or
hand work on (`loop.call`). Subscriptions are kept here and made again after every
reconnect (clean session). Messages are routed by exact topic in a dict, then through
the few wildcard filters (discovery's).
"""

from __future__ import annotations

import itertools
import json
import logging
import threading
import time
from typing import Callable

from .transports.mqtt import Broker, end_client, gateway_status_topic, new_client

log = logging.getLogger(__name__)

SUBSCRIBE_BATCH = 100  # topic filters per SUBSCRIBE packet after a reconnect
STOP_PUBLISH_WAIT = 1.0  # seconds stop() waits for the "offline" status to be acknowledged


class Subscription:
    __slots__ = ("topic", "qos", "callback", "wildcard", "replay")

    def __init__(self, topic: str, qos: int, callback: Callable, replay: bool = False):
        self.topic = topic
        self.qos = qos
        self.callback = callback
        self.wildcard = "+" in topic or "#" in topic
        self.replay = replay


class BrokerConnection:
    """One paho client for one broker, shared (see the module docstring)."""

    def __init__(self, broker: Broker, client_id: str, keepalive: int,
                 status_topic: str | None = None, run_id: str = ""):
        self.broker = broker
        self.client_id = client_id
        self.keepalive = keepalive
        self.status_topic = status_topic
        self.run_id = run_id
        self.connected = False
        self.connects = 0  # successful connections (reconnects = connects - 1)
        self._lock = threading.Lock()
        self._exact: dict[str, list[Subscription]] = {}  # guarded by _lock (replaced, not changed)
        self._wild: list[Subscription] = []
        self._watchers: list[Callable[[bool], None]] = []
        self._published: Callable[[int], None] | None = None  # the sink's on_publish
        self._last: dict[str, object] = {}  # replayed topics: their newest message (guarded by _lock)
        self._acks: dict[int, Callable] = {}  # mid -> done, for publish_acked
        self._early: set[int] = set()  # mids acknowledged before publish_acked registered them
        self._registering = 0
        self._failing = False
        self._started = False
        self._stopping = False
        self.client = new_client(client_id, broker, keepalive)
        if status_topic:
            self.client.will_set(status_topic, json.dumps({"state": "offline"}), qos=1, retain=True)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_connect_fail = self._on_connect_fail
        self.client.on_message = self._on_message
        self.client.on_publish = self._on_publish

    def describe(self) -> str:
        return self.broker.describe()

    # -- any thread -------------------------------------------------------------------------

    def start(self) -> None:
        with self._lock:
            if self._started:
                return
            self._started = True
        self.client.connect_async(self.broker.host, self.broker.port, self.keepalive)
        quiet_network_thread(self.client, self.keepalive)
        self.client.loop_start()

    def stop(self) -> None:
        """Say "offline" (home broker), disconnect cleanly (the broker drops the will),
        and end paho's thread."""
        self._stopping = True
        if not self._started:
            return
        if self.status_topic and self.connected:
            info = self.client.publish(self.status_topic, json.dumps({"state": "offline", "ts": round(time.time(), 3)}),
                                       qos=1, retain=True)
            try:
                info.wait_for_publish(STOP_PUBLISH_WAIT)
            except (RuntimeError, ValueError):
                pass
        end_client(self.client)
        with self._lock:
            acks, self._acks = self._acks, {}
        for done in acks.values():
            done(ConnectionError(f"broker {self.describe()}: gateway stopping"))

    def subscribe(self, topic: str, qos: int, callback: Callable, replay: bool = False) -> Subscription:
        """`replay` (exact topics: a status): a subscriber that joins a topic already
        subscribed gets its newest message at once, as the broker gave the retained one
        only to the first."""
        sub = Subscription(topic, qos, callback, replay)
        with self._lock:
            if sub.wildcard:
                self._wild = [*self._wild, sub]
            else:
                self._exact = {**self._exact, topic: [*self._exact.get(topic, ()), sub]}
            first = sub.wildcard or len(self._exact[topic]) == 1
            last = self._last.get(topic) if replay and not first else None
            # Under the lock, with _on_connect: either its list has this topic, or we
            # see it connected and subscribe ourselves.
            send = first and self.connected
        if send:
            self.client.subscribe(topic, qos)
        if last is not None:
            _guard(callback, last)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        with self._lock:
            if sub.wildcard:
                self._wild = [s for s in self._wild if s is not sub]
                last = True
            else:
                left = [s for s in self._exact.get(sub.topic, ()) if s is not sub]
                exact = dict(self._exact)
                if left:
                    exact[sub.topic] = left
                else:
                    exact.pop(sub.topic, None)
                    self._last.pop(sub.topic, None)
                self._exact = exact
                last = not left
        if last and self.connected and not self._stopping:
            self.client.unsubscribe(sub.topic)

    def watch(self, callback: Callable[[bool], None]) -> None:
        """callback(True) after every connect, callback(False) after every loss."""
        with self._lock:
            self._watchers = [*self._watchers, callback]

    def unwatch(self, callback: Callable[[bool], None]) -> None:
        with self._lock:
            self._watchers = [w for w in self._watchers if w is not callback]

    def on_published(self, callback: Callable[[int], None] | None) -> None:
        """callback(mid) on paho's thread for every message written (QoS 0) or
        acknowledged (QoS 1): the MQTT sink's flow control. One at a time."""
        self._published = callback

    def publish(self, topic: str, payload, qos: int = 0, retain: bool = False):
        return self.client.publish(topic, payload, qos=qos, retain=retain)

    def publish_acked(self, topic: str, payload, done: Callable[[BaseException | None], None]) -> None:
        """QoS 1; `done(None)` on paho's thread once the broker acknowledged it, or
        `done(error)` at once when it cannot be sent (not connected)."""
        if not self.connected:
            done(ConnectionError(f"broker {self.describe()} is not connected"))
            return
        with self._lock:
            self._registering += 1
        try:
            info = self.client.publish(topic, payload, qos=1)
        except Exception as exc:  # a payload paho refuses
            with self._lock:
                self._registering -= 1
            done(exc)
            return
        with self._lock:
            self._registering -= 1
            if info.rc:
                self._early.discard(info.mid)
                error = ConnectionError(f"publish to {topic} failed (paho error {info.rc})")
            elif info.mid in self._early:
                self._early.discard(info.mid)
                error = None
            else:
                self._acks[info.mid] = done
                return
            if not self._registering:
                self._early.clear()
        done(error)

    # -- paho's thread ----------------------------------------------------------------------

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            log.warning("mqtt %s: broker refused the connection: %s", self.describe(), reason_code)
            return
        _no_delay(client)
        with self._lock:
            self.connected = True
            topics = [(t, subs[0].qos) for t, subs in self._exact.items()] + [(s.topic, s.qos) for s in self._wild]
            watchers = self._watchers
        for i in range(0, len(topics), SUBSCRIBE_BATCH):
            client.subscribe(topics[i:i + SUBSCRIBE_BATCH])
        if self.status_topic:
            client.publish(self.status_topic, json.dumps({"state": "online", "ts": round(time.time(), 3),
                                                          "run": self.run_id}), qos=1, retain=True)
        self.connects += 1
        if self._failing or self.connects > 1:
            log.info("mqtt %s: connected", self.describe())
        self._failing = False
        for watch in watchers:
            _guard(watch, True)

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        with self._lock:
            was = self.connected
            self.connected = False
            watchers = self._watchers
            acks, self._acks = self._acks, {}
            self._last.clear()  # the retained messages come again with the subscriptions
        if was and not self._stopping:
            log.warning("mqtt %s: lost the broker (%s); reconnecting", self.describe(), reason_code)
        for done in acks.values():
            _guard(done, ConnectionError(f"broker {self.describe()} lost"))
        if was:
            for watch in watchers:
                _guard(watch, False)

    def _on_connect_fail(self, client, userdata) -> None:
        if not self._failing:
            log.warning("mqtt %s: cannot connect (retrying with backoff)", self.describe())
            self._failing = True

    def _on_publish(self, client, userdata, mid, reason_code, properties) -> None:
        with self._lock:
            done = self._acks.pop(mid, None)
            if done is None and self._registering:
                self._early.add(mid)
        if done is not None:
            _guard(done, None)
        published = self._published
        if published is not None:
            _guard(published, mid)

    def _on_message(self, client, userdata, msg) -> None:
        with self._lock:  # with subscribe(): a subscriber joining now gets it one way or the other
            subs = self._exact.get(msg.topic, ())
            if subs and subs[0].replay:
                self._last[msg.topic] = msg
        for sub in subs:
            _guard(sub.callback, msg)
        for sub in self._wild:
            if _matches(sub.topic, msg.topic):
                _guard(sub.callback, msg)


def _no_delay(client) -> None:
    """TCP_NODELAY on paho's socket (paho leaves Nagle on): else a PUBLISH that follows
    a PUBACK (a line read back after a tx written) waits for the broker's delayed ACK,
    40 ms. The broker's side needs the same (mosquitto: `set_tcp_nodelay true`)."""
    import socket
    try:
        client.socket().setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except (OSError, AttributeError):  # no socket (closed meanwhile), or not TCP
        pass


def quiet_network_thread(client, keepalive: int) -> None:
    """Have paho's network thread (`loop_start`) wait in select() for up to a quarter of
    the keepalive, not paho's fixed second: an idle gateway then wakes it only for the
    keepalive ping (every 7.5 s at the default 30 s; the broker allows 1.5x keepalive).
    Writes from other threads wake it at once (paho's socket pair), and so does a
    disconnect. Uses paho 2.2's `_thread_main`, the target `loop_start` gives its thread
    (checked in tests/test_mqtt.py)."""
    wait = keepalive / 4 if keepalive else 60.0
    wait = max(1.0, wait)

    def main() -> None:
        try:
            client.loop_forever(timeout=wait, retry_first_connection=True)
        finally:
            client._thread = None

    if callable(getattr(client, "_thread_main", None)):
        client._thread_main = main


def _matches(topic_filter: str, topic: str) -> bool:
    import paho.mqtt.client as mqtt

    return mqtt.topic_matches_sub(topic_filter, topic)


def _guard(fn: Callable, arg) -> None:
    try:
        fn(arg)
    except Exception:
        log.exception("mqtt: callback %s failed", getattr(fn, "__qualname__", fn))


class BrokerPool:
    """The gateway's broker connections, one per broker (URL + credentials), made when
    first asked for, started with the gateway (or at once, when asked for later), stopped
    together by the gateway after its devices and sinks."""

    def __init__(self, gateway_id: str, run_id: str, client_id: str = "", keepalive: int = 30,
                 home: Broker | None = None, prefix: str = "gateway"):
        self.gateway_id = gateway_id
        self.run_id = run_id
        self.client_id = client_id or f"gateway-{gateway_id}-{run_id}"
        self.keepalive = keepalive
        self.home = home
        self.prefix = prefix
        self._lock = threading.Lock()
        self._connections: dict[Broker, BrokerConnection] = {}
        self._count = itertools.count(1)
        self._started = False
        self._stopped = False

    @property
    def status_topic(self) -> str:
        return gateway_status_topic(self.prefix, self.gateway_id)

    def get(self, broker: Broker) -> BrokerConnection:
        with self._lock:
            conn = self._connections.get(broker)
            if conn is None:
                n = next(self._count)
                client_id = self.client_id if n == 1 else f"{self.client_id}-{n}"
                home = broker == self.home
                conn = BrokerConnection(broker, client_id, self.keepalive,
                                        self.status_topic if home else None, self.run_id)
                self._connections[broker] = conn
                if self._started and not self._stopped:
                    conn.start()
            return conn

    def start(self) -> None:
        with self._lock:
            self._started = True
            conns = [] if self._stopped else list(self._connections.values())
        for conn in conns:
            conn.start()

    def connections(self) -> list[BrokerConnection]:
        with self._lock:
            return list(self._connections.values())

    def stop(self) -> None:
        with self._lock:
            self._stopped = True
            conns = list(self._connections.values())
        for conn in conns:
            conn.stop()
