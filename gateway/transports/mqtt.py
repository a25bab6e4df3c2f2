"""`mqtt://HOST:PORT/PREFIX/NAME`: a device reached through an MQTT broker.

Another gateway's device (its MQTT sink publishes the lines), or firmware that speaks
MQTT itself. Lines arrive on `PREFIX/NAME/rx`, one message per line; writes are
published to `PREFIX/NAME/tx` (QoS 1; a write is done once the broker acknowledged it).
The device counts as connected while the broker link is up, the owner's retained
`PREFIX/NAME/status` says `connected` (or `online`, for firmware that says so) and,
when the owner is a gateway, its `PREFIX/_gateway/ID/status` says `online` (`offline`:
its last will, or a clean stop; ID comes from `?owner=ID` or from the `gateway` field
of the device's status). `?status=ignore` drops the status conditions, for firmware that publishes none.

No client and no thread of its own: the device uses the gateway's one connection to the
broker (gateway/broker.py), and is a "push" transport for the device link (device.py):
paho's thread hands it the messages, the link is told `up()`, `data(payload)` and
`down(state, reason)` (`reconnecting` while the broker is away, `disconnected` while the
owner gateway is offline or says its device is disconnected).

Userinfo in the URL (`mqtt://user:password@host:1883/...`) logs in.
"""

from __future__ import annotations

import json
import logging
import threading
from dataclasses import dataclass
from urllib.parse import SplitResult, unquote

from ..counts import parse_count
from .base import Transport, TransportError

log = logging.getLogger(__name__)

DEFAULT_PORTS = {"mqtt": 1883, "mqtts": 8883}
CONNECTED_STATES = ("connected", "online")
RECONNECT_MIN, RECONNECT_MAX = 0.2, 5.0
CONNECT_TIMEOUT = 3.0


@dataclass(frozen=True)
class Broker:
    host: str
    port: int
    tls: bool = False
    username: str | None = None
    password: str | None = None

    def describe(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}"


def parse_broker(url: SplitResult) -> Broker:
    """The broker of an `mqtt://` or `mqtts://` URL; ValueError if malformed."""
    scheme = url.scheme.lower()
    if scheme not in DEFAULT_PORTS:
        raise ValueError(f"expected mqtt://HOST:PORT, not {scheme}://")
    try:
        host, port = url.hostname, url.port
    except ValueError as exc:
        raise ValueError(f"bad port: {exc}") from None
    if not host:
        raise ValueError(f"{scheme}:// needs a HOST")
    username = unquote(url.username) if url.username is not None else None
    password = unquote(url.password) if url.password is not None else None
    return Broker(host, port or DEFAULT_PORTS[scheme], scheme == "mqtts", username, password)


def check_topic_part(text: str, what: str) -> None:
    if not text or any(c in text for c in "#+\x00"):
        raise ValueError(f"{what} {text!r} must be non-empty, without '#', '+' or NUL")


def gateway_status_topic(prefix: str, gateway_id: str) -> str:
    """The retained availability topic of gateway `gateway_id` (with its last will)."""
    return f"{prefix}/_gateway/{gateway_id}/status"


def new_client(client_id: str, broker: Broker, keepalive: int):
    """A paho client, not connected yet, reconnecting with our backoff."""
    import paho.mqtt.client as mqtt

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=True,
                         protocol=mqtt.MQTTv311)
    if broker.username is not None:
        client.username_pw_set(broker.username, broker.password)
    if broker.tls:
        client.tls_set()
    client.reconnect_delay_set(RECONNECT_MIN, RECONNECT_MAX)  # type: ignore[arg-type]  (floats work)
    client.connect_timeout = CONNECT_TIMEOUT
    client.keepalive = keepalive
    return client


def end_client(client) -> None:
    """Disconnect cleanly (the broker then drops the last will) and end paho's thread."""
    try:
        client.disconnect()
    except Exception:  # a socket already gone: the thread still has to end
        log.debug("mqtt: disconnect failed", exc_info=True)
    client.loop_stop()


class MqttTransport(Transport):
    """An `mqtt://` device on the gateway's shared connection to its broker: a "push"
    transport (device.py): no descriptor, no thread; what arrives is handed to the link
    from paho's thread (`attach`), writes are published and acknowledged asynchronously
    (`write_async`)."""

    message_oriented = True
    pushes = True

    def __init__(self, url: SplitResult, options: dict[str, str]):
        super().__init__(url, options)
        if url.scheme.lower() != "mqtt":
            raise ValueError("expected mqtt://HOST:PORT/PREFIX/NAME")
        self.broker = parse_broker(url)
        parts = [p for p in url.path.split("/") if p]
        if len(parts) < 2:
            raise ValueError("mqtt:// needs a topic prefix and a device name: mqtt://HOST:PORT/PREFIX/NAME")
        self.prefix, self.name = "/".join(parts[:-1]), parts[-1]
        for part in parts:
            check_topic_part(part, "topic level")
        self.require_status = True
        self.owner: str | None = None  # the owner gateway's id: from ?owner= or its status messages
        for key, value in options.items():
            if key == "status":
                if value not in ("require", "ignore"):
                    raise ValueError(f"status must be 'require' or 'ignore', not {value!r}")
                self.require_status = value == "require"
            elif key == "keepalive":  # accepted, ignored: the shared connection has [mqtt] keepalive
                try:
                    parse_count(value, 5, 3600)
                except ValueError:
                    raise ValueError(f"keepalive must be 5 to 3600 seconds, not {value!r}") from None
            elif key == "owner":
                check_topic_part(value, "owner")
                self.owner = value
            else:
                raise ValueError(f"unknown mqtt option {key!r} (known: status, keepalive, owner)")
        base = f"{self.prefix}/{self.name}"
        self.topic_rx, self.topic_tx, self.topic_status = f"{base}/rx", f"{base}/tx", f"{base}/status"
        self.pool = None  # the gateway's BrokerPool (gateway/broker.py), set before attach()
        self._conn = None
        self._link = None  # device.py's push side: up(), data(payload), down(state_name, reason)
        self._lock = threading.Lock()  # the state below, and _shown
        self._owner_lock = threading.Lock()  # _owner_sub
        self._subs: list = []
        self._owner_sub = None
        self._broker_up = False
        self._device_state: str | None = None  # the owner's PREFIX/NAME/status
        self.owner_state: str | None = None  # the owner gateway's PREFIX/_gateway/ID/status
        self._shown: str | None = None  # "up", or the state name last handed to the link
        self.dropped = 0  # lines lost: arrived while the device was down, or the loop was behind

    def describe(self) -> str:
        return f"{self.broker.describe()}/{self.prefix}/{self.name}"

    def use_brokers(self, pool) -> None:
        self.pool = pool

    # -- the link (loop) --------------------------------------------------------------------

    def attach(self, link) -> None:
        """Start following the device: `link.up()`, `link.data(payload)`,
        `link.down(state, reason)` from paho's thread from now on."""
        if self.pool is None:
            raise TransportError("mqtt:// devices need the gateway's broker connections (use_brokers)")
        self._link = link
        conn = self._conn = self.pool.get(self.broker)
        conn.watch(self._on_broker)
        self._subs = [conn.subscribe(self.topic_rx, 0, self._on_rx)]
        if self.require_status:
            self._subs.append(conn.subscribe(self.topic_status, 1, self._on_status, replay=True))
        if self.owner:
            self._follow_owner(self.owner)
        self._on_broker(conn.connected)

    def write_async(self, data: bytes, done) -> None:
        """Publish one line on the tx topic (QoS 1); `done(error or None)` from any thread
        once the broker acknowledged it."""
        for eol in (b"\r\n", b"\n", b"\r"):  # the link adds the eol; on tx a message is a line
            if data.endswith(eol):
                data = data[: -len(eol)]
                break
        conn = self._conn
        if conn is None or self._shown != "up":
            done(TransportError(f"{self.describe()} is not connected"))
            return

        def acked(error: BaseException | None) -> None:
            done(None if error is None else TransportError(f"publish to {self.topic_tx} failed: {error}"))

        conn.publish_acked(self.topic_tx, data, acked)

    def release(self) -> None:
        self._link = None
        with self._owner_lock:  # with _follow_owner: no subscription made after this
            conn, self._conn = self._conn, None
            owner_sub, self._owner_sub = self._owner_sub, None
        if conn is None:
            return
        conn.unwatch(self._on_broker)
        for sub in self._subs + ([owner_sub] if owner_sub else []):
            conn.unsubscribe(sub)
        self._subs = []

    def close(self) -> None:
        """Nothing to close: the connection is the gateway's."""

    # -- paho's thread ----------------------------------------------------------------------

    def _follow_owner(self, owner: str) -> None:
        """Follow gateway `owner`'s status (the loop at attach, or paho's thread when a
        device status names another gateway)."""
        with self._owner_lock:
            conn = self._conn
            if conn is None:
                return
            old, self._owner_sub = self._owner_sub, None
            if old is not None:
                conn.unsubscribe(old)
            self.owner = owner
            with self._lock:
                self.owner_state = None
            self._owner_sub = conn.subscribe(gateway_status_topic(self.prefix, owner), 1, self._on_owner, replay=True)

    def _on_broker(self, up: bool) -> None:
        with self._lock:
            self._broker_up = up
            if not up:
                self._device_state = None  # retained ones come again with the subscription
        self._update()

    def _on_status(self, msg) -> None:
        state, gateway = _status_of(msg.payload)
        with self._lock:
            self._device_state = state
        if gateway and gateway != self.owner:
            self._follow_owner(gateway)
        self._update()

    def _on_owner(self, msg) -> None:
        state, _ = _status_of(msg.payload)
        with self._lock:
            self.owner_state = state
        self._update()

    def _on_rx(self, msg) -> None:
        link = self._link
        if link is None or self._shown != "up":
            self.dropped += 1
            return
        # An empty message is an empty line; the link ends a line at each message.
        if not link.data(msg.payload or b"\n"):
            self.dropped += 1

    def _update(self) -> None:
        """Work out up or down, and tell the link when that changed."""
        with self._lock:
            if not self._broker_up:
                shown, reason = "reconnecting", f"broker {self.broker.describe()} lost"
            elif self.owner_state == "offline":
                shown, reason = "disconnected", f"gateway {self.owner} is offline"
            elif self.owner and self.owner_state != "online":
                # Retained messages come in any order: a dead gateway's devices still say
                # connected until its own status (its will) is in.
                shown, reason = "reconnecting", f"waiting for gateway {self.owner}'s status"
            elif self.require_status and self._device_state not in CONNECTED_STATES:
                said = self._device_state or "nothing"
                shown = "disconnected" if said in ("disconnected", "offline", "removed") else "reconnecting"
                reason = f"{self.topic_status} says {said}"
            else:
                shown, reason = "up", ""
            if shown == self._shown:
                return
            first, self._shown = self._shown is None, shown
            link = self._link
        if link is None or (first and shown == "reconnecting"):
            return  # the link starts out reconnecting: no warning per device while the broker connects
        if shown == "up":
            link.up()
        else:
            link.down(shown, reason)


def _status_of(payload: bytes) -> tuple[str | None, str | None]:
    """(state, gateway) of a status message: {"state": ..., "gateway": ...} or a bare word."""
    if not payload:
        return None, None
    try:
        obj = json.loads(payload)
    except ValueError:
        return payload.decode("utf-8", "replace").strip().lower() or None, None
    if isinstance(obj, dict):
        state = obj.get("state") if isinstance(obj.get("state"), str) else None
        gateway = obj.get("gateway") if isinstance(obj.get("gateway"), str) else None
        if gateway is not None:
            try:
                check_topic_part(gateway, "gateway")
            except ValueError:
                gateway = None
        return state, gateway
    if isinstance(obj, str):
        return obj, None
    return None, None
