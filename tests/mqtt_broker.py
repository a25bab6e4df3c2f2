"""A real mosquitto for the tests, on 127.0.0.1 and a free port, and a small MQTT client.

    broker = Mosquitto(tmp_dir).start()     # waits until it accepts connections
    broker.restart()                        # same port; nothing persisted (persistence false)
    broker.stop()

tests/run.sh installs Debian's `mosquitto` when it is missing.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

START_TIMEOUT = 10.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def find_binary(name: str, *extra: str) -> str:
    path = shutil.which(name) or next((p for p in extra if os.access(p, os.X_OK)), None)
    if path is None:
        pytest.fail(f"{name} is not installed (bash tests/run.sh installs it: apt-get install {name})")
    return path


def wait_port(host: str, port: int, proc: subprocess.Popen, log: Path, timeout: float = START_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args[0]} exited with {proc.returncode}: {log.read_text(errors='replace')[-2000:]}")
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{proc.args[0]} did not listen on {host}:{port} within {timeout} s") from None
            time.sleep(0.02)  # polling a port with a deadline; no event to wait on


def stop_process(proc: subprocess.Popen | None, timeout: float = 5.0) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout)


class Mosquitto:
    def __init__(self, directory: Path, port: int | None = None):
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.host = "127.0.0.1"
        self.port = port or free_port()
        self.proc: subprocess.Popen | None = None
        self.config = self.dir / "mosquitto.conf"
        self.log = self.dir / "mosquitto.log"
        self.config.write_text(
            f"listener {self.port} {self.host}\n"
            "allow_anonymous true\n"
            "persistence false\n"
            "sys_interval 1\n"  # $SYS/broker/clients/connected every second (tests count connections)
            "log_dest stderr\n"
            "log_type error\nlog_type warning\nlog_type notice\n"
        )

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    def start(self) -> "Mosquitto":
        binary = find_binary("mosquitto", "/usr/sbin/mosquitto")
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen([binary, "-c", str(self.config)], stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL)
        wait_port(self.host, self.port, self.proc, self.log)
        return self

    def stop(self) -> None:
        stop_process(self.proc)
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()


class MqttClient:
    """A paho client for the tests: every message it gets lands in `messages`."""

    def __init__(self, broker: Mosquitto, *topics: str, client_id: str = ""):
        import paho.mqtt.client as mqtt

        self.messages: queue.Queue = queue.Queue()
        self._topics = topics
        self._subscribed = queue.Queue()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id or f"test-{free_port()}")
        self.client.on_connect = self._on_connect
        self.client.on_message = lambda c, u, msg: self.messages.put(msg)
        self.client.on_subscribe = lambda c, u, mid, codes, props: self._subscribed.put(mid)
        self.client.reconnect_delay_set(0.1, 1)  # type: ignore[arg-type]
        self.client.connect(broker.host, broker.port, keepalive=30)
        self.client.loop_start()
        self._subscribed.get(timeout=5)  # subscribed: nothing published after this is missed

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        client.subscribe([(t, 1) for t in self._topics] or [("$SYS/none", 0)])

    def publish(self, topic: str, payload, qos: int = 1, retain: bool = False) -> None:
        info = self.client.publish(topic, payload, qos=qos, retain=retain)
        info.wait_for_publish(5)
        assert info.is_published(), f"publish to {topic} not acknowledged"

    def next(self, topic: str | None = None, timeout: float = 5.0, where=None):
        """The next message (on `topic`, matching `where(msg)`), others skipped."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no message on {topic or 'any topic'} within {timeout} s")
            try:
                msg = self.messages.get(timeout=remaining)
            except queue.Empty:
                continue
            if (topic is None or msg.topic == topic) and (where is None or where(msg)):
                return msg

    def next_json(self, topic: str, timeout: float = 5.0, where=None) -> dict:
        msg = self.next(topic, timeout, where=None if where is None else (lambda m: where(json.loads(m.payload))))
        return json.loads(msg.payload)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
