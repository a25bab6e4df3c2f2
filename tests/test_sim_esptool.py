"""The real esptool CLI against the simulated ESP8266, with no gateway in between.

`python -m gateway.simulator --listen tcp://127.0.0.1:0 --bootloader` starts the board in
its ROM loader; esptool (pinned in requirements.txt) talks to it over `socket://`, which
has no DTR or RTS: `--before no-reset`, and `--after soft-reset` (the stub's
RUN_USER_CODE) to boot what was flashed. Most runs are unpaced; one is paced like a UART
at 115200 baud and switches to a higher rate with esptool's `--baud`. The last test runs
esptool as a library on `sim://` itself, with its default DTR/RTS reset.
"""

from __future__ import annotations

import hashlib
import os
import re
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
import serial

from conftest import stop_process
from gateway.simulator.romloader import FLASH_BEGIN, FLASH_END, RUN_USER_CODE, slip_encode
from gateway.transports import create

ROOT = Path(__file__).resolve().parent.parent
MAC = "5c:cf:7f:0a:1b:2c"  # gateway/simulator/romloader.py DEFAULT_MAC


def request(op: int, data: bytes = b"") -> bytes:
    return slip_encode(struct.pack("<BBHI", 0, op, len(data), 0) + data)


def fw_id(image: bytes) -> str:
    return hashlib.sha256(image).hexdigest()[:12]


def random_image(size: int) -> bytes:
    """Random bytes that esptool flashes as they are: no 0xE9 first byte (esptool would
    patch an image header's flash parameters), no 0xFF at the end (the written image is
    the flash up to its last byte that is not 0xFF)."""
    data = bytearray(os.urandom(size))
    data[0] = 0x42 if data[0] == 0xE9 else data[0]
    data[-1] = 0x42 if data[-1] == 0xFF else data[-1]
    return bytes(data)


@pytest.fixture
def simulator(tmp_path):
    """simulator(*args) -> "HOST:PORT" of a simulator process in its ROM loader; stopped after."""
    procs = []

    def start(*args: str) -> str:
        proc = subprocess.Popen(
            [sys.executable, "-m", "gateway.simulator", "--listen", "tcp://127.0.0.1:0", "--bootloader",
             "--interval", "0", *args],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        procs.append(proc)
        line = proc.stdout.readline()
        m = re.fullmatch(r"simulator listening on tcp://(127\.0\.0\.1:\d+)\n", line)
        assert m, f"unexpected first line {line!r}"
        return m.group(1)

    yield start
    for proc in procs:
        stop_process(proc)


def esptool(address: str, *args: str, after: str = "no-reset-stub", baud: int | None = None,
            cwd: Path | None = None, timeout: float = 60) -> str:
    """Run `python -m esptool` against the simulator; its output (it must succeed)."""
    cmd = [sys.executable, "-m", "esptool", "--chip", "esp8266", "--port", f"socket://{address}",
           "--before", "no-reset", "--after", after]
    if baud is not None:
        cmd += ["--baud", str(baud)]
    done = subprocess.run(cmd + list(args), cwd=cwd, capture_output=True, text=True, timeout=timeout)
    out = done.stdout + done.stderr
    assert done.returncode == 0, out
    return out


class LineClient:
    """The line protocol over TCP, once the board runs its firmware."""

    def __init__(self, address: str):
        host, port = address.rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)), timeout=5)
        self.buf = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def line_starting(self, prefix: str) -> str:
        """The next line that starts with `prefix` (boot noise and other lines skipped)."""
        deadline = time.monotonic() + 5
        while True:
            while b"\n" in self.buf:
                line, self.buf = self.buf.split(b"\n", 1)
                text = line.decode(errors="replace").rstrip("\r")
                if text.startswith(prefix):
                    return text
            assert time.monotonic() < deadline, f"no line starting with {prefix!r}"
            data = self.sock.recv(65536)
            assert data, "connection closed"
            self.buf += data

    def ask(self, line: str, prefix: str) -> str:
        self.send(line.encode() + b"\n")
        return self.line_starting(prefix)

    def close(self) -> None:
        self.sock.close()


def test_read_mac_and_flash_id(simulator):
    address = simulator()
    out = esptool(address, "read-mac")
    assert "Chip type:          ESP8266EX" in out and "Crystal frequency:  26MHz" in out
    assert "Stub flasher running." in out and f"MAC:                {MAC}" in out
    out = esptool(address, "flash-id")
    assert "Manufacturer: ef" in out and "Device: 4016" in out and "Detected flash size: 4MB" in out


def test_write_read_back_erase_then_boot_blank(simulator, tmp_path):
    address = simulator()
    image = random_image(256 * 1024)
    (tmp_path / "app.bin").write_bytes(image)
    out = esptool(address, "write-flash", "0x0", "app.bin", cwd=tmp_path)
    # Random bytes do not compress: esptool sends them as they are (FLASH_DATA).
    assert "Wrote 262144 bytes at 0x00000000" in out and "Hash of data verified." in out
    # The last 64 KiB (esptool reads pyserial's socket:// a byte at a time: 256 KiB take 7 s).
    out = esptool(address, "read-flash", "0x30000", "0x10000", "back.bin", cwd=tmp_path)
    assert "Read 65536 bytes from 0x00030000" in out
    assert (tmp_path / "back.bin").read_bytes() == image[0x30000:]
    out = esptool(address, "erase-flash", after="soft-reset")
    assert "Flash memory erased successfully" in out and "Soft resetting..." in out
    client = LineClient(address)
    try:
        assert client.ask("GET fw", "fw=") == "fw=none"  # erased: no image
    finally:
        client.close()


def test_compressed_write_boots_the_image_and_keeps_it_in_the_flash_file(simulator, tmp_path):
    flash = tmp_path / "flash.bin"
    address = simulator("--flash", str(flash))
    image = os.urandom(16) + b"hello from the simulated flash\n" * 8000 + b"end"  # compresses
    (tmp_path / "app.bin").write_bytes(image)
    out = esptool(address, "write-flash", "0x0", "app.bin", after="soft-reset", cwd=tmp_path)
    assert re.search(r"Wrote \d+ bytes \(\d+ compressed\) at 0x00000000", out), out  # FLASH_DEFL_*
    assert "Hash of data verified." in out
    client = LineClient(address)
    try:
        assert client.ask("GET fw", "fw=") == f"fw={fw_id(image)}"
        assert client.ask("PING", "PONG") == "PONG"  # the firmware speaks the line protocol again
    finally:
        client.close()
    assert flash.read_bytes()[:len(image)] == image  # saved at the boot
    # Another simulator on the same flash file boots the same image.
    client = LineClient(simulator("--flash", str(flash)))
    try:
        # esptool's soft reset from the ROM: FLASH_BEGIN of nothing, then FLASH_END.
        client.send(request(FLASH_BEGIN, struct.pack("<4I", 0, 0, 0x400, 0)) + request(FLASH_END, b"\1\0\0\0"))
        assert client.line_starting("boot fw=") == f"boot fw={fw_id(image)}"
    finally:
        client.close()


def test_uncompressed_write_then_the_boot_prints_ready_and_the_image_id(simulator, tmp_path):
    address = simulator()
    image = random_image(256 * 1024)
    (tmp_path / "app.bin").write_bytes(image)
    out = esptool(address, "write-flash", "--no-compress", "0x0", "app.bin", cwd=tmp_path)
    assert "Wrote 262144 bytes at 0x00000000" in out and "Hash of data verified." in out
    client = LineClient(address)  # a new connection, still in the stub
    try:
        client.send(request(RUN_USER_CODE))  # what esptool's --after soft-reset sends to the stub
        assert client.line_starting("ready") == "ready"
        assert client.line_starting("boot fw=") == f"boot fw={fw_id(image)}"
        assert client.ask("GET fw", "fw=") == f"fw={fw_id(image)}"
    finally:
        client.close()


def test_paced_link_changes_baud_like_a_uart(simulator, tmp_path):
    """At 115200 baud the stub (16 KiB) takes over a second to upload; then esptool's
    --baud 460800 switches the link, and 32 KiB go at most at 8/10 of 460800 bit/s."""
    address = simulator("--baud", "115200")
    image = random_image(32 * 1024)
    (tmp_path / "app.bin").write_bytes(image)
    started = time.monotonic()
    out = esptool(address, "write-flash", "0x0", "app.bin", baud=460800, after="soft-reset", cwd=tmp_path)
    elapsed = time.monotonic() - started
    assert "Changing baud rate to 460800" in out and "Hash of data verified." in out
    kbits = float(re.search(r"Wrote 32768 bytes at 0x00000000 in [\d.]+ seconds \(([\d.]+) kbit/s\)", out)[1])
    assert 115.2 * 0.8 < kbits <= 460.8 * 0.8, out  # faster than 115200 allows, never faster than 460800
    assert elapsed > 16 * 1024 / 11520, "the stub upload was not paced at 115200 baud"
    client = LineClient(address)
    try:
        assert client.ask("GET fw", "fw=") == f"fw={fw_id(image)}"
    finally:
        client.close()


# -- esptool as a library on sim://, through its signals ------------------------------------------


class TransportPort(serial.SerialBase):
    """A pyserial port over a transport, as the gateway's RFC 2217 port will offer one:
    bytes, DTR/RTS, the baud rate and purges reach the transport. Named rfc2217:// so
    esptool resets it the way it does over RFC 2217 (ClassicReset: one line at a time)."""

    def __init__(self, transport):
        self.transport = transport
        self._rx = bytearray()
        super().__init__()
        self.port = "rfc2217://sim"
        self.is_open = True

    def open(self):
        self.is_open = True

    def close(self):
        self.is_open = False

    def _reconfigure_port(self, force_update=False):
        if getattr(self, "transport", None) is not None:
            self.transport.set_baudrate(self._baudrate)

    def _update_dtr_state(self):
        self.transport.set_signals(self._dtr_state, None)

    def _update_rts_state(self):
        self.transport.set_signals(None, self._rts_state)

    @property
    def in_waiting(self):
        self._rx += self.transport.read(timeout=0)
        return len(self._rx)

    def read(self, size=1):
        deadline = time.monotonic() + (self._timeout if self._timeout is not None else 60)
        while len(self._rx) < size and (left := deadline - time.monotonic()) > 0:
            self._rx += self.transport.read(timeout=left)
        data, self._rx = bytes(self._rx[:size]), self._rx[size:]
        return data

    def write(self, data):
        self.transport.write(bytes(data))
        return len(data)

    def reset_input_buffer(self):
        self._rx.clear()
        self.transport.purge(input=True, output=False)

    def reset_output_buffer(self):
        self.transport.purge(input=False, output=True)


def test_esptool_library_resets_flashes_and_hard_resets_a_paced_sim_transport(tmp_path):
    from esptool.cmds import attach_flash, detect_chip, reset_chip, run_stub, write_flash

    image = random_image(16 * 1024)
    (tmp_path / "app.bin").write_bytes(image)
    transport = create("sim://?interval=1&baud=115200")
    transport.open()
    try:
        esp = detect_chip(TransportPort(transport), 115200, "default-reset")  # DTR/RTS: the ROM loader
        assert esp.get_chip_description() == "ESP8266EX"
        esp = run_stub(esp)
        esp.change_baud(460800)
        assert transport.baudrate == 460800 and transport.link.rate == 46080
        attach_flash(esp)
        write_flash(esp, [(0, str(tmp_path / "app.bin"))])
        reset_chip(esp, "hard-reset")  # RTS: EN low, then the firmware
        got = b""
        deadline = time.monotonic() + 5
        while b"\nboot fw=" not in got and time.monotonic() < deadline:
            got += transport.read(timeout=0.5)
        assert got.endswith(f"ready\nboot fw={fw_id(image)}\n".encode())
        assert transport.link.rate == 11520  # the reset returned the link to its own baud
    finally:
        transport.close()
