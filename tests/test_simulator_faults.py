"""Simulator faults and baud pacing: the pure link with a hand-moved clock, then each
driver (sim://, and serve.py's TCP, UDP and pty) through a real gateway or a real socket.

The fault commands are simulator-only (firmware_notes/protocol.md, "Simulator-only
commands"): `FAULT DROP [S]`, `FAULT STALL [S]`, `FAULT NOISE`, `FAULT PARTIAL`.
"""

from __future__ import annotations

import base64
import json
import os
import queue
import re
import select
import socket
import threading
import time
from urllib.parse import urlsplit

import pytest
import websocket

from conftest import ws_url
from gateway import transports
from gateway.simulator.device import SimulatedDevice, go_lines
from gateway.simulator.link import BOOT_NOISE, Link, parse_schedule, split_line
from gateway.simulator.serve import SimulatorServer

START = 1000.0
TELEMETRY = re.compile(r"temp=-?\d+\.\d\d hum=\d+\.\d led=[01] uptime=\d+")
HALF_TELEMETRY = re.compile(r"temp=-?\d+\.\d\d hu")  # where FAULT DROP / PARTIAL cut


class FakeClock:
    def __init__(self, now: float = START):
        self.now = now

    def __call__(self) -> float:
        return self.now


def make_link(interval: float = 0.0, **options) -> tuple[Link, FakeClock]:
    clock = FakeClock()
    return Link(SimulatedDevice(interval, clock=clock), clock=clock, **options), clock


def drain(link: Link, limit: int = 65536) -> bytes:
    """Everything send() gives now, without moving the clock (bounded)."""
    out = b""
    for _ in range(100_000):
        data = link.send(limit)
        if not data:
            return out
        out += data
    raise AssertionError("send() never ran dry")


def ask(link: Link, line: str) -> bytes:
    link.receive(line.encode() + b"\n")
    return drain(link)


# -- the pure link, on a fake clock ---------------------------------------------------


def test_without_faults_it_answers_like_the_device():
    link, _ = make_link()
    assert ask(link, "PING") == b"PONG\n"
    assert ask(link, "GO 3") == b"".join(f"{x}\n".encode() for x in go_lines(3))
    assert link.wait() is None  # telemetry off, nothing queued


def test_stall_holds_answers_and_telemetry_for_its_seconds():
    link, clock = make_link(interval=1.0)
    assert ask(link, "FAULT STALL 2.5") == b"OK FAULT STALL 2.5\n"
    assert ask(link, "PING") == b""
    assert link.wait() == pytest.approx(2.5)
    clock.now += 1.5  # telemetry was due at 1.0: held too
    assert drain(link) == b""
    assert link.wait() == pytest.approx(1.0)
    clock.now += 1.0
    pong, line, end = drain(link).decode().split("\n")  # one telemetry line: no catching up
    assert pong == "PONG" and TELEMETRY.fullmatch(line) and end == ""
    assert ask(link, "FAULT STALL") == b"OK FAULT STALL 1\n"  # default 1 s
    assert link.wait() == pytest.approx(1.0)


def test_noise_is_boot_noise_then_a_line_end():
    link, _ = make_link()
    assert ask(link, "FAULT NOISE") == b"OK FAULT NOISE\n" + BOOT_NOISE
    assert BOOT_NOISE.endswith(b"\r\n") and b"\n" not in BOOT_NOISE[:-1] and b"\r" not in BOOT_NOISE[:-2]
    with pytest.raises(UnicodeDecodeError):
        BOOT_NOISE.decode()
    assert ask(link, "PING") == b"PONG\n"


def test_partial_sends_half_a_line_and_the_rest_when_a_line_comes():
    link, clock = make_link(interval=1.0)
    out = ask(link, "FAULT PARTIAL")
    head, half = out.split(b"\n", 1)
    assert head == b"OK FAULT PARTIAL" and HALF_TELEMETRY.fullmatch(half.decode())
    clock.now += 5  # telemetry is due, but the line is not finished: nothing
    assert drain(link) == b"" and link.wait() is None
    rest = ask(link, "PING")
    line, pong = (half + rest).decode().split("\n")[:2]
    assert TELEMETRY.fullmatch(line) and pong == "PONG"


def test_drop_sends_half_a_line_then_the_link_is_down():
    link, _ = make_link()
    link.receive(b"FAULT DROP 3\nPING\n")  # PING is queued behind the drop: lost with it
    out = drain(link)
    assert out.startswith(b"OK FAULT DROP 3\n") and HALF_TELEMETRY.fullmatch(out[16:].decode())
    assert link.dropped and link.down_for == 3
    assert link.wait() is None
    assert ask(link, "PING") == b""  # nobody is listening any more
    link.reset()  # a new connection (TCP)
    assert not link.dropped and ask(link, "PING") == b"PONG\n"


def test_drop_on_a_link_that_cannot_drop_is_half_a_line_and_silence():
    link, clock = make_link(can_drop=False)
    link.receive(b"FAULT DROP 2\nGO 5\n")
    out = drain(link)
    assert out.startswith(b"OK FAULT DROP 2\n") and not out.endswith(b"\n")
    assert not link.dropped
    assert ask(link, "PING") == b"" and link.wait() == pytest.approx(2.0)
    clock.now += 2
    assert drain(link) == b"PONG\n"  # GO 5 was lost with the reset; PING came after it


def test_bad_fault_commands_answer_err():
    link, _ = make_link()
    for line, answer in [
        ("FAULT", "ERR missing fault (DROP, STALL, NOISE, PARTIAL)"),
        ("FAULT BOOM", "ERR unknown fault: BOOM"),
        ("FAULT STALL soon", "ERR STALL: 'soon' is not a number of seconds"),
        ("FAULT STALL -1", "ERR STALL: '-1' is not between 0 and 3600 seconds"),
        ("FAULT DROP 1 2", "ERR DROP takes one number of seconds"),
        ("FAULT NOISE 3", "ERR NOISE takes no argument"),
    ]:
        assert ask(link, line) == answer.encode() + b"\n", line
    assert ask(link, "fault noise").startswith(b"OK FAULT NOISE\n")  # any case


def test_baud_paces_a_burst_at_a_tenth_of_the_rate():
    link, clock = make_link(baud=9600)
    link.receive(b"GO 200\n")
    expected = b"".join(f"{x}\n".encode() for x in go_lines(200))
    out, start = b"", clock.now
    for _ in range(10_000):
        out += link.send()
        wait = link.wait()
        if wait is None:
            break
        clock.now += max(wait, 0.001)
    assert out == expected
    took = clock.now - start
    assert took == pytest.approx(len(expected) / 960, rel=0.05), took


def test_baud_send_is_at_most_a_quantum_and_waits_for_the_wire():
    link, clock = make_link(baud=115200)
    link.receive(b"GO 100\n")
    first = link.send()
    assert 0 < len(first) <= 115  # 10 ms at 11520 bytes/s
    assert link.send() == b""
    assert link.wait() == pytest.approx(len(first) / 11520)
    clock.now += link.wait()
    assert link.send()


def test_udp_mode_sends_one_line_per_send():
    link, _ = make_link(message_oriented=True)
    link.receive(b"GO 3")  # a datagram without a line end ...
    assert link.send() == b""
    link.receive(b"", message_end=True)  # ... is a line at the datagram's end
    assert [link.send() for _ in range(4)] == [b"t=1 v=0.0100\n", b"t=2 v=0.0200\n", b"t=3 v=0.0300\n", b""]


def test_schedule_acts_every_period_without_announcing():
    link, clock = make_link(schedule=parse_schedule("noise@2, stall:0.5@5"))
    assert link.wait() == pytest.approx(2.0)
    clock.now += 2
    assert drain(link) == BOOT_NOISE
    clock.now += 2
    assert drain(link) == BOOT_NOISE
    clock.now += 1  # t=5: the stall
    assert drain(link) == b"" and ask(link, "PING") == b""
    clock.now += 0.5
    assert drain(link) == b"PONG\n"
    clock.now += 100  # long unasked: one of each, not fifty
    assert drain(link) == BOOT_NOISE


@pytest.mark.parametrize("spec, message", [
    ("drop", "expected KIND[:SECONDS]@EVERY"),
    ("boom@3", "unknown fault: boom"),
    ("stall:x@3", "not a number"),
    ("noise@0", "at least 0.05"),
    ("noise:1@3", "NOISE takes no argument"),
])
def test_bad_schedules_are_refused(spec, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        parse_schedule(spec)


def test_split_line_keeps_the_half_from_reading_as_telemetry():
    assert split_line("temp=21.53 hum=40.2 led=0 uptime=12") == (b"temp=21.53 hu", b"m=40.2 led=0 uptime=12\n")
    assert split_line("PONG") == (b"PO", b"NG\n")


@pytest.mark.parametrize("url, message", [
    ("sim://?baud=fast", "baud must be a number"),
    ("sim://?baud=5", "baud must be 0"),
    ("sim://?faults=drop", "expected KIND[:SECONDS]@EVERY"),
    ("sim://?speed=2", "give replay=PATH too"),
    ("sim://?replay=/nonexistent/rec.jsonl", "cannot read recording"),
])
def test_sim_url_options_are_checked(url, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        transports.create(url)


# -- through a real gateway: sim:// ---------------------------------------------------


class JsonClient:
    """A websocket-client in json mode; a named thread puts each message on a queue."""

    def __init__(self, url: str):
        self.ws = websocket.create_connection(url, timeout=5)
        self.ws.settimeout(None)  # the reader waits for as long as the test does
        self.messages: queue.Queue = queue.Queue()
        self.thread = threading.Thread(target=self._run, name="test-ws-rx")
        self.thread.start()
        hello = self.next()
        assert hello["type"] == "hello", hello

    def _run(self) -> None:
        try:
            while True:
                opcode, data = self.ws.recv_data()
                if opcode == websocket.ABNF.OPCODE_CLOSE:
                    break
                self.messages.put((opcode, data, time.monotonic()))
        except (websocket.WebSocketException, OSError):
            pass
        self.messages.put(None)

    def next_frame(self, timeout: float = 5.0):
        item = self.messages.get(timeout=timeout)
        assert item is not None, "connection closed"
        return item

    def next(self, timeout: float = 5.0) -> dict:
        return json.loads(self.next_frame(timeout)[1])

    def send(self, line: str) -> None:
        self.ws.send(json.dumps({"line": line}))

    def until(self, predicate, timeout: float = 5.0) -> list[dict]:
        """Messages up to and including the first that `predicate` accepts."""
        got, deadline = [], time.monotonic() + timeout
        while True:
            msg = self.next(max(0.01, deadline - time.monotonic()))
            got.append(msg)
            if predicate(msg):
                return got

    def close(self) -> None:
        """Close from this thread; the reader thread reads the server's close and ends."""
        try:
            self.ws.send_close()
        except (websocket.WebSocketException, OSError):
            pass
        self.thread.join(5)
        self.ws.shutdown()  # if the server never answered, this ends the reader's recv
        self.thread.join(5)
        assert not self.thread.is_alive()


@pytest.fixture
def clients():
    made: list = []

    def connect(url: str, cls=None):
        client = (cls or JsonClient)(url)
        made.append(client)
        return client

    yield connect
    for client in made:
        client.close()


def is_line(text):
    return lambda m: m["type"] == "line" and m["line"] == text


def is_status(state):
    return lambda m: m["type"] == "status" and m["state"] == state


def assert_drop_recovers(client: JsonClient, command: str, timeout: float = 10.0) -> None:
    """`command` drops the link: the partial line arrives, then reconnecting, connected."""
    client.send(command)
    got = client.until(is_status("connected"), timeout)
    kinds = [(m["type"], m.get("line", m.get("state"))) for m in got]
    lines = [m["line"] for m in got if m["type"] == "line"]
    assert lines[0] == f"OK {command}" or lines[0].startswith(f"OK {command} ")
    assert HALF_TELEMETRY.fullmatch(lines[1]), kinds  # the line in flight, delivered
    assert "data" not in got[[m.get("line") for m in got].index(lines[1])]
    states = [m["state"] for m in got if m["type"] == "status"]
    assert states == ["reconnecting", "connected"], kinds
    client.send("PING")
    client.until(is_line("PONG"))


def test_drop_through_the_gateway_reconnects(start_gateway, clients):
    gw = start_gateway()
    client = clients(ws_url(gw, format="json"))
    assert_drop_recovers(client, "FAULT DROP")
    assert gw.links["sim"].counters.reconnects == 1


def test_drop_with_seconds_keeps_the_device_away(start_gateway, clients):
    gw = start_gateway()
    client = clients(ws_url(gw, format="json"))
    client.send("FAULT DROP 0.6")
    client.until(is_status("reconnecting"))
    down = time.monotonic()
    client.until(is_status("connected"))
    assert time.monotonic() - down >= 0.55


def test_noise_is_a_binary_frame_in_text_mode_and_raw_in_json(start_gateway, clients):
    gw = start_gateway()
    text = websocket.create_connection(ws_url(gw), timeout=5)
    try:
        json_client = clients(ws_url(gw, format="json"))
        text.send("FAULT NOISE")
        assert text.recv_data() == (websocket.ABNF.OPCODE_TEXT, b"OK FAULT NOISE")
        assert text.recv_data() == (websocket.ABNF.OPCODE_BINARY, BOOT_NOISE[:-2])
        text.send("PING")
        assert text.recv() == "PONG"  # the connection is fine
    finally:
        text.close()
    msg = json_client.until(lambda m: m["type"] == "line" and "raw" in m)[-1]
    assert base64.b64decode(msg["raw"]) == BOOT_NOISE[:-2]
    assert "\ufffd" in msg["line"] and "data" not in msg


def test_stall_delays_answers(start_gateway, clients):
    gw = start_gateway()
    client = clients(ws_url(gw, format="json"))
    client.send("FAULT STALL 0.5")
    client.until(is_line("OK FAULT STALL 0.5"))
    asked = time.monotonic()
    client.send("PING")
    client.until(is_line("PONG"))
    assert 0.4 <= time.monotonic() - asked < 3.0


def test_partial_line_waits_for_the_next_line(start_gateway):
    gw = start_gateway()
    ws = websocket.create_connection(ws_url(gw, format="binary"), timeout=5)
    try:
        ws.send_binary(b"FAULT PARTIAL\n")
        got = b""
        deadline = time.monotonic() + 5
        while not HALF_TELEMETRY.fullmatch(got.split(b"\n", 1)[-1].decode()):
            assert time.monotonic() < deadline, got
            got += ws.recv()
        assert got.startswith(b"OK FAULT PARTIAL\n")
        ws.send_binary(b"PING\n")
        while not got.endswith(b"PONG\n"):
            assert time.monotonic() < deadline, got
            got += ws.recv()
        lines = got.decode().split("\n")
        assert TELEMETRY.fullmatch(lines[1]) and lines[2] == "PONG"
    finally:
        ws.close()


def go_seconds(client: JsonClient, count: int) -> float:
    """Seconds from asking `GO count` to its last line, on this process's clock."""
    client.send(f"GO {count}")
    asked = time.monotonic()
    client.until(lambda m: m["type"] == "line" and m["line"].startswith(f"t={count} "), timeout=30)
    return time.monotonic() - asked


def go_bytes(count: int) -> int:
    return sum(len(line) + 1 for line in go_lines(count))


def test_baud_makes_go_1000_take_the_time_of_its_bytes(start_gateway, clients):
    gw = start_gateway(devices=["sim=sim://?interval=0&baud=115200"])
    client = clients(ws_url(gw, format="json"))
    expected = go_bytes(1000) / 11520  # about 1.3 s
    took = go_seconds(client, 1000)
    assert 0.85 * expected <= took <= 1.5 * expected + 0.5, (took, expected)


def test_faults_schedule_from_the_url(start_gateway, clients):
    gw = start_gateway(devices=["sim=sim://?interval=0&faults=noise@0.3"])
    client = clients(ws_url(gw, format="json"))
    stamps = []
    for _ in range(100):
        _, data, at = client.next_frame()
        if "raw" in json.loads(data):
            stamps.append(at)
            if len(stamps) == 3:
                break
    assert 0.45 <= stamps[-1] - stamps[0] <= 2.0  # two periods of 0.3 s


# -- the standalone simulator's drivers: TCP, UDP, pty ---------------------------------


def test_tcp_drop_through_the_gateway(start_gateway, simulator, clients):
    server = simulator("tcp://127.0.0.1:0")
    gw = start_gateway(devices=[f"esp={server.url}"])
    assert gw.links["esp"].wait_connected(5)
    client = clients(ws_url(gw, "esp", format="json"))
    assert_drop_recovers(client, "FAULT DROP")


def test_tcp_drop_with_seconds_refuses_dials_meanwhile(simulator):
    server = simulator("tcp://127.0.0.1:0")
    address = urlsplit(server.url).hostname, urlsplit(server.url).port
    with socket.create_connection(address, timeout=5) as conn:
        conn.sendall(b"FAULT DROP 0.5\n")
        got = b""
        while chunk := conn.recv(4096):  # the server closes: recv ends
            got += chunk
        dropped = time.monotonic()
    assert got.startswith(b"OK FAULT DROP 0.5\n") and HALF_TELEMETRY.fullmatch(got[18:].decode())
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(address, timeout=5).close()
    deadline = time.monotonic() + 5
    while True:  # dials succeed again after the half second
        try:
            conn = socket.create_connection(address, timeout=5)
            break
        except ConnectionRefusedError:
            assert time.monotonic() < deadline, "the simulator did not listen again"
            select.select([], [], [], 0.05)  # a short pause between dials, bounded above
    with conn:
        assert time.monotonic() - dropped >= 0.45
        conn.sendall(b"PING\n")
        assert conn.recv(100) == b"PONG\n"


def read_until(fd_or_sock, pattern: bytes, timeout: float = 5.0) -> bytes:
    got, deadline = b"", time.monotonic() + timeout
    while pattern not in got:
        left = deadline - time.monotonic()
        assert left > 0, f"{pattern!r} not seen in {got!r}"
        ready, _, _ = select.select([fd_or_sock], [], [], left)
        if ready:
            got += os.read(fd_or_sock, 65536) if isinstance(fd_or_sock, int) else fd_or_sock.recv(65536)
    return got


def test_pty_drop_is_half_a_line_then_silence(simulator):
    server = simulator("pty")
    fd = os.open(server.url, os.O_RDWR | os.O_NOCTTY)
    try:
        os.write(fd, b"FAULT DROP 0.5\nPING\n")
        got = read_until(fd, b" hu")  # the answer, then the half line
        dropped = time.monotonic()
        os.write(fd, b"PING\n")
        got += read_until(fd, b"PONG\n")
        assert time.monotonic() - dropped >= 0.45
        # the device "reset" mid-line: the next line it sends completes the cut one
        assert re.fullmatch(rb"OK FAULT DROP 0\.5\ntemp=-?\d+\.\d\d huPONG\n", got), got
    finally:
        os.close(fd)


def test_udp_noise_and_stall_are_datagrams(simulator):
    server = simulator("udp://127.0.0.1:0")
    parts = urlsplit(server.url)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.connect((parts.hostname, parts.port))
        sock.send(b"FAULT NOISE")
        assert read_until(sock, b"OK FAULT NOISE\n") == b"OK FAULT NOISE\n"
        assert read_until(sock, b"\r\n") == BOOT_NOISE  # a datagram of its own
        sock.send(b"FAULT STALL 0.4")
        read_until(sock, b"OK FAULT STALL 0.4\n")
        asked = time.monotonic()
        sock.send(b"PING")
        assert read_until(sock, b"PONG\n") == b"PONG\n"
        assert time.monotonic() - asked >= 0.35


def test_serve_baud_paces_go(simulator):
    server = simulator("tcp://127.0.0.1:0", baud=38400)
    parts = urlsplit(server.url)
    with socket.create_connection((parts.hostname, parts.port), timeout=5) as conn:
        conn.sendall(b"GO 200\n")
        asked = time.monotonic()
        got = read_until(conn, b"t=200 ")
        got += read_until(conn, b"\n") if not got.endswith(b"\n") else b""
        took = time.monotonic() - asked
    expected = go_bytes(200) / 3840  # about 0.8 s
    assert 0.85 * expected <= took <= 1.5 * expected + 0.5, (took, expected)


def test_serve_schedule_and_command_line_checks(simulator):
    with pytest.raises(ValueError, match="unknown fault"):
        SimulatorServer("tcp://127.0.0.1:0", 0, faults="boom@1")
    with pytest.raises(ValueError, match="baud"):
        SimulatorServer("tcp://127.0.0.1:0", 0, baud=-1)
    server = simulator("pty", faults="noise@0.2")
    fd = os.open(server.url, os.O_RDWR | os.O_NOCTTY)
    try:
        assert read_until(fd, BOOT_NOISE + BOOT_NOISE).count(BOOT_NOISE) >= 2
    finally:
        os.close(fd)
