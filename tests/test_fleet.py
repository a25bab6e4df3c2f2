"""A fleet: three gateways on one real mosquitto, each with 20 devices, `[mqtt] discover`.

Gateways A and B run in this process, C as a process of its own, so that a SIGKILL makes
the broker publish its last will. Connections are counted from mosquitto's side
(`$SYS/broker/clients/connected`, every second: tests/mqtt_broker.py sets sys_interval 1).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
import urllib.request
import uuid
from dataclasses import replace
from pathlib import Path

import pytest
import websocket

from conftest import assert_no_gateway_threads, metric, start_process, stop_process, wait_for
from gateway.app import Gateway
from gateway.config import Button, Config, DeviceConfig, MqttConfig, SerialConfig, ServerConfig, apply_flags
from mqtt_broker import Mosquitto, MqttClient

ROOT = Path(__file__).resolve().parent.parent
COUNT = 20  # devices per gateway


@pytest.fixture
def fleet(tmp_path):
    broker = Mosquitto(tmp_path / "mosquitto").start()
    prefix = f"f{uuid.uuid4().hex[:8]}"
    started: list[Gateway] = []
    procs = []

    def names(tag: str) -> list[str]:
        return [f"{tag}{i:02d}" for i in range(COUNT - 1)] + ["shared"]  # "shared": on A and on B

    def in_process(gateway_id: str, tag: str, extra=()) -> Gateway:
        config = Config(server=ServerConfig(port=0, gateway_id=gateway_id), serial=SerialConfig(rescan=0),
                        mqtt=MqttConfig(url=broker.url, prefix=prefix, discover=True))
        devices = [f"{n}=sim://?interval=0" for n in names(tag)] + list(extra)
        gw = Gateway(apply_flags(config, "127.0.0.1", 0, devices)).start()
        started.append(gw)
        return gw

    config_c = tmp_path / "c.toml"
    config_c.write_text(
        f'[server]\nport = 0\ngateway_id = "gw-c"\n[serial]\nrescan = 0\n'
        f'[mqtt]\nurl = "{broker.url}"\nprefix = "{prefix}"\ndiscover = true\n'
        + "".join(f'[[device]]\nname = "c{i:02d}"\nurl = "sim://?interval=0"\n'
                  f'buttons = [{{ label = "Ping", line = "PING" }}]\n' for i in range(COUNT)))

    def process_c():
        proc, url = start_process([sys.executable, str(ROOT / "run_gateway.py"), "--config", str(config_c)], ROOT)
        procs.append(proc)
        return proc, url

    class Fleet:
        pass

    f = Fleet()
    f.broker, f.prefix, f.in_process, f.process_c = broker, prefix, in_process, process_c
    yield f
    for gw in started:
        gw.shutdown()
    for proc in procs:
        if proc.poll() is None:
            stop_process(proc)
    broker.stop()
    assert_no_gateway_threads()
    wait_for(lambda: not [t for t in threading.enumerate() if t.name.startswith("discovery-")],
             what="discovery workers to end")


def devices_of(url: str) -> dict[str, dict]:
    with urllib.request.urlopen(url + "/api/devices", timeout=5) as resp:
        return {d["name"]: d for d in json.load(resp)}


def all_connected(url: str, count: int):
    devices = devices_of(url)
    if len(devices) == count and all(d["state"] == "connected" for d in devices.values()):
        return devices
    return None


def ping(gw_url: str, device: str) -> str:
    host_port = gw_url.split("://", 1)[1]
    ws = websocket.create_connection(f"ws://{host_port}/ws/{device}", timeout=5)
    try:
        ws.send("PING")
        return ws.recv()
    finally:
        ws.close()


def connected_clients(sys_client: MqttClient, expected: int, timeout: float = 10.0) -> int:
    """Wait for mosquitto's own count of connected clients to say `expected`."""
    msg = sys_client.next("$SYS/broker/clients/connected", timeout,
                          where=lambda m: int(m.payload) == expected)
    return int(msg.payload)


def test_three_gateways_find_and_drive_each_others_devices(fleet, caplog):
    caplog.set_level(logging.INFO, logger="gateway.discovery")
    a = fleet.in_process("gw-a", "a")
    # B also has C's c01 configured by hand, under a name of its own.
    b = fleet.in_process("gw-b", "b", [f"mine-c01=mqtt://{fleet.broker.host}:{fleet.broker.port}/{fleet.prefix}/c01"])
    proc_c, url_c = fleet.process_c()
    total = 3 * COUNT
    # Discovery: every gateway lists all 60 devices, its own and the others', all connected.
    on_a = wait_for(lambda: all_connected(a.url, total), 20, 0.2, "A to list 60 connected devices")
    on_c = wait_for(lambda: all_connected(url_c, total), 20, 0.2, "C to list 60 connected devices")
    on_b = wait_for(lambda: all_connected(b.url, total), 20, 0.2, "B to list 60 connected devices")
    assert "c01" not in on_b and on_b["mine-c01"]["kind"] == "mqtt"  # not listed twice
    assert on_a["a00"]["owner"] == "gw-a" and on_a["a00"]["remote"] is False
    assert {k: on_a["c07"][k] for k in ("owner", "remote", "owner_state", "kind")} == \
        {"owner": "gw-c", "remote": True, "owner_state": "online", "kind": "mqtt"}
    assert on_a["c07"]["buttons"] == [{"label": "Ping", "line": "PING"}]  # from C's meta
    assert sum(d["remote"] for d in on_a.values()) == 2 * COUNT
    # A name clash: A's own "shared" keeps its name, B's is listed as shared@gw-b, and C
    # (which has none) lists one as "shared" and the other with its owner.
    assert on_a["shared"]["owner"] == "gw-a" and on_a["shared@gw-b"]["owner"] == "gw-b"
    assert devices_of(b.url)["shared@gw-a"]["owner"] == "gw-a"
    assert {on_c["shared"]["owner"], *(d["owner"] for n, d in on_c.items() if n.startswith("shared@"))} == \
        {"gw-a", "gw-b"}
    assert "clashes with device shared of gateway gw-a; shown here as shared@gw-b" in caplog.text
    # No thread per remote device (push transports on one connection).
    # (C's devices are in another process: a "device:cNN" thread here would be a remote one's.)
    assert not [t.name for t in threading.enumerate() if t.name.startswith("device:c")]

    # One broker connection per gateway, counted by mosquitto: 3 gateways and this client.
    sys_client = MqttClient(fleet.broker, "$SYS/broker/clients/connected")
    try:
        assert connected_clients(sys_client, 4) == 4
    finally:
        sys_client.close()

    # Control across gateways: A drives C's device (a process), C drives A's, B drives both.
    assert ping(a.url, "c07") == "PONG"
    assert ping(url_c, "a03") == "PONG"
    assert ping(b.url, "a04") == "PONG" and ping(b.url, "c04") == "PONG"

    # C is killed: its will marks it offline, and its devices show disconnected elsewhere.
    os.kill(proc_c.pid, signal.SIGKILL)
    proc_c.wait(5)

    def c_devices_on_a(state: str, owner_state: str):
        devices = [d for d in a.describe_devices() if d["owner"] == "gw-c"]
        return len(devices) == COUNT and all(d["state"] == state and d["owner_state"] == owner_state
                                             for d in devices)

    wait_for(lambda: c_devices_on_a("disconnected", "offline"), 10, 0.05, "C's devices to show offline on A")
    assert all(d["state"] == "connected" for d in a.describe_devices() if d["owner"] != "gw-c")
    # C comes back: the same devices connect again by themselves, and work.
    proc_c, url_c = fleet.process_c()
    wait_for(lambda: c_devices_on_a("connected", "online"), 20, 0.05, "C's devices to come back on A")
    assert ping(a.url, "c07") == "PONG"

    assert metric(a, "gateway_remote_devices", owner="gw-c") == COUNT
    assert metric(a, "gateway_mqtt_broker_connected", broker=fleet.broker.url) == 1

    # A device added on its owner at run time appears everywhere, and works.
    a.add_device(DeviceConfig(name="a-new", url="sim://?interval=0"))
    wait_for(lambda: devices_of(url_c).get("a-new", {}).get("state") == "connected", 10, 0.1, "a-new on C")
    assert ping(url_c, "a-new") == "PONG"
    # Buttons changed on the owner reach the copies.
    a.update_device("a01", replace(a.links["a01"].config, buttons=(Button("Hi", "ECHO hi"),)))
    wait_for(lambda: devices_of(url_c)["a01"]["buttons"] == [{"label": "Hi", "line": "ECHO hi"}], 10, 0.1,
             "a01's new buttons on C")
    # A device of B's own added under the name of A's: B's keeps it, A's moves aside.
    b.add_device(DeviceConfig(name="a02", url="sim://?interval=0"))
    assert b.links["a02"].config.owner == "" and b.links["a02@gw-a"].config.owner == "gw-a"
    assert b.links["a02@gw-a"].wait_connected(5)
    # A device removed on its owner is removed everywhere.
    a.remove_device("a05")
    wait_for(lambda: "a05" not in b.links, 10, 0.05, "a05 to go from B")
    wait_for(lambda: "a05" not in devices_of(url_c), 10, 0.1, "a05 to go from C")
    stop_process(proc_c)
