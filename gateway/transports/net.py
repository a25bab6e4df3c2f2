"""ESP8266 over the network: `tcp://` (the gateway dials), `tcp-listen://` (the device
dials the gateway) and `udp://` (one datagram per line).

One socket per transport, read by one thread at a time (the device link's reader, or the
gateway's loop thread it hands a `pollable` socket to, see device.py) and
one thread at a time writes it (the link's writer thread, or a direct `try_write` under
the link's write lock): a socket is full duplex, so one reader and one writer at a time
need no lock. `close()` from another thread first shuts the socket down, which wakes
both.
"""

from __future__ import annotations

import errno
import os
import select
import socket
import struct
from urllib.parse import SplitResult

from .base import OPEN_TIMEOUT, READ_TIMEOUT, NotConnectedYet, Transport, TransportError

RECV_SIZE = 65536


def host_port(url: SplitResult, what: str = "HOST:PORT") -> tuple[str, int]:
    if url.path not in ("", "/"):
        raise ValueError(f"{url.scheme}:// takes {what} and no path")
    try:
        host, port = url.hostname, url.port
    except ValueError as exc:
        raise ValueError(f"bad port: {exc}") from None
    if not host or port is None:
        raise ValueError(f"{url.scheme}:// needs {what}")
    try:
        host.encode("idna")
    except UnicodeError:
        raise ValueError(f"bad host name {host!r}") from None
    return host, port


def parse_hostport(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ValueError(f"expected HOST:PORT, not {text!r}")
    return host.strip("[]"), int(port)


def _no_options(url: SplitResult, options: dict[str, str], allowed=()) -> None:
    for key in options:
        if key not in allowed:
            raise ValueError(f"unknown {url.scheme} option {key!r}")


def _shutdown(sock: socket.socket | None) -> None:
    if sock is None:
        return
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()


class StreamSocketTransport(Transport):
    """What a connected TCP socket does, whoever opened it."""

    sock: socket.socket | None = None
    #: Not reading pauses the device (TCP flow control) and loses nothing: the device
    #: link may wait for its clients' queues to drain before it reads on.
    flow_control = True
    pollable = True

    def _readable(self, extra: list[socket.socket]) -> list[socket.socket]:
        sock = self.sock
        if sock is None:
            raise TransportError("socket is closed")
        try:
            ready, _, _ = select.select([sock, *extra], [], [], READ_TIMEOUT)
        except (OSError, ValueError) as exc:  # closed from another thread
            raise TransportError(f"socket closed: {exc}") from None
        return ready

    def read(self) -> bytes:
        # One blocking recv, bounded by SO_RCVTIMEO (set in _tune): no select() first.
        return self._read(0)

    def read_nowait(self) -> bytes:
        return self._read(socket.MSG_DONTWAIT)

    def _read(self, flags: int) -> bytes:
        sock = self.sock
        if sock is None:
            raise TransportError("socket is closed")
        try:
            data = sock.recv(RECV_SIZE, flags)
        except (BlockingIOError, InterruptedError):
            return b""  # READ_TIMEOUT passed, or nothing there after all
        except OSError as exc:
            raise TransportError(f"read failed: {exc}") from None
        if not data:
            raise TransportError("device closed the connection")
        return data

    def fileno(self) -> int:
        sock = self.sock
        if sock is None:
            raise TransportError("socket is closed")
        return sock.fileno()

    def write(self, data: bytes) -> None:
        sock = self.sock
        if sock is None:
            raise TransportError("socket is closed")
        try:
            sock.sendall(data)
        except OSError as exc:
            raise TransportError(f"write failed: {exc}") from None

    def try_write(self, data: bytes) -> int:
        """Write what the socket takes now, without blocking; the number of bytes taken.

        For the device link's direct writes (gateway/device.py), made under its write
        lock: the socket still has one writer at a time."""
        sock = self.sock
        if sock is None:
            raise TransportError("socket is closed")
        try:
            return sock.send(data, socket.MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError):
            return 0
        except OSError as exc:
            raise TransportError(f"write failed: {exc}") from None

    @staticmethod
    def _tune(sock: socket.socket) -> None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        sock.settimeout(None)
        # A read returns after READ_TIMEOUT with EAGAIN (read() then returns b""), so
        # the reader notices a stop request; writes (sendall) stay fully blocking.
        sec = int(READ_TIMEOUT)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO,
                        struct.pack("ll", sec, int((READ_TIMEOUT - sec) * 1_000_000)))

    _cancelled = False

    def cancel(self) -> None:
        # Wakes a blocked read or write in the link's threads; close() then frees it.
        self._cancelled = True
        sock = self.sock
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def close(self) -> None:
        sock, self.sock = self.sock, None
        _shutdown(sock)


class TcpTransport(StreamSocketTransport):
    """`tcp://HOST:PORT`: the gateway dials the device (an ESP8266 as TCP server)."""

    def __init__(self, url: SplitResult, options: dict[str, str]):
        super().__init__(url, options)
        self.address = host_port(url)
        _no_options(url, options)

    def open(self) -> None:
        host, port = self.address
        self._cancelled = False
        try:
            family, kind, proto, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
            sock = socket.socket(family, kind, proto)
        except OSError as exc:
            raise TransportError(f"cannot connect to {host}:{port}: {exc}") from None
        try:
            # Connect without blocking, in READ_TIMEOUT steps, so cancel() is heard.
            sock.setblocking(False)
            err = sock.connect_ex(addr)
            waited = 0.0
            while err in (errno.EINPROGRESS, errno.EALREADY, errno.EWOULDBLOCK) and not self._cancelled:
                _, ready, _ = select.select([], [sock], [], READ_TIMEOUT)
                if ready:
                    err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                    break
                waited += READ_TIMEOUT
                if waited >= OPEN_TIMEOUT:
                    err = errno.ETIMEDOUT
            if self._cancelled:
                raise OSError(errno.ECANCELED, "cancelled")
            if err:
                raise OSError(err, os.strerror(err))
        except OSError as exc:
            sock.close()
            raise TransportError(f"cannot connect to {host}:{port}: {exc.strerror or exc}") from None
        sock.setblocking(True)
        self._tune(sock)
        self.sock = sock


class TcpListenTransport(StreamSocketTransport):
    """`tcp-listen://HOST:PORT`: the device dials the gateway (an ESP8266 as TCP client).

    The listening socket lives as long as the transport. A device that dials again
    while its old connection still looks open (it rebooted, the old one is half-open)
    replaces the old connection: the newest connection is the device.

    Read by the link's reader thread only (not `pollable`): it also watches the listener
    for that new connection, whose socket then replaces the one being read.
    """

    pollable = False

    def __init__(self, url: SplitResult, options: dict[str, str]):
        super().__init__(url, options)
        self.address = host_port(url)
        _no_options(url, options)
        self.listener: socket.socket | None = None
        self.peer: str = ""

    def _listen(self) -> socket.socket:
        if self.listener is None:
            try:
                listener = socket.create_server(self.address, reuse_port=False)
            except OSError as exc:
                raise TransportError(f"cannot listen on {self.address[0]}:{self.address[1]}: {exc}") from None
            self.listener = listener
        return self.listener

    def _accept(self) -> None:
        conn, addr = self.listener.accept()
        self._tune(conn)
        old, self.sock = self.sock, conn
        self.peer = f"{addr[0]}:{addr[1]}"
        _shutdown(old)

    def open(self) -> None:
        listener = self._listen()
        try:
            ready, _, _ = select.select([listener], [], [], READ_TIMEOUT)
        except (OSError, ValueError) as exc:
            raise TransportError(f"listener closed: {exc}") from None
        if not ready:
            raise NotConnectedYet(f"waiting for the device to dial {self.address[0]}:{self.address[1]}")
        try:
            self._accept()
        except OSError as exc:
            raise NotConnectedYet(f"accept failed: {exc}") from None

    def read(self) -> bytes:
        listener = self.listener
        ready = self._readable([listener] if listener is not None else [])
        if listener is not None and listener in ready:
            try:
                self._accept()  # the device dialled again: the new connection wins
            except OSError:
                pass
            return b""
        return self.read_nowait() if ready else b""

    def close_listener(self) -> None:
        listener, self.listener = self.listener, None
        if listener is not None:
            listener.close()

    def release(self) -> None:
        self.close()
        self.close_listener()

    def describe(self) -> str:
        return f"{self.url.geturl()} (device {self.peer or 'not connected'})"


class UdpTransport(Transport):
    """`udp://HOST:PORT[?bind=HOST:PORT]`: one datagram per line, both ways.

    The socket is connected to the device's address, so the kernel drops datagrams
    from anyone else. UDP has no connection to lose: the link stays connected; an ICMP
    "port unreachable" for a device that is not listening yet is counted and ignored.
    """

    message_oriented = True

    def __init__(self, url: SplitResult, options: dict[str, str]):
        super().__init__(url, options)
        self.address = host_port(url)
        _no_options(url, options, allowed=("bind",))
        self.bind = parse_hostport(options["bind"]) if "bind" in options else None
        self.sock: socket.socket | None = None
        self.refused = 0

    def open(self) -> None:
        try:
            infos = socket.getaddrinfo(*self.address, type=socket.SOCK_DGRAM)
            family, _, _, _, addr = infos[0]
            sock = socket.socket(family, socket.SOCK_DGRAM)
            if self.bind:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind(self.bind)
            sock.connect(addr)
        except OSError as exc:
            raise TransportError(f"cannot open UDP socket to {self.address[0]}:{self.address[1]}: {exc}") from None
        self.sock = sock

    def read(self) -> bytes:
        sock = self.sock
        if sock is None:
            raise TransportError("socket is closed")
        try:
            ready, _, _ = select.select([sock], [], [], READ_TIMEOUT)
            if not ready:
                return b""
            return sock.recv(RECV_SIZE)
        except ConnectionRefusedError:
            self.refused += 1
            return b""
        except (OSError, ValueError) as exc:
            raise TransportError(f"read failed: {exc}") from None

    def write(self, data: bytes) -> None:
        sock = self.sock
        if sock is None:
            raise TransportError("socket is closed")
        try:
            sock.send(data)
        except ConnectionRefusedError:
            self.refused += 1  # the device is not listening (yet): the datagram is lost
        except OSError as exc:
            raise TransportError(f"write failed: {exc}") from None

    def close(self) -> None:
        sock, self.sock = self.sock, None
        if sock is not None:
            sock.close()
