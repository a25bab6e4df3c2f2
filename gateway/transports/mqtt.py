"""`mqtt://HOST:PORT/PREFIX/NAME`: a device reached through an MQTT broker.

Another gateway's device (its MQTT sink publishes the lines), or firmware that speaks
MQTT itself. Lines arrive on `PREFIX/NAME/rx`, one message per line; writes are
published to `PREFIX/NAME/tx` (QoS 1; a write returns once the broker acknowledged it).
The device counts as connected while the broker link is up and the owner's retained
`PREFIX/NAME/status` says `connected` (or `online`, for firmware that says so);
`?status=ignore` drops the second condition, for firmware that publishes no status.

One paho-mqtt client per transport, made at the first `open()` and kept across
reconnects (paho reconnects to the broker itself, 0.2 s doubling to 5 s); its network
thread is paho's own ("paho-mqtt-client-gateway-HEX-NAME"), ended by `release()`. While
the device is not connected `open()` raises `NotConnectedYet` after waiting up to a second, so the
device link shows "reconnecting" and asks again; when it goes away, `read()` raises
`TransportError` after handing over every line that came before.

Userinfo in the URL (`mqtt://user:password@host:1883/...`) logs in.
"""

from __future__ import annotations

import json
import logging
import secrets
import threading
import time
from collections import deque
from dataclasses import dataclass
from urllib.parse import SplitResult, unquote

from ..counts import parse_count
from .base import READ_TIMEOUT, NotConnectedYet, Transport, TransportError, WriteTimeout

log = logging.getLogger(__name__)

DEFAULT_PORTS = {"mqtt": 1883, "mqtts": 8883}
CONNECTED_STATES = ("connected", "online")
OPEN_WAIT = 1.0  # seconds open() waits for the device before raising NotConnectedYet
WRITE_TIMEOUT = 5.0  # seconds a write waits for the broker's PUBACK
INBOX = 10000  # lines held for the reader; beyond, counted drops
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


class _Lost:
    """Put in the inbox when the device goes away: read() raises after the lines before it."""

    __slots__ = ("epoch", "reason")

    def __init__(self, epoch: int, reason: str):
        self.epoch = epoch
        self.reason = reason


class MqttTransport(Transport):
    message_oriented = True

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
        self.keepalive = 30
        for key, value in options.items():
            if key == "status":
                if value not in ("require", "ignore"):
                    raise ValueError(f"status must be 'require' or 'ignore', not {value!r}")
                self.require_status = value == "require"
            elif key == "keepalive":
                try:
                    self.keepalive = parse_count(value, 5, 3600)
                except ValueError:
                    raise ValueError(f"keepalive must be 5 to 3600 seconds, not {value!r}") from None
            else:
                raise ValueError(f"unknown mqtt option {key!r} (known: status, keepalive)")
        base = f"{self.prefix}/{self.name}"
        self.topic_rx, self.topic_tx, self.topic_status = f"{base}/rx", f"{base}/tx", f"{base}/status"
        self._cond = threading.Condition()
        self._inbox: deque[bytes | _Lost] = deque()  # guarded by _cond
        self._woken = False  # wakeup() since the last read (guarded by _cond)
        self._client = None
        self._broker_up = False
        self._owner_state: str | None = None
        self._up = False
        self._epoch = 0  # +1 each time the device comes up
        self._open_epoch = -1  # the epoch the reader opened
        self._cancelled = False
        self.dropped = 0  # lines lost: inbox full, or arrived while the device was down

    def describe(self) -> str:
        return f"{self.broker.describe()}/{self.prefix}/{self.name}"

    # -- paho's thread ------------------------------------------------------------------

    def _update(self) -> None:
        """Recompute up/down; called with _cond held."""
        up = self._broker_up and (not self.require_status or self._owner_state in CONNECTED_STATES)
        if up == self._up:
            return
        self._up = up
        if up:
            self._epoch += 1
        else:
            if not self._broker_up:
                reason = f"broker {self.broker.describe()} lost"
            else:
                reason = f"owner of {self.prefix}/{self.name} is {self._owner_state or 'unknown'}"
            self._inbox.append(_Lost(self._epoch, reason))
        self._cond.notify_all()

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            log.warning("mqtt device %s: broker refused the connection: %s", self.describe(), reason_code)
            return
        client.subscribe([(self.topic_rx, 0), (self.topic_status, 1)])
        with self._cond:
            self._broker_up = True
            self._owner_state = None  # the retained status comes with the subscription
            self._update()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        with self._cond:
            self._broker_up = False
            self._owner_state = None
            self._update()

    def _on_message(self, client, userdata, msg) -> None:
        if msg.topic == self.topic_status:
            state = _state_of(msg.payload)
            with self._cond:
                self._owner_state = state
                self._update()
            return
        with self._cond:
            if not self._up or len(self._inbox) >= INBOX:
                self.dropped += 1
                return
            # An empty message is an empty line; the link ends a line at each message.
            self._inbox.append(msg.payload or b"\n")
            self._cond.notify_all()

    # -- the device link's threads --------------------------------------------------------

    def _ensure_client(self) -> None:
        if self._client is not None:
            return
        client = new_client(f"gateway-{secrets.token_hex(4)}-{self.name}", self.broker, self.keepalive)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.connect_async(self.broker.host, self.broker.port, self.keepalive)
        client.loop_start()
        self._client = client

    def open(self) -> None:
        if self._cancelled:
            raise TransportError("cancelled")
        self._ensure_client()
        deadline = time.monotonic() + OPEN_WAIT
        with self._cond:
            while not self._up:
                remaining = deadline - time.monotonic()
                if self._cancelled:
                    raise TransportError("cancelled")
                if remaining <= 0:
                    if not self._broker_up:
                        raise NotConnectedYet(f"waiting for broker {self.broker.describe()}")
                    raise NotConnectedYet(f"waiting for {self.topic_status} to say connected "
                                          f"(it says {self._owner_state or 'nothing'})")
                self._cond.wait(remaining)
            self._open_epoch = self._epoch

    wakes_up = True

    def wakeup(self) -> None:
        with self._cond:
            self._woken = True
            self._cond.notify_all()

    def read(self, timeout: float | None = READ_TIMEOUT) -> bytes:
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while True:
                if self._cancelled:
                    raise TransportError("cancelled")
                if self._woken:
                    self._woken = False
                    return b""
                if self._inbox:
                    item = self._inbox.popleft()
                    if isinstance(item, _Lost):
                        if item.epoch == self._open_epoch:
                            raise TransportError(item.reason)
                        continue  # from an earlier connection, already handled
                    return item
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return b""
                self._cond.wait(remaining)

    def write(self, data: bytes) -> None:
        # The device link adds the device's eol; on the tx topic a message is a line.
        for eol in (b"\r\n", b"\n", b"\r"):
            if data.endswith(eol):
                data = data[: -len(eol)]
                break
        client = self._client
        if client is None or not self._up:
            raise TransportError(f"{self.describe()} is not connected")
        info = client.publish(self.topic_tx, data, qos=1)
        if info.rc:
            raise TransportError(f"publish to {self.topic_tx} failed (paho error {info.rc})")
        try:
            info.wait_for_publish(WRITE_TIMEOUT)
        except (RuntimeError, ValueError) as exc:
            raise TransportError(f"publish to {self.topic_tx} failed: {exc}") from None
        if not info.is_published():
            raise WriteTimeout(f"broker did not acknowledge {self.topic_tx} within {WRITE_TIMEOUT:g} s")

    def cancel(self) -> None:
        with self._cond:
            self._cancelled = True
            self._cond.notify_all()

    def close(self) -> None:
        """The device went away; the broker link stays, to see it come back."""

    def release(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            end_client(client)
        with self._cond:
            self._broker_up = self._up = False


def _state_of(payload: bytes) -> str | None:
    """The state in a status message: {"state": "..."} or a bare word; None when empty."""
    if not payload:
        return None
    try:
        obj = json.loads(payload)
    except ValueError:
        return payload.decode("utf-8", "replace").strip().lower() or None
    if isinstance(obj, dict) and isinstance(obj.get("state"), str):
        return obj["state"]
    if isinstance(obj, str):
        return obj
    return None
