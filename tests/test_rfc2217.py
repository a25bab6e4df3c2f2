"""An RFC 2217 port per device (gateway/rfc2217.py) and the device link's external mode:
pyserial's own `rfc2217://` client (a client nobody here wrote) against a real gateway
on 127.0.0.1, with WebSocket clients (websocket-client) watching; esptool's reset
sequences played over the network reach the simulated board's auto-reset circuit."""

from __future__ import annotations

import hashlib
import json
import os
import pty
import socket
import struct
import subprocess
import sys
import termios

import pytest
import serial
import websocket
from conftest import free_port, wait_for, ws_url

from gateway.config import Config, ConfigError, ServerConfig, device_from, from_dict
from gateway.rfc2217 import BOOT_HOLD, MIN_RESET, Rfc2217Server, SignalShaper

# -- helpers -------------------------------------------------------------------------------


@pytest.fixture
def gateway(start_gateway):
    """gateway(*device tables) -> a started Gateway whose devices may have `rfc2217`."""
    from gateway.app import Gateway

    started = []

    def start(*tables, auth=None):
        config = from_dict({"server": {"host": "127.0.0.1", "port": 0, "ping_interval": 0},
                            "device": list(tables), **({"auth": auth} if auth else {})}, "test")
        gw = Gateway(config).start()
        started.append(gw)
        for link in gw.links.values():
            if link.config.kind == "sim":
                assert link.wait_connected(5)
        return gw

    yield start
    for gw in started:
        gw.shutdown()


def watch(gw, device="sim") -> websocket.WebSocket:
    ws = websocket.create_connection(ws_url(gw, device, format="json"), timeout=5)
    assert json.loads(ws.recv())["type"] == "hello"
    return ws


def until(ws, predicate, limit=200) -> dict:
    seen = []
    for _ in range(limit):
        msg = json.loads(ws.recv())
        seen.append(msg)
        if predicate(msg):
            return msg
    raise AssertionError(f"not found in {seen}")


def status(state):
    return lambda m: m["type"] == "status" and m["state"] == state


def open_port(address, query="", **kw) -> serial.Serial:
    host, port = address
    return serial.serial_for_url(f"rfc2217://{host}:{port}{query}", baudrate=kw.pop("baudrate", 115200),
                                 timeout=3, **kw)


def rfc2217_of(gw, device="sim") -> tuple[str, int]:
    return gw.rfc2217[device].address


def sim_link(gw, device="sim"):
    return gw.links[device].transport.link  # the simulated board (gateway/simulator/link.py)


# -- config --------------------------------------------------------------------------------


def test_the_rfc2217_key_takes_a_port_or_host_port_and_beyond_loopback_needs_an_allowlist():
    assert device_from({"name": "a", "url": "sim://", "rfc2217": 4001}, "t", "").rfc2217 == "127.0.0.1:4001"
    assert device_from({"name": "a", "url": "serial:///dev/ttyUSB0", "rfc2217": "[::1]:4001"}, "t", "").rfc2217 == "[::1]:4001"
    for bad, why in ((0, "1 to 65535"), ("host:", "port number"), (True, "port number"),
                     ("a b:1", "not an address")):
        with pytest.raises(ConfigError, match=why):
            device_from({"name": "a", "url": "sim://", "rfc2217": bad}, "t", "")
    with pytest.raises(ConfigError, match=r"tcp:// device cannot be served over RFC 2217"):
        device_from({"name": "a", "url": "tcp://127.0.0.1:1", "rfc2217": 4001}, "t", "")
    with pytest.raises(ConfigError, match="rfc2217_allow = 'x'"):
        device_from({"name": "a", "url": "sim://", "rfc2217": 4001, "rfc2217_allow": ["x"]}, "t", "")
    lan = {"name": "a", "url": "sim://", "rfc2217": "0.0.0.0:4001"}
    with pytest.raises(ConfigError, match=r"t: device\[0\].rfc2217 = '0.0.0.0:4001': RFC 2217 has no authentication"):
        from_dict({"device": [lan]}, "t")
    assert from_dict({"device": [{**lan, "rfc2217_allow": ["192.168.1.0/24"]}]}, "t").devices[0].rfc2217_allow
    assert from_dict({"device": [lan], "auth": {"anonymous": True}}, "t").devices[0].rfc2217 == "0.0.0.0:4001"
    with pytest.raises(ConfigError, match="two devices have this RFC 2217 port"):
        from_dict({"device": [{"name": "a", "url": "sim://", "rfc2217": 4001},
                              {"name": "b", "url": "sim://", "rfc2217": "127.0.0.1:4001"}]}, "t")


def test_a_taken_port_is_refused_at_start_and_by_the_device_api(gateway):
    from gateway.app import Gateway

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = from_dict({"server": {"port": 0}, "device": [{"name": "sim", "url": "sim://", "rfc2217": port}]}, "t")
        with pytest.raises(ConfigError, match=f"device sim: rfc2217 = '127.0.0.1:{port}': cannot listen"):
            Gateway(config).start()
        gw = gateway({"name": "other", "url": "sim://?interval=0"})
        import urllib.error
        import urllib.request

        body = json.dumps({"name": "b", "url": "sim://", "rfc2217": port}).encode()
        req = urllib.request.Request(gw.url + "/api/devices", body, {"Content-Type": "application/json"})
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(req, timeout=5)
        assert err.value.code == 400 and "cannot listen" in err.value.read().decode()
        assert "b" not in gw.links


def test_the_device_api_adds_moves_and_removes_an_rfc2217_port(gateway):
    import urllib.request

    gw = gateway({"name": "sim", "url": "sim://?interval=0"})
    events = websocket.create_connection(ws_url(gw, "_events"), timeout=5)
    assert json.loads(events.recv())["type"] == "hello"

    def patch(changes) -> dict:
        req = urllib.request.Request(gw.url + "/api/devices/sim", json.dumps(changes).encode(),
                                     {"Content-Type": "application/json"}, method="PATCH")
        return json.loads(urllib.request.urlopen(req, timeout=5).read())

    assert gw.describe_devices("sim")[0]["rfc2217"] is None
    port = free_port()
    assert patch({"rfc2217": port})["rfc2217"] == f"127.0.0.1:{port}"
    wait_for(lambda: gw.links["sim"].state.value == "connected", what="the device reopened")
    client = open_port(("127.0.0.1", port))
    holder = gw.rfc2217["sim"].holder
    assert until(events, lambda m: m.get("state") == "external") == {
        "type": "device", "event": "state", "device": "sim", "state": "external", "by": holder,
        "kind": "sim", "owner": gw.gateway_id, "remote": False}
    assert patch({"rfc2217": None})["rfc2217"] is None  # the session ends with its server
    assert "sim" not in gw.rfc2217
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=2)
    client.close()
    events.close()


# -- the reset sequences (SignalShaper, no sockets) ----------------------------------------


class FakeLoop:
    def __init__(self):
        self.now = 0.0
        self.timers = []

    def call_later(self, delay, fn, *args):
        from gateway.manager import Timer

        timer = Timer(self.now + delay, fn, args)
        self.timers.append(timer)
        return timer

    def advance(self, seconds):
        self.now += seconds
        for timer in sorted(self.timers, key=lambda t: t.when):
            if timer.when <= self.now and not timer.cancelled:
                timer.cancelled = True
                timer.fn(*timer.args)


def shaper():
    loop = FakeLoop()
    lines = []
    return loop, lines, SignalShaper(loop, lambda d, r: lines.append((loop.now, d, r)), clock=lambda: loop.now)


def test_esptools_bootloader_sequence_is_replayed_with_its_timing_however_it_arrives():
    loop, lines, s = shaper()
    # esptool's ClassicReset as pyserial's client sends it, all at once (a late, bunched network)
    for dtr, rts in ((False, None), (None, True), (False, None), (True, None), (None, False), (True, None), (False, None)):
        s.set(dtr, rts)
    assert lines == [(0.0, False, False), (0.0, False, True)]  # in reset now; the rest waits
    loop.advance(MIN_RESET)
    assert lines[-1] == (MIN_RESET, True, False)  # EN up with GPIO0 low, together: the ROM loader
    loop.advance(BOOT_HOLD)
    assert lines[-1] == (MIN_RESET + BOOT_HOLD, False, False)  # then the client's last word
    assert s.bootloader_entries == 1


def test_esptools_hard_reset_holds_en_low_long_enough_and_plain_changes_pass_through():
    loop, lines, s = shaper()
    s.set(rts=True)
    s.set(rts=False)  # at once: too short a pulse for EN
    assert lines == [(0.0, False, True)]
    loop.advance(MIN_RESET)
    assert lines[-1] == (MIN_RESET, False, False) and s.bootloader_entries == 0
    s.set(dtr=True)
    s.set(rts=True)
    s.set(dtr=False, rts=False)
    assert lines[-3:] == [(MIN_RESET, True, False), (MIN_RESET, True, True), (MIN_RESET, False, False)]


# -- sessions through a real gateway -------------------------------------------------------


def test_watchers_see_external_cannot_write_and_see_connected_again(gateway):
    gw = gateway({"name": "sim", "url": "sim://?interval=0", "rfc2217": free_port()})
    ws = watch(gw)
    port = open_port(rfc2217_of(gw))
    try:
        holder = until(ws, status("external"))["by"]
        assert holder == f"127.0.0.1:{port._socket.getsockname()[1]}" == gw.rfc2217["sim"].holder
        assert gw.describe_devices("sim")[0]["by"] == holder
        assert gw.describe_devices("sim")[0]["state"] == "external"
        ws.send(json.dumps({"line": "PING", "id": 1}))
        error = until(ws, lambda m: m["type"] == "error")
        assert error["id"] == 1 and f"held by {holder}" in error["error"]
        ws.send(json.dumps({"type": "reset", "id": 2}))
        assert f"held by {holder}" in until(ws, lambda m: m["type"] == "error")["error"]
        port.write(b"PING\n")  # raw bytes: the simulator's line protocol as it is
        assert port.read_until(b"\n") == b"PONG\n"
        assert until(ws, lambda m: m["type"] == "line")["line"] == "PONG"  # watchers get every line
        late = websocket.create_connection(ws_url(gw, "sim", format="json"), timeout=5)
        hello = json.loads(late.recv())  # a client arriving meanwhile is told in its hello
        assert (hello["state"], hello["by"]) == ("external", holder)
    finally:
        port.close()
    until(ws, status("connected"))
    ws.send(json.dumps({"line": "PING", "id": 3}))
    assert until(ws, lambda m: m["type"] == "line")["line"] == "PONG"
    late.close()
    ws.close()


def test_a_second_client_is_refused_with_the_reason_and_the_first_keeps_the_port(gateway):
    gw = gateway({"name": "sim", "url": "sim://?interval=0", "rfc2217": free_port()})
    address = rfc2217_of(gw)
    first = open_port(address)
    try:
        with socket.create_connection(address, timeout=5) as raw:
            reason = b""
            while chunk := raw.recv(1024):
                reason += chunk
        assert reason.decode().startswith(f"gateway: refused: device sim is held by {gw.rfc2217['sim'].holder}; "
                                          "one RFC 2217 client at a time")
        with pytest.raises((serial.SerialException, OSError)):  # pyserial's client: a broken pipe
            open_port(address)
        first.write(b"ECHO still mine\n")
        assert first.read_until(b"\n") == b"still mine\n"
    finally:
        first.close()


def test_a_client_from_a_network_not_in_rfc2217_allow_is_refused(gateway):
    gw = gateway({"name": "sim", "url": "sim://?interval=0", "rfc2217": free_port(), "rfc2217_allow": ["10.0.0.0/8"]})
    with socket.create_connection(rfc2217_of(gw), timeout=5) as raw:
        reason = b""
        while chunk := raw.recv(1024):
            reason += chunk
        assert reason.decode() == f"gateway: refused: 127.0.0.1:{raw.getsockname()[1]} is not in rfc2217_allow of device sim\r\n"
    assert gw.links["sim"].state.value == "connected" and gw.rfc2217["sim"].refused == 1


def test_a_client_that_vanishes_mid_session_leaves_the_device_usable(gateway):
    gw = gateway({"name": "sim", "url": "sim://?interval=0", "rfc2217": free_port()})
    ws = watch(gw)
    port = open_port(rfc2217_of(gw))
    port.rts = True  # the board held in reset
    port.dtr = False
    wait_for(lambda: sim_link(gw).in_reset, what="the board in reset")
    held = gw.rfc2217["sim"]._session.sock  # one gone without even a reset: the kernel's keepalive finds it
    assert held.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) and \
        held.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == 30
    port.write(b"ECHO lost with the client\n" * 100)
    # gone without a word: a reset, no close handshake
    port._socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    port._socket.shutdown(socket.SHUT_RD)  # (wakes pyserial's reader thread; sends nothing)
    port._socket.close()
    until(ws, status("connected"))
    assert not sim_link(gw).in_reset  # DTR and RTS released: the board runs
    ws.send(json.dumps({"line": "PING", "id": 1}))
    assert until(ws, lambda m: m["type"] == "line" and m["line"] == "PONG")
    again = open_port(rfc2217_of(gw))  # and the port can be taken again
    again.write(b"PING\n")
    assert again.read_until(b"\n") == b"PONG\n"
    again.close()
    ws.close()
    try:
        port.close()
    except Exception:
        pass


@pytest.mark.parametrize("query", ["", "?ign_set_control"])
def test_esptools_reset_into_the_rom_loader_and_out_again_reaches_the_simulated_board(gateway, query):
    from esptool.reset import ClassicReset, HardReset

    gw = gateway({"name": "sim", "url": "sim://?interval=0", "rfc2217": free_port()})
    ws = watch(gw)
    port = open_port(rfc2217_of(gw), query)
    try:
        port.dtr = False
        port.rts = False
        ClassicReset(port, 0.05)()  # what esptool does over rfc2217://, as esptool does it
        wait_for(lambda: sim_link(gw).in_bootloader, what="the board in its ROM loader")
        HardReset(port)()  # esptool's --after hard-reset
        wait_for(lambda: not sim_link(gw).in_bootloader and not sim_link(gw).in_reset, what="the board running")
        assert until(ws, lambda m: m["type"] == "line" and m["line"] == "ready")  # watchers see the boot
    finally:
        port.close()
    until(ws, status("connected"))
    ws.close()


def test_dtr_rts_and_break_from_pyserials_client_reach_the_simulated_board(gateway):
    gw = gateway({"name": "sim", "url": "sim://?interval=0", "rfc2217": free_port()})
    port = open_port(rfc2217_of(gw))
    board = sim_link(gw)
    try:
        wait_for(lambda: board.dtr and board.rts, what="DTR and RTS asserted by the client's open")
        for dtr, rts in ((True, False), (False, False), (True, False), (False, False)):  # never RTS alone: no reset
            port.dtr, port.rts = dtr, rts
            wait_for(lambda: (board.dtr, board.rts) == (dtr, rts), what=f"DTR {dtr} RTS {rts}")
        port.baudrate = 460800
        wait_for(lambda: gw.links["sim"].transport.baudrate == 460800, what="the simulated UART at 460800")
        port.send_break(0.05)
        port.write(b"PING\n")
        assert port.read_until(b"\n") == b"PONG\n"
    finally:
        port.close()
    wait_for(lambda: gw.links["sim"].state.value == "connected", what="the device back")
    assert gw.links["sim"].transport.baudrate == 115200  # its own rate again


def pty_device():
    master, slave = pty.openpty()
    return master, os.ttyname(slave), slave


def speed_of(fd) -> int:
    ispeed = termios.tcgetattr(fd)[4]
    return {getattr(termios, name): int(name[1:]) for name in dir(termios)
            if name.startswith("B") and name[1:].isdigit()}[ispeed]


def test_baud_rate_purge_and_raw_bytes_reach_a_serial_port_and_it_is_reopened_as_configured(gateway):
    master, path, slave = pty_device()
    try:
        gw = gateway({"name": "tty", "url": f"serial://{path}", "baudrate": 115200, "rfc2217": free_port()})
        link = gw.links["tty"]
        wait_for(lambda: link.state.value == "connected", what="the pty open")
        ws = watch(gw, "tty")
        port = open_port(rfc2217_of(gw, "tty"), baudrate=9600)
        try:
            until(ws, status("external"))
            wait_for(lambda: speed_of(master) == 9600, what="9600 baud on the port")
            port.baudrate = 460800
            wait_for(lambda: speed_of(master) == 460800, what="460800 baud on the port")
            port.write(bytes(range(256)))  # every byte value, IAC (0xff) among them
            got = b""
            while len(got) < 256:
                got += os.read(master, 4096)
            assert got == bytes(range(256))
            os.write(master, b"\xff\x00binary\xffline\n")
            assert port.read(13) == b"\xff\x00binary\xffline"
            assert until(ws, lambda m: m["type"] == "line")["raw"]  # watchers get it too (not UTF-8)
            port.reset_input_buffer()  # a purge, answered
            port.dtr = True  # a pty has no modem lines: logged, the session goes on
            port.write(b"after\n")
            assert os.read(master, 100) == b"after\n"
        finally:
            port.close()
        until(ws, status("connected"))
        assert speed_of(master) == 115200  # reopened with its configured settings
        ws.send(json.dumps({"line": "hello", "id": 1}))
        until(ws, lambda m: m["type"] == "ack")
        assert os.read(master, 100) == b"hello\n"
        ws.close()
    finally:
        os.close(master)
        os.close(slave)


def test_a_client_slower_than_its_serial_port_pauses_the_port_and_loses_nothing(gateway):
    import threading
    import tty

    from gateway.rfc2217 import OUT_HIGH

    master, path, slave = pty_device()
    tty.setraw(master)
    try:
        gw = gateway({"name": "tty", "url": f"serial://{path}", "rfc2217": free_port()})
        link = gw.links["tty"]
        wait_for(lambda: link.state.value == "connected", what="the pty open")
        data = bytes(range(255)) * 32896  # 8 MiB, no IAC
        client = socket.socket()
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        client.connect(rfc2217_of(gw, "tty"))
        with client:
            wait_for(lambda: link.external, what="the session")
            writer = threading.Thread(target=os.write, args=(master, data), name="test-pty-writer")
            writer.start()  # (blocks once the pty is full: a pty has flow control)
            wait_for(lambda: link._paused, timeout=20, what="the port not read")
            assert link.counters.bytes_in < len(data) // 4  # the rest waits in the pty
            got = bytearray()
            while len(got) < 12 + len(data):  # the server's 4 Telnet option requests, then the data
                got += client.recv(1 << 20)
            writer.join(10)
            assert got.endswith(data) and not link._paused
    finally:
        os.close(master)
        os.close(slave)


def test_an_ephemeral_server_in_process_with_a_label(gateway):
    """What the Flash panel does: its own server on 127.0.0.1:0 for a device with no
    rfc2217 key, named by a label."""
    gw = gateway({"name": "sim", "url": "sim://?interval=0"})
    ws = watch(gw)
    server = Rfc2217Server(gw, gw.links["sim"], "127.0.0.1", 0, label="flash by test").start()
    try:
        assert server.address[1] > 0 and server.holder is None
        port = open_port(server.address)
        assert until(ws, status("external"))["by"] == "flash by test" == server.holder
        port.write(b"GET led\n")
        assert port.read_until(b"\n") == b"led=0\n"
        server.stop(2)  # stopping ends the session: the device goes back to the bridge
        until(ws, status("connected"))
        port.close()
    finally:
        server.stop(2)
    ws.close()


# -- esptool (the real CLI, pinned in requirements.txt) through the gateway ----------------


def esptool(address, *args, cwd=None) -> subprocess.Popen:
    """`python -m esptool --chip esp8266 --port rfc2217://HOST:PORT ARGS`, started, with
    esptool's defaults (reset into the loader and out again over DTR/RTS, the stub,
    compression)."""
    host, port = address
    return subprocess.Popen([sys.executable, "-m", "esptool", "--chip", "esp8266", "--port", f"rfc2217://{host}:{port}",
                             *args], cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def output(proc: subprocess.Popen) -> str:
    """What esptool printed; it must succeed."""
    try:
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out
    return out


def test_esptool_reads_the_mac_and_the_flash_id_and_erases_with_its_defaults(gateway, tmp_path):
    # Three boards, one esptool each, at once (pyserial's client waits 50 ms for each
    # setting it changes: esptool takes seconds through any RFC 2217 server).
    (tmp_path / "flash.bin").write_bytes(b"an image to erase")
    gw = gateway({"name": "a", "url": "sim://?interval=0", "rfc2217": free_port()},
                 {"name": "b", "url": "sim://?interval=0", "rfc2217": free_port()},
                 {"name": "c", "url": f"sim://?interval=0&flash={tmp_path / 'flash.bin'}", "rfc2217": free_port()})
    ws = watch(gw, "c")
    ws.send(json.dumps({"line": "GET fw", "id": 1, "reply": True}))
    assert until(ws, lambda m: m["type"] == "reply")["line"] == f"fw={hashlib.sha256(b'an image to erase').hexdigest()[:12]}"
    read_mac, flash_id, erase = (esptool(rfc2217_of(gw, "a"), "read-mac"), esptool(rfc2217_of(gw, "b"), "flash-id"),
                                 esptool(rfc2217_of(gw, "c"), "erase-flash"))
    out = output(read_mac)
    assert "Stub flasher running." in out and "MAC:                5c:cf:7f:0a:1b:2c" in out
    out = output(flash_id)
    assert "Manufacturer: ef" in out and "Detected flash size: 4MB" in out and "Hard resetting via RTS pin" in out
    assert "Flash memory erased successfully" in output(erase)
    ws.settimeout(30)
    until(ws, status("external"), limit=100000)
    until(ws, status("connected"), limit=100000)
    ws.send(json.dumps({"line": "GET fw", "id": 2, "reply": True}))
    assert until(ws, lambda m: m["type"] == "reply")["line"] == "fw=none"
    ws.close()
    for name in "abc":
        wait_for(lambda: gw.links[name].state.value == "connected", what=f"device {name} back")
        assert gw.rfc2217[name].sessions == 1


def test_esptool_flashes_at_a_higher_baud_while_watchers_see_it_all(gateway, tmp_path):
    gw = gateway({"name": "sim", "url": "sim://?interval=0", "rfc2217": free_port()})
    image = bytearray(os.urandom(256 * 1024))  # random: sent as it is, 0xFF (IAC) bytes among it
    image[0], image[-1] = 0x42, 0x42  # no image header for esptool to patch; the image ends at its last byte
    (tmp_path / "app.bin").write_bytes(image)
    fw = hashlib.sha256(image).hexdigest()[:12]
    ws = watch(gw)
    ws.settimeout(60)  # the loader's answers hold no line end: watchers may wait a while for a line
    flashing = esptool(rfc2217_of(gw), "--baud", "460800", "write-flash", "0x0", "app.bin", cwd=tmp_path)
    try:
        holder = until(ws, status("external"))["by"]
        ws.send(json.dumps({"line": "GET fw", "id": 1}))
        assert f"held by {holder}" in until(ws, lambda m: m["type"] == "error")["error"]
        # esptool's hard reset at the end boots the image: the watchers see it
        assert until(ws, lambda m: m["type"] == "line" and m["line"].startswith("boot fw="), limit=100000)["line"] \
            == f"boot fw={fw}"
    finally:
        out = output(flashing)
    assert "Changing baud rate to 460800" in out and "Wrote 262144 bytes" in out and "Hash of data verified." in out
    until(ws, status("connected"), limit=100000)
    ws.send(json.dumps({"line": "GET fw", "id": 2, "reply": True}))
    assert until(ws, lambda m: m["type"] == "reply")["line"] == f"fw={fw}"
    ws.close()


def test_esptool_killed_mid_flash_leaves_the_device_usable(gateway, tmp_path):
    """The issue's "a client that vanishes mid-flash": esptool killed (-9) halfway through
    write-flash on a paced link. The watchers see the device connected again; the board is
    still in its loader (nothing reset it), so a reset brings the line protocol back, and
    the port can be taken again."""
    gw = gateway({"name": "sim", "url": "sim://?interval=0&baud=115200", "rfc2217": free_port()})
    image = bytearray(os.urandom(256 * 1024))
    image[0] = 0x42  # no image header for esptool to patch
    (tmp_path / "app.bin").write_bytes(image)
    ws = watch(gw)
    ws.settimeout(60)
    flashing = esptool(rfc2217_of(gw), "write-flash", "0x0", "app.bin", cwd=tmp_path)
    try:
        until(ws, status("external"))

        def writing() -> bool:
            loader = sim_link(gw).loader
            write = loader._write if loader is not None else None
            return write is not None and write.remaining < 240 * 1024  # some 16 KiB written
        wait_for(writing, timeout=60, what="esptool halfway through write-flash")
    finally:
        flashing.kill()
        flashing.communicate(timeout=10)
    until(ws, status("connected"), limit=100000)
    ws.send(json.dumps({"type": "reset", "id": 1}))
    until(ws, lambda m: m["type"] == "ack", limit=100000)
    until(ws, lambda m: m["type"] == "line" and m["line"] == "ready", limit=100000)
    ws.send(json.dumps({"line": "PING", "id": 2, "reply": True}))
    assert until(ws, lambda m: m["type"] == "reply")["line"] == "PONG"
    again = open_port(rfc2217_of(gw))
    again.write(b"PING\n")
    assert again.read_until(b"\n") == b"PONG\n"
    again.close()
    ws.close()
