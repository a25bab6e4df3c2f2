"""Flashing through the gateway (issue 14): POST /api/devices/NAME/flash runs esptool in
process against the simulator's ESP8266 ROM loader, through the device's RFC 2217 server.

The request's checks need no flash at all (bad base64, offsets, sizes, roles); the flashes
are real: esptool 5.6.0 as a library, a 256 KiB random image, progress on a json client
(websocket-client), the `fw=` digest the simulator reports after the reset."""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import os
import threading
import time
import urllib.error
import urllib.request

import pytest
import websocket
from conftest import wait_for, ws_url

from gateway import flashing
from gateway.app import Gateway
from gateway.config import AuthConfig, Config, Token, apply_flags
from gateway.rfc2217 import Rfc2217Server

KIB = 1024


def call(gw, method: str, path: str, body=None, token: str | None = None, ctype="application/json",
         headers: dict | None = None) -> tuple[int, object]:
    data = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
    req = urllib.request.Request(gw.url + path, data=data, method=method, headers=dict(headers or {}))
    if data is not None and ctype:
        req.add_header("Content-Type", ctype)
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def one_file(data: bytes = b"\x01" * 4096, offset="0x0", name="app.bin") -> dict:
    return {"files": [{"offset": offset, "name": name, "data": b64(data)}]}


# -- the request, checked before anything happens ----------------------------------------


@pytest.mark.parametrize("body, error", [
    ({}, "POST /api/devices/sim/flash: files: a list of"),
    ({"files": []}, "POST /api/devices/sim/flash: files: a list of"),
    ({"files": [], "extra": 1}, "POST /api/devices/sim/flash: unknown key 'extra' (known: baud, files)"),
    ({**one_file(), "baud": 12345}, "POST /api/devices/sim/flash: baud = 12345: one of 9600, "),
    ({**one_file(), "baud": "460800"}, "POST /api/devices/sim/flash: baud = '460800': one of "),
    ({"files": ["app.bin"]}, "POST /api/devices/sim/flash: files[0]: an object"),
    ({"files": [{"data": "AAAA", "path": "/etc/passwd"}]},
     "POST /api/devices/sim/flash: files[0]: unknown key 'path' (known: data, name, offset)"),
    ({"files": [{"name": "a.bin", "data": "not base64!"}]},
     "POST /api/devices/sim/flash: files[0] (a.bin): data is not valid base64"),
    ({"files": [{"name": "a.bin", "data": "AAA"}]}, "POST /api/devices/sim/flash: files[0] (a.bin): data is not valid base64"),
    ({"files": [{"name": "a.bin", "data": ""}]}, "POST /api/devices/sim/flash: files[0] (a.bin): data is empty"),
    ({"files": [{"name": "a.bin"}]}, "POST /api/devices/sim/flash: files[0] (a.bin): data: the image as a base64 string"),
    (one_file(offset="zero"), "POST /api/devices/sim/flash: files[0]: offset = 'zero': not a number (hex with 0x, or decimal)"),
    (one_file(offset="0x١٠"), "POST /api/devices/sim/flash: files[0]: offset = '0x١٠': not a number"),
    (one_file(offset="0x1_000"), "POST /api/devices/sim/flash: files[0]: offset = '0x1_000': not a number"),
    (one_file(offset=-4096), "POST /api/devices/sim/flash: files[0]: offset = -4096: must be from 0x0 to 0xffffff"),
    (one_file(offset="0x1000000"), "POST /api/devices/sim/flash: files[0]: offset = '0x1000000': must be from 0x0"),
    (one_file(offset="0x10"), "POST /api/devices/sim/flash: files[0]: offset = '0x10': must be a multiple of 0x1000"),
    (one_file(offset=True), "POST /api/devices/sim/flash: files[0]: offset = True: give a number"),
    (one_file(offset="0xfff000", data=b"\xff" * 8192),
     "POST /api/devices/sim/flash: files[0] (app.bin): 8192 bytes at 0xfff000 end beyond 0x1000000"),
    (one_file(name=""), "POST /api/devices/sim/flash: files[0]: name = '': 1 to 100 printable characters"),
    (one_file(name="a\nb"), "POST /api/devices/sim/flash: files[0]: name = 'a\\nb': 1 to 100 printable"),
    ({"files": [{"offset": "0x0", "name": "a.bin", "data": b64(b"\0" * 8192)},
                {"offset": "0x1000", "name": "b.bin", "data": b64(b"\0" * 10)}]},
     "POST /api/devices/sim/flash: a.bin (8192 bytes at 0x0) overlaps b.bin at 0x1000"),
    ({"files": [{"offset": hex(n * 0x100000), "data": b64(b"\0" * (1024 * 1024))} for n in range(4)]
      + [{"offset": "0x400000", "data": b64(b"\0")}]},
     "POST /api/devices/sim/flash: 4194305 bytes of image or more; at most 4194304 (4 MiB)"),
    ({"files": [{"data": b64(b"\0")}] * 17}, "POST /api/devices/sim/flash: files: 17 files; at most 16"),
])
def test_a_bad_request_is_refused_with_one_line_and_nothing_starts(start_gateway, body, error):
    gw = start_gateway()
    status, text = call(gw, "POST", "/api/devices/sim/flash", body)
    assert status == 400, text
    assert text.startswith(error) and text.count("\n") == 1, text
    assert call(gw, "GET", "/api/devices/sim/flash") == (200, {"device": "sim", "state": "idle"})
    assert gw.links["sim"].state.value == "connected"


def test_the_request_wants_json_a_known_device_and_a_bounded_size(start_gateway):
    gw = start_gateway()
    assert call(gw, "POST", "/api/devices/sim/flash", one_file(), ctype="text/plain")[0] == 415
    assert call(gw, "POST", "/api/devices/sim/flash", b"{not json")[0] == 400
    assert call(gw, "POST", "/api/devices/nope/flash", one_file()) == (404, "no such device: 'nope'\n")
    assert call(gw, "GET", "/api/devices/nope/flash") == (404, "no such device: 'nope'\n")
    assert call(gw, "PUT", "/api/devices/sim/flash", one_file())[0] == 405
    assert call(gw, "DELETE", "/api/devices/sim/flash") == (
        409, "DELETE /api/devices/sim/flash: no flash is running on device sim\n")
    # 4 MiB of image is about 5.6 MB of base64: the limit is checked before the body is read.
    host, port = gw.address
    conn = http.client.HTTPConnection(host, port, timeout=10)
    conn.putrequest("POST", "/api/devices/sim/flash")
    conn.putheader("Content-Type", "application/json")
    conn.putheader("Content-Length", str(flashing.MAX_BODY + 1))
    conn.endheaders()
    resp = conn.getresponse()
    assert (resp.status, resp.read()) == (413, f"at most {flashing.MAX_BODY} bytes of JSON\n".encode())
    conn.close()
    assert call(gw, "POST", "/api/devices/sim/flash", one_file(), headers={"Origin": "http://evil.example"}) == (
        403, "origin not allowed\n")


def test_a_device_without_signals_cannot_be_flashed(start_gateway, simulator):
    sim = simulator("tcp://127.0.0.1:0")
    gw = start_gateway(devices=(f"esp={sim.url}",), wait_connected=False)
    assert gw.links["esp"].wait_connected(5)
    status, text = call(gw, "POST", "/api/devices/esp/flash", one_file())
    assert status == 409 and text.startswith(
        "POST /api/devices/esp/flash: device esp cannot carry signals (DTR, RTS): esptool could not reset it"), text


@pytest.fixture
def gateway_with_roles():
    config = apply_flags(Config(auth=AuthConfig(tokens=(
        Token("look-only", "view"), Token("driver", "control"), Token("boss-token", "admin")))),
        "127.0.0.1", 0, ["sim=sim://?interval=0"])
    gw = Gateway(config).start()
    yield gw
    gw.shutdown()


def test_only_an_admin_may_flash_or_cancel(gateway_with_roles):
    gw = gateway_with_roles
    assert call(gw, "POST", "/api/devices/sim/flash", one_file())[0] == 401
    assert call(gw, "GET", "/api/devices/sim/flash")[0] == 401
    for token, role in (("look-only", "view"), ("driver", "control")):
        assert call(gw, "POST", "/api/devices/sim/flash", one_file(), token) == (
            403, f"role {role} may not flash devices: flashing wants an admin token\n")
        assert call(gw, "DELETE", "/api/devices/sim/flash", token=token)[0] == 403
        assert call(gw, "GET", "/api/devices/sim/flash", token=token) == (200, {"device": "sim", "state": "idle"})
    # An admin gets past the role check (to the request's own checks).
    status, text = call(gw, "POST", "/api/devices/sim/flash", {"files": []}, "boss-token")
    assert status == 400 and "files: a list of" in text


def test_parse_request_sorts_the_files_and_takes_decimal_offsets():
    req = flashing.parse_request({"files": [
        {"offset": "65536", "name": "app.bin", "data": b64(b"\1" * 100)},
        {"offset": 0, "name": "boot.bin", "data": b64(b"\2" * 4096)},
        {"offset": " 0x8000 ", "data": b64(b"\3")},
    ]})
    assert [(i.offset, i.name, len(i.data)) for i in req.images] == [
        (0, "boot.bin", 4096), (0x8000, "file2.bin", 1), (0x10000, "app.bin", 100)]
    assert req.baud == flashing.DEFAULT_BAUD and req.size == 4197


# -- real flashes: esptool in the gateway, the simulator's ROM loader ----------------------


def image(size: int) -> bytes:
    """Random bytes, not starting with an ESP image header (0xE9: esptool would patch the
    flash parameters in it) nor ending in 0xFF (the simulator's id leaves those out)."""
    data = bytearray(os.urandom(size))
    data[0] = 0x00 if data[0] == 0xE9 else data[0]
    data[-1] = 0x00 if data[-1] == 0xFF else data[-1]
    return bytes(data)


def fw_of(data: bytes) -> str:
    """What the simulator says after booting `data` flashed at 0x0 (SPEC section 9)."""
    return hashlib.sha256(data).hexdigest()[:12]


class JsonClient:
    """A json-mode client of the device (websocket-client), keeping what it received."""

    def __init__(self, gw, device: str = "sim"):
        self.ws = websocket.create_connection(ws_url(gw, device, format="json"), timeout=30)
        self.seen: list[dict] = []
        assert self.next()["type"] == "hello"

    def next(self) -> dict:
        msg = json.loads(self.ws.recv())
        self.seen.append(msg)
        return msg

    def until(self, predicate, limit: int = 5000) -> dict:
        for _ in range(limit):
            msg = self.next()
            if predicate(msg):
                return msg
        raise AssertionError(f"not seen in {limit} messages; last: {self.seen[-3:]}")

    def flash(self, event: str | None = None) -> list[dict]:
        return [m for m in self.seen if m["type"] == "flash" and (event is None or m["event"] == event)]

    def close(self) -> None:
        self.ws.close()


def post_flash(gw, data: bytes, baud: int = 460800, name: str = "app.bin"):
    return call(gw, "POST", "/api/devices/sim/flash",
                {"baud": baud, "files": [{"offset": "0x0", "name": name, "data": b64(data)}]})


def test_a_flash_writes_the_image_with_progress_and_the_device_boots_it(start_gateway):
    gw = start_gateway()
    client = JsonClient(gw)
    data = image(256 * KIB)
    status, job = post_flash(gw, data)
    assert status == 202, job
    assert job["state"] == "running" and job["total"] == 256 * KIB and job["baud"] == 460800
    assert job["files"] == [{"name": "app.bin", "offset": "0x0", "size": 256 * KIB}]
    end = client.until(lambda m: m["type"] == "flash" and m["event"] == "end")
    assert end["state"] == "done", end
    assert end["chip"] == "ESP8266" and end["bytes"] == end["total"] == 256 * KIB and end["percent"] == 100
    # While esptool held the device its clients saw it as external, by the flash.
    assert any(m["type"] == "status" and m["state"] == "external" and m["by"].startswith("flash (") for m in client.seen)
    progress = client.flash("progress")
    assert len(progress) >= 3, progress
    percents = [m["percent"] for m in progress]
    assert percents == sorted(percents) and percents[-1] == 100 and progress[-1]["bytes"] == 256 * KIB
    assert progress[-1]["speed"] > 0
    lines = [m["line"] for m in client.flash("log")]
    assert "Detecting chip type... ESP8266" in lines and "Hash of data verified." in lines, lines
    assert any(line.startswith("Wrote 262144 bytes at 0x00000000") for line in lines), lines
    # Then the device is back and boots what was written: every client sees it.
    fw = f"fw={fw_of(data)}"
    client.until(lambda m: m["type"] == "line" and m["line"] == f"boot {fw}")
    assert gw.links["sim"].state.value == "connected"
    client.ws.send(json.dumps({"line": "GET fw", "id": 1, "reply": True}))
    assert client.until(lambda m: m["type"] in ("reply", "error"))["line"] == fw
    assert call(gw, "GET", "/api/devices/sim/flash")[1]["state"] == "done"
    client.close()


def test_cancel_mid_flash_leaves_the_device_usable_and_one_flash_runs_at_a_time(start_gateway):
    gw = start_gateway(devices=("sim=sim://?interval=0&baud=115200",))
    client = JsonClient(gw)
    data = image(256 * KIB)  # at 115200 baud about 23 s of writing: cancelled long before
    assert post_flash(gw, data, baud=115200)[0] == 202
    client.until(lambda m: m["type"] == "flash" and m["event"] == "progress")
    status, text = post_flash(gw, image(4 * KIB))
    assert status == 409 and text.startswith("POST /api/devices/sim/flash: device sim is being flashed (by 127.0.0.1:"), text
    # Clients watch but cannot write while esptool has the device.
    client.ws.send(json.dumps({"line": "PING", "id": 7}))
    error = client.until(lambda m: m["type"] == "error" and m.get("id") == 7)
    assert "held by flash (" in error["error"]
    started = time.monotonic()
    status, job = call(gw, "DELETE", "/api/devices/sim/flash")
    assert status == 200 and job["state"] == "cancelled" and 0 < job["percent"] < 100, job
    assert time.monotonic() - started < flashing.CANCEL_GRACE + 1
    end = client.until(lambda m: m["type"] == "flash" and m["event"] == "end")
    assert end["state"] == "cancelled" and end["error"] == "cancelled"
    # Back to the bridge: connected, reset, and it answers the line protocol again.
    client.until(lambda m: m["type"] == "line" and m["line"] == "ready")
    assert gw.links["sim"].state.value == "connected"
    client.ws.send(json.dumps({"line": "PING", "id": 8, "reply": True}))
    assert client.until(lambda m: m["type"] in ("reply", "error") and m.get("id") == 8) == {
        "type": "reply", "id": 8, "line": "PONG"}
    assert call(gw, "DELETE", "/api/devices/sim/flash")[0] == 409  # nothing runs now
    assert not [t.name for t in threading.enumerate() if t.name.startswith(("flash:", "pySerial"))]
    client.close()


def test_shutdown_mid_flash_stops_it_and_every_thread(start_gateway):
    gw = start_gateway(devices=("sim=sim://?interval=0&baud=115200",))
    client = JsonClient(gw)
    assert post_flash(gw, image(256 * KIB), baud=115200)[0] == 202
    client.until(lambda m: m["type"] == "flash" and m["event"] == "phase" and m["phase"] == "writing")
    started = time.monotonic()
    gw.shutdown()
    assert time.monotonic() - started < 6
    assert not [t.name for t in threading.enumerate() if t.name.startswith(("flash:", "rfc2217", "pySerial"))]


def test_two_devices_flash_at_once_each_with_its_own_output(start_gateway):
    gw = start_gateway(devices=("sim=sim://?interval=0", "two=sim://?interval=0"))
    clients = {name: JsonClient(gw, name) for name in ("sim", "two")}
    images = {"sim": image(64 * KIB), "two": image(96 * KIB)}
    for name, data in images.items():
        status, _ = call(gw, "POST", f"/api/devices/{name}/flash",
                         {"files": [{"offset": "0x0", "name": f"{name}.bin", "data": b64(data)}]})
        assert status == 202
    for name, client in clients.items():
        end = client.until(lambda m: m["type"] == "flash" and m["event"] == "end")
        assert end["state"] == "done" and end["device"] == name and end["total"] == len(images[name]), end
        # esptool's logger is one per process: each line reached the device it was about.
        wrote = [m["line"] for m in client.flash("log") if m["line"].startswith("Wrote ")]
        assert wrote == [wrote[0]] and wrote[0].startswith(f"Wrote {len(images[name])} bytes"), wrote
        client.until(lambda m: m["type"] == "line" and m["line"] == f"boot fw={fw_of(images[name])}")
        client.close()


@pytest.mark.parametrize("method, body", [("DELETE", None), ("PATCH", {"history": 50})])
def test_a_device_removed_or_changed_mid_flash_ends_it(start_gateway, method, body):
    gw = start_gateway(devices=("sim=sim://?interval=0&baud=115200",))
    client = JsonClient(gw)
    assert post_flash(gw, image(256 * KIB), baud=115200)[0] == 202
    client.until(lambda m: m["type"] == "flash" and m["event"] == "progress")
    assert call(gw, method, "/api/devices/sim", body)[0] == 200
    job = wait_for(lambda: gw.flashing.status("sim")["state"] != "running" and gw.flashing.status("sim"),
                   flashing.CANCEL_GRACE + 5, what="the flash to end")
    assert job["state"] == "cancelled" and job["error"] == "device sim was removed or changed during the flash", job
    wait_for(lambda: not [t for t in threading.enumerate() if t.name.startswith(("flash:", "pySerial"))],
             what="the flash's threads to end")


def test_a_device_held_over_rfc2217_is_not_flashed_until_released(start_gateway):
    from serial import rfc2217

    gw = start_gateway(devices=("sim=sim://?interval=0",))
    server = Rfc2217Server(gw, gw.links["sim"], "127.0.0.1", 0, label="a remote esptool").start()
    try:
        port = rfc2217.Serial(f"rfc2217://127.0.0.1:{server.address[1]}", timeout=1)
        wait_for(lambda: gw.links["sim"].external, what="the RFC 2217 client to hold the device")
        status, text = post_flash(gw, image(4 * KIB))
        assert (status, text) == (409, "POST /api/devices/sim/flash: device sim is held by a remote esptool; "
                                       "flash it once it is released\n")
        port.close()
        wait_for(lambda: gw.links["sim"].state.value == "connected", what="the device to be released")
        assert post_flash(gw, image(4 * KIB))[0] == 202
        wait_for(lambda: gw.flashing.status("sim")["state"] == "done", 15, what="the flash")
    finally:
        server.stop()
