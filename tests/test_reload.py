"""SIGHUP reloads the config file: devices added, removed and changed are applied, the
clients of the others keep their connections; a broken file is refused with one line and
the running config stays. A real process, a real signal, websocket-client clients."""

from __future__ import annotations

import json
import re
import signal
import struct
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
import websocket

from conftest import stop_process, wait_for

ROOT = Path(__file__).parent.parent

DEVICE = '[[device]]\nname = "{name}"\nurl = "{url}"\n'


def config_text(devices: dict[str, str], extra: str = "") -> str:
    return extra + "".join(DEVICE.format(name=n, url=u) for n, u in devices.items())


@pytest.fixture
def gateway(tmp_path):
    procs = []

    def start(text: str, *args: str):
        path = tmp_path / "gateway.toml"
        path.write_text(text)
        err_path = tmp_path / "stderr.txt"
        err = open(err_path, "w")
        proc = subprocess.Popen([sys.executable, str(ROOT / "run_gateway.py"), "--port", "0", *args,
                                 *(["--config", str(path)] if text else [])],
                                cwd=tmp_path, stdout=subprocess.PIPE, stderr=err, text=True)
        err.close()
        procs.append(proc)
        line = proc.stdout.readline()
        m = re.fullmatch(r"listening on (http://127\.0\.0\.1:\d+)\n", line)
        assert m, (line, err_path.read_text())
        return proc, m.group(1), path, err_path

    yield start
    for proc in procs:
        stop_process(proc)


def devices(url: str) -> dict[str, str]:
    with urllib.request.urlopen(url + "/api/devices", timeout=5) as resp:
        return {d["name"]: d["state"] for d in json.load(resp)}


def ping(ws) -> None:
    ws.send("PING")
    while (line := ws.recv()) != "PONG":
        assert not line.startswith("{"), line


def connect(url: str, name: str):
    ws = websocket.create_connection(url.replace("http", "ws", 1) + f"/ws/{name}", timeout=5)
    ping(ws)
    return ws


SIM = "sim://?interval=0"


def test_sighup_adds_removes_and_changes_devices_keeping_other_clients(gateway):
    proc, url, path, err = gateway(config_text({"keep": SIM, "gone": SIM, "tuned": SIM}))
    wait_for(lambda: set(devices(url).values()) == {"connected"}, what="three devices connected")
    keep, gone, tuned = connect(url, "keep"), connect(url, "gone"), connect(url, "tuned")

    path.write_text(config_text({"keep": SIM, "tuned": "sim://?interval=0&history=10", "new": SIM},
                                extra="[limits]\nqueue = 500\n"))
    proc.send_signal(signal.SIGHUP)
    try:
        wait_for(lambda: devices(url).keys() == {"keep", "tuned", "new"} and
                 set(devices(url).values()) == {"connected"}, what="the reloaded devices")
    except AssertionError as exc:
        raise AssertionError(f"{exc}: {devices(url)}; the gateway's log:\n{err.read_text()}") from None

    frame = gone.recv_frame()  # the removed device's client is told it went away
    assert frame.opcode == websocket.ABNF.OPCODE_CLOSE
    assert struct.unpack("!H", frame.data[:2])[0] == 1001
    ping(keep)   # the unchanged device's client kept its connection
    ping(tuned)  # so did the changed one's: it saw the device reopen
    new = connect(url, "new")
    for ws in (keep, tuned, new):
        ws.close()
    gone.shutdown()
    text = wait_for(lambda: "reloaded" in (t := err.read_text()) and t, what="the reload's log line")
    assert "1 added (new), 1 removed (gone), 1 changed (tuned), 1 unchanged" in text
    assert f"reload: [limits] changed in {path}; it takes effect at the next restart" in text


def test_sighup_with_a_broken_file_keeps_the_running_config(gateway):
    proc, url, path, err = gateway(config_text({"keep": SIM, "other": SIM}))
    wait_for(lambda: set(devices(url).values()) == {"connected"}, what="devices connected")
    keep = connect(url, "keep")

    path.write_text(config_text({"keep": SIM, "other": "gopher://nowhere"}))
    proc.send_signal(signal.SIGHUP)
    line = wait_for(lambda: next((l for l in err.read_text().splitlines() if "reload refused" in l), None),
                    what="the refusal")
    assert f"ERROR gateway.reload: reload refused, keeping the running config: {path}: device[1].url = " \
           "'gopher://nowhere': unknown scheme 'gopher'" in line, line
    path.write_text("[[device]]\nname = \"keep\"\nurl = ")  # not TOML at all
    proc.send_signal(signal.SIGHUP)
    wait_for(lambda: f"reload refused, keeping the running config: {path}: not valid TOML"
             in err.read_text(), what="the second refusal")
    assert devices(url) == {"keep": "connected", "other": "connected"}
    ping(keep)
    keep.close()
    assert proc.poll() is None


def test_sighup_without_a_config_file_changes_nothing(gateway):
    proc, url, _, err = gateway("", "--device", f"sim={SIM}")
    proc.send_signal(signal.SIGHUP)
    wait_for(lambda: "SIGHUP: no config file to reload (started without --config)" in err.read_text(),
             what="the warning")
    assert devices(url) == {"sim": "connected"}
