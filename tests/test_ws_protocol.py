"""SPEC section 4 end to end: a real gateway, the simulator, and websocket-client."""

from __future__ import annotations

import base64
import json
import os
import socket
import struct
import threading

import pytest
import websocket
from conftest import wait_for, ws_url

from gateway.wsframes import _unmask

TIMEOUT = 5


def connect(gw, device="sim", **params) -> websocket.WebSocket:
    return websocket.create_connection(ws_url(gw, device, **params), timeout=TIMEOUT)


def recv_json(ws, skip=("status",)) -> dict:
    while True:
        msg = json.loads(ws.recv())
        if msg["type"] not in skip:
            return msg


def recv_until(ws, predicate, limit=1000) -> list:
    seen = []
    for _ in range(limit):
        msg = ws.recv()
        seen.append(msg)
        if predicate(msg):
            return seen
    raise AssertionError(f"not found in {len(seen)} messages: {seen[-5:]}")


# -- text mode ------------------------------------------------------------------------


def test_text_mode_round_trip(start_gateway):
    gw = start_gateway()
    ws = connect(gw)
    ws.send("PING")
    assert ws.recv() == "PONG"
    ws.send("LED ON")
    assert [ws.recv(), ws.recv()] == ["OK LED ON", "led=1"]
    ws.send("BOGUS")
    assert ws.recv() == "ERR unknown command: BOGUS"
    ws.close()


def test_text_frame_with_several_lines_writes_several_lines(start_gateway):
    gw = start_gateway()
    ws = connect(gw)
    ws.send("PING\r\nECHO two\nECHO three\n")
    assert [ws.recv() for _ in range(3)] == ["PONG", "two", "three"]
    ws.close()


def test_every_device_line_reaches_every_client(start_gateway):
    gw = start_gateway()
    clients = [connect(gw) for _ in range(5)]
    clients[2].send("GO 200")
    expected = [f"t={i}" for i in range(1, 201)]
    for ws in clients:
        got = [ws.recv().split()[0] for _ in range(200)]
        assert got == expected
        ws.close()


def test_invalid_utf8_from_device_arrives_as_binary_frame(start_gateway):
    # loop:// echoes what is written: a binary-mode client writes invalid UTF-8.
    gw = start_gateway(devices=["dev=loop://"])
    text = connect(gw, "dev")
    js = connect(gw, "dev", format="json")
    raw = connect(gw, "dev", format="binary")
    assert recv_json(js)["type"] == "hello"
    raw.send_binary(b"ok\n\xff\xfeboot\x00noise\nfine\n")
    assert text.recv() == "ok"
    opcode, data = text.recv_data()
    assert opcode == websocket.ABNF.OPCODE_BINARY and data == b"\xff\xfeboot\x00noise"
    assert text.recv() == "fine"
    lines = [recv_json(js) for _ in range(3)]
    assert lines[1]["line"] == "\ufffd\ufffdboot\x00noise"
    assert base64.b64decode(lines[1]["raw"]) == b"\xff\xfeboot\x00noise"
    assert "raw" not in lines[0] and lines[2]["line"] == "fine"
    for ws in (text, js, raw):
        ws.close()


# -- json mode ------------------------------------------------------------------------


def test_json_hello_ack_line_and_telemetry_data(start_gateway):
    gw = start_gateway()
    ws = connect(gw, format="json")
    hello = recv_json(ws)
    assert hello == {"type": "hello", "client": hello["client"], "device": "sim", "run": gw.run_id,
                     "seq": 0, "state": "connected", "role": "admin"}
    ws.send('{"type": "ping", "id": 1}')
    assert recv_json(ws) == {"type": "pong", "id": 1}
    ws.send(json.dumps({"line": "GET temp", "id": 7}))
    assert recv_json(ws) == {"type": "ack", "id": 7}
    line = recv_json(ws)
    assert line["type"] == "line" and line["seq"] == 1 and line["device"] == "sim"
    assert line["line"].startswith("temp=") and isinstance(line["data"]["temp"], float)
    assert isinstance(line["ts"], float)
    ws.send(json.dumps({"line": "PING", "id": "x"}))
    assert recv_json(ws) == {"type": "ack", "id": "x"}
    pong = recv_json(ws)
    assert pong["line"] == "PONG" and "data" not in pong and pong["seq"] == 2
    ws.close()


@pytest.mark.parametrize("message, error", [
    ('{"line": "LED ON\\nLED OFF", "id": 1}', "LF"),
    ('{"line": "LED ON\\r", "id": 1}', "CR"),
    ('{"line": "A\\u0000B", "id": 1}', "NUL"),
    ('{"line": 5, "id": 1}', '"line"'),
    ('{"line": "PING", "id": 1, "reply": "yes"}', '"reply"'),
    ('{"line": "PING", "id": 1, "reply": true, "timeout": -1}', '"timeout"'),
])
def test_json_refuses_bad_lines_and_writes_nothing(start_gateway, message, error):
    gw = start_gateway(devices=["dev=loop://"])
    ws = connect(gw, "dev", format="json")
    recv_json(ws)  # hello
    ws.send(message)
    answer = recv_json(ws)
    assert answer["type"] == "error" and answer["id"] == 1 and error in answer["error"]
    # Nothing reached the device: the next line written is the next line read back.
    ws.send(json.dumps({"line": "after", "id": 2}))
    assert recv_json(ws) == {"type": "ack", "id": 2}
    assert recv_json(ws)["line"] == "after"
    assert gw.links["dev"].counters.lines_out == 1
    ws.close()


def test_json_not_json_and_too_long(start_gateway):
    gw = start_gateway(devices=["dev=loop://?max_line=16"])
    ws = connect(gw, "dev", format="json")
    recv_json(ws)
    ws.send("{nope")
    assert "not JSON" in recv_json(ws)["error"]
    ws.send(json.dumps({"line": "x" * 17, "id": 3}))
    err = recv_json(ws)
    assert err["id"] == 3 and "max_line" in err["error"]
    ws.close()


def test_request_reply_goes_to_the_asker_only(start_gateway):
    gw = start_gateway()
    asker = connect(gw, format="json")
    other = connect(gw, format="json")
    recv_json(asker), recv_json(other)
    asker.send(json.dumps({"line": "GET hum", "id": 8, "reply": True, "timeout": 2}))
    seen = [recv_json(asker) for _ in range(3)]
    types = {m["type"]: m for m in seen}
    assert set(types) == {"ack", "reply", "line"}
    assert types["reply"]["id"] == 8 and types["reply"]["line"].startswith("hum=")
    assert types["line"]["line"] == types["reply"]["line"]
    # The other client sees the line, and no reply.
    assert recv_json(other)["line"].startswith("hum=")
    other.send(json.dumps({"line": "PING", "id": 1}))
    assert recv_json(other) == {"type": "ack", "id": 1}
    assert recv_json(other)["line"] == "PONG"
    asker.close(), other.close()


def test_request_timeout_and_one_at_a_time(start_gateway):
    # A device that answers nothing: a TCP peer run by the test.
    device = socket.create_server(("127.0.0.1", 0))
    port = device.getsockname()[1]
    gw = start_gateway(devices=[f"dev=tcp://127.0.0.1:{port}"])
    conn, _ = device.accept()
    conn.settimeout(TIMEOUT)
    assert gw.links["dev"].wait_connected(TIMEOUT)
    ws = connect(gw, "dev", format="json")
    recv_json(ws)
    ws.send(json.dumps({"line": "GET a", "id": 1, "reply": True, "timeout": 0.3}))
    ws.send(json.dumps({"line": "GET b", "id": 2, "reply": True, "timeout": 2}))
    assert recv_json(ws) == {"type": "ack", "id": 1}
    assert recv_json(ws) == {"type": "error", "id": 1, "error": "no reply within 0.3 s"}
    # Only after the first request gave up was the second written.
    assert recv_json(ws) == {"type": "ack", "id": 2}
    got = b""
    while got.count(b"\n") < 2:
        got += conn.recv(100)
    assert got == b"GET a\nGET b\n"
    conn.sendall(b"b=2\n")
    reply = recv_json(ws)
    assert reply == {"type": "reply", "id": 2, "line": "b=2"}
    ws.close()
    conn.close()
    device.close()


def test_status_events_and_offline_error(start_gateway):
    device = socket.create_server(("127.0.0.1", 0))
    port = device.getsockname()[1]
    gw = start_gateway(devices=[f"dev=tcp://127.0.0.1:{port}"])
    conn, _ = device.accept()
    assert gw.links["dev"].wait_connected(TIMEOUT)
    ws = connect(gw, "dev", format="json")
    assert recv_json(ws)["state"] == "connected"
    device.close()  # no way back: the device stays away
    conn.close()
    status = recv_json(ws, skip=())
    assert status == {"type": "status", "device": "dev", "state": "reconnecting"}
    ws.send(json.dumps({"line": "PING", "id": 4}))
    err = recv_json(ws)
    assert err["type"] == "error" and err["id"] == 4 and "reconnecting" in err["error"]
    ws.close()


# -- binary mode ----------------------------------------------------------------------


def test_binary_mode_raw_bytes_both_ways(start_gateway):
    gw = start_gateway(devices=["dev=loop://"])
    ws = connect(gw, "dev", format="binary")
    payload = bytes(range(256))
    ws.send_binary(payload)
    got = b""
    while len(got) < len(payload):
        opcode, data = ws.recv_data()
        assert opcode == websocket.ABNF.OPCODE_BINARY
        got += data
    assert got == payload
    ws.close()


# -- history and since ----------------------------------------------------------------


def burst(gw, count: int) -> websocket.WebSocket:
    """A text client that had the device send `count` lines, and read them all."""
    ws = connect(gw)
    ws.send(f"GO {count}")
    for _ in range(count):
        ws.recv()
    return ws


def test_history_and_since_replay(start_gateway):
    gw = start_gateway()
    ws = burst(gw, 50)
    js = connect(gw, format="json", since=45)
    hello = recv_json(js)
    assert hello["seq"] == 50
    assert [recv_json(js)["seq"] for _ in range(5)] == [46, 47, 48, 49, 50]
    ws.send("PING")
    assert recv_json(js)["line"] == "PONG"
    ws.close(), js.close()


def test_history_returns_the_last_lines_in_order(start_gateway):
    gw = start_gateway()
    ws = burst(gw, 20)
    late = connect(gw, history=3)
    assert [late.recv().split()[0] for _ in range(3)] == ["t=18", "t=19", "t=20"]
    late.send("PING")
    assert late.recv() == "PONG"
    ws.close(), late.close()


def test_since_older_than_history_gets_a_gap_notice(start_gateway):
    gw = start_gateway(devices=["sim=sim://?interval=0&history=5"])
    ws = burst(gw, 20)
    js = connect(gw, format="json", since=2)
    assert recv_json(js)["type"] == "hello"
    gap = recv_json(js)
    assert gap == {"type": "gap", "device": "sim", "reason": "lines dropped from history", "from": 3, "to": 15}
    assert [recv_json(js)["seq"] for _ in range(5)] == [16, 17, 18, 19, 20]
    ws.close(), js.close()


def test_since_from_another_run_gets_a_gap_and_all_history(start_gateway):
    gw = start_gateway()
    ws = burst(gw, 3)
    js = connect(gw, format="json", since=2, run="an-earlier-run")
    assert recv_json(js)["run"] == gw.run_id
    gap = recv_json(js)
    assert gap["type"] == "gap" and gap["reason"] == "gateway restarted" and gap["run"] == gw.run_id
    assert [recv_json(js)["seq"] for _ in range(3)] == [1, 2, 3]
    ws.close(), js.close()


# -- handshake ------------------------------------------------------------------------


def test_unknown_device_is_404(start_gateway):
    gw = start_gateway()
    with pytest.raises(websocket.WebSocketBadStatusException) as err:
        connect(gw, "nope")
    assert err.value.status_code == 404


def test_bad_parameters_are_400(start_gateway):
    gw = start_gateway()
    for params in ({"format": "xml"}, {"history": "-1"}, {"since": "abc"}, {"bogus": "1"}):
        with pytest.raises(websocket.WebSocketBadStatusException) as err:
            connect(gw, **params)
        assert err.value.status_code == 400, params


def test_subprotocol_is_answered_and_chooses_the_format(start_gateway):
    gw = start_gateway()
    ws = websocket.create_connection(ws_url(gw), subprotocols=["json"], timeout=TIMEOUT)
    assert ws.getsubprotocol() == "json"
    assert recv_json(ws)["type"] == "hello"
    ws.close()
    other = websocket.create_connection(ws_url(gw), subprotocols=["chat.v1"], timeout=TIMEOUT)
    assert other.getsubprotocol() == "chat.v1"
    other.send("PING")
    assert other.recv() == "PONG"
    other.close()


# -- close codes and limits -------------------------------------------------------------


def close_reply(ws, payload: bytes) -> bytes:
    ws.send(payload, opcode=websocket.ABNF.OPCODE_CLOSE)
    while True:
        frame = ws.recv_frame()
        if frame.opcode == websocket.ABNF.OPCODE_CLOSE:
            return frame.data


def test_close_without_code_is_answered_without_1005(start_gateway):
    gw = start_gateway()
    ws = connect(gw)
    assert close_reply(ws, b"") == b""
    ws.shutdown()


@pytest.mark.parametrize("code", [1000, 1001, 1012, 1013, 1014, 4000])
def test_close_codes_are_echoed(start_gateway, code):
    gw = start_gateway()
    ws = connect(gw)
    assert struct.unpack("!H", close_reply(ws, struct.pack("!H", code))[:2])[0] == code
    ws.shutdown()


def test_oversize_message_is_closed_with_1009(start_gateway):
    gw = start_gateway(limits={"max_message": 1024})
    ws = connect(gw)
    big = connect(gw)
    big.send("x" * 2000)
    frame = big.recv_frame()
    assert frame.opcode == websocket.ABNF.OPCODE_CLOSE
    assert struct.unpack("!H", frame.data[:2])[0] == 1009
    # Nothing reached the device, and the others are served.
    ws.send("PING")
    assert ws.recv() == "PONG"
    assert gw.links["sim"].counters.lines_out == 1
    ws.close()
    big.shutdown()


def test_shutdown_closes_clients_with_1001(start_gateway):
    gw = start_gateway()
    ws = connect(gw)
    ws.send("PING")
    assert ws.recv() == "PONG"
    done = threading.Thread(target=gw.shutdown, name="test-shutdown")
    done.start()
    frame = ws.recv_frame()
    assert frame.opcode == websocket.ABNF.OPCODE_CLOSE
    assert struct.unpack("!H", frame.data[:2])[0] == 1001
    ws.send_close(1001)
    done.join(10)
    assert not done.is_alive()
    wait_for(lambda: gw.server is None, what="gateway to stop")


def test_keepalive_pings_and_drops_a_client_that_does_not_answer(start_gateway):
    gw = start_gateway(server={"ping_interval": 0.3})
    alive = connect(gw)
    silent = socket.create_connection(gw.address)  # completes the handshake, then never reads
    silent.sendall(b"GET /ws/sim HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                   b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
    wait_for(lambda: gw.client_count() == 2, what="2 clients")
    # websocket-client answers each ping inside recv(); keep it reading for a while.
    alive.settimeout(0.2)
    pings = 0
    deadline = threading.Event()
    timer = threading.Timer(3.0, deadline.set)
    timer.start()
    while not deadline.is_set():
        try:
            frame = alive.recv_frame()
        except websocket.WebSocketTimeoutException:
            continue
        if frame.opcode == websocket.ABNF.OPCODE_PING:
            pings += 1
            alive.pong(frame.data)
    timer.cancel()
    assert pings >= 3
    assert gw.client_count() == 1 and gw.manager.stats.keepalive_drops == 1
    alive.settimeout(5)
    alive.send("PING")
    while (msg := alive.recv_frame()).opcode != websocket.ABNF.OPCODE_TEXT:
        pass
    assert msg.data == b"PONG"
    alive.close()
    silent.close()


def test_unmasking_matches_the_rfc_for_every_length():
    """The adapter's own unmasking (a table for short payloads, a repeated key beyond)."""
    for n in range(0, 300):
        key, data = os.urandom(4), os.urandom(n)
        assert _unmask(key, data) == bytes(b ^ key[i % 4] for i, b in enumerate(data)), n
