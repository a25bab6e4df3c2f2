"""HTTP routes of SPEC section 3, on the same port as the WebSockets."""

from __future__ import annotations

import json
import resource
import socket
import threading
import time
import urllib.error
import urllib.request

import pytest
import websocket
from conftest import metric, wait_for, ws_url


def get(gw, path: str):
    try:
        with urllib.request.urlopen(gw.url + path, timeout=5) as resp:
            return resp.status, resp.headers.get("Content-Type"), resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.headers.get("Content-Type"), err.read()


def test_healthz_and_devices(start_gateway):
    gw = start_gateway(devices=["sim=sim://?interval=0", "dead=tcp://127.0.0.1:9"], wait_connected=True)
    wait_for(lambda: gw.links["dead"].state.value == "reconnecting", what="the dead device to be retried")
    status, ctype, body = get(gw, "/healthz")
    assert status == 200 and ctype == "application/json"
    assert json.loads(body) == {"status": "ok", "devices": {"sim": "connected", "dead": "reconnecting"}}
    ws = websocket.create_connection(ws_url(gw), timeout=5)
    ws.send("PING")
    assert ws.recv() == "PONG"
    status, _, body = get(gw, "/api/devices")
    devices = {d["name"]: d for d in json.loads(body)}
    assert devices["sim"]["kind"] == "sim" and devices["dead"]["kind"] == "tcp"
    assert devices["sim"]["counters"] == {"lines_in": 1, "lines_out": 1, "errors": 0, "clients": 1, "reconnects": 0}
    assert devices["sim"]["seq"] == 1 and devices["sim"]["run"] == gw.run_id
    ws.close()


def test_page_and_unknown_routes(start_gateway):
    gw = start_gateway()
    status, ctype, body = get(gw, "/")
    assert status == 200 and ctype.startswith("text/html") and b"<html" in body.lower()
    for path in ("/nope", "/static/../config.py", "/static/.hidden", "/static/vendor/../../app.py"):
        assert get(gw, path)[0] == 404, path


def test_plain_get_on_a_websocket_route_is_400(start_gateway):
    gw = start_gateway()
    status, _, body = get(gw, "/ws/sim")
    assert status == 400 and b"WebSocket" in body
    assert get(gw, "/ws/nope")[0] == 404


def test_max_clients_is_503_at_the_handshake(start_gateway):
    gw = start_gateway(limits={"max_clients": 2})
    clients = [websocket.create_connection(ws_url(gw), timeout=5) for _ in range(2)]
    wait_for(lambda: gw.client_count() == 2, what="2 clients")
    with pytest.raises(websocket.WebSocketBadStatusException) as err:
        websocket.create_connection(ws_url(gw), timeout=5)
    assert err.value.status_code == 503
    clients[0].close()
    wait_for(lambda: gw.client_count() == 1, what="a free place")
    websocket.create_connection(ws_url(gw), timeout=5).close()
    clients[1].close()


def test_an_idle_connection_blocks_no_one(start_gateway):
    gw = start_gateway()
    idle = socket.create_connection(gw.address)  # connects, sends nothing
    half = socket.create_connection(gw.address)
    half.sendall(b"GET /healthz HTTP/1.1\r\n")  # a request that never finishes
    assert get(gw, "/healthz")[0] == 200
    ws = websocket.create_connection(ws_url(gw), timeout=5)
    ws.send("PING")
    assert ws.recv() == "PONG"
    ws.close()
    idle.close(), half.close()


def test_a_slow_handshake_is_dropped_after_the_handshake_timeout(start_gateway):
    gw = start_gateway(server={"handshake_timeout": 0.5})
    slow = socket.create_connection(gw.address)
    slow.sendall(b"GET /ws/sim HTTP/1.1\r\nHost: x\r\n")
    slow.settimeout(5)
    assert slow.recv(100) == b""  # the gateway hung up
    slow.close()
    wait_for(lambda: not [t for t in threading.enumerate() if t.name.startswith("http:")], what="request threads to end")


def test_counts_in_the_query_are_ascii_digits_only(start_gateway):
    gw = start_gateway()
    for value in ("\u00b2", "\u0661\u0662", "+1", "1_0", ""):
        with pytest.raises(websocket.WebSocketBadStatusException) as err:
            websocket.create_connection(ws_url(gw, history=value), timeout=5)
        assert err.value.status_code == 400, value
        with pytest.raises(websocket.WebSocketBadStatusException) as err:
            websocket.create_connection(ws_url(gw, since=value), timeout=5)
        assert err.value.status_code == 400, value
    assert gw.stats.handshakes_bad == 10
    ws = websocket.create_connection(ws_url(gw, history="0"), timeout=5)
    ws.close()


def http_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("http:")]


@pytest.fixture
def many_files():
    """Room for 4,000 connections, both ends in this process."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 10_000 if hard == resource.RLIM_INFINITY else min(hard, 10_000)
    if want < 9000:
        pytest.fail(f"RLIMIT_NOFILE hard limit {hard} is too low for 4,000 connections")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, want), hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_a_flood_of_half_open_requests_holds_bounded_threads(start_gateway, many_files):
    gw = start_gateway()
    max_pending = gw.config.limits.max_pending
    assert max_pending == 256
    flood: list[socket.socket] = []
    peak = 0
    try:
        for i in range(4000):
            s = socket.create_connection(gw.address, timeout=5)
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # never finished
            flood.append(s)
            if i % 200 == 0:
                peak = max(peak, len(http_threads()))
        wait_for(lambda: gw.stats.requests_dropped_pending >= 4000 - max_pending, timeout=30,
                 what="the oldest unfinished requests to be dropped")
        # While the flood holds its sockets open: a new request is served within a second...
        started = time.monotonic()
        status, _, body = get(gw, "/healthz")
        assert status == 200 and json.loads(body)["status"] == "ok"
        assert time.monotonic() - started < 1.0
        # ...the dropped threads have ended, and the oldest connection was hung up on.
        wait_for(lambda: len(http_threads()) <= max_pending, timeout=10, what="at most max_pending request threads")
        peak = max(peak, len(http_threads()))
        assert peak <= max_pending + 100, peak  # threads being dropped as new ones start, not thousands
        flood[0].settimeout(5)
        assert flood[0].recv(100) == b""
        assert gw.stats.requests_dropped_pending <= 4000 - max_pending + 1
        assert metric(gw, "gateway_requests_dropped_pending_total") == gw.stats.requests_dropped_pending
    finally:
        for s in flood:
            s.close()
    wait_for(lambda: not http_threads(), timeout=10, what="the flood's request threads to end")
