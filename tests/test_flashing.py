"""Flashing through the gateway (issue 14): POST /api/devices/NAME/flash runs esptool in
process against the simulator's ESP8266 ROM loader, through the device's RFC 2217 server.

The request's checks need no flash at all (bad base64, offsets, sizes, roles); the flashes
are real: esptool 5.6.0 as a library, a 256 KiB random image, progress on a json client
(websocket-client), the `fw=` digest the simulator reports after the reset."""

from __future__ import annotations

import base64
import http.client
import json
import urllib.error
import urllib.request

import pytest

from gateway import flashing
from gateway.app import Gateway
from gateway.config import AuthConfig, Config, Token, apply_flags

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
