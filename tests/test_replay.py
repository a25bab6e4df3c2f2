"""Replaying a recorded session: the pure reader and timing (gateway/simulator/replay.py),
then a recording written here, in the documented format, replayed through a real
gateway (sim://?replay=..., and the standalone simulator over TCP) to real clients.
"""

from __future__ import annotations

import base64
import json
import select
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import websocket

from conftest import ws_url
from gateway.app import Gateway
from gateway.config import Config, DeviceConfig, ServerConfig
from gateway.simulator.device import SimulatedDevice
from gateway.simulator.link import BOOT_NOISE, Link
from gateway.simulator.replay import Entry, Replay, check_recording, parse_recording, read_recording
from test_simulator_faults import FakeClock, JsonClient, drain


ROOT = Path(__file__).resolve().parents[1]
T0 = 1_700_000_000.0
NOISE = BOOT_NOISE[:-2]  # a recorded line holds no line end


def record(path: Path, entries: list[tuple[float, str | bytes]], device: str = "esp") -> Path:
    """Write a recording as the gateway's `record` option does: one JSON object per line,
    "raw" (base64) beside "line" when the device's bytes were not valid text."""
    with path.open("w", encoding="utf-8") as f:
        for seq, (offset, line) in enumerate(entries, start=1):
            obj = {"ts": T0 + offset, "seq": seq, "device": device}
            if isinstance(line, bytes):
                obj["line"] = line.decode("utf-8", errors="replace")
                obj["raw"] = base64.b64encode(line).decode()
            else:
                obj["line"] = line
            f.write(json.dumps(obj) + "\n")
    return path


SESSION = [
    (0.0, "# boot"),
    (0.0, NOISE),
    (2.0, "temp=21.50 hum=40.0 led=0 uptime=1"),
    (2.2, "OK LED ON"),
    (2.4, "led=1"),
    (2.6, "héllo wörld"),
    (2.8, "temp=21.52 hum=40.1 led=1 uptime=2"),
    (3.0, ""),
    (3.4, "last line"),
]


def wire(line: str | bytes) -> bytes:
    return (line if isinstance(line, bytes) else line.encode()) + b"\n"


# -- reading and timing, no I/O ---------------------------------------------------------


def test_parse_recording_lines_raw_and_skips():
    text = [
        json.dumps({"ts": 1.5, "seq": 1, "device": "d", "line": "PONG"}),
        "",
        json.dumps({"ts": 2, "seq": 2, "device": "d", "line": "\ufffd", "raw": base64.b64encode(b"\xff").decode()}),
        json.dumps({"ts": 3, "type": "status", "state": "reconnecting"}),  # no line: skipped
    ]
    assert list(parse_recording(text)) == [Entry(1.5, b"PONG\n", 1), Entry(2.0, b"\xff\n", 2)]


@pytest.mark.parametrize("line, message", [
    ("not json", "rec:1: not JSON"),
    ("[1, 2]", "rec:1: not a JSON object"),
    ('{"line": "x"}', 'rec:1: "ts" must be a number'),
    ('{"ts": "now", "line": "x"}', 'rec:1: "ts" must be a number'),
    ('{"ts": 1, "line": 5}', 'rec:1: "line" must be a string'),
    ('{"ts": 1, "line": "x", "raw": "***"}', 'rec:1: "raw" is not base64'),
])
def test_parse_recording_names_the_line_at_fault(line, message):
    with pytest.raises(ValueError) as info:
        list(parse_recording([line], "rec"))
    assert message in str(info.value)


def test_check_recording(tmp_path):
    assert check_recording(str(record(tmp_path / "ok.jsonl", SESSION))) == len(SESSION)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"ts": 1, "line": "a"}\n{oops\n')
    with pytest.raises(ValueError, match=r"bad\.jsonl:2: not JSON"):
        check_recording(str(bad))
    with pytest.raises(ValueError, match="cannot read recording"):
        check_recording(str(tmp_path / "missing.jsonl"))


def due_times(replay: Replay, step: float = 0.001, limit: float = 100.0) -> list[float]:
    """When each entry comes out, polling every `step` seconds of fake time."""
    times, now = [], replay.start
    while not replay.finished and now < replay.start + limit:
        while replay.pop_due(now) is not None:
            times.append(round(now - replay.start, 3))
        now = max(now + step, replay.next_at or now)
    return times


def test_replay_keeps_the_recorded_pace_divided_by_speed():
    entries = [Entry(T0 + t, b"x\n") for t in (0, 1, 1.5, 4)]
    assert due_times(Replay(entries, 1.0, start=50)) == [0, 1, 1.5, 4]
    assert due_times(Replay(entries, 2.0, start=50)) == [0, 0.5, 0.75, 2]
    assert due_times(Replay(entries, 0, start=50)) == [0, 0, 0, 0]


def test_replay_treats_a_backwards_ts_as_no_pause():
    entries = [Entry(T0 + t, b"x\n") for t in (0, 2, 1, 3)]  # the clock stepped back 1 s
    assert due_times(Replay(entries, 1.0, start=0)) == [0, 2, 2, 4]


def test_replay_does_not_wait_for_a_gateway_that_was_away():
    """A later gateway run appending to the file starts `seq` at 1 again: no pause."""
    entries = [Entry(T0 + t, b"x\n", seq) for t, seq in ((0, 1), (1, 2), (3600, 1), (3601, 2))]
    assert due_times(Replay(entries, 1.0, start=0)) == [0, 1, 1, 2]


def test_replay_ends_with_an_error_when_the_file_turns_bad():
    def entries():
        yield Entry(T0, b"a\n")
        raise ValueError("rec:2: not JSON")

    replay = Replay(entries(), 1.0, start=0)
    assert replay.pop_due(0) == b"a\n"
    assert replay.finished and replay.error == "rec:2: not JSON"


def test_link_replays_alongside_its_answers(tmp_path):
    path = record(tmp_path / "rec.jsonl", [(0, "one"), (1, NOISE), (2, "three")])
    clock = FakeClock()
    link = Link(SimulatedDevice(0, clock=clock), clock=clock,
                replay=Replay(read_recording(str(path)), 1.0, clock()))
    assert drain(link) == b"one\n"
    assert link.wait() == pytest.approx(1.0)
    link.receive(b"PING\n")
    assert drain(link) == b"PONG\n"
    clock.now += 1
    assert drain(link) == NOISE + b"\n"  # raw lines go out as their bytes
    clock.now += 1
    assert drain(link) == b"three\n"
    assert link.wait() is None and link.replay.finished


# -- through a real gateway ---------------------------------------------------------------


def test_replay_through_the_gateway_in_order_and_at_speed(tmp_path, start_gateway):
    path = record(tmp_path / "session.jsonl", SESSION)
    gw = start_gateway(devices=[f"sim=sim://?replay={path}&speed=2"])
    client = JsonClient(ws_url(gw, format="json", since=0))  # since=0: what came before, too
    try:
        lines, arrived, pongs = [], [], 0
        for _ in range(100):
            opcode, data, at = client.next_frame(timeout=10)
            msg = json.loads(data)
            if msg["type"] != "line":
                continue
            if msg["line"] == "PONG":
                pongs += 1
                continue
            lines.append(base64.b64decode(msg["raw"]) if "raw" in msg else msg["line"])
            arrived.append(at)
            if len(lines) == 1:  # during the replay's 1 s pause, it still answers
                client.send("PING")
            if len(lines) == len(SESSION):
                break
    finally:
        client.close()
    assert lines == [line for _, line in SESSION] and pongs == 1
    # lines 3.. were recorded 1.4 s apart, first to last: 0.7 s at speed 2
    span = arrived[-1] - arrived[2]
    assert 0.55 <= span <= 1.4, span


def test_replay_through_the_standalone_simulator_as_fast_as_possible(tmp_path, start_gateway, simulator):
    path = record(tmp_path / "session.jsonl", SESSION * 20)
    server = simulator("tcp://127.0.0.1:0", None, replay=str(path), speed=0)
    gw = start_gateway(devices=[f"esp={server.url}"], wait_connected=False)
    assert gw.links["esp"].wait_connected(5)
    ws = websocket.create_connection(ws_url(gw, "esp", since=0), timeout=5)  # text mode
    started = time.monotonic()
    try:
        got = []
        while len(got) < len(SESSION) * 20:
            opcode, data = ws.recv_data()
            got.append(data if opcode == websocket.ABNF.OPCODE_BINARY else data.decode())
    finally:
        ws.close()
    assert got == [line for _, line in SESSION] * 20  # raw lines as binary frames
    assert time.monotonic() - started < 3.0  # the recording spans 68 s


def test_command_line_replays_and_refuses_a_bad_recording(tmp_path):
    path = record(tmp_path / "session.jsonl", SESSION)
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway.simulator", "--listen", "udp://127.0.0.1:0", "--replay", str(path),
         "--speed", "0"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        ready, _, _ = select.select([proc.stdout], [], [], 10)
        assert ready, "the simulator printed nothing"
        url = proc.stdout.readline().decode().split()[-1]
        host, port = url.removeprefix("udp://").rsplit(":", 1)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.connect((host, int(port)))
            sock.send(b"PING")  # UDP: the replay starts at the first datagram
            got = []
            deadline = time.monotonic() + 5
            while len(got) < len(SESSION) + 1:
                ready, _, _ = select.select([sock], [], [], max(0.01, deadline - time.monotonic()))
                assert ready, got
                got.append(sock.recv(65536))
        assert sorted(got) == sorted([wire(line) for _, line in SESSION] + [b"PONG\n"])
        assert [d for d in got if d != b"PONG\n"] == [wire(line) for _, line in SESSION]
    finally:
        proc.terminate()
        assert proc.wait(5) == 0
        proc.stdout.close()
        proc.stderr.close()
    bad = tmp_path / "bad.jsonl"
    bad.write_text("{}\n[]\n")
    done = subprocess.run([sys.executable, "-m", "gateway.simulator", "--listen", "tcp://127.0.0.1:0",
                           "--replay", str(bad)], cwd=ROOT, capture_output=True, timeout=20)
    assert done.returncode == 2
    assert f"{bad}:2: not a JSON object" in done.stderr.decode()


def test_a_recording_made_by_the_gateway_replays_the_same_lines(tmp_path, start_gateway):
    """The round trip: the gateway's `record` option writes it, the simulator plays it."""
    path = tmp_path / "made.jsonl"
    config = Config(server=ServerConfig(host="127.0.0.1", port=0),
                    devices=(DeviceConfig("sim", "sim://?interval=0", record=str(path)),))
    recording = Gateway(config).start()
    try:
        assert recording.links["sim"].wait_connected(5)
        ws = websocket.create_connection(ws_url(recording, format="json"), timeout=5)
        try:
            for line in ("PING", "FAULT NOISE", "ECHO héllo", "GO 3", "ECHO done"):
                ws.send(json.dumps({"line": line}))
            sent = []
            while not sent or sent[-1] != "done":
                msg = json.loads(ws.recv())
                if msg["type"] == "line":
                    sent.append(base64.b64decode(msg["raw"]) if "raw" in msg else msg["line"])
        finally:
            ws.close()
    finally:
        recording.shutdown()  # the recorder writes what it holds before it stops

    gw = start_gateway(devices=[f"sim=sim://?replay={path}&speed=0"])
    ws = websocket.create_connection(ws_url(gw, since=0), timeout=5)  # text mode
    try:
        got = []
        while len(got) < len(sent):
            opcode, data = ws.recv_data()
            got.append(data if opcode == websocket.ABNF.OPCODE_BINARY else data.decode())
    finally:
        ws.close()
    assert got == sent
    assert NOISE in got and "héllo" in got
