"""Frames are not held back by Nagle's algorithm: a json request's reply follows its ack
at once (found by W6, bench/perf/fleet.py: 44 ms per request and reply on loopback, the
client's delayed ACK, before the gateway set TCP_NODELAY on its clients' sockets)."""

from __future__ import annotations

import json
import statistics
import time

import websocket
from conftest import ws_url


def test_request_and_reply_take_no_delayed_ack(start_gateway, simulator):
    sim = simulator("tcp://127.0.0.1:0")  # a device on a socket: its reply comes in a later read than the ack
    gw = start_gateway(devices=[f"esp={sim.url}"])
    assert gw.links["esp"].wait_connected(5)
    ws = websocket.create_connection(ws_url(gw, "esp", format="json"), timeout=5)
    assert json.loads(ws.recv())["type"] == "hello"
    took = []
    for k in range(1, 12):
        start = time.monotonic()
        ws.send(json.dumps({"line": "PING", "id": k, "reply": True, "timeout": 2}))
        while (msg := json.loads(ws.recv()))["type"] != "reply":
            pass
        took.append(time.monotonic() - start)
        assert (msg["id"], msg["line"]) == (k, "PONG")
    ws.close()
    # with Nagle on, every one takes the client's delayed ACK: 40 ms on Linux
    assert statistics.median(took) < 0.02, [round(t * 1000, 1) for t in took]
