"""Regression tests for the I/O core (one loop owns every socket), each for a defect
found against the old core, with a real gateway, real TCP devices and real clients."""

from __future__ import annotations

import json
import logging
import os
import resource
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import websocket
from conftest import gateway_threads, metric, wait_for, ws_url

ROOT = Path(__file__).parent.parent


class TcpDevice:
    """A TCP device of the test's own on 127.0.0.1: keeps what it receives and, unless
    `silent`, answers each line with the same line. One connection at a time."""

    def __init__(self, silent: bool = False):
        self.silent = silent
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.url = f"tcp://127.0.0.1:{self.port}"
        self.received = bytearray()
        self.reads: list[bytes] = []
        self.lock = threading.Lock()
        self.stopping = False
        self.conn: socket.socket | None = None
        self.thread = threading.Thread(target=self._serve, name="test-tcp-device")
        self.thread.start()

    def _serve(self) -> None:
        self.listener.settimeout(0.2)
        while not self.stopping:
            try:
                conn, _ = self.listener.accept()
            except (TimeoutError, OSError):
                continue
            self.conn = conn
            conn.settimeout(0.2)
            buf = b""
            while not self.stopping:
                try:
                    data = conn.recv(65536)
                except TimeoutError:
                    continue
                except OSError:
                    break
                if not data:
                    break
                with self.lock:
                    self.received += data
                    self.reads.append(data)
                buf += data
                *lines, buf = buf.split(b"\n")
                if not self.silent and lines:
                    try:
                        conn.sendall(b"".join(line + b"\n" for line in lines))
                    except OSError:
                        break
            conn.close()

    def got(self) -> bytes:
        with self.lock:
            return bytes(self.received)

    def close(self) -> None:
        self.stopping = True
        self.thread.join(5)
        self.listener.close()


@pytest.fixture
def tcp_device():
    made = []

    def make(silent: bool = False) -> TcpDevice:
        dev = TcpDevice(silent)
        made.append(dev)
        return dev

    yield make
    for dev in made:
        dev.close()


def masked(opcode: int, payload: bytes) -> bytes:
    """A client frame, masked with a zero key (legal, and keeps the payload readable)."""
    n = len(payload)
    head = bytes((0x80 | opcode,))
    if n < 126:
        head += bytes((0x80 | n,))
    else:
        head += bytes((0x80 | 126,)) + struct.pack("!H", n)
    return head + b"\0\0\0\0" + payload


def recv_json(ws) -> dict:
    return json.loads(ws.recv())


# -- 1. a request behind a plain line in the same read -------------------------------------


def test_a_request_behind_a_line_in_the_same_segment_is_answered_at_once(start_gateway, tcp_device):
    dev = tcp_device()
    gw = start_gateway(devices=[f"dev={dev.url}"])
    assert gw.links["dev"].wait_connected(5)
    ws = websocket.create_connection(ws_url(gw, "dev", format="json"), timeout=5)
    try:
        assert recv_json(ws)["type"] == "hello"
        both = masked(1, b'{"line":"A","id":1}') + masked(1, b'{"line":"B","id":2,"reply":true}')
        started = time.monotonic()
        ws.sock.sendall(both)  # two frames in one TCP segment
        got = {}
        while 2 not in got or "reply" not in got:
            msg = recv_json(ws)
            if msg["type"] == "ack":
                got[msg["id"]] = msg
            elif msg["type"] == "reply":
                got["reply"] = msg
                elapsed = time.monotonic() - started
        assert got["reply"] == {"type": "reply", "id": 2, "line": "A"}  # the device's next line
        # The old core left B to the device writer's 0.5 s poll: 450-500 ms here.
        assert elapsed < 0.3, f"reply after {elapsed:.3f} s"
    finally:
        ws.close()


# -- 2. shutdown with a request waiting and a client that stopped reading ------------------


def test_shutdown_does_not_wait_for_replies_or_stalled_clients(start_gateway, tcp_device):
    from gateway.app import Gateway
    from gateway.config import Config, apply_flags

    dev = tcp_device(silent=True)
    gw = Gateway(apply_flags(Config(), "127.0.0.1", 0, [f"dev={dev.url}"])).start()
    try:
        assert gw.links["dev"].wait_connected(5)
        asker = websocket.create_connection(ws_url(gw, "dev", format="json"), timeout=5)
        assert recv_json(asker)["type"] == "hello"
        asker.send(json.dumps({"line": "GET temp", "id": 1, "reply": True, "timeout": 30}))
        wait_for(lambda: dev.got() == b"GET temp\n", what="the request to be written")
        stalled = socket.create_connection(gw.address)
        stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stalled.sendall(b"GET /ws/dev HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
                        b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                        b"Sec-WebSocket-Version: 13\r\n\r\n")
        wait_for(lambda: gw.client_count() == 2, what="2 clients")
        started = time.monotonic()
        gw.shutdown(timeout=2)
        took = time.monotonic() - started
    finally:
        gw.shutdown()
    assert took < 2.5, f"shutdown took {took:.2f} s"
    assert not [t for t in gateway_threads()], f"threads left: {gateway_threads()}"
    # The request was failed, then the client got its 1001.
    msgs = []
    while True:
        frame = asker.recv_frame()
        if frame.opcode == websocket.ABNF.OPCODE_CLOSE:
            assert struct.unpack("!H", frame.data[:2])[0] == 1001
            break
        msgs.append(json.loads(frame.data))
    assert {"type": "error", "id": 1, "error": "gateway is shutting down"} in msgs
    asker.shutdown()
    stalled.close()


def test_sigterm_with_a_waiting_request_and_a_stalled_client_exits_0(tcp_device):
    dev = tcp_device(silent=True)
    proc = subprocess.Popen([sys.executable, str(ROOT / "run_gateway.py"), "--port", "0", "--device", f"dev={dev.url}"],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert line.startswith("listening on http://127.0.0.1:"), line
        base = line.split()[-1].replace("http", "ws")
        asker = websocket.create_connection(f"{base}/ws/dev?format=json", timeout=5)
        wait_for(lambda: recv_json(asker).get("state") == "connected" or True, what="hello")
        wait_for(lambda: json.load(__import__("urllib.request").request.urlopen(
            line.split()[-1] + "/healthz", timeout=5))["devices"]["dev"] == "connected", what="the device")
        asker.send(json.dumps({"line": "GET temp", "id": 1, "reply": True, "timeout": 30}))
        wait_for(lambda: dev.got() == b"GET temp\n", what="the request to be written")
        host, port = line.split()[-1].rsplit("/", 1)[-1].rsplit(":", 1)
        stalled = socket.create_connection((host, int(port)))
        stalled.sendall(b"GET /ws/dev HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
                        b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                        b"Sec-WebSocket-Version: 13\r\n\r\n")
        proc.terminate()
        code = None
        while True:
            frame = asker.recv_frame()
            if frame.opcode == websocket.ABNF.OPCODE_CLOSE:
                code = struct.unpack("!H", frame.data[:2])[0]
                break
        assert code == 1001
        assert proc.wait(timeout=8) == 0
        stalled.close()
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()


# -- 4. only LF, CRLF and CR end a line -----------------------------------------------------


def test_a_form_feed_or_unicode_line_break_stays_inside_the_line(start_gateway, tcp_device):
    dev = tcp_device()
    gw = start_gateway(devices=[f"dev={dev.url}"])
    assert gw.links["dev"].wait_connected(5)
    ws = websocket.create_connection(ws_url(gw, "dev"), timeout=5)
    try:
        ws.send("ECHO a\x0cb\x1cc\u2028d\u0085e\nSECOND\r\nTHIRD")
        want = "ECHO a\x0cb\x1cc\u2028d\u0085e\nSECOND\nTHIRD\n".encode()
        wait_for(lambda: dev.got() == want, what="three lines on the device")
    finally:
        ws.close()


# -- 6. the oversize counter ---------------------------------------------------------------


def test_an_oversize_message_is_closed_with_1009_and_counted(start_gateway):
    gw = start_gateway(limits={"max_message": 1000})
    assert metric(gw, "gateway_messages_oversize_total") == 0
    ws = websocket.create_connection(ws_url(gw), timeout=5)
    ws.send("x" * 1001)
    frame = ws.recv_frame()
    assert frame.opcode == websocket.ABNF.OPCODE_CLOSE
    assert struct.unpack("!H", frame.data[:2])[0] == 1009
    ws.shutdown()
    assert metric(gw, "gateway_messages_oversize_total") == 1


# -- 7. a binary frame in text mode is one line --------------------------------------------


def test_a_binary_frame_in_text_mode_is_one_line_with_eol(start_gateway, tcp_device):
    dev = tcp_device()
    gw = start_gateway(devices=[f"dev={dev.url}"])
    assert gw.links["dev"].wait_connected(5)
    ws = websocket.create_connection(ws_url(gw, "dev"), timeout=5)
    try:
        ws.send_binary(b"abc\xff")
        ws.send("X")
        wait_for(lambda: dev.got() == b"abc\xff\nX\n", what="two lines on the device")
        assert ws.recv_data() == (websocket.ABNF.OPCODE_BINARY, b"abc\xff")  # not UTF-8: binary back
        assert ws.recv() == "X"
    finally:
        ws.close()


# -- 8. descriptors above 1023, and a changed failure is logged again -----------------------


def test_devices_connect_with_descriptors_above_1023(start_gateway, tcp_device, tmp_path):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 4096:
        pytest.fail(f"the test needs RLIMIT_NOFILE >= 4096, the hard limit is {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 4096), hard))
    pads = [socket.socket() for _ in range(1100)]  # the next descriptors are above 1023
    master, slave = os.openpty()
    try:
        assert pads[-1].fileno() > 1023
        dev = tcp_device()
        gw = start_gateway(devices=[f"tcp={dev.url}", f"pty=serial://{os.ttyname(slave)}"], wait_connected=False)
        assert gw.links["tcp"].wait_connected(5), "a TCP device with a descriptor above 1023 did not connect"
        assert gw.links["pty"].wait_connected(5), "a pty with a descriptor above 1023 did not connect"
        ws = websocket.create_connection(ws_url(gw, "tcp"), timeout=5)
        ws.send("PING")
        assert ws.recv() == "PING"  # echoed by the device
        ws.close()
        os.write(master, b"hello from the pty\n")
        pty_ws = websocket.create_connection(ws_url(gw, "pty", history=1), timeout=5)
        assert pty_ws.recv() == "hello from the pty"
        pty_ws.close()
    finally:
        for s in pads:
            s.close()
        os.close(master)
        os.close(slave)


def test_a_failure_whose_cause_changed_is_logged_again(start_gateway, caplog, tmp_path):
    """Retries that fail the same way are logged once; when the cause changes, the new
    one is logged (once), so a device that cannot come back says why."""
    path = tmp_path / "ttyGONE"
    caplog.set_level(logging.WARNING, logger="gateway.device")
    gw = start_gateway(devices=[f"dev=serial://{path}"], wait_connected=False)
    link = gw.links["dev"]
    wait_for(lambda: link.failed_opens >= 3, what="three failed opens")
    assert caplog.text.count("cannot open") == 1 and "No such file" in caplog.text
    path.write_text("not a tty")  # now it exists, and fails differently
    seen = link.failed_opens
    wait_for(lambda: link.failed_opens >= seen + 2, what="two more failed opens")
    assert caplog.text.count("cannot open") == 2, caplog.text


# -- devices at run time (the API under issue 13's HTTP routes and issue 16's reload) -------


def test_devices_added_updated_and_removed_at_run_time(start_gateway, tcp_device):
    import threading as _threading

    from gateway.config import DeviceConfig

    first, second = tcp_device(), tcp_device()
    gw = start_gateway(devices=["sim=sim://?interval=0"])
    events = []
    gw.device_watchers.append(events.append)

    link = gw.add_device(DeviceConfig(name="dev", url=first.url))
    with pytest.raises(ValueError, match="exists"):
        gw.add_device(DeviceConfig(name="dev", url=first.url))
    assert link.wait_connected(5)
    ws = websocket.create_connection(ws_url(gw, "dev", format="json"), timeout=5)
    assert recv_json(ws)["type"] == "hello"
    ws.send(json.dumps({"line": "ONE", "id": 1}))
    msgs = [recv_json(ws), recv_json(ws)]
    assert {"type": "ack", "id": 1} in msgs and any(m.get("line") == "ONE" and m["seq"] == 1 for m in msgs)

    # Reopened on another device: the client stays, sees the states, numbering goes on.
    new = gw.update_device("dev", DeviceConfig(name="dev", url=second.url))
    assert new.wait_connected(5) and gw.links["dev"] is new
    states = []
    while "connected" not in states:
        msg = recv_json(ws)
        if msg["type"] == "status":
            states.append(msg["state"])
    ws.send(json.dumps({"line": "TWO", "id": 2}))
    msgs = [recv_json(ws), recv_json(ws)]
    assert any(m.get("line") == "TWO" and m["seq"] == 2 for m in msgs)
    wait_for(lambda: second.got() == b"TWO\n", what="the line on the new device")
    assert first.got() == b"ONE\n"

    # Removed: its clients hear so and are closed with 1001; nothing of it is left.
    gw.remove_device("dev")
    seen = []
    while True:
        frame = ws.recv_frame()
        if frame.opcode == websocket.ABNF.OPCODE_CLOSE:
            assert struct.unpack("!H", frame.data[:2])[0] == 1001
            break
        seen.append(json.loads(frame.data))
    assert seen[-1] == {"type": "status", "device": "dev", "state": "removed"}
    assert "dev" not in gw.links
    with pytest.raises(KeyError):
        gw.remove_device("dev")
    wait_for(lambda: any(e["event"] == "removed" for e in events), what="the removed event")
    kinds = [(e["event"], e.get("state")) for e in events]
    assert kinds[0] == ("added", "disconnected") and ("removed", None) in kinds and ("state", "connected") in kinds

    # A device with a thread of its own (sim://) leaves no thread behind.
    gw.add_device(DeviceConfig(name="sim2", url="sim://?interval=0"))
    assert gw.links["sim2"].wait_connected(5)
    assert "device:sim2" in [t.name for t in _threading.enumerate()]
    gw.remove_device("sim2")
    assert "device:sim2" not in [t.name for t in _threading.enumerate()]
    ws.shutdown()
