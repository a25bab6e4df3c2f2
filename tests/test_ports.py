"""Serial ports found and hot-plugged (SPEC section 8), with ptys as ports: a folder of
by-id-style symbolic links; plug = make a pty and its link, unplug = remove both. GET
/api/ports with urllib, WS /ws/_events with websocket-client, `--list-ports`, and a
device on a by-id path reopened within 2 s of its port coming back under a new pty."""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import websocket
from conftest import wait_for, ws_url

from gateway.app import Gateway
from gateway.config import Config, ConfigError, SerialConfig, apply_flags, from_dict
from gateway.ports import Port, scan, uses_port

ROOT = Path(__file__).resolve().parent.parent


class Bench:
    """A folder of by-id links to ptys: USB adapters to plug in and pull out."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.plugged: dict[str, tuple[int, int]] = {}
        self.spare: list[tuple[int, int]] = []

    def plug(self, name: str) -> str:
        master, slave = pty.openpty()
        path = os.ttyname(slave)
        (self.folder / name).symlink_to(path)
        self.plugged[name] = (master, slave)
        return path

    def unplug(self, name: str) -> None:
        (self.folder / name).unlink()
        for fd in self.plugged.pop(name):
            os.close(fd)

    def hold_a_pty(self) -> None:
        """Take the next pty number, so the next plug gets another one."""
        self.spare.append(pty.openpty())

    def close(self) -> None:
        for name in list(self.plugged):
            self.unplug(name)
        for pair in self.spare:
            for fd in pair:
                os.close(fd)


@pytest.fixture
def bench(tmp_path):
    folder = tmp_path / "by-id"
    folder.mkdir()
    b = Bench(folder)
    yield b
    b.close()


@pytest.fixture
def gateway_on(bench):
    started = []

    def start(devices=(), rescan=1.0):
        config = apply_flags(Config(serial=SerialConfig(scan=(f"{bench.folder}/*",), rescan=rescan)),
                             "127.0.0.1", 0, list(devices) or ["sim=sim://?interval=0"])
        gw = Gateway(config).start()
        started.append(gw)
        return gw

    yield start
    for gw in started:
        gw.shutdown()
    assert not [t.name for t in __import__("threading").enumerate() if t.name == "port-scan"]


def ours(ports, bench) -> list:
    return [p for p in ports if (p["by_id"] or "").startswith(str(bench.folder))]


def test_scan_finds_linked_ptys_and_skips_links_to_nothing(bench):
    path = bench.plug("usb-FTDI_FT232R_A1-if00-port0")
    (bench.folder / "usb-gone-if00").symlink_to("/dev/pts/99999")
    found = scan([f"{bench.folder}/*"])
    assert found[path] == Port(path=path, by_id=f"{bench.folder}/usb-FTDI_FT232R_A1-if00-port0")
    assert not [p for p in found.values() if p.by_id and "gone" in p.by_id]
    assert uses_port(f"serial://{bench.folder}/usb-FTDI_FT232R_A1-if00-port0", found[path])
    assert uses_port(f"serial://{path}?baudrate=9600", found[path])
    assert not uses_port("serial:///dev/ttyUSB7", found[path])
    usb = Port(path="/dev/ttyUSB0", vid="1a86", pid="7523")
    assert uses_port("hwgrep://1a86:7523", usb) and uses_port("hwgrep://1A86:7523&n=1", usb)
    assert not uses_port("hwgrep://10c4:ea60", usb)


def test_serial_section_is_checked():
    with pytest.raises(ConfigError, match=r"f.toml: serial.scan = 'x': expected a list of absolute globs"):
        from_dict({"serial": {"scan": "x"}}, "f.toml")
    with pytest.raises(ConfigError, match=r"f.toml: serial.rescan = 0.01: expected 0 \(off\) or 0.1 to 3600"):
        from_dict({"serial": {"rescan": 0.01}}, "f.toml")
    assert from_dict({"serial": {"scan": ["/tmp/x/*"], "rescan": 0}}, "f.toml").serial == SerialConfig(("/tmp/x/*",), 0.0)


def test_api_ports_lists_what_is_plugged_and_which_device_uses_it(bench, gateway_on):
    path = bench.plug("usb-CH340_1-if00")
    bench.plug("usb-CP2102_2-if00")
    gw = gateway_on([f"esp=serial://{bench.folder}/usb-CH340_1-if00?baudrate=115200"])
    with urllib.request.urlopen(gw.url + "/api/ports", timeout=5) as resp:
        assert resp.headers["Content-Type"] == "application/json"
        ports = ours(json.loads(resp.read()), bench)
    assert [p["by_id"].rsplit("/", 1)[1] for p in ports] == ["usb-CH340_1-if00", "usb-CP2102_2-if00"]
    assert ports[0] == {"path": path, "by_id": f"{bench.folder}/usb-CH340_1-if00", "vid": None, "pid": None,
                        "serial_number": None, "manufacturer": None, "description": None, "device": "esp"}
    assert ports[1]["device"] is None


def test_list_ports_prints_a_table_and_exits_0(bench, tmp_path):
    path = bench.plug("usb-FTDI_3-if00")
    cfg = tmp_path / "gw.toml"
    cfg.write_text(f'[serial]\nscan = ["{bench.folder}/*"]\n\n[[device]]\nname = "board"\n'
                   f'url = "serial://{bench.folder}/usb-FTDI_3-if00"\n')
    t0 = time.monotonic()
    out = subprocess.run([sys.executable, "run_gateway.py", "--config", str(cfg), "--list-ports"], cwd=ROOT,
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].split() == ["PATH", "BY-ID", "VID:PID", "SERIAL", "MANUFACTURER", "DESCRIPTION", "DEVICE"]
    row = next(line for line in lines if line.startswith(path + " "))
    assert row.split() == [path, f"{bench.folder}/usb-FTDI_3-if00", "-", "-", "-", "-", "board"]
    assert time.monotonic() - t0 < 10


def test_hot_plug_events_and_a_by_id_device_reopened_under_a_new_pty(bench, gateway_on):
    first = bench.plug("usb-ESP_1-if00")
    gw = gateway_on([f"esp=serial://{bench.folder}/usb-ESP_1-if00"])
    link_ok = gw.links["esp"].wait_connected(5)
    assert link_ok
    ev = websocket.create_connection(ws_url(gw, "_events"), timeout=10)
    assert json.loads(ev.recv())["type"] == "hello"
    ws = websocket.create_connection(ws_url(gw, "esp", format="json"), timeout=10)
    assert json.loads(ws.recv())["type"] == "hello"

    backlog = []

    def next_event(kind):
        """The next event of `kind`; the others are kept, in order (a device's state
        and its port's event come in either order)."""
        for i, msg in enumerate(backlog):
            if msg["type"] == kind:
                return backlog.pop(i)
        while True:
            msg = json.loads(ev.recv())
            if msg["type"] == kind:
                return msg
            backlog.append(msg)

    bench.unplug("usb-ESP_1-if00")
    removed = next_event("port")
    assert removed == {"type": "port", "event": "removed", "port": {
        "path": first, "by_id": f"{bench.folder}/usb-ESP_1-if00", "vid": None, "pid": None,
        "serial_number": None, "manufacturer": None, "description": None, "device": "esp"}}
    assert next_event("device") == {"type": "device", "event": "state", "device": "esp", "state": "reconnecting",
                                    "kind": "serial", "owner": gw.gateway_id, "remote": False}
    # Left unplugged long enough for its backoff to grow past 2 s (0.2, 0.4, ... 3.2).
    wait_for(lambda: gw.links["esp"].failed_opens >= 4, timeout=10, what="four failed opens")
    bench.hold_a_pty()
    t0 = time.monotonic()
    second = bench.plug("usb-ESP_1-if00")
    assert second != first
    added = next_event("port")
    assert added["event"] == "added" and added["port"]["path"] == second and added["port"]["device"] == "esp"
    assert next_event("device") == {"type": "device", "event": "state", "device": "esp", "state": "connected",
                                    "kind": "serial", "owner": gw.gateway_id, "remote": False}
    took = time.monotonic() - t0
    assert took < 2.0, f"reopened {took:.2f} s after the re-plug"
    # The device works on its new pty: a client line reaches it, its line reaches the client.
    ws.send(json.dumps({"line": "PING", "id": 1}))
    master = bench.plugged["usb-ESP_1-if00"][0]
    assert os.read(master, 100) == b"PING\n"
    os.write(master, b"PONG\n")
    while (msg := json.loads(ws.recv()))["type"] != "line":
        pass
    assert msg["line"] == "PONG"
    ws.close()
    ev.close()


def test_hwgrep_takes_a_baud_rate_like_serial():
    from gateway import transports

    t = transports.create("hwgrep://1a86:7523?baudrate=115200&n=1&skip_busy")
    assert t.settings == {"baudrate": 115200} and t.port_name == "hwgrep://1a86:7523&n=1&skip_busy"
    assert t.pollable and t.signals and not t.signals_block
    assert transports.create("rfc2217://127.0.0.1:2217").signals_block
    with pytest.raises(ValueError, match="baudrate must be a positive whole number"):
        transports.create("hwgrep://1a86:7523?baudrate=fast")
