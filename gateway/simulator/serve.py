"""The simulated device on a real link: a TCP server, a UDP socket or a pty.

One thread, one `select` loop, one `SimulatedDevice`: it reads lines, answers them, and
sends the periodic telemetry line, as the sample firmware does. Over TCP it serves one
connection at a time, like an ESP8266 sketch; a new connection replaces the old one.
Over UDP it answers whoever sent the last datagram, one datagram per line.
"""

from __future__ import annotations

import os
import pty
import select
import socket
import threading
import tty
from collections import deque
from collections.abc import Iterator
from urllib.parse import urlsplit

from ..codec import LineDecoder
from .device import SimulatedDevice

CHUNK = 16384


class SimulatorServer:
    def __init__(self, listen: str, interval: float = 1.0):
        self.device = SimulatedDevice(interval)
        self.kind, self.address = parse_listen(listen)
        self._stop = threading.Event()
        self._out: deque[Iterator[str]] = deque()
        self._pending = b""  # bytes of the current output chunk not yet written
        self._decoder = LineDecoder()
        self.sock: socket.socket | None = None  # listening TCP or bound UDP socket
        self.conn: socket.socket | None = None  # the TCP connection being served
        self.peer = None  # UDP: where replies go
        self.master_fd: int | None = None
        self.pty_path: str | None = None
        self._open()

    # -- set-up -------------------------------------------------------------------------

    def _open(self) -> None:
        if self.kind == "tcp":
            self.sock = socket.create_server(self.address)
        elif self.kind == "udp":
            family = socket.AF_INET6 if ":" in self.address[0] else socket.AF_INET
            self.sock = socket.socket(family, socket.SOCK_DGRAM)
            self.sock.bind(self.address)
        else:
            master, slave = pty.openpty()
            tty.setraw(slave)  # no echo, no line discipline: bytes pass as they are
            self.master_fd, self._slave_fd = master, slave
            self.pty_path = os.ttyname(slave)

    @property
    def url(self) -> str:
        if self.kind == "pty":
            return self.pty_path
        host, port = self.sock.getsockname()[:2]
        return f"{self.kind}://{host}:{port}"

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
        return [self.sock] + ([self.conn] if self.conn is not None else [])

    def _writer(self):
        if self.kind == "pty":
            return self.master_fd
        if self.kind == "tcp":
            return self.conn
        return self.sock if self.peer is not None else None

    def _step(self) -> None:
        target = self._writer()
        has_output = bool(self._pending or self._out) and target is not None
        due = self.device.seconds_to_telemetry()
        timeout = 0.2 if due is None else min(0.2, due)
        readable, writable, _ = select.select(self._readers(), [target] if has_output else [], [], timeout)
        for r in readable:
            self._on_readable(r)
        if writable:
            self._write_some(target)
        if not (self._pending or self._out):
            line = self.device.telemetry_due()
            if line is not None and self._writer() is not None:
                self._out.append(iter([line]))

    def _on_readable(self, r) -> None:
        if self.kind == "tcp" and r is self.sock:
            conn, _ = self.sock.accept()
            if self.conn is not None:
                self.conn.close()
            self.conn = conn
            self._reset_output()
            return
        try:
            if self.kind == "pty":
                data = os.read(self.master_fd, 65536)
            elif self.kind == "udp":
                data, self.peer = self.sock.recvfrom(65536)
            else:
                data = self.conn.recv(65536)
        except OSError:
            data = b""
        if not data:
            if self.kind == "tcp":
                self.conn.close()
                self.conn = None
                self._reset_output()
            return
        lines = self._decoder.feed(data)
        if self.kind == "udp":
            lines += self._decoder.flush()
        for line in lines:
            self._out.append(iter(self.device.handle(line.text)))

    def _reset_output(self) -> None:
        self._out.clear()
        self._pending = b""
        self._decoder.reset()

    def _next_chunk(self) -> bytes:
        if self.kind == "udp":  # one datagram per line
            while self._out:
                line = next(self._out[0], None)
                if line is not None:
                    return line.encode() + b"\n"
                self._out.popleft()
            return b""
        parts, size = [], 0
        while self._out and size < CHUNK:
            for line in self._out[0]:
                parts.append(line)
                size += len(line) + 1
                if size >= CHUNK:
                    break
            else:
                self._out.popleft()
        return ("\n".join(parts) + "\n").encode() if parts else b""

    def _write_some(self, target) -> None:
        if not self._pending:
            self._pending = self._next_chunk()
        if not self._pending:
            return
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
            if self.kind == "tcp" and self.conn is not None:
                self.conn.close()
                self.conn = None
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


def parse_listen(listen: str) -> tuple[str, tuple[str, int] | None]:
    if listen == "pty":
        return "pty", None
    parts = urlsplit(listen)
    if parts.scheme not in ("tcp", "udp") or not parts.hostname or parts.port is None:
        raise ValueError(f"--listen takes tcp://HOST:PORT, udp://HOST:PORT or pty, not {listen!r}")
    return parts.scheme, (parts.hostname, parts.port)
