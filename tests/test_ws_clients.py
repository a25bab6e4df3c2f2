"""Clients nobody here wrote: Node's `ws`, ws4py's threaded client; many clients at once,
and one that stops reading."""

from __future__ import annotations

import base64
import json
import os
import shutil
import socket
import subprocess
import threading
from pathlib import Path
from queue import Empty, Queue

import pytest
import websocket
from conftest import wait_for, ws_url
from ws4py.client.threadedclient import WebSocketClient

NODE_DIR = Path(__file__).parent / "node"
TIMEOUT = 10


def node_client(url: str, count: int, *lines: str, protocol: str | None = None) -> subprocess.Popen:
    if not shutil.which("node") or not (NODE_DIR / "node_modules" / "ws").is_dir():
        pytest.fail("Node's ws is not installed: run the suite with tests/run.sh")
    env = dict(os.environ, **({"WS_PROTOCOL": protocol} if protocol else {}))
    return subprocess.Popen(["node", str(NODE_DIR / "client.mjs"), url, str(count), *lines],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def node_result(proc: subprocess.Popen) -> dict:
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    return json.loads(out)


# -- Node ws ----------------------------------------------------------------------------


def test_node_ws_text_mode_and_clean_close(start_gateway):
    gw = start_gateway()
    result = node_result(node_client(ws_url(gw), 4, "PING", "ECHO from node", "LED OFF"))
    assert result["messages"] == ["PONG", "from node", "OK LED OFF", "led=0"]
    assert result["closeCode"] == 1000  # not 1005/1006: the close handshake is clean


def test_node_ws_json_mode_with_subprotocol(start_gateway):
    gw = start_gateway()
    proc = node_client(ws_url(gw), 3, json.dumps({"line": "GET led", "id": 1}), protocol="json")
    result = node_result(proc)
    assert result["protocol"] == "json"
    msgs = [json.loads(m) for m in result["messages"]]
    assert [m["type"] for m in msgs] == ["hello", "ack", "line"]
    assert msgs[2]["line"] == "led=0" and msgs[2]["data"] == {"led": 0}


def test_node_ws_binary_mode(start_gateway):
    gw = start_gateway(devices=["dev=loop://"])
    # Node sends a text frame; binary-mode clients get raw device bytes as binary frames.
    result = node_result(node_client(ws_url(gw, "dev", format="binary"), 1, "raw\xe9"))
    assert base64.b64decode(result["messages"][0]["binary"]) == "raw\xe9".encode()


def test_node_ws_sees_1001_on_gateway_shutdown(start_gateway):
    gw = start_gateway()
    proc = node_client(ws_url(gw), -1, "PING")
    wait_for(lambda: gw.links["sim"].counters.lines_out >= 1, TIMEOUT, what="node's line")
    gw.shutdown()
    assert node_result(proc)["closeCode"] == 1001


def test_node_many_clients_fan_out(start_gateway):
    gw = start_gateway()
    procs = [node_client(ws_url(gw), 1000) for _ in range(10)]
    wait_for(lambda: gw.links["sim"].hub.clients == 10, TIMEOUT, what="10 node clients")
    trigger = websocket.create_connection(ws_url(gw), timeout=TIMEOUT)
    trigger.send("GO 1000")
    expected = [f"t={i}" for i in range(1, 1001)]
    for proc in procs:
        assert [m.split()[0] for m in node_result(proc)["messages"]] == expected
    trigger.close()


# -- ws4py's threaded client -----------------------------------------------------------------


class Collector(WebSocketClient):
    def __init__(self, url):
        super().__init__(url)
        self.messages: Queue = Queue()

    def received_message(self, message):
        self.messages.put(str(message))


def test_ws4py_threaded_client(start_gateway):
    # Text mode: the gateway sends nothing before the client's first line. ws4py 0.6.0's
    # threaded client starts its reader thread before it parses the bytes that came with
    # the 101 response, so a frame that arrives together with the handshake (json mode's
    # hello) is parsed by two threads at once, and the client closes with 1002 now and
    # then. That is the client's bug; examples/python_ws4py_client.py uses text mode too.
    gw = start_gateway()
    client = Collector(ws_url(gw))
    client.connect()
    try:
        client.send("ECHO ws4py")
        assert client.messages.get(timeout=TIMEOUT) == "ws4py"
        client.send("PING\nGET led")
        assert [client.messages.get(timeout=TIMEOUT) for _ in range(2)] == ["PONG", "led=0"]
    finally:
        client.close()
    wait_for(lambda: gw.links["sim"].hub.clients == 0, TIMEOUT, what="the client to leave")


# -- a client that stops reading ----------------------------------------------------------------


def stalled_client(gw) -> socket.socket:
    """Completes the handshake, then never reads again, with a tiny receive buffer."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(gw.address)
    sock.sendall(b"GET /ws/sim HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                 b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(1)
    assert head.startswith(b"HTTP/1.1 101")
    return sock


def reader(url: str, count: int, out: Queue) -> None:
    ws = websocket.create_connection(url, timeout=30)
    out.put("ready")
    try:
        expect = 1
        while expect <= count:
            msg = ws.recv()
            if not msg.startswith("t="):
                continue
            n = int(msg.split()[0][2:])
            if n != expect:
                out.put(f"line {n} where {expect} was due")
                return
            expect += 1
        out.put("ok")
    except Exception as exc:  # reported to the test thread
        out.put(f"{type(exc).__name__}: {exc}")
    finally:
        ws.close()


def test_a_stalled_client_delays_nobody(start_gateway):
    total = 300_000
    gw = start_gateway(limits={"queue": 100_000})
    stalled = stalled_client(gw)
    results: Queue = Queue()
    threads = [threading.Thread(target=reader, args=(ws_url(gw), total, results), name=f"test-reader-{i}")
               for i in range(2)]
    for t in threads:
        t.start()
    assert [results.get(timeout=TIMEOUT) for _ in threads] == ["ready", "ready"]
    wait_for(lambda: gw.links["sim"].hub.clients == 3, TIMEOUT, what="3 clients")
    trigger = websocket.create_connection(ws_url(gw), timeout=TIMEOUT)
    trigger.send(f"GO {total}")
    try:
        outcome = [results.get(timeout=120) for _ in threads]
    except Empty:
        pytest.fail("healthy clients did not get every line")
    assert outcome == ["ok", "ok"]
    # The stalled one was closed for overflowing its queue, and counted.
    assert gw.manager.stats.overflows >= 1
    wait_for(lambda: gw.links["sim"].hub.clients == 1, TIMEOUT, what="the stalled client to be dropped")
    for t in threads:
        t.join(TIMEOUT)
    trigger.close()
    stalled.close()


def test_a_stalled_client_on_a_flow_controlled_tcp_device(start_gateway, simulator):
    # A TCP device is paused while a client's queue is over half full, but for a stalled
    # client only once, for at most 0.5 s: then it is left to overflow, and the others
    # still get every line in order. (Node readers: Python ones would share this
    # process's GIL with the gateway and the device, and fall behind a burst.)
    total = 300_000
    device = simulator("tcp://127.0.0.1:0")
    gw = start_gateway(devices=[f"sim={device.url}"])
    assert gw.links["sim"].wait_connected(TIMEOUT)
    stalled = stalled_client(gw)
    procs = [node_client(ws_url(gw), total) for _ in range(2)]
    wait_for(lambda: gw.links["sim"].hub.clients == 3, TIMEOUT, what="3 clients")
    trigger = websocket.create_connection(ws_url(gw), timeout=TIMEOUT)
    trigger.send(f"GO {total}")
    expected = [f"t={i}" for i in range(1, total + 1)]
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        assert [m.split()[0] for m in json.loads(out)["messages"]] == expected
    assert gw.manager.stats.overflows >= 1
    # The stalled client was hung up on (the trigger, which never reads either, may be too).
    stalled.settimeout(TIMEOUT)
    while stalled.recv(1 << 20):
        pass
    trigger.close()
    stalled.close()
