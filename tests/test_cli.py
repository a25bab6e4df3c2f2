"""The commands of SPEC section 1, run as a user runs them: subprocesses, real signals."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import websocket
from conftest import start_process

ROOT = Path(__file__).parent.parent


def run_gateway(*args: str) -> tuple[subprocess.Popen, str]:
    return start_process([sys.executable, str(ROOT / "run_gateway.py"), *args], ROOT)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_run_serve_and_stop_on_signal(sig):
    proc, url = run_gateway("--port", "0", "--device", "sim=sim://?interval=0")
    try:
        with urllib.request.urlopen(f"{url}/healthz", timeout=5) as resp:
            assert resp.status == 200
            assert json.load(resp)["status"] == "ok"
        ws = websocket.create_connection(url.replace("http", "ws") + "/ws/sim", timeout=5)
        ws.send("PING")
        assert ws.recv() == "PONG"
        proc.send_signal(sig)
        frame = ws.recv_frame()
        assert frame.opcode == websocket.ABNF.OPCODE_CLOSE
        assert struct.unpack("!H", frame.data[:2])[0] == 1001
        ws.shutdown()
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()


def test_default_run_prints_page_and_websocket_urls():
    proc, url = run_gateway("--port", "0")
    try:
        rest = [proc.stdout.readline() for _ in range(2)]
        assert rest[0] == f"control page: {url}/\n"
        assert rest[1] == f"device sim: sim:// -> {url.replace('http', 'ws')}/ws/sim\n"
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
        proc.communicate()


@pytest.mark.parametrize("args, expected", [
    (["--device", "x=gopher://h"], "--device: url = 'gopher://h': unknown scheme 'gopher'"),
    (["--device", "nameonly"], "expected NAME=URL"),
    (["--port", "http"], "invalid port 'http'"),
    (["--port", "99999"], "--port: server.port = 99999"),
    (["--port", "\u00b2"], "invalid port '\u00b2'"),
    (["--port", "\u0661\u0662"], "invalid port"),
    (["--device", "a=sim://?max_line=\u00b2"], "--device: url = 'sim://?max_line=\u00b2': max_line must be a whole number"),
    (["--bogus"], "unrecognized arguments: --bogus"),
    (["--config", "/nonexistent.toml"], "/nonexistent.toml: cannot read"),
])
def test_bad_flags_exit_2_with_one_line(args, expected):
    proc = subprocess.run([sys.executable, str(ROOT / "run_gateway.py"), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2
    assert proc.stdout == ""
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and expected in lines[0], proc.stderr


def test_bad_config_file_exit_2_names_file_key_value(tmp_path):
    path = tmp_path / "gw.toml"
    path.write_text('[[device]]\nname = "esp"\nurl = "serial:///dev/ttyUSB0?parity=X"\n')
    proc = subprocess.run([sys.executable, str(ROOT / "run_gateway.py"), "--config", str(path)],
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2
    assert proc.stderr.strip() == (f"run_gateway.py: {path}: device[0].url = 'serial:///dev/ttyUSB0?parity=X': "
                                   "parity must be one of N, E, O, M, S, not 'X'")


def test_allow_pattern_that_does_not_compile_exit_2_naming_it(tmp_path):
    path = tmp_path / "gw.toml"
    path.write_text('[[device]]\nname = "sim"\nurl = "sim://"\nallow = ["PING", "LED (ON|OFF"]\n')
    proc = subprocess.run([sys.executable, str(ROOT / "run_gateway.py"), "--config", str(path)],
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2 and proc.stdout == ""
    (line,) = proc.stderr.splitlines()
    assert line.startswith(f"run_gateway.py: {path}: device[0].allow = 'LED (ON|OFF': not a regular expression"), line


def test_beyond_loopback_prints_page_urls_with_a_token_made_at_start():
    proc = subprocess.Popen([sys.executable, str(ROOT / "run_gateway.py"), "--host", "0.0.0.0", "--port", "0",
                             "--device", "sim=sim://?interval=0"], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        m = re.fullmatch(r"listening on http://0\.0\.0\.0:(\d+)\n", proc.stdout.readline())
        assert m, "no listening line"
        port = m.group(1)
        pages = []
        while (line := proc.stdout.readline()).startswith("control page: "):
            pages.append(line.removeprefix("control page: ").strip())
        token = re.fullmatch(r"http://[^/]+/\?token=([A-Za-z0-9_-]{20,})", pages[0]).group(1)
        hosts = [re.fullmatch(rf"http://([^/]+):{port}/\?token={token}", url).group(1) for url in pages]
        assert "0.0.0.0" not in hosts and hosts[0] == socket.gethostname(), pages
        assert line == f"device sim: sim://?interval=0 -> ws://{hosts[0]}:{port}/ws/sim?token={token}\n"
        local = f"http://127.0.0.1:{port}"
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(f"{local}/api/devices", timeout=5)
        assert err.value.code == 401
        for url in pages:  # each printed URL serves the page, and its token the API
            with urllib.request.urlopen(url, timeout=5) as resp:
                assert resp.status == 200 and b"<html" in resp.read().lower()
            with urllib.request.urlopen(url.replace("/?", "/api/devices?"), timeout=5) as resp:
                assert resp.status == 200
        with pytest.raises(websocket.WebSocketBadStatusException):
            websocket.create_connection(f"ws://127.0.0.1:{port}/ws/sim", timeout=5)
        ws = websocket.create_connection(f"ws://127.0.0.1:{port}/ws/sim?token={token}", timeout=5)
        ws.send("PING")
        assert ws.recv() == "PONG"
        ws.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
        _, err_text = proc.communicate()
    assert "WARNING gateway: bound to 0.0.0.0 with no [auth] tokens: made a control token" in err_text


def test_loopback_needs_no_token():
    proc, url = run_gateway("--port", "0")
    try:
        assert proc.stdout.readline() == f"control page: {url}/\n"
        with urllib.request.urlopen(f"{url}/api/devices", timeout=5) as resp:
            assert resp.status == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
        proc.communicate()


def test_port_in_use_is_a_clear_error():
    proc, url = run_gateway("--port", "0")
    try:
        port = url.rsplit(":", 1)[1]
        other = subprocess.run([sys.executable, str(ROOT / "run_gateway.py"), "--port", port],
                               capture_output=True, text=True, timeout=30)
        assert other.returncode == 1
        assert f"cannot listen on 127.0.0.1:{port}" in other.stderr
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=10)
        proc.communicate()


def test_simulator_pty_bridged_by_a_gateway_process():
    sim = subprocess.Popen([sys.executable, "-m", "gateway.simulator", "--listen", "pty", "--interval", "0"],
                           cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        m = re.match(r"simulator pty: (\S+)", sim.stdout.readline())
        assert m, "simulator did not print its pty"
        proc, url = run_gateway("--port", "0", "--device", f"esp=serial://{m.group(1)}?baudrate=115200")
        try:
            ws = websocket.create_connection(url.replace("http", "ws") + "/ws/esp?format=json", timeout=5)
            hello = json.loads(ws.recv())
            while hello.get("state") != "connected":
                hello = json.loads(ws.recv())
            ws.send(json.dumps({"line": "ECHO over a pty", "id": 1, "reply": True}))
            got = {}
            while "reply" not in got:
                msg = json.loads(ws.recv())
                got[msg["type"]] = msg
            assert got["reply"]["line"] == "over a pty"
            ws.close()
        finally:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=10) == 0
            proc.communicate()
    finally:
        sim.send_signal(signal.SIGTERM)
        assert sim.wait(timeout=10) == 0


def test_python_dash_m_simulator_rejects_bad_listen():
    proc = subprocess.run([sys.executable, "-m", "gateway.simulator", "--listen", "http://x"], cwd=ROOT,
                          capture_output=True, text=True, timeout=30, env=dict(os.environ))
    assert proc.returncode == 2 and "--listen takes" in proc.stderr
