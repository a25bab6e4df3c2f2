"""SPEC section 6: tokens and roles, Origin, TLS, limits, and an allowlist of lines."""

from __future__ import annotations

import json
import os
import shutil
import ssl
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import websocket
from conftest import ws_url

from gateway.app import Gateway
from gateway.config import AuthConfig, Config, DeviceConfig, LimitsConfig, ServerConfig, Token
from gateway.security import RateLimit, origin_allowed, role_for

NODE_DIR = Path(__file__).parent / "node"
TOKENS = (Token("s3cret", "control"), Token("look-only", "view"))


@pytest.fixture
def gateway_with():
    started = []

    def start(**sections) -> Gateway:
        devices = sections.pop("devices", (DeviceConfig("sim", "sim://?interval=0"),))
        config = Config(server=sections.pop("server", ServerConfig(port=0)), devices=tuple(devices), **sections)
        gw = Gateway(config).start()
        started.append(gw)
        assert all(link.wait_connected(5) for link in gw.links.values())
        return gw

    yield start
    for gw in started:
        gw.shutdown()


def http_status(url: str, headers=None, context=None) -> int:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=5, context=context) as r:
            return r.status
    except urllib.error.HTTPError as err:
        return err.code


def refused(url: str, **kw) -> int:
    with pytest.raises(websocket.WebSocketBadStatusException) as err:
        websocket.create_connection(url, timeout=5, **kw)
    return err.value.status_code


# -- tokens and roles ---------------------------------------------------------------------


def test_handshake_without_a_valid_token_is_401_and_writes_nothing(gateway_with):
    gw = gateway_with(auth=AuthConfig(tokens=TOKENS))
    assert refused(ws_url(gw)) == 401
    assert refused(ws_url(gw, token="wrong")) == 401
    assert refused(ws_url(gw), header=["Authorization: Bearer nope"]) == 401
    assert refused(ws_url(gw, "nodevice")) == 401  # no device names for strangers either
    assert gw.stats.handshakes_refused_auth == 4
    assert gw.links["sim"].counters.lines_out == 0
    assert http_status(gw.url + "/api/devices") == 401
    assert http_status(gw.url + "/api/devices?token=s3cret") == 200
    assert http_status(gw.url + "/healthz") == 200


def test_control_token_by_query_or_bearer_header(gateway_with):
    gw = gateway_with(auth=AuthConfig(tokens=TOKENS))
    for ws in (websocket.create_connection(ws_url(gw, token="s3cret"), timeout=5),
               websocket.create_connection(ws_url(gw), header=["Authorization: Bearer s3cret"], timeout=5)):
        ws.send("PING")
        assert ws.recv() == "PONG"
        ws.close()


def test_view_role_receives_but_may_not_send(gateway_with):
    gw = gateway_with(auth=AuthConfig(tokens=TOKENS))
    viewer = websocket.create_connection(ws_url(gw, token="look-only", format="json"), timeout=5)
    controller = websocket.create_connection(ws_url(gw, token="s3cret"), timeout=5)
    assert json.loads(viewer.recv())["type"] == "hello"
    viewer.send(json.dumps({"line": "LED ON", "id": 3}))
    assert json.loads(viewer.recv()) == {"type": "error", "id": 3, "error": "role view may not send to the device"}
    viewer.send("LED ON")  # not json: refused all the same
    assert json.loads(viewer.recv()) == {"type": "error", "error": "role view may not send to the device"}
    controller.send("PING")
    assert controller.recv() == "PONG"
    assert json.loads(viewer.recv())["line"] == "PONG"  # the viewer sees device lines
    assert gw.links["sim"].counters.lines_out == 1
    assert gw.stats.lines_refused == 2
    viewer.close(), controller.close()


# -- Origin ---------------------------------------------------------------------------------


def test_cross_site_origin_is_403_own_origin_and_allowlist_pass(gateway_with):
    gw = gateway_with(auth=AuthConfig(allowed_origins=("https://dash.example.com",)))
    host, port = gw.address
    assert refused(ws_url(gw), origin="https://evil.example") == 403
    assert refused(ws_url(gw), origin=f"http://{host}:{port + 1}") == 403
    assert gw.stats.handshakes_refused_origin == 2
    for origin in (f"http://{host}:{port}", f"ws://{host}:{port}", "https://dash.example.com", None):
        ws = websocket.create_connection(ws_url(gw), timeout=5, **({"origin": origin} if origin else {"suppress_origin": True}))
        ws.send("PING")
        assert ws.recv() == "PONG"
        ws.close()
    assert gw.links["sim"].counters.lines_out == 4


def test_origin_rules():
    auth = AuthConfig()
    assert origin_allowed(auth, None, "h:1")
    assert origin_allowed(auth, "https://h:1", "h:1") and origin_allowed(auth, "wss://H:1/", "h:1")
    assert not origin_allowed(auth, "https://h:2", "h:1")
    assert not origin_allowed(auth, "null", "h:1")
    assert not origin_allowed(auth, "file://", "h:1")


def test_roles_rules():
    assert role_for(AuthConfig(), None) == "control"
    auth = AuthConfig(tokens=TOKENS)
    assert role_for(auth, "look-only") == "view"
    assert role_for(auth, "s3cre") is None and role_for(auth, "") is None and role_for(auth, None) is None


# -- TLS ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def certificate(tmp_path_factory):
    if not shutil.which("openssl"):
        pytest.fail("openssl is needed to make a test certificate")
    d = tmp_path_factory.mktemp("tls")
    cert, key = d / "gateway.crt", d / "gateway.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    return str(cert), str(key)


def test_tls_serves_https_and_wss_on_one_port(gateway_with, certificate):
    cert, key = certificate
    gw = gateway_with(server=ServerConfig(port=0, certfile=cert, keyfile=key))
    assert gw.url.startswith("https://")
    context = ssl.create_default_context(cafile=cert)
    assert http_status(gw.url + "/healthz", context=context) == 200
    url = ws_url(gw).replace("ws://", "wss://")
    clients = [websocket.create_connection(url, sslopt={"ca_certs": cert}, timeout=10) for _ in range(3)]
    clients[0].send("GO 5000")  # reads and writes on every TLS connection at once
    for ws in clients:
        assert [ws.recv().split()[0] for _ in range(5000)] == [f"t={i}" for i in range(1, 5001)]
    clients[1].send("ECHO over tls")
    assert all(ws.recv() == "over tls" for ws in clients)
    for ws in clients:
        ws.close()
    # A plain-text client on the TLS port is dropped and harms no one.
    with pytest.raises((urllib.error.URLError, ConnectionError, OSError)):
        urllib.request.urlopen(gw.url.replace("https", "http") + "/healthz", timeout=5)
    assert http_status(gw.url + "/healthz", context=context) == 200


def test_tls_with_node_ws(gateway_with, certificate):
    cert, key = certificate
    gw = gateway_with(server=ServerConfig(port=0, certfile=cert, keyfile=key))
    env = dict(os.environ, NODE_EXTRA_CA_CERTS=cert)
    out = subprocess.run(["node", str(NODE_DIR / "client.mjs"), ws_url(gw).replace("ws://", "wss://"), "1", "PING"],
                         capture_output=True, text=True, timeout=30, env=env)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["messages"] == ["PONG"] and result["closeCode"] == 1000


# -- limits -----------------------------------------------------------------------------------


def test_rate_limit_errors_then_closes_with_1008(gateway_with):
    gw = gateway_with(limits=LimitsConfig(lines_per_second=5))
    ws = websocket.create_connection(ws_url(gw, format="json"), timeout=5)
    json.loads(ws.recv())
    errors, acks, close = 0, 0, None
    for i in range(30):  # one at a time, as fast as the answers come
        ws.send(json.dumps({"line": f"ECHO {i}", "id": i}))
        while True:
            frame = ws.recv_frame()
            if frame.opcode == websocket.ABNF.OPCODE_CLOSE:
                close = int.from_bytes(frame.data[:2], "big")
                break
            msg = json.loads(frame.data)
            if msg["type"] == "ack":
                acks += 1
                break
            if msg["type"] == "error":
                assert msg["error"] == "rate limit: at most 5 lines per second"
                errors += 1
                break
        if close is not None:
            break
    assert close == 1008
    # Five lines pass (a second's worth; maybe one more refilled), five are refused,
    # and the sixth refused in a row closes the connection.
    assert 5 <= acks <= 6 and errors == 5
    assert gw.stats.rate_limited == 6
    assert gw.links["sim"].counters.lines_out == acks


def test_rate_limit_bucket():
    now = [0.0]
    rate = RateLimit(2, clock=lambda: now[0])
    assert [rate.allow() for _ in range(3)] == [True, True, False]
    now[0] += 0.5
    assert rate.allow() and not rate.allow()
    assert not rate.persistent
    assert [rate.allow() for _ in range(2)] == [False, False] and rate.persistent


def test_device_allowlist(gateway_with):
    dev = DeviceConfig("sim", "sim://?interval=0", allow=(r"^LED (ON|OFF)$", r"^PING$"))
    gw = gateway_with(devices=[dev])
    js = websocket.create_connection(ws_url(gw, format="json"), timeout=5)
    json.loads(js.recv())
    js.send(json.dumps({"line": "GO 100000", "id": 1}))
    assert json.loads(js.recv()) == {"type": "error", "id": 1, "error": "line not allowed on device sim"}
    text = websocket.create_connection(ws_url(gw), timeout=5)
    text.send("PING\nSET interval 0.001")  # one line refused: nothing of the frame is written
    text.send("PING")
    assert text.recv() == "PONG"
    binary = websocket.create_connection(ws_url(gw, format="binary"), timeout=5)
    binary.send_binary(b"GO 5\n")
    js.send(json.dumps({"line": "LED ON", "id": 2}))
    assert json.loads(js.recv())["line"] == "PONG"
    assert json.loads(js.recv()) == {"type": "ack", "id": 2}
    assert json.loads(js.recv())["line"] == "OK LED ON"
    assert gw.links["sim"].counters.lines_out == 2
    assert gw.stats.lines_refused == 3
    for ws in (js, text, binary):
        ws.close()
