"""SPEC section 6: Host allowlist, tokens and roles (and the token made beyond loopback),
Origin, TLS, limits, and an allowlist of lines."""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import ssl
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import websocket
from conftest import metric, ws_url

from gateway.app import Gateway
from gateway.config import AuthConfig, Config, DeviceConfig, LimitsConfig, ServerConfig, Token
from gateway.security import Access, HostPolicy, LineFilter, RateLimit, origin_allowed, role_for, split_host

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
    assert role_for(AuthConfig(), None) == "admin"  # no tokens (loopback): everyone is admin
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


def test_allowlist_patterns_match_the_whole_line(gateway_with):
    assert LineFilter(("LED (ON|OFF)", "PING|GET temp")).allows("LED ON")
    f = LineFilter(("LED (ON|OFF)", "PING|GET temp"))
    for line in ("XLED ON", "LED ON; REBOOT", "RESET LED OFF", "LED ON\n", "PINGX", "GET temperature"):
        assert not f.allows(line), line
    assert f.allows("GET temp") and f.allows("PING")
    gw = gateway_with(devices=[DeviceConfig("sim", "sim://?interval=0", allow=("LED (ON|OFF)",))])
    js = websocket.create_connection(ws_url(gw, format="json"), timeout=5)
    json.loads(js.recv())
    for i, line in enumerate(("XLED ON", "LED ON; REBOOT", "RESET LED OFF")):
        js.send(json.dumps({"line": line, "id": i}))
        assert json.loads(js.recv()) == {"type": "error", "id": i, "error": "line not allowed on device sim"}
    js.send(json.dumps({"line": "LED ON", "id": 9}))
    assert json.loads(js.recv()) == {"type": "ack", "id": 9}
    assert gw.links["sim"].counters.lines_out == 1
    js.close()


# -- Host allowlist (DNS rebinding) -----------------------------------------------------------


def raw_request(gw, request: bytes) -> tuple[int, bytes]:
    """Send `request` as is on a raw socket; (status, body) of the answer."""
    with socket.create_connection(gw.address, timeout=5) as s:
        s.sendall(request)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


def get_with_host(gw, path: str, host: str | None, version: str = "1.1") -> tuple[int, bytes]:
    header = f"Host: {host}\r\n" if host is not None else ""
    return raw_request(gw, f"GET {path} HTTP/{version}\r\n{header}Connection: close\r\n\r\n".encode())


def test_rebound_host_is_refused_on_every_request(gateway_with):
    gw = gateway_with()
    port = gw.address[1]
    evil = f"evil.example:{port}"
    # The attack: a page on http://evil.example:PORT, its name rebound to 127.0.0.1.
    assert refused(ws_url(gw), host=evil, origin=f"http://{evil}") == 403
    for path in ("/api/devices", "/metrics", "/healthz", "/", "/ws/sim", "/nope"):
        status, body = get_with_host(gw, path, evil)
        assert status == 403, path
        assert body == f"host {evil!r} not allowed: add it to [server] allowed_hosts\n".encode()
    assert gw.stats.requests_refused_host == 7
    assert gw.stats.handshakes_refused_origin == 0  # refused before any route
    assert metric(gw, "gateway_requests_refused_host_total") == 7
    assert gw.links["sim"].counters.lines_out == 0
    # Loopback names, with or without the port, and the bound address are served.
    for host in ("localhost", f"localhost:{port}", "LOCALHOST", "127.0.0.1", f"127.0.0.1:{port}", "[::1]",
                 f"[::1]:{port}"):
        assert get_with_host(gw, "/api/devices", host)[0] == 200, host
    ws = websocket.create_connection(ws_url(gw), host=f"localhost:{port}", origin=f"http://localhost:{port}", timeout=5)
    ws.send("PING")
    assert ws.recv() == "PONG"
    ws.close()


def test_missing_or_malformed_host(gateway_with):
    gw = gateway_with()
    assert get_with_host(gw, "/healthz", None) == (403, b"no Host header\n")
    assert get_with_host(gw, "/healthz", None, version="1.0")[0] == 200  # not a browser: HTTP/1.0 may omit it
    for host in ("", "localhost:http", "localhost:\u00b2", "localhost:1:2", "[::1", "user@localhost", "127.0.0.1/x"):
        assert get_with_host(gw, "/healthz", host)[0] == 403, host


def test_bound_address_is_allowed(gateway_with):
    gw = gateway_with(server=ServerConfig(host="127.0.0.2", port=0))
    assert get_with_host(gw, "/healthz", f"127.0.0.2:{gw.address[1]}")[0] == 200
    assert get_with_host(gw, "/healthz", "127.0.0.3")[0] == 403


def test_allowed_hosts_exact_domain_and_star(gateway_with):
    gw = gateway_with(server=ServerConfig(port=0, allowed_hosts=("gw.example.com", ".lan")))
    for host in ("gw.example.com", "GW.example.com:443", "lan", "pi.lan", "a.b.lan:8765"):
        assert get_with_host(gw, "/healthz", host)[0] == 200, host
    for host in ("example.com", "x.gw.example.com", "evil.example", "xlan", "lan.evil"):
        assert get_with_host(gw, "/healthz", host)[0] == 403, host
    ws = websocket.create_connection(ws_url(gw), host="pi.lan:80", origin="https://pi.lan:80", timeout=5)
    ws.close()
    anyone = gateway_with(server=ServerConfig(port=0, allowed_hosts=("*",)))
    assert get_with_host(anyone, "/healthz", "evil.example")[0] == 200


def test_host_rules():
    assert split_host("LOCALHOST:8765") == ("localhost", 8765)
    assert split_host("[0:0::1]") == ("[::1]", None)
    assert split_host("h:\u00b2") is None and split_host("h:1:2") is None and split_host("") is None
    policy = HostPolicy((".example.com",), own_names=("127.0.0.2",))
    assert policy.allows("a.example.com") and policy.allows("example.com") and not policy.allows("badexample.com")
    assert policy.allows("127.0.0.2:1") and not policy.allows("127.0.0.3")
    assert policy.allows("192.0.2.7:8765", local_address="192.0.2.7")  # the address the client connected to
    assert policy.allows("192.0.2.7", local_address="::ffff:192.0.2.7")
    assert not policy.allows("evil.example", local_address="192.0.2.7")


def test_own_origin_counts_only_for_an_allowed_host():
    auth = AuthConfig()
    hosts = HostPolicy()
    assert origin_allowed(auth, "http://localhost:1", "localhost:1", hosts.allows)
    # Origin equal to Host is no longer enough: the host itself must be allowed.
    assert not origin_allowed(auth, "http://evil.example:1", "evil.example:1", hosts.allows)
    assert origin_allowed(AuthConfig(allowed_origins=("http://evil.example:1",)), "http://evil.example:1",
                          "evil.example:1", hosts.allows)  # unless listed in allowed_origins


# -- beyond loopback: a token made at start --------------------------------------------------


def test_a_token_is_made_when_bound_beyond_loopback_without_tokens(caplog):
    assert Access(Config()).generated_token is None  # loopback: open, as before
    assert Access(Config(server=ServerConfig(host="localhost"))).generated_token is None
    access = Access(Config(server=ServerConfig(host="0.0.0.0")), token_factory=lambda: "made-at-start")
    assert access.generated_token == "made-at-start"
    assert role_for(access.auth, "made-at-start") == "admin" and role_for(access.auth, None) is None
    assert Access(Config(server=ServerConfig(host="0.0.0.0"))).generated_token != Access(
        Config(server=ServerConfig(host="0.0.0.0"))).generated_token
    configured = Access(Config(server=ServerConfig(host="0.0.0.0"), auth=AuthConfig(tokens=TOKENS)))
    assert configured.generated_token is None and configured.auth.tokens == TOKENS
    with caplog.at_level(logging.WARNING, logger="gateway.security"):
        anonymous = Access(Config(server=ServerConfig(host="::"), auth=AuthConfig(anonymous=True)))
    assert anonymous.generated_token is None and anonymous.role({}) == "control"  # not admin
    assert [r.levelname for r in caplog.records] == ["WARNING"] and "anonymous = true" in caplog.records[0].message


def test_bound_beyond_loopback_the_made_token_is_needed(gateway_with):
    gw = gateway_with(server=ServerConfig(host="0.0.0.0", port=0))
    token = gw.access.generated_token
    assert token and len(token) >= 20
    port = gw.address[1]
    url = f"http://127.0.0.1:{port}"
    for path in ("/api/devices", "/metrics"):
        assert http_status(url + path) == 401
        assert http_status(f"{url}{path}?token={token}") == 200
    assert http_status(url + "/healthz") == 200 and http_status(url + "/") == 200
    assert refused(f"ws://127.0.0.1:{port}/ws/sim") == 401
    ws = websocket.create_connection(f"ws://127.0.0.1:{port}/ws/sim?token={token}", timeout=5)
    ws.send("PING")
    assert ws.recv() == "PONG"
    ws.close()
    assert gw.links["sim"].counters.lines_out == 1


def test_anonymous_opts_out(gateway_with):
    gw = gateway_with(server=ServerConfig(host="0.0.0.0", port=0), auth=AuthConfig(anonymous=True))
    assert gw.access.generated_token is None
    assert http_status(f"http://127.0.0.1:{gw.address[1]}/api/devices") == 200
