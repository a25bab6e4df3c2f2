"""The simulated device on a real link: a TCP server, a UDP socket or a pty.

One thread, one `select` loop, one `Link` (link.py: the device, its faults, pacing and
replay, with no I/O): it reads lines, answers them, and sends the periodic telemetry
line, as the sample firmware does. Over TCP it serves one connection at a time, like an
ESP8266 sketch; a new connection replaces the old one. Over UDP it answers whoever sent
the last datagram, one datagram per line.

What a dropped link (`FAULT DROP [SECONDS]`) is on each: over TCP the connection is
closed, and with SECONDS the listening socket too, so dials are refused until they are
up; a pty and UDP cannot vanish, so they send half a line and then nothing for SECONDS.
A replay (`replay=PATH`) starts with each TCP connection, at the first UDP datagram, and
for a pty at start.

The board's flash (flash.py) is in memory, or in the file `flash` when given: read at
start, written when it has changed, at each boot and at the end. With `bootloader` the
board starts in its ROM loader, as after esptool's reset sequence, so esptool can talk
to it over a TCP link that has no DTR or RTS: `esptool --port socket://HOST:PORT
--before no-reset ...`, and `--after soft-reset` to boot the new firmware. A new TCP
connection leaves the loader as it was (the board does not see the cable change).
"""

from __future__ import annotations

import os
import pty
import select
import socket
import sys
import threading
import time
import tty
from urllib.parse import urlsplit

from . import flash as flash_file
from .device import SimulatedDevice
from .link import Link, check_baud, parse_schedule
from .replay import Replay, check_recording, check_speed, read_recording

CHUNK = 16384
TICK = 0.2  # seconds a select() waits at most, so stop() is heard


class SimulatorServer:
    def __init__(self, listen: str, interval: float | None = None, *, baud: float = 0,
                 faults: str = "", replay: str | None = None, speed: float = 1.0,
                 flash: str | None = None, bootloader: bool = False):
        """`interval` defaults to 1.0 s, or to 0 (no telemetry) when replaying."""
        self.kind, self.address = parse_listen(listen)
        schedule = parse_schedule(faults)
        baud = check_baud(baud)
        self.speed = check_speed(speed)
        self.replay_path = replay
        if replay is not None:
            check_recording(replay)
        if interval is None:
            interval = 0.0 if replay else 1.0
        self.device = SimulatedDevice(interval)
        self.flash_path = flash
        image = flash_file.FlashImage() if flash is None else flash_file.load(flash)
        if flash is not None:
            flash_file.check_path(flash)
        self.link = Link(self.device, baud=baud, schedule=schedule,
                         can_drop=self.kind == "tcp", message_oriented=self.kind == "udp",
                         flash=image, save_flash=self._save_flash, bootloader=bootloader)
        self._stop = threading.Event()
        self._pending = b""  # bytes taken from the link, not yet written
        self._down_until = 0.0  # TCP after FAULT DROP SECONDS: listen again then
        self.sock: socket.socket | None = None  # listening TCP or bound UDP socket
        self.conn: socket.socket | None = None  # the TCP connection being served
        self.peer = None  # UDP: where replies go
        self.master_fd: int | None = None
        self.pty_path: str | None = None
        self._bound: tuple[str, int] | None = None
        self._open()
        if self.kind == "pty":
            self._start_replay()

    # -- set-up -------------------------------------------------------------------------

    def _open(self) -> None:
        if self.kind == "tcp":
            self.sock = socket.create_server(self.address)
            self._bound = self.sock.getsockname()[:2]
        elif self.kind == "udp":
            family = socket.AF_INET6 if ":" in self.address[0] else socket.AF_INET
            self.sock = socket.socket(family, socket.SOCK_DGRAM)
            self.sock.bind(self.address)
            self._bound = self.sock.getsockname()[:2]
        else:
            master, slave = pty.openpty()
            tty.setraw(slave)  # no echo, no line discipline: bytes pass as they are
            self.master_fd, self._slave_fd = master, slave
            self.pty_path = os.ttyname(slave)

    @property
    def url(self) -> str:
        if self.kind == "pty":
            return self.pty_path
        host, port = self._bound
        return f"{self.kind}://{host}:{port}"

    def _save_flash(self, image: flash_file.FlashImage) -> None:
        if self.flash_path is not None:
            try:
                flash_file.save(image, self.flash_path)
            except OSError as exc:  # the board runs on; the flash stays in memory
                print(f"simulator: cannot save the flash to {self.flash_path}: {exc}", file=sys.stderr, flush=True)

    def _start_replay(self) -> None:
        if self.replay_path is None:
            return
        if self.link.replay is not None:
            self.link.replay.close()
        self.link.replay = Replay(read_recording(self.replay_path), self.speed, time.monotonic())

    # -- running ------------------------------------------------------------------------

    def stop(self) -> None:
        self._stop.set()

    def serve(self) -> None:
        try:
            while not self._stop.is_set():
                self._step()
        finally:
            self.close()

    def _readers(self) -> list:
        if self.kind == "pty":
            return [self.master_fd]
        return [s for s in (self.sock, self.conn) if s is not None]

    def _writer(self):
        if self.kind == "pty":
            return self.master_fd
        if self.kind == "tcp":
            return self.conn
        return self.sock if self.peer is not None else None

    def _step(self) -> None:
        timeout = TICK
        if self.kind == "tcp" and self.sock is None:  # down after FAULT DROP SECONDS
            left = self._down_until - time.monotonic()
            if left <= 0:
                self._listen_again()
            else:
                timeout = min(timeout, left)
        target = self._writer()
        if target is not None and not self._pending:
            self._pending = self.link.send(CHUNK)
            if self.link.dropped:
                self._drop()
                return
            if not self._pending:
                wait = self.link.wait()
                if wait is not None:
                    timeout = min(timeout, wait)
        readers = self._readers()
        writers = [target] if self._pending else []
        if not readers and not writers:
            self._stop.wait(timeout)
            return
        readable, writable, _ = select.select(readers, writers, [], timeout)
        for r in readable:
            self._on_readable(r)
        if writable and self._pending and self._writer() is target:
            self._write_some(target)

    def _on_readable(self, r) -> None:
        if self.kind == "tcp" and r is self.sock:
            conn, _ = self.sock.accept()
            if self.conn is not None:
                self.conn.close()
            self.conn = conn
            self._reset_output()
            self._start_replay()
            return
        if self.kind == "tcp" and r is not self.conn:
            return  # a connection replaced in this same select round
        try:
            if self.kind == "pty":
                data = os.read(self.master_fd, 65536)
            elif self.kind == "udp":
                data, peer = self.sock.recvfrom(65536)
                if self.peer is None:
                    self._start_replay()
                self.peer = peer
            else:
                data = r.recv(65536)
        except OSError:
            data = b""
        if not data:
            if self.kind == "tcp":
                self._close_conn()
            return
        self.link.receive(data, message_end=self.kind == "udp")

    def _close_conn(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None
        self._reset_output()

    def _reset_output(self) -> None:
        self.link.reset()
        self._pending = b""

    def _drop(self) -> None:
        """FAULT DROP over TCP: close the connection, and with SECONDS stop listening."""
        down_for = self.link.down_for
        if down_for > 0 and self.sock is not None:  # first, so no dial gets in meanwhile
            self.sock.close()
            self.sock = None
            self._down_until = time.monotonic() + down_for
        self._close_conn()

    def _listen_again(self) -> None:
        try:
            self.sock = socket.create_server(self._bound)
        except OSError:  # the port is not free yet: try again shortly
            self._down_until = time.monotonic() + TICK

    def _write_some(self, target) -> None:
        try:
            if self.kind == "pty":
                n = os.write(target, self._pending)
            elif self.kind == "udp":
                n = self.sock.sendto(self._pending, self.peer)
            else:
                n = target.send(self._pending)
        except BlockingIOError:
            return
        except OSError:
            if self.kind == "tcp":
                self._close_conn()
            else:
                self._reset_output()
            return
        self._pending = self._pending[n:]

    def close(self) -> None:
        for s in (self.conn, self.sock):
            if s is not None:
                s.close()
        self.conn = self.sock = None
        if self.master_fd is not None:
            os.close(self.master_fd)
            os.close(self._slave_fd)
            self.master_fd = None
        self.link.close()


def parse_listen(listen: str) -> tuple[str, tuple[str, int] | None]:
    if listen == "pty":
        return "pty", None
    parts = urlsplit(listen)
    try:
        port = parts.port
    except ValueError:
        port = None
    if parts.scheme not in ("tcp", "udp") or not parts.hostname or port is None:
        raise ValueError(f"--listen takes tcp://HOST:PORT, udp://HOST:PORT or pty, not {listen!r}")
    return parts.scheme, (parts.hostname, port)
