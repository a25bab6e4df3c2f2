"""DTR, RTS, BREAK, reset and the bootloader sequence (SPEC section 8): json-mode
messages through a real gateway, against sim:// (which models the ESP auto-reset
circuit), a pty (no modem lines: a clear error) and TCP (no signals at all)."""

from __future__ import annotations

import base64
import json
import os
import pty
import socket

import pytest
import websocket
from conftest import wait_for, ws_url

from gateway.config import ConfigError, DeviceConfig, parse_device_flag
from gateway.signals import BOOTLOADER, NAMED, Step, parse_sequence
from gateway.simulator.device import SimulatedDevice
from gateway.simulator.link import BOOT_NOISE, Link


def drain(link: Link) -> bytes:
    out = b""
    while data := link.send():
        out += data
    return out


def connect(gw, device="sim", **params) -> websocket.WebSocket:
    ws = websocket.create_connection(ws_url(gw, device, format="json", **params), timeout=5)
    hello = json.loads(ws.recv())
    assert hello["type"] == "hello"
    return ws


def until(ws, predicate, limit=200) -> tuple[list, dict]:
    """Messages up to and including the first that `predicate` accepts."""
    seen = []
    for _ in range(limit):
        msg = json.loads(ws.recv())
        seen.append(msg)
        if predicate(msg):
            return seen, msg
    raise AssertionError(f"not found in {seen}")


def request(ws, line: str) -> str:
    ws.send(json.dumps({"line": line, "id": 99, "reply": True}))
    return until(ws, lambda m: m["type"] == "reply")[1]["line"]


# -- the sequences -------------------------------------------------------------------------


def test_sequences_parse_into_steps_and_bad_ones_say_why():
    assert parse_sequence("esp") == (Step("signals", False, True), Step("wait", ms=100), Step("signals", None, False))
    assert parse_sequence("d1,w50 r0 B250") == (Step("signals", True), Step("wait", ms=50),
                                                Step("signals", None, False), Step("break", ms=250))
    assert parse_sequence("none") == ()
    assert parse_sequence(BOOTLOADER)[2] == Step("signals", True, False)  # EN up with GPIO0 low, at once
    with pytest.raises(ValueError, match="unknown step 'X1'"):
        parse_sequence("D0 X1")
    with pytest.raises(ValueError, match="at most 5000 ms"):
        parse_sequence("W9999")
    for name in NAMED:
        assert DeviceConfig("a", "sim://", reset=name).reset_sequence == name


def test_reset_key_is_checked_like_any_config_key():
    with pytest.raises(ConfigError, match=r"--device: url = 'sim://\?reset=x'"):
        parse_device_flag("a=sim://?reset=x")  # not a URL option
    from gateway.config import from_dict

    with pytest.raises(ConfigError) as exc:
        from_dict({"device": [{"name": "a", "url": "sim://", "reset": "D0 R1 W100 Q"}]}, "f.toml")
    assert str(exc.value) == ("f.toml: device[0].reset = 'D0 R1 W100 Q': unknown step 'Q': expected D0, D1, R0, "
                              "R1, W<ms> or B<ms> (or one of esp, dtr, none)")
    with pytest.raises(ConfigError, match="a tcp:// device carries no signals"):
        from_dict({"device": [{"name": "a", "url": "tcp://127.0.0.1:9", "reset": "esp"}]}, "f.toml")
    assert DeviceConfig("a", "tcp://127.0.0.1:9").reset_sequence == "none"
    assert DeviceConfig("a", "serial:///dev/ttyUSB0").reset_sequence == "esp"


# -- the simulated circuit, no I/O ------------------------------------------------------------


def test_the_simulated_board_reboots_when_en_is_released():
    now = [100.0]
    link = Link(SimulatedDevice(2.0, clock=lambda: now[0]), clock=lambda: now[0])
    link.receive(b"LED ON\nSET interval 5\n")
    now[0] += 30
    link.set_signals(dtr=False, rts=True)  # EN low: in reset, what was queued is gone
    assert link.in_reset and link.send() == b""
    link.receive(b"PING\n")  # deaf while in reset
    assert link.send() == b"" and link.wait() is None
    link.set_signals(rts=False)  # EN up, GPIO0 up: a normal boot
    assert drain(link) == BOOT_NOISE + b"ready\n"
    link.receive(b"GET uptime\nGET led\n")
    assert drain(link) == b"uptime=0\nled=0\n"
    assert link.device.interval == 2.0 and not link.in_bootloader and link.boots == 1


def test_the_bootloader_sequence_leaves_the_board_deaf_until_the_next_reset():
    now = [0.0]
    link = Link(SimulatedDevice(1.0, clock=lambda: now[0]), clock=lambda: now[0])
    for step in parse_sequence(BOOTLOADER):
        if step.kind == "signals":
            link.set_signals(step.dtr, step.rts)
    assert link.in_bootloader and drain(link) == BOOT_NOISE  # the ROM's noise, no "ready"
    link.receive(b"PING\n")
    now[0] += 5
    assert link.send() == b"" and link.wait() is None  # no answer, no telemetry
    link.set_signals(dtr=False, rts=True)
    link.set_signals(rts=False)
    assert drain(link) == BOOT_NOISE + b"ready\n"
    link.receive(b"PING\n")
    assert drain(link) == b"PONG\n"


# -- through the gateway ---------------------------------------------------------------------


def test_reset_reboots_the_simulator_boot_noise_arrives_as_binary_then_ready(start_gateway):
    gw = start_gateway()
    ws = connect(gw)
    text = websocket.create_connection(ws_url(gw), timeout=5)
    # The handshake's answer can reach the client before the loop has joined it to the
    # device's fan-out: wait for that, or the first line may be sent before it joined.
    wait_for(lambda: gw.links["sim"].hub.clients == 2, what="the text client to join the fan-out")
    ws.send(json.dumps({"line": "LED ON", "id": 1}))
    until(ws, lambda m: m.get("line") == "led=1")
    ws.send(json.dumps({"type": "reset", "id": 3}))
    seen, ack = until(ws, lambda m: m["type"] in ("ack", "error"))
    assert ack == {"type": "ack", "signal": "reset", "id": 3}
    lines = [m for m in seen if m["type"] == "line"]
    if not any(m["line"] == "ready" for m in lines):
        lines += [m for m in until(ws, lambda m: m.get("line") == "ready")[0] if m["type"] == "line"]
    assert base64.b64decode(lines[-2]["raw"]) == BOOT_NOISE[:-2] and lines[-1]["line"] == "ready"
    # A text client gets the noise as a binary frame of its raw bytes, then the text line.
    assert text.recv() == "OK LED ON" and text.recv() == "led=1"
    opcode, data = text.recv_data()
    assert (opcode, data) == (websocket.ABNF.OPCODE_BINARY, BOOT_NOISE[:-2])
    assert text.recv() == "ready"
    assert request(ws, "GET uptime") == "uptime=0" and request(ws, "GET led") == "led=0"
    ws.close()
    text.close()


def test_bootloader_silences_the_line_protocol_until_reset(start_gateway):
    gw = start_gateway()
    ws = connect(gw)
    ws.send(json.dumps({"type": "bootloader", "id": 4}))
    assert until(ws, lambda m: m["type"] in ("ack", "error"))[1] == {"type": "ack", "signal": "bootloader", "id": 4}
    ws.send(json.dumps({"line": "PING", "id": 5, "reply": True, "timeout": 0.5}))
    seen, answer = until(ws, lambda m: m["type"] in ("reply", "error"))
    assert answer == {"type": "error", "id": 5, "error": "no reply within 0.5 s"}
    assert not [m for m in seen if m["type"] == "line" and m["line"] == "PONG"]
    ws.send(json.dumps({"type": "reset", "id": 6}))
    until(ws, lambda m: m.get("line") == "ready")
    assert request(ws, "PING") == "PONG"
    ws.close()


def test_signals_and_break_are_acked_and_bad_ones_answer_an_error(start_gateway):
    gw = start_gateway()
    ws = connect(gw)
    ws.send(json.dumps({"type": "signals", "dtr": True, "rts": False, "id": 1}))
    assert json.loads(ws.recv()) == {"type": "ack", "signal": "signals", "id": 1}
    sim = gw.links["sim"].transport.link
    assert (sim.dtr, sim.rts) == (True, False)
    ws.send(json.dumps({"type": "break", "ms": 30, "id": 2}))
    assert json.loads(ws.recv()) == {"type": "ack", "signal": "break", "id": 2}
    for bad, error in (({"type": "signals", "dtr": "yes", "id": 3}, 'expected "dtr" to be true or false'),
                       ({"type": "signals", "id": 3}, 'expected "dtr" or "rts" (true: asserted, false: released)'),
                       ({"type": "break", "ms": 0, "id": 3},
                        'expected "ms" to be a whole number of milliseconds from 1 to 5000'),
                       ({"id": 3, "type": "jump"}, "unknown type 'jump' (known: ping, signals, break, reset, bootloader)")):
        ws.send(json.dumps(bad))
        assert json.loads(ws.recv()) == {"type": "error", "id": 3, "error": error}
    # One sequence at a time: a second while the first waits its 250 ms is refused.
    ws.send(json.dumps({"type": "break", "ms": 250, "id": 7}))
    ws.send(json.dumps({"type": "reset", "id": 8}))
    first = json.loads(ws.recv())
    assert first == {"type": "error", "id": 8, "error": "device sim is busy with a break sequence"}
    assert json.loads(ws.recv()) == {"type": "ack", "signal": "break", "id": 7}
    ws.close()


def test_a_view_client_may_not_send_signals(gateway_with_tokens):
    gw = gateway_with_tokens
    ws = websocket.create_connection(ws_url(gw, "sim", format="json", token="look-only"), timeout=5)
    assert json.loads(ws.recv())["role"] == "view"
    ws.send(json.dumps({"type": "reset", "id": 1}))
    assert json.loads(ws.recv()) == {"type": "error", "id": 1, "error": "role view may not send signals to the device"}
    assert gw.links["sim"].transport.link.boots == 0
    ws.close()


@pytest.fixture
def gateway_with_tokens():
    from gateway.app import Gateway
    from gateway.config import AuthConfig, Config, Token, apply_flags

    config = apply_flags(Config(auth=AuthConfig(tokens=(Token("look-only", "view"),))), "127.0.0.1", 0,
                         ["sim=sim://?interval=0"])
    gw = Gateway(config).start()
    assert gw.links["sim"].wait_connected(5)
    yield gw
    gw.shutdown()


def test_tcp_cannot_carry_signals_and_a_pty_has_no_modem_lines(start_gateway):
    listener = socket.create_server(("127.0.0.1", 0))
    master, slave = pty.openpty()
    try:
        gw = start_gateway(devices=(f"net=tcp://127.0.0.1:{listener.getsockname()[1]}",
                                    f"tty=serial://{os.ttyname(slave)}"), wait_connected=False)
        conn, _ = listener.accept()
        for name in ("net", "tty"):
            assert gw.links[name].wait_connected(5)
        ws = connect(gw, "net")
        ws.send(json.dumps({"type": "reset", "id": 1}))
        assert json.loads(ws.recv()) == {"type": "error", "id": 1, "error": (
            "device net cannot carry signals (DTR, RTS, BREAK): a tcp:// link has none; "
            "serial://, rfc2217:// and sim:// do")}
        ws.close()
        ws = connect(gw, "tty")
        ws.send(json.dumps({"type": "signals", "rts": True, "id": 2}))
        error = json.loads(ws.recv())
        assert error["id"] == 2 and error["error"] == f"{os.ttyname(slave)} cannot set DTR/RTS: Inappropriate ioctl for device"
        ws.send(json.dumps({"type": "break", "ms": 20, "id": 3}))  # a pty takes a BREAK
        assert json.loads(ws.recv()) == {"type": "ack", "signal": "break", "id": 3}
        assert gw.links["tty"].state.value == "connected"
        ws.close()
        conn.close()
    finally:
        listener.close()
        os.close(master)
        os.close(slave)
