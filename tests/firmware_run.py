"""Runs the sample firmware as a board would, for tests/test_firmware_*.py.

    board = Board.sketch(hosts, "LINK_TCP_SERVER", tmp_path)   # or Board.micropython(hosts, "tcp-server", tmp_path)
    gw = start_gateway(devices=[f"esp={board.url}"])
    with Client(gw) as ws: ws.ask("PING") == ["PONG"]

A Board picks free ports, builds (firmware_build.py) and starts the program; `url` is the
gateway's device URL for it. In serial mode the program's standard input and output are a
terminal, as the emulation needs (it reads its UART from a non-blocking tty), joined by
a PtyBridge to a second pty that the gateway opens, as it would /dev/ttyUSB0.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import select
import threading
import time
import tty
from pathlib import Path

import websocket
from conftest import free_port, ws_url
from firmware_build import MICROPYTHON_SCRIPT, STUBS, micropython_binary, sketch_binary, umqtt_path
from test_firmware_parity import EXAMPLES, mismatches
from test_firmware_parity import TELEMETRY as TELEMETRY_PATTERN

TELEMETRY = re.compile(TELEMETRY_PATTERN)  # protocol.md's
MAX_LINE = 1024  # both firmwares' line buffer

SKETCH_MODES = {"serial": "LINK_SERIAL", "tcp-server": "LINK_TCP_SERVER", "tcp-client": "LINK_TCP_CLIENT",
                "udp": "LINK_UDP", "mqtt": "LINK_MQTT"}


class PtyBridge:
    """Two ptys joined by a thread "fw-pty-bridge": the board's (`board_end`, its stdin
    and stdout) and the gateway's (`path`). Both are raw: nothing echoes."""

    def __init__(self):
        self._board_master, self.board_end = os.openpty()
        self._gateway_master, self._gateway_end = os.openpty()
        for fd in (self.board_end, self._gateway_end):
            tty.setraw(fd)
        self.path = os.ttyname(self._gateway_end)
        self._wake_r, self._wake_w = os.pipe()
        self._thread = threading.Thread(target=self._run, name="fw-pty-bridge")
        self._thread.start()

    def _run(self) -> None:
        routes = {self._board_master: self._gateway_master, self._gateway_master: self._board_master}
        while True:
            ready, _, _ = select.select([*routes, self._wake_r], [], [])
            if self._wake_r in ready:
                return
            for fd in ready:
                try:
                    data = os.read(fd, 4096)
                except OSError:  # EIO: nobody has the other end open just now
                    data = b""
                if data:
                    os.write(routes[fd], data)
                else:
                    time.sleep(0.01)  # a pty with no one on its far side polls readable

    def close(self) -> None:
        os.write(self._wake_w, b"x")
        self._thread.join(5)
        assert not self._thread.is_alive(), "fw-pty-bridge did not stop"
        for fd in (self._board_master, self.board_end, self._gateway_master, self._gateway_end,
                   self._wake_r, self._wake_w):
            os.close(fd)


class Board:
    def __init__(self, argv: list[str], mode: str, url: str, log: Path, bridge: PtyBridge | None = None):
        self.argv, self.mode, self.url, self.log, self.bridge = argv, mode, url, log, bridge
        self.proc: subprocess.Popen | None = None

    @staticmethod
    def _ports(mode: str, broker) -> tuple[dict, str, PtyBridge | None]:
        """Settings (by their MicroPython names), the gateway's URL, and a serial line."""
        settings: dict = {"MODE": mode}
        bridge = None
        if mode == "serial":
            bridge = PtyBridge()
            url = f"serial://{bridge.path}?baudrate=115200"
        elif mode == "tcp-server":
            settings["TCP_PORT"] = free_port()
            url = f"tcp://127.0.0.1:{settings['TCP_PORT']}"
        elif mode == "tcp-client":
            settings.update(TCP_PORT=free_port(), GATEWAY_HOST="127.0.0.1")
            url = f"tcp-listen://127.0.0.1:{settings['TCP_PORT']}"
        elif mode == "udp":
            settings.update(UDP_PORT=free_port(), GATEWAY_UDP_PORT=free_port(), GATEWAY_HOST="127.0.0.1")
            url = f"udp://127.0.0.1:{settings['UDP_PORT']}?bind=127.0.0.1:{settings['GATEWAY_UDP_PORT']}"
        elif mode == "mqtt":
            settings.update(MQTT_BROKER=broker.host, MQTT_PORT=broker.port, MQTT_PREFIX="fw", DEVICE_NAME="esp")
            url = f"mqtt://{broker.host}:{broker.port}/fw/esp"
        else:
            raise ValueError(f"unknown mode {mode!r}")
        return settings, url, bridge

    @classmethod
    def sketch(cls, hosts: Path, mode: str, tmp: Path, broker=None) -> "Board":
        settings, url, bridge = cls._ports(mode, broker)
        del settings["MODE"]
        binary = sketch_binary(hosts, SKETCH_MODES[mode], **settings)
        return cls([str(binary), "-S", "0", "-L", "0"], mode, url, tmp / f"sketch-{mode}.log", bridge)

    @classmethod
    def micropython(cls, hosts: Path, mode: str, tmp: Path, broker=None, **extra) -> "Board":
        settings, url, bridge = cls._ports(mode, broker)
        settings.update(extra)
        argv = [str(micropython_binary(hosts)), "-X", "heapsize=1M", str(STUBS / "run_device.py"),
                str(MICROPYTHON_SCRIPT.parent), str(umqtt_path(hosts)), json.dumps(settings)]
        return cls(argv, mode, url, tmp / f"micropython-{mode}.log", bridge)

    def start(self) -> "Board":
        with open(self.log, "ab") as log:
            io = self.bridge.board_end if self.bridge else subprocess.DEVNULL
            stdout = self.bridge.board_end if self.bridge else log
            self.proc = subprocess.Popen(self.argv, stdin=io, stdout=stdout, stderr=log, cwd=self.log.parent)
        return self

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self.bridge is not None:
            self.bridge.close()
            self.bridge = None


class Client:
    """websocket-client on the device, text mode; telemetry lines kept apart."""

    def __init__(self, gw, device: str = "esp", timeout: float = 10.0):
        self.ws = websocket.create_connection(ws_url(gw, device), timeout=timeout)
        self.telemetry: list[str] = []
        self._marker = 0

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.ws.close()

    def recv(self, timeout: float = 10.0) -> str:
        """The next line that is not telemetry, within `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            if time.monotonic() > deadline:
                raise AssertionError(f"no answer within {timeout} s, only telemetry")
            self.ws.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                line = self.ws.recv()
            except websocket.WebSocketTimeoutException:
                raise AssertionError(f"no answer within {timeout} s") from None
            if isinstance(line, bytes):
                line = line.decode("utf-8", "replace")
            if TELEMETRY.fullmatch(line):
                self.telemetry.append(line)
            else:
                return line

    def ask(self, *lines: str, timeout: float = 10.0) -> list[str]:
        """Send `lines`, then an ECHO marker; every answer before the marker comes back."""
        self._marker += 1
        marker = f"end-{self._marker}"
        for line in (*lines, f"ECHO {marker}"):
            self.ws.send(line)
        answers = []
        while (line := self.recv(timeout)) != marker:
            if not re.fullmatch(r"end-\d+", line):  # a marker of an ask that timed out
                answers.append(line)
        return answers

    def pongs(self) -> bool:
        """Whether PING is answered within 2 s (False while the device is still away;
        a late PONG is read and skipped by the next ask, before its marker)."""
        try:
            return "PONG" in self.ask("PING", timeout=2)
        except AssertionError:
            return False

    def next_telemetry(self) -> str:
        """The next telemetry line (answers meanwhile are a failure)."""
        line = self.ws.recv()
        line = line.decode("utf-8", "replace") if isinstance(line, bytes) else line
        assert TELEMETRY.fullmatch(line), f"expected a telemetry line, got {line[:80]!r}"
        return line


def check_protocol(client: Client, burst: int = 1000) -> None:
    """Every row of protocol.md's table, GO `burst` whole and in order, ECHO at and past
    MAX_LINE, and SET interval's timing, through the gateway."""
    for example in EXAMPLES:
        client.ask("LED OFF")  # each row starts from a device with its LED off
        got = client.ask(*example.inputs)
        assert not mismatches(example, got), f"{list(example.inputs)} -> {got}: {mismatches(example, got)}"
    lines = client.ask(f"GO {burst}")
    numbers = [line.split()[0] for line in lines]
    assert numbers == [f"t={i}" for i in range(1, burst + 1)], f"{len(numbers)}: {numbers[:3]} ... {numbers[-3:]}"
    assert all(abs(float(line.split("v=")[1]) - math.sin(i / 100)) <= 0.00011 for i, line in enumerate(lines, 1))
    longest = "ECHO " + "x" * (MAX_LINE - 5)
    assert client.ask(longest, longest + "y", "PING") == [longest[5:], "ERR line too long", "PONG"]
    assert client.ask("SET interval 0.25") == ["OK interval 0.25"]
    client.telemetry.clear()
    client.ws.settimeout(5)
    times = []
    for _ in range(6):
        client.next_telemetry()
        times.append(time.monotonic())
    gaps = [round(b - a, 3) for a, b in zip(times, times[1:])]
    # 5 x 0.25 s, give or take a loaded machine; not 1 s apart, nor two at once
    assert 1.0 < times[-1] - times[0] < 3.0 and min(gaps) > 0.05, gaps
    assert client.ask("SET interval 0") == ["OK interval 0"]
    assert client.ask("SET interval 1") == ["OK interval 1"]  # as after a reset


def through_the_gateway(esp: Board, start_gateway, mode: str, what: str) -> None:
    """Drive `esp` through a real gateway: the protocol, a burst, in MQTT mode 30 lines
    over the limit then an answered PING; then the gateway restarts and `esp` must find it
    again (re-dial it in tcp-client mode)."""
    from conftest import wait_for

    def connected(gw):
        assert esp.alive(), f"the {what} exited: {esp.output()[-2000:]}"
        return gw.links["esp"].wait_connected(0.1)

    gw = start_gateway(devices=[f"esp={esp.url}"], wait_connected=False)
    wait_for(lambda: connected(gw), 15, what=f"the gateway to reach the {what} ({mode})")
    with Client(gw) as client:
        wait_for(client.pongs, 10, what="a first PONG")
        check_protocol(client, burst=200 if mode == "udp" else 1000)  # UDP drops what overflows a buffer
        if mode == "mqtt":
            # PubSubClient's buffer is MAX_LINE + 128: longer messages once went unanswered and
            # unacknowledged, and after 20 the broker sent the sketch nothing more.
            too_long = ["ECHO " + "x" * 2000] * 30
            assert client.ask(*too_long, "PING") == ["ERR line too long"] * 30 + ["PONG"]
    gw.shutdown()
    gw = start_gateway(devices=[f"esp={esp.url}"], wait_connected=False)
    wait_for(lambda: connected(gw), 15, what=f"the {what} back after a gateway restart")
    with Client(gw) as client:
        wait_for(client.pongs, 10, what="a PONG after the restart")
    assert esp.alive()

