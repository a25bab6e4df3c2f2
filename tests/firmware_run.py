"""Runs the sample firmware as a board would, for tests/test_firmware_*.py.

    board = Board.sketch(hosts, "LINK_TCP_SERVER", tmp_path)   # or Board.micropython(hosts, "tcp-server", tmp_path)
    gw = start_gateway(devices=[f"esp={board.url}"])
    with Client(gw) as ws: ws.ask("PING") == ["PONG"]

A Board picks free ports, builds (firmware_build.py) and starts the program; `url` is the
gateway's device URL for it. In serial mode the program's standard input and output are
a pty's controlling side and the gateway opens the other end, as it would /dev/ttyUSB0.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
import tty
from pathlib import Path

import websocket
from conftest import free_port, ws_url
from firmware_build import MICROPYTHON_SCRIPT, STUBS, micropython_binary, sketch_binary, umqtt_path

TELEMETRY = re.compile(r"temp=-?\d+\.\d{2} hum=\d+\.\d led=[01] uptime=\d+")
MAX_LINE = 1024  # both firmwares' line buffer

SKETCH_MODES = {"serial": "LINK_SERIAL", "tcp-server": "LINK_TCP_SERVER", "tcp-client": "LINK_TCP_CLIENT",
                "udp": "LINK_UDP", "mqtt": "LINK_MQTT"}


class Board:
    def __init__(self, argv: list[str], mode: str, url: str, log: Path, pty_master: int | None = None,
                 pty_slave: int | None = None):
        self.argv, self.mode, self.url, self.log = argv, mode, url, log
        self._master, self._slave = pty_master, pty_slave
        self.proc: subprocess.Popen | None = None

    @staticmethod
    def _ports(mode: str, broker) -> tuple[dict, str, int | None, int | None]:
        """Settings (by their MicroPython names), the gateway's URL, and a pty's two ends."""
        settings: dict = {"MODE": mode}
        master = slave = None
        if mode == "serial":
            master, slave = os.openpty()
            tty.setraw(slave)  # no echo before the gateway opens it: the board would read itself
            url = f"serial://{os.ttyname(slave)}?baudrate=115200"
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
        return settings, url, master, slave

    @classmethod
    def sketch(cls, hosts: Path, mode: str, tmp: Path, broker=None) -> "Board":
        settings, url, master, slave = cls._ports(mode, broker)
        del settings["MODE"]
        binary = sketch_binary(hosts, SKETCH_MODES[mode], **settings)
        return cls([str(binary), "-S", "0", "-L", "0"], mode, url, tmp / f"sketch-{mode}.log", master, slave)

    @classmethod
    def micropython(cls, hosts: Path, mode: str, tmp: Path, broker=None, **extra) -> "Board":
        settings, url, master, slave = cls._ports(mode, broker)
        settings.update(extra)
        argv = [str(micropython_binary(hosts)), "-X", "heapsize=1M", str(STUBS / "run_device.py"),
                str(MICROPYTHON_SCRIPT.parent), str(umqtt_path(hosts)), json.dumps(settings)]
        return cls(argv, mode, url, tmp / f"micropython-{mode}.log", master, slave)

    def start(self) -> "Board":
        with open(self.log, "ab") as log:
            io = self._master if self._master is not None else subprocess.DEVNULL
            stdout = self._master if self._master is not None else log
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
        for fd in (self._master, self._slave):
            if fd is not None:
                os.close(fd)
        self._master = self._slave = None


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
            line = self.ws.recv()
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
    import math

    from test_firmware_parity import EXAMPLES, mismatches

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
    times = []
    for _ in range(4):
        client.next_telemetry()
        times.append(time.monotonic())
    gaps = [b - a for a, b in zip(times, times[1:])]
    assert all(0.15 < gap < 0.6 for gap in gaps), gaps
    assert client.ask("SET interval 0") == ["OK interval 0"]
