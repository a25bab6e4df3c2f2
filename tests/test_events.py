"""WS /ws/_events for a list of many devices (gateway/events.py), with websocket-client:
the gateway id in hello, what a device event carries (kind, owner, remote), and the list
without a race: {"type": "devices"} answers every device as it is, and the events after
that answer are exactly the changes since, while devices come and go meanwhile."""

from __future__ import annotations

import json
import threading
import time

import pytest
import websocket
from conftest import free_port, wait_for, ws_url

from gateway.config import DeviceConfig


def events(gw) -> tuple[websocket.WebSocket, dict]:
    ws = websocket.create_connection(ws_url(gw, "_events"), timeout=10)
    hello = json.loads(ws.recv())
    assert hello["type"] == "hello"
    return ws, hello


def test_hello_names_the_gateway_and_devices_lists_every_device(start_gateway):
    gw = start_gateway(devices=("sim=sim://?interval=0", "b=sim://?interval=0"), server={"gateway_id": "bench-7"})
    ws, hello = events(gw)
    assert hello["gateway"] == "bench-7" == gw.gateway_id
    ws.send(json.dumps({"type": "devices", "id": 4}))
    answer = json.loads(ws.recv())
    assert answer == {"type": "devices", "id": 4, "gateway": "bench-7", "devices": [
        {"name": "sim", "state": "connected", "kind": "sim", "owner": "bench-7", "remote": False},
        {"name": "b", "state": "connected", "kind": "sim", "owner": "bench-7", "remote": False}]}

    # Added and state events carry what a list shows; removed names the device only.
    gw.add_device(DeviceConfig("c", f"tcp://127.0.0.1:{free_port()}"))  # nobody listens there
    got = [json.loads(ws.recv()) for _ in range(2)]
    assert got == [
        {"type": "device", "event": "added", "device": "c", "state": "disconnected", "kind": "tcp",
         "owner": "bench-7", "remote": False},
        {"type": "device", "event": "state", "device": "c", "state": "reconnecting", "kind": "tcp",
         "owner": "bench-7", "remote": False}]
    gw.remove_device("c")
    msg = json.loads(ws.recv())
    while msg["event"] == "state":  # closing it may say "disconnected" first
        msg = json.loads(ws.recv())
    assert msg == {"type": "device", "event": "removed", "device": "c"}

    # Anything else is still refused, and the stream stays.
    ws.send(json.dumps({"type": "flash", "id": 5}))
    error = json.loads(ws.recv())
    assert error["id"] == 5 and '{"type": "devices"}' in error["error"]
    ws.send(json.dumps({"type": "ping"}))
    assert json.loads(ws.recv()) == {"type": "pong"}
    ws.close()


def apply(listed: dict[str, str], msg: dict) -> None:
    """What a page does with the stream: the answer replaces its list, events change it."""
    if msg["type"] == "devices":
        listed.clear()
        listed.update((d["name"], d["state"]) for d in msg["devices"])
    elif msg["type"] == "device":
        if msg["event"] == "removed":
            listed.pop(msg["device"], None)
        elif msg["event"] == "added" or msg["device"] in listed:
            listed[msg["device"]] = msg["state"]


def test_the_list_and_the_events_after_it_add_up_while_devices_come_and_go(start_gateway):
    gw = start_gateway(devices=[f"d{i}=sim://?interval=0" for i in range(50)])
    ws, _ = events(gw)
    dead = f"tcp://127.0.0.1:{free_port()}"
    stop = threading.Event()
    rounds = [0]

    def churn():  # a device added and removed, another reopened on a dead port and back
        i = 0
        while not stop.is_set():
            gw.add_device(DeviceConfig(f"new{i}", "sim://?interval=0"))
            gw.update_device("d7", DeviceConfig("d7", dead if i % 2 == 0 else "sim://?interval=0"))
            if i:
                gw.remove_device(f"new{i - 1}")
            i += 1
            rounds[0] = i

    worker = threading.Thread(target=churn, name="test-churn")
    worker.start()
    try:
        wait_for(lambda: rounds[0] >= 3, what="the churn to start")
        ws.send(json.dumps({"type": "devices"}))  # asked while the devices change...
        after = rounds[0] + 5
        wait_for(lambda: rounds[0] >= after, what="five more rounds")  # ...and changed after it
    finally:
        stop.set()
        worker.join(10)
    assert not worker.is_alive()
    # Once quiet, the list and every event after it are the gateway's devices now.
    ws.send(json.dumps({"type": "ping", "id": "end"}))
    listed: dict[str, str] = {}
    seen_list = False
    while True:
        msg = json.loads(ws.recv())
        if msg.get("id") == "end":
            break
        seen_list = seen_list or msg["type"] == "devices"
        if seen_list:
            apply(listed, msg)
    assert seen_list
    wait_for(lambda: all(link.state.value != "disconnected" for link in gw.links.values()), what="devices opened")
    # States settle after the ping was answered: take what came meanwhile.
    ws.send(json.dumps({"type": "ping", "id": "end2"}))
    while (msg := json.loads(ws.recv())).get("id") != "end2":
        apply(listed, msg)
    assert listed == {name: link.state.value for name, link in gw.links.items()}
    ws.close()


def test_the_list_of_1000_devices_is_one_message_made_quickly(start_gateway):
    gw = start_gateway(devices=[f"dev-{i:04d}=sim://?interval=0" for i in range(1000)])
    ws, _ = events(gw)
    t0 = time.monotonic()
    ws.send(json.dumps({"type": "devices"}))
    answer = json.loads(ws.recv())
    took = time.monotonic() - t0
    assert len(answer["devices"]) == 1000 and {d["state"] for d in answer["devices"]} == {"connected"}
    assert took < 1.0, f"{took:.3f} s for the list of 1000 devices"
    t0 = time.perf_counter()
    gw.device_list()
    print(f"\n1000 devices: answer in {took * 1000:.1f} ms, device_list() {1000 * (time.perf_counter() - t0):.2f} ms")
    ws.close()


def test_one_device_is_read_alone(start_gateway):
    """GET /api/devices/NAME: what the page polls for the open device (its counters)."""
    import urllib.error
    import urllib.request

    gw = start_gateway(devices=[f"d{i}=sim://?interval=0" for i in range(3)])
    with urllib.request.urlopen(gw.url + "/api/devices/d1", timeout=5) as resp:
        one = json.loads(resp.read())
    assert one == [d for d in json.loads(urllib.request.urlopen(gw.url + "/api/devices", timeout=5).read())
                   if d["name"] == "d1"][0]
    with pytest.raises(urllib.error.HTTPError) as exc:
        urllib.request.urlopen(gw.url + "/api/devices/nope", timeout=5)
    assert exc.value.code == 404 and exc.value.read().decode() == "no such device: 'nope'\n"
