"""The MQTT sink and the mqtt:// transport against a real mosquitto (tests/mqtt_broker.py).

One broker per test session on a free port; each test uses its own topic prefix, so
retained messages of one test never reach another. Tests that stop the broker get one of
their own.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import pytest
import websocket

from conftest import assert_no_gateway_threads, metric, wait_for, ws_url
from gateway import transports
from gateway.config import Config, ConfigError, MqttConfig, ServerConfig, apply_flags, parse_device_flag
from gateway.sinks.mqtt import MqttSink, discovery_config
from mqtt_broker import Mosquitto, MqttClient, stop_process

ROOT = Path(__file__).resolve().parent.parent
MY_THREADS = ("mqtt-sink", "paho-mqtt-client-gateway-", "recorder", "discovery-")


def my_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith(MY_THREADS)]


@pytest.fixture(scope="session")
def broker(tmp_path_factory):
    b = Mosquitto(tmp_path_factory.mktemp("mosquitto")).start()
    yield b
    b.stop()


@pytest.fixture
def own_broker(tmp_path):
    b = Mosquitto(tmp_path / "own-broker").start()
    yield b
    b.stop()


@pytest.fixture
def prefix() -> str:
    return f"t{uuid.uuid4().hex[:10]}"


@pytest.fixture
def mqtt_client():
    """mqtt_client(broker, *topics) -> a subscribed MqttClient, closed after the test."""
    made = []

    def make(b, *topics):
        c = MqttClient(b, *topics)
        made.append(c)
        return c

    yield make
    for c in made:
        c.close()


@pytest.fixture
def gateway():
    """gateway(broker_url, prefix, devices, **mqtt) -> a started Gateway with [mqtt] set."""
    from gateway.app import Gateway

    started = []

    def start(url, prefix, devices=("sim=sim://?interval=0",), **mqtt):
        # Each its own gateway id, as on a real fleet (the id names the will's topic).
        server = ServerConfig(port=0, gateway_id=f"{prefix}-{len(started)}")
        config = Config(server=server, mqtt=MqttConfig(url=url, prefix=prefix, **mqtt))
        gw = Gateway(apply_flags(config, "127.0.0.1", 0, list(devices))).start()
        started.append(gw)
        return gw

    yield start
    for gw in started:
        gw.shutdown()
    assert_no_gateway_threads()
    wait_for(lambda: not my_threads(), 5, what=f"threads to end: {my_threads()}")


def ws_json(gw, device):
    ws = websocket.create_connection(ws_url(gw, device, format="json"), timeout=5)
    assert json.loads(ws.recv())["type"] == "hello"
    return ws


def next_line(ws, timeout: float = 5.0, where=lambda line: True) -> str:
    ws.settimeout(timeout)
    while True:
        msg = json.loads(ws.recv())
        if msg["type"] == "line" and where(msg["line"]):
            return msg["line"]




def status_is(state):
    return lambda obj: obj.get("state") == state


# -- the sink ------------------------------------------------------------------------------


def test_rx_telemetry_and_retained_status(broker, prefix, gateway, mqtt_client):
    gw = gateway(broker.url, prefix)
    sub = mqtt_client(broker, f"{prefix}/#")
    status = sub.next_json(f"{prefix}/sim/status", where=status_is("connected"))
    assert isinstance(status["ts"], float)
    ws = ws_json(gw, "sim")
    ws.send(json.dumps({"line": "GET temp"}))
    rx = sub.next(f"{prefix}/sim/rx").payload
    assert rx.startswith(b"temp=")
    tele = sub.next_json(f"{prefix}/sim/telemetry")
    assert tele["data"] == {"temp": float(rx[5:])} and tele["seq"] >= 1 and tele["ts"] > 0
    ws.send(json.dumps({"line": "PING"}))
    assert sub.next(f"{prefix}/sim/rx").payload == b"PONG"  # not telemetry: rx only
    ws.close()
    # The status is retained: a client that subscribes later still learns the state.
    late = mqtt_client(broker, f"{prefix}/sim/status")
    msg = late.next(f"{prefix}/sim/status")
    assert msg.retain and json.loads(msg.payload)["state"] == "connected"
    assert metric(gw, "gateway_mqtt_connected", device="sim") == 1
    assert metric(gw, "gateway_mqtt_published_total", device="sim") >= 4


def test_commands_on_tx_are_written_to_the_device(broker, prefix, gateway, mqtt_client):
    sub = mqtt_client(broker, f"{prefix}/sim/rx", f"{prefix}/sim/status")
    # A retained command would run again at every reconnect: one waiting on the broker
    # when the gateway subscribes is refused.
    sub.publish(f"{prefix}/sim/tx", b"ECHO stale", retain=True)
    gw = gateway(broker.url, prefix)
    sub.next_json(f"{prefix}/sim/status", where=status_is("connected"))
    sub.publish(f"{prefix}/sim/tx", b"", retain=True)  # clears it on the broker (written as an empty line)
    assert sub.next(f"{prefix}/sim/rx").payload == b"ERR unknown command: "
    ws = ws_json(gw, "sim")
    sub.publish(f"{prefix}/sim/tx", b"PING")
    assert next_line(ws) == "PONG"
    sub.publish(f"{prefix}/sim/tx", b"ECHO one\nECHO two\n")  # one message, two lines
    assert [next_line(ws), next_line(ws)] == ["one", "two"]
    assert [sub.next(f"{prefix}/sim/rx").payload for _ in range(3)] == [b"PONG", b"one", b"two"]
    ws.close()
    assert metric(gw, "gateway_mqtt_commands_total", device="sim") == 4
    assert metric(gw, "gateway_mqtt_commands_refused_total", device="sim") == 1
    assert metric(gw, "gateway_device_lines_out_total", device="sim") == 4


def test_last_will_marks_a_dead_gateway_offline(broker, prefix, mqtt_client, tmp_path):
    config = tmp_path / "gw.toml"
    config.write_text(f'[server]\nport = 0\ngateway_id = "gw-will"\n[mqtt]\nurl = "{broker.url}"\nprefix = "{prefix}"\n'
                      '[[device]]\nname = "sim"\nurl = "sim://?interval=0"\n')
    gateway_topic = f"{prefix}/_gateway/gw-will/status"
    sub = mqtt_client(broker, f"{prefix}/sim/status", gateway_topic)
    proc = subprocess.Popen([sys.executable, str(ROOT / "run_gateway.py"), "--config", str(config)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL, cwd=ROOT)
    try:
        online = sub.next_json(gateway_topic, timeout=15, where=status_is("online"))
        assert set(online) == {"state", "ts", "run"}
        # Each device's status names its gateway, whose status topic carries the will.
        assert sub.next_json(f"{prefix}/sim/status", where=status_is("connected"))["gateway"] == "gw-will"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(5)
        # The broker sees the connection die without a DISCONNECT: it publishes the will.
        assert sub.next_json(gateway_topic) == {"state": "offline"}
    finally:
        stop_process(proc)
    late = mqtt_client(broker, gateway_topic)
    assert json.loads(late.next(gateway_topic).payload) == {"state": "offline"}


def test_clean_shutdown_says_disconnected_not_offline(broker, prefix, gateway, mqtt_client):
    gw = gateway(broker.url, prefix)
    sub = mqtt_client(broker, f"{prefix}/sim/status")
    sub.next_json(f"{prefix}/sim/status", where=status_is("connected"))
    gateway_topic = f"{prefix}/_gateway/{gw.gateway_id}/status"
    gw_sub = mqtt_client(broker, gateway_topic)
    assert gw_sub.next_json(gateway_topic)["state"] == "online"
    gw.shutdown()
    assert sub.next_json(f"{prefix}/sim/status")["state"] == "disconnected"
    assert gw_sub.next_json(gateway_topic)["state"] == "offline"  # said, not the will
    late = mqtt_client(broker, f"{prefix}/sim/status", gateway_topic)
    got = {m.topic: json.loads(m.payload)["state"] for m in (late.next(), late.next())}
    assert got == {f"{prefix}/sim/status": "disconnected", gateway_topic: "offline"}


def test_lines_buffered_while_the_broker_is_away_then_published(prefix, gateway, mqtt_client, tmp_path):
    away = Mosquitto(tmp_path / "late-broker")  # its port is chosen, nothing listens yet
    gw = gateway(away.url, prefix, buffer=5)
    ws = ws_json(gw, "sim")
    ws.send(json.dumps({"line": "GO 20"}))
    assert next_line(ws, where=lambda line: line.startswith("t=20 "))
    ws.close()
    wait_for(lambda: metric(gw, "gateway_mqtt_dropped_total", device="sim") == 15, what="15 lines dropped")
    assert metric(gw, "gateway_mqtt_buffered", device="sim") == 5
    assert metric(gw, "gateway_mqtt_connected", device="sim") == 0
    try:
        away.start()
        sub = mqtt_client(away, f"{prefix}/sim/rx")
        # The sink reconnects with backoff and publishes the 5 newest lines, in order.
        got = [sub.next(f"{prefix}/sim/rx", timeout=10).payload.split()[0] for _ in range(5)]
        assert got == [b"t=16", b"t=17", b"t=18", b"t=19", b"t=20"]
        assert metric(gw, "gateway_mqtt_buffered", device="sim") == 0
    finally:
        gw.shutdown()
        away.stop()


def test_home_assistant_discovery(broker, prefix, gateway, mqtt_client):
    ha = f"{prefix}-ha"
    gw = gateway(broker.url, prefix, discovery=True, discovery_prefix=ha)
    sub = mqtt_client(broker, f"{ha}/#", f"{prefix}/sim/telemetry/#", f"{prefix}/sim/status")
    sub.next_json(f"{prefix}/sim/status", where=status_is("connected"))
    ws = ws_json(gw, "sim")
    ws.send(json.dumps({"line": "GET temp"}))
    config_topic, expected = discovery_config(gw.config.mqtt, "sim", "sim", "temp", gw.gateway_id)
    assert json.loads(sub.next(config_topic).payload) == expected
    assert expected["state_topic"] == f"{prefix}/sim/telemetry/temp"
    assert expected["unique_id"] == f"{prefix}_sim_temp"
    # Available while both the gateway (its will) and the device say so.
    assert [a["topic"] for a in expected["availability"]] == [f"{prefix}/_gateway/{gw.gateway_id}/status",
                                                               f"{prefix}/sim/status"]
    assert expected["availability_mode"] == "all"
    assert float(sub.next(f"{prefix}/sim/telemetry/temp").payload) > 0
    ws.send(json.dumps({"line": "GET led"}))  # a key seen for the first time is announced too
    assert json.loads(sub.next(f"{ha}/sensor/{prefix}_sim/led/config").payload)["name"] == "led"
    assert sub.next(f"{prefix}/sim/telemetry/led").payload == b"0"
    ws.close()
    late = mqtt_client(broker, config_topic)  # retained: Home Assistant finds it after a restart
    assert late.next(config_topic).retain


# -- the mqtt:// transport -------------------------------------------------------------------


def test_mqtt_urls_are_checked_without_io():
    t = transports.create("mqtt://127.0.0.1:1883/home/gw/esp?status=ignore")
    assert (t.prefix, t.name, t.broker.port, t.require_status) == ("home/gw", "esp", 1883, False)
    assert t.topic_rx == "home/gw/esp/rx" and t.topic_tx == "home/gw/esp/tx"
    assert transports.create("mqtt://broker/gateway/esp").broker.port == 1883
    assert transports.create("mqtt://u:p%40ss@broker/g/esp").broker.password == "p@ss"
    for url, why in (("mqtt://broker:1883/esp", "prefix and a device name"),
                     ("mqtt://broker:1883/g/+", "'#', '+'"),
                     ("mqtt://broker:1883/g/esp?qos=2", "unknown mqtt option 'qos'"),
                     ("mqtt:///g/esp", "needs a HOST")):
        with pytest.raises(ValueError, match=re.escape(why)):
            transports.create(url)
    with pytest.raises(ConfigError, match=re.escape("url = 'mqtt://b/x'")):
        parse_device_flag("device=mqtt://b/x")
    assert parse_device_flag("remote=mqtt://b:1883/gateway/esp").kind == "mqtt"


def test_a_browser_on_gateway_b_controls_the_device_on_gateway_a(broker, prefix, gateway, mqtt_client):
    sub = mqtt_client(broker, f"{prefix}/#")
    a = gateway(broker.url, prefix, ["sim=sim://?interval=0"])
    b = gateway(broker.url, prefix, [f"remote=mqtt://{broker.host}:{broker.port}/{prefix}/sim", "local=sim://?interval=0"])
    link = b.links["remote"]
    assert link.wait_connected(10), f"remote is {link.state.value}"
    ws = websocket.create_connection(ws_url(b, "remote"), timeout=5)  # text mode, as a page would
    ws.send("PING")
    assert ws.recv() == "PONG"
    ws.send("GET temp")
    line = ws.recv()
    assert line.startswith("temp=")
    # Telemetry travels on: gateway B's /metrics shows the remote device's values.
    wait_for(lambda: metric(b, "gateway_telemetry", device="remote", key="temp") == float(line[5:]),
             what="remote telemetry")
    # No loops: B's sink skips what it reads from the broker; each line is on rx once.
    assert [list(s.channels) for s in b.sinks if isinstance(s, MqttSink)] == [["local"]]
    ws.send("ECHO marker")
    assert ws.recv() == "marker"
    seen = []
    while True:
        msg = sub.next()
        seen.append(msg.topic)
        if msg.topic == f"{prefix}/sim/rx" and msg.payload == b"marker":
            break
    assert not [t for t in seen if t.startswith(f"{prefix}/remote/")]
    assert seen.count(f"{prefix}/sim/rx") == 3  # PONG, temp, marker
    assert seen.count(f"{prefix}/sim/tx") == 3
    ws.close()
    # Gateway A goes away: its device says disconnected, and B's copy follows.
    a.shutdown()
    wait_for(lambda: link.state.value == "disconnected", what="remote to follow its owner")
    assert link.transport.owner == a.gateway_id and link.transport.owner_state == "offline"


def test_firmware_that_speaks_mqtt_itself(broker, prefix, gateway, mqtt_client):
    firmware = mqtt_client(broker, f"{prefix}/esp/tx")
    gw = gateway(broker.url, prefix, [f"esp=mqtt://{broker.host}:{broker.port}/{prefix}/esp"])
    link = gw.links["esp"]
    assert not link.wait_connected(0.5), "connected before the firmware said so"
    firmware.publish(f"{prefix}/esp/status", json.dumps({"state": "connected"}), retain=True)
    assert link.wait_connected(5)
    ws = ws_json(gw, "esp")
    firmware.publish(f"{prefix}/esp/rx", b"temp=5 hum=40", qos=0)
    assert next_line(ws) == "temp=5 hum=40"
    ws.send(json.dumps({"line": "LED ON", "id": 1}))
    assert firmware.next(f"{prefix}/esp/tx").payload == b"LED ON"  # the eol is the message's end
    firmware.publish(f"{prefix}/esp/status", b"offline", retain=True)
    wait_for(lambda: link.state.value == "disconnected", what="device to go away with its status")
    ws.close()
    firmware.publish(f"{prefix}/esp/status", b"", retain=True)


def test_status_ignore_needs_only_the_broker(broker, prefix, gateway, mqtt_client):
    gw = gateway(broker.url, prefix, [f"esp=mqtt://{broker.host}:{broker.port}/{prefix}/esp?status=ignore"])
    assert gw.links["esp"].wait_connected(5)


def test_broker_restart_is_survived(own_broker, prefix, gateway, mqtt_client):
    a = gateway(own_broker.url, prefix, ["sim=sim://?interval=0"])
    b = gateway(own_broker.url, prefix, [f"remote=mqtt://{own_broker.host}:{own_broker.port}/{prefix}/sim"])
    remote = b.links["remote"]
    assert remote.wait_connected(10)
    own_broker.restart()  # nothing persisted: the retained status is gone with it
    sub = mqtt_client(own_broker, f"{prefix}/sim/status")
    # The sink reconnects and publishes the status again; B's device comes back.
    sub.next_json(f"{prefix}/sim/status", timeout=10, where=status_is("connected"))
    wait_for(lambda: remote.state.value == "connected", 10, what="remote to come back")
    ws = websocket.create_connection(ws_url(b, "remote"), timeout=5)
    ws.send("PING")
    assert ws.recv() == "PONG"
    ws.close()
    assert metric(a, "gateway_mqtt_reconnects_total", device="sim") >= 1
    assert metric(b, "gateway_device_reconnects_total", device="remote") >= 1


def test_one_broker_connection_for_the_sink_and_every_mqtt_device(broker, prefix, gateway):
    devices = ["sim=sim://?interval=0"] + [f"r{i}=mqtt://{broker.host}:{broker.port}/{prefix}/x{i}?status=ignore"
                                           for i in range(5)]
    gw = gateway(broker.url, prefix, devices)
    for i in range(5):
        assert gw.links[f"r{i}"].wait_connected(5)
    assert [c.client_id for c in gw.brokers.connections()] == [f"gateway-{gw.gateway_id}-{gw.run_id}"]
    paho = [t.name for t in threading.enumerate() if t.name.startswith("paho-mqtt-client-gateway-")
            and gw.run_id in t.name]
    assert paho == [f"paho-mqtt-client-gateway-{gw.gateway_id}-{gw.run_id}"]
    assert not [t for t in threading.enumerate() if t.name.startswith("device:r")]  # no thread per mqtt:// device
    # The sink never publishes what came from the broker (no loops).
    assert [list(s.channels) for s in gw.sinks if isinstance(s, MqttSink)] == [["sim"]]


def test_discover_and_owner_are_checked():
    from gateway.config import from_dict

    with pytest.raises(ConfigError, match=re.escape("mqtt.discover = True: needs [mqtt] url")):
        from_dict({"mqtt": {"discover": True}}, "gw.toml")
    with pytest.raises(ConfigError, match="not mqtts://"):
        from_dict({"mqtt": {"discover": True, "url": "mqtts://b:8883"}}, "gw.toml")
    assert from_dict({"mqtt": {"discover": True, "url": "mqtt://b"}}, "gw.toml").mqtt.discover
    # owner is what discovery sets on other gateways' devices, never a config key.
    with pytest.raises(ConfigError, match=re.escape("device[0].owner = 'gw-x': not a device key")):
        from_dict({"device": [{"name": "d", "url": "sim://", "owner": "gw-x"}]}, "gw.toml")
    t = transports.create("mqtt://b/lab/esp?owner=gw-x")
    assert (t.owner, t.pushes) == ("gw-x", True)
    with pytest.raises(ValueError, match="owner"):
        transports.create("mqtt://b/lab/esp?owner=a%2Bb")


def test_an_idle_gateway_leaves_its_mqtt_threads_asleep(broker, prefix, gateway):
    import paho.mqtt.client as mqtt

    assert callable(getattr(mqtt.Client, "_thread_main", None)), "paho's loop_start target moved (broker.py)"
    gw = gateway(broker.url, prefix, ["sim=sim://?interval=0", f"r=mqtt://{broker.host}:{broker.port}/{prefix}/x?status=ignore"])
    assert gw.links["r"].wait_connected(5)
    mine = [t for t in threading.enumerate() if t.name in ("mqtt-sink", f"paho-mqtt-client-gateway-{gw.gateway_id}-{gw.run_id}")]
    assert len(mine) == 2

    def wakeups() -> dict[str, int]:
        out = {}
        for t in mine:
            with open(f"/proc/self/task/{t.native_id}/status") as fh:
                out[t.name] = next(int(line.split()[1]) for line in fh if line.startswith("voluntary_ctxt_switches"))
        return out

    # Three windows of 1.5 s to count wake-ups in (not a synchronisation): start-up traffic
    # (acknowledgements, retained statuses) or the keepalive ping (every 7.5 s) may fall in
    # one; paho's own loop_start wakes every second, in every window.
    counts = []
    for _ in range(3):
        before = wakeups()
        threading.Event().wait(1.5)
        after = wakeups()
        counts.append({name: after[name] - before[name] for name in after})
    assert any(all(n == 0 for n in window.values()) for window in counts), counts


def test_discovery_ignores_bad_announcements(broker, prefix, gateway, mqtt_client, caplog):
    gw = gateway(broker.url, prefix, discover=True)
    other = mqtt_client(broker)
    for topic, payload in ((f"{prefix}/x/meta/gw-z", b"not json"),
                           (f"{prefix}/x/meta/gw-z", b"[1, 2]"),
                           (f"{prefix}/bad name!/meta/gw-z", b'{"owner": "gw-z"}'),
                           (f"{prefix}/y/meta/-bad-owner", b'{"owner": "-bad-owner"}'),
                           (f"{prefix}/z/meta/gw-z", b'{"buttons": "no", "kind": 5}')):
        other.publish(topic, payload, retain=True)
    # The last one is odd but usable: listed, without buttons; the others are refused.
    wait_for(lambda: "z" in gw.links, what="z to be listed")
    assert gw.links["z"].config.buttons == () and gw.links["z"].config.owner == "gw-z"
    assert set(gw.links) == {"sim", "z"}
    assert "not a meta message" in caplog.text and "not valid here" in caplog.text
    for topic in (f"{prefix}/x/meta/gw-z", f"{prefix}/bad name!/meta/gw-z", f"{prefix}/y/meta/-bad-owner",
                  f"{prefix}/z/meta/gw-z"):
        other.publish(topic, b"", retain=True)
    wait_for(lambda: "z" not in gw.links, what="z to go with its announcement")
