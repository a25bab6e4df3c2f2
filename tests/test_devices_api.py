"""Devices at run time through the HTTP API (SPEC section 8): POST, PATCH and DELETE
/api/devices with urllib, their 400/403/409 answers, the admin role, and the device
events on WS /ws/_events with websocket-client."""

from __future__ import annotations

import json
import os
import pty
import struct
import urllib.error
import urllib.request

import pytest
import websocket
from conftest import wait_for, ws_url

from gateway.app import Gateway
from gateway.config import AuthConfig, Config, Token, apply_flags


def call(gw, method: str, path: str, body=None, token: str | None = None, ctype="application/json",
         headers: dict | None = None) -> tuple[int, object]:
    data = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
    req = urllib.request.Request(gw.url + path, data=data, method=method, headers=dict(headers or {}))
    if data is not None and ctype:
        req.add_header("Content-Type", ctype)
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            raw = resp.read()
            return resp.status, json.loads(raw)
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def events(gw, **params) -> websocket.WebSocket:
    ws = websocket.create_connection(ws_url(gw, "_events", **params), timeout=5)
    hello = json.loads(ws.recv())
    assert hello["type"] == "hello"
    return ws


def next_device_event(ws, device: str, event: str) -> dict:
    for _ in range(50):
        msg = json.loads(ws.recv())
        if msg["type"] == "device" and msg["device"] == device and msg["event"] == event:
            return msg
    raise AssertionError(f"no {event} event for {device}")


def test_post_adds_a_device_that_clients_can_use_at_once(start_gateway):
    gw = start_gateway()
    ev = events(gw)
    status, body = call(gw, "POST", "/api/devices", {"name": "two", "url": "sim://?interval=0",
                                                      "buttons": [{"label": "Ping", "line": "PING"}]})
    assert status == 201
    assert body["name"] == "two" and body["kind"] == "sim" and body["buttons"] == [{"label": "Ping", "line": "PING"}]
    assert body["signals"] is True and body["reset"] == "esp" and body["baudrate"] is None
    assert next_device_event(ev, "two", "added")["type"] == "device"
    assert next_device_event(ev, "two", "state")["state"] == "connected"
    ws = websocket.create_connection(ws_url(gw, "two"), timeout=5)
    ws.send("PING")
    assert ws.recv() == "PONG"
    ws.close()
    ev.close()
    assert [d["name"] for d in call(gw, "GET", "/api/devices")[1]] == ["sim", "two"]


@pytest.mark.parametrize("body, status, error", [
    ({"name": "sim", "url": "sim://"}, 409, "POST /api/devices: name = 'sim': a device has this name"),
    ({"name": "x", "url": "foo://bar"}, 400, "POST /api/devices: url = 'foo://bar': unknown scheme 'foo'"),
    ({"name": "x y", "url": "sim://"}, 400, "POST /api/devices: name = 'x y': use letters, digits"),
    ({"name": "x", "url": "sim://", "max_line": "big"}, 400, "POST /api/devices: max_line = 'big': expected int"),
    ({"name": "x", "url": "sim://", "colour": 1}, 400, "POST /api/devices: colour = 1: unknown key (known: name, url"),
    ({"name": "x", "url": "sim://", "baudrate": 9600}, 400,
     "POST /api/devices: baudrate = 9600: only serial://, hwgrep://, rfc2217:// devices have a baud rate"),
    ({"url": "sim://"}, 400, "POST /api/devices: name = None: missing"),
    ([1, 2], 400, 'expected an object such as {"name": "esp"'),
    (b"{not json", 400, "not JSON: "),
])
def test_post_refuses_bad_devices_with_one_line(start_gateway, body, status, error):
    gw = start_gateway()
    got, text = call(gw, "POST", "/api/devices", body)
    assert got == status
    assert text.startswith(error) and text.count("\n") == 1, text
    assert list(gw.links) == ["sim"]


def test_post_wants_json_and_an_allowed_origin(start_gateway):
    gw = start_gateway()
    body = {"name": "x", "url": "sim://"}
    # A cross-site form posts text/plain; a page of another site sends its Origin.
    assert call(gw, "POST", "/api/devices", body, ctype="text/plain") == (
        415, "send the device as JSON with Content-Type: application/json, not 'text/plain'\n")
    assert call(gw, "POST", "/api/devices", body, headers={"Origin": "http://evil.example"}) == (
        403, "origin not allowed\n")
    assert call(gw, "POST", "/api/devices", b"x" * 70000)[0] == 413
    host, port = gw.address
    assert call(gw, "POST", "/api/devices", body, headers={"Origin": f"http://{host}:{port}"})[0] == 201
    assert call(gw, "PUT", "/api/devices", body)[0] == 405


def test_patch_changes_keys_and_reopens_the_device_clients_stay(start_gateway):
    master, slave = pty.openpty()
    try:
        path = os.ttyname(slave)
        gw = start_gateway(devices=(f"tty=serial://{path}?baudrate=115200",), wait_connected=False)
        assert gw.links["tty"].wait_connected(5)
        ws = websocket.create_connection(ws_url(gw, "tty", format="json"), timeout=5)
        assert json.loads(ws.recv())["type"] == "hello"
        old = gw.links["tty"]
        status, body = call(gw, "PATCH", "/api/devices/tty", {"baudrate": 9600, "eol": "crlf"})
        assert status == 200 and body["baudrate"] == 9600 and body["url"] == f"serial://{path}?baudrate=9600"
        link = gw.links["tty"]
        assert link is not old and link.config.eol == "crlf" and link.transport.settings == {"baudrate": 9600}
        states = []
        while "connected" not in states[-1:]:
            msg = json.loads(ws.recv())
            if msg["type"] == "status":
                states.append(msg["state"])
        assert states[-1] == "connected" and len(states) >= 2  # it went away and came back
        ws.send(json.dumps({"line": "hello", "id": 1}))
        assert json.loads(ws.recv()) == {"type": "ack", "id": 1}
        assert os.read(master, 100) == b"hello\r\n"  # the new eol
        assert call(gw, "PATCH", "/api/devices/tty", {"eol": None})[0] == 200  # null: back to the default
        assert gw.links["tty"].config.eol == "lf"
        assert call(gw, "PATCH", "/api/devices/tty", {"name": "other"}) == (
            400, "PATCH /api/devices/tty: name = 'other': a device keeps its name\n")
        assert call(gw, "PATCH", "/api/devices/tty", {"pace_ms": -1}) == (
            400, "PATCH /api/devices/tty: pace_ms = -1: expected 0 to 60000 ms\n")
        assert call(gw, "PATCH", "/api/devices/nope", {"eol": "cr"}) == (404, "no such device: 'nope'\n")
        ws.close()
    finally:
        os.close(master)
        os.close(slave)


def test_delete_closes_the_device_clients_get_removed_and_1001(start_gateway):
    gw = start_gateway(devices=("sim=sim://?interval=0", "b=sim://?interval=0"))
    ev = events(gw)
    ws = websocket.create_connection(ws_url(gw, "b", format="json"), timeout=5)
    assert json.loads(ws.recv())["type"] == "hello"
    assert call(gw, "DELETE", "/api/devices/b") == (200, {"name": "b", "removed": True})
    msgs = []
    while True:
        opcode, data = ws.recv_data(control_frame=True)
        if opcode == websocket.ABNF.OPCODE_CLOSE:
            break
        msgs.append(json.loads(data))
    assert {"type": "status", "device": "b", "state": "removed"} in msgs
    assert struct.unpack(">H", data[:2])[0] == 1001
    assert next_device_event(ev, "b", "removed") == {"type": "device", "event": "removed", "device": "b"}
    assert list(gw.links) == ["sim"] and call(gw, "DELETE", "/api/devices/b")[0] == 404
    # the name is free again:
    assert call(gw, "POST", "/api/devices", {"name": "b", "url": "sim://"})[0] == 201
    ev.close()


@pytest.fixture
def gateway_with_roles():
    config = apply_flags(Config(auth=AuthConfig(tokens=(
        Token("look-only", "view"), Token("driver", "control"), Token("boss-token", "admin")))),
        "127.0.0.1", 0, ["sim=sim://?interval=0"])
    gw = Gateway(config).start()
    yield gw
    gw.shutdown()


def test_view_and_control_tokens_get_403_admin_may(gateway_with_roles):
    gw = gateway_with_roles
    body = {"name": "x", "url": "sim://"}
    assert call(gw, "POST", "/api/devices", body)[0] == 401
    for token, role in (("look-only", "view"), ("driver", "control")):
        assert call(gw, "POST", "/api/devices", body, token) == (
            403, f"role {role} may not add, change or remove devices: the device API wants an admin token\n")
        assert call(gw, "DELETE", "/api/devices/sim", token=token)[0] == 403
        assert call(gw, "GET", "/api/ports", token=token)[0] == 200  # reading is for every role
    assert call(gw, "GET", "/api/ports")[0] == 401
    assert call(gw, "POST", "/api/devices", body, "boss-token")[0] == 201
    assert call(gw, "PATCH", "/api/devices/x", {"history": 5}, "boss-token")[0] == 200
    assert call(gw, "DELETE", "/api/devices/x", token="boss-token")[0] == 200
    # The events stream wants a token too; an admin's hello says so.
    with pytest.raises(websocket.WebSocketBadStatusException) as exc:
        websocket.create_connection(ws_url(gw, "_events"), timeout=5)
    assert exc.value.status_code == 401
    ev = events(gw, token="boss-token")
    ev.send(json.dumps({"type": "ping", "id": 1}))
    assert json.loads(ev.recv()) == {"type": "pong", "id": 1}
    ev.send("hello")
    assert json.loads(ev.recv())["error"].startswith("this stream only sends events")
    ev.close()


def test_the_token_made_beyond_loopback_is_admin():
    config = apply_flags(Config(), "0.0.0.0", 0, ["sim=sim://?interval=0"])
    gw = Gateway(config).start()
    try:
        token = gw.access.generated_token
        req = urllib.request.Request(f"http://127.0.0.1:{gw.address[1]}/api/devices?token={token}", method="POST",
                                     data=b'{"name": "x", "url": "sim://"}',
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as resp:
            assert resp.status == 201
        assert wait_for(lambda: "x" in gw.links)
    finally:
        gw.shutdown()
