"""The JSON-lines recording: the format (gateway/recording.py) and the recorder sink
against a real gateway; reading the file back gives the lines in order."""

from __future__ import annotations

import base64
import json
import threading

import pytest
import websocket

from conftest import assert_no_gateway_threads, metric, wait_for, ws_url
from gateway import recording
from gateway.codec import Line
from gateway.config import Config, DeviceConfig, ServerConfig


@pytest.fixture
def gateway():
    """gateway(DeviceConfig, ...) -> a started Gateway on a free port."""
    from gateway.app import Gateway

    started = []

    def start(*devices: DeviceConfig):
        gw = Gateway(Config(server=ServerConfig(host="127.0.0.1", port=0), devices=devices)).start()
        started.append(gw)
        for link in gw.links.values():
            assert link.wait_connected(5)
        return gw

    yield start
    for gw in started:
        gw.shutdown()
    assert_no_gateway_threads()
    wait_for(lambda: not [t for t in threading.enumerate() if t.name == "recorder"], what="recorder to end")




# -- the format -------------------------------------------------------------------------------


def test_format_round_trip_text_and_invalid_bytes():
    good = recording.encode("sim", 7, 1767262800.1234567, Line(b"temp=21.5", b"\n", "temp=21.5", True))
    assert json.loads(good) == {"ts": 1767262800.123457, "seq": 7, "device": "sim", "line": "temp=21.5"}
    assert good.endswith("\n") and good.count("\n") == 1
    raw = b"\xff\xfeboot"
    bad = recording.encode("sim", 8, 1.5, Line(raw, b"\r\n", raw.decode("utf-8", "replace"), False))
    assert json.loads(bad)["raw"] == base64.b64encode(raw).decode()
    entry = recording.decode(bad)
    assert (entry.seq, entry.device, entry.raw, entry.payload()) == (8, "sim", raw, raw)
    assert recording.decode(good).payload() == b"temp=21.5"
    line_sep = recording.encode("d", 1, 1.0, Line("a\u2028b".encode(), b"\n", "a\u2028b", True))
    assert line_sep.count("\n") == 1 and recording.decode(line_sep).line == "a\u2028b"


@pytest.mark.parametrize("text, why", [
    ("not json", "not JSON"),
    ("[1]", "not a JSON object"),
    ('{"ts": 1, "seq": "1", "device": "d", "line": ""}', "'seq'"),
    ('{"ts": 1, "seq": 1, "device": "d"}', "'line'"),
    ('{"ts": 1, "seq": 1, "device": "d", "line": "", "raw": "%%"}', "not base64"),
])
def test_malformed_lines_are_named(tmp_path, text, why):
    with pytest.raises(ValueError, match=why):
        recording.decode(text)
    path = tmp_path / "r.jsonl"
    path.write_text(recording.encode("d", 1, 1.0, Line(b"x", b"\n", "x", True)) + "\n" + text + "\n")
    with pytest.raises(ValueError, match=f"r.jsonl:3: .*{why}"):
        list(recording.read(str(path)))


# -- the recorder ----------------------------------------------------------------------------


def test_recording_then_reading_back_gives_the_lines_in_order(gateway, tmp_path):
    path = tmp_path / "sim.jsonl"
    gw = gateway(DeviceConfig(name="sim", url="sim://?interval=0", record=str(path)))
    ws = websocket.create_connection(ws_url(gw, "sim", format="json"), timeout=5)
    ws.send(json.dumps({"line": "PING"}))
    ws.send(json.dumps({"line": "GO 2000"}))
    sent = []
    while len(sent) < 2001:
        msg = json.loads(ws.recv())
        if msg["type"] == "line":
            sent.append((msg["seq"], msg["ts"], msg["line"]))
    ws.close()
    wait_for(lambda: metric(gw, "gateway_recording_lines_total", device="sim") == 2001, what="2001 lines recorded")
    gw.shutdown()
    entries = list(recording.read(str(path)))
    assert [(e.seq, e.line) for e in entries] == [(seq, line) for seq, _, line in sent]
    assert all(abs(e.ts - ts) < 0.001 for e, (_, ts, _) in zip(entries, sent))  # json frames round to ms
    assert entries[0].line == "PONG" and entries[-1].line.startswith("t=2000 ")
    assert {e.device for e in entries} == {"sim"} and all(e.raw is None for e in entries)


def test_invalid_bytes_are_recorded_raw_and_devices_may_share_a_file(gateway, tmp_path):
    path = tmp_path / "shared.jsonl"
    gw = gateway(DeviceConfig(name="a", url="loop://", record=str(path)),
                 DeviceConfig(name="b", url="loop://", record=str(path)),
                 DeviceConfig(name="c", url="loop://"))  # not recorded
    wa = websocket.create_connection(ws_url(gw, "a", format="binary"), timeout=5)
    wb = websocket.create_connection(ws_url(gw, "b"), timeout=5)
    wc = websocket.create_connection(ws_url(gw, "c"), timeout=5)
    wa.send_binary(b"\xff\xfe noise\nhello\n")
    wb.send("one\ntwo")
    wc.send("elsewhere")
    assert wc.recv() == "elsewhere"
    for ws in (wa, wb, wc):
        ws.close()
    wait_for(lambda: len(list(recording.read(str(path)))) == 4, what="4 lines recorded")
    a = list(recording.read(str(path), device="a"))
    b = list(recording.read(str(path), device="b"))
    assert [(e.seq, e.raw, e.line) for e in a] == [(1, b"\xff\xfe noise", "\ufffd\ufffd noise"), (2, None, "hello")]
    assert [(e.seq, e.payload()) for e in b] == [(1, b"one"), (2, b"two")]


def test_a_file_that_cannot_be_written_is_counted_and_the_device_goes_on(gateway, tmp_path):
    path = tmp_path / "missing-dir" / "x.jsonl"
    gw = gateway(DeviceConfig(name="dev", url="loop://", record=str(path)))
    ws = websocket.create_connection(ws_url(gw, "dev"), timeout=5)
    ws.send("still here")
    assert ws.recv() == "still here"
    ws.close()
    wait_for(lambda: metric(gw, "gateway_recording_errors_total", device="dev") == 1, what="error counted")
    assert metric(gw, "gateway_recording_lines_total", device="dev") == 0
    assert not path.exists()


def test_a_new_run_appends(gateway, tmp_path):
    path = tmp_path / "runs.jsonl"
    for word in ("first", "second"):
        gw = gateway(DeviceConfig(name="dev", url="loop://", record=str(path)))
        ws = websocket.create_connection(ws_url(gw, "dev"), timeout=5)
        ws.send(word)
        assert ws.recv() == word
        ws.close()
        gw.shutdown()  # writes what is queued before it returns
    assert [(e.seq, e.line) for e in recording.read(str(path))] == [(1, "first"), (1, "second")]


def test_the_simulator_replays_what_the_recorder_wrote(tmp_path):
    """The format is a contract with the simulator's replay (gateway/simulator/replay.py)."""
    replay = pytest.importorskip("gateway.simulator.replay")
    if not hasattr(replay, "read_recording"):
        pytest.skip("gateway.simulator.replay has no read_recording()")
    path = tmp_path / "r.jsonl"
    lines = [Line(b"temp=21.5", b"\n", "temp=21.5", True), Line(b"\xffboot", b"\r\n", "\ufffdboot", False),
             Line("caf\u00e9".encode(), b"\n", "caf\u00e9", True), Line(b"", b"\n", "", True)]
    path.write_text("".join(recording.encode("sim", i, 100.0 + i, line) for i, line in enumerate(lines, 1)),
                    encoding="utf-8")
    assert [e.data for e in replay.read_recording(str(path))] == [line.raw + b"\n" for line in lines]
