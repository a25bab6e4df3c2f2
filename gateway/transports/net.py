"""ESP8266 over the network: `tcp://` (the gateway dials), `tcp-listen://` (the device
dials the gateway) and `udp://` (one datagram per line).

All three are `pollable`: in the gateway the I/O loop (gateway/manager.py) owns the
socket and uses the non-blocking half of the interface (`open_nowait`, `finish_open`,
`fileno`, `read_nowait`, `try_write`, and for tcp-listen `listen_fileno` and `accept`).
The blocking half (`open`, `read`, `write`) serves a thread that owns the transport,
as the back-to-back transport tests do. Waiting uses poll(), never select(), which fails
for descriptors above 1023 (a gateway with a thousand clients has those).
"""

from __future__ import annotations

import errno
import os
import select
import socket
import struct
from urllib.parse import SplitResult

from ..counts import parse_count
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
    try:
        number = parse_count(port, 0, 65535)
    except ValueError:
        number = None
    if not sep or not host or number is None:
        raise ValueError(f"expected HOST:PORT, not {text!r}")
    return host.strip("[]"), number


def _no_options(url: SplitResult, options: dict[str, str], allowed=()) -> None:
    for key in options:
        if key not in allowed:
            raise ValueError(f"unknown {url.scheme} option {key!r}")


def _wait(sock_or_fd, events: int, timeout: float) -> bool:
    """True when the descriptor is ready for `events` within `timeout` seconds."""
    poller = select.poll()
    poller.register(sock_or_fd, events)
    return bool(poller.poll(timeout * 1000))


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

    def read(self, timeout: float | None = READ_TIMEOUT) -> bytes:
        # One blocking recv, bounded by SO_RCVTIMEO (set in _tune): no select() first.
        return self._read(0)

    def read_nowait(self) -> bytes:
        sock = self.sock
        if sock is None:
            raise TransportError("socket is closed")
        try:
            data = sock.recv(RECV_SIZE, socket.MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError):
            return b""
        except OSError as exc:
            raise TransportError(f"read failed: {exc}") from None
        if not data:
            raise TransportError("device closed the connection")
        return data

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
        """Write what the socket takes now, without blocking; the number of bytes taken."""
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

    connecting = False  # open_nowait() started a connect that finish_open() completes

    def open_nowait(self) -> None:
        """Resolve the name (this may block: call it off the loop) and start connecting
        without blocking; `connecting` then says to wait until the socket is writable
        and call `finish_open()`."""
        host, port = self.address
        self._cancelled = False
        try:
            family, kind, proto, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
            sock = socket.socket(family, kind, proto)
        except OSError as exc:
            raise TransportError(f"cannot connect to {host}:{port}: {exc}") from None
        sock.setblocking(False)
        err = sock.connect_ex(addr)
        self.sock = sock
        if err in (errno.EINPROGRESS, errno.EALREADY, errno.EWOULDBLOCK):
            self.connecting = True
            return
        self._connected(err)

    def finish_open(self) -> None:
        self.connecting = False
        sock = self.sock
        if sock is None:
            raise TransportError("cancelled")
        self._connected(sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR))

    def _connected(self, err: int) -> None:
        sock = self.sock
        if err:
            self.close()
            host, port = self.address
            raise TransportError(f"cannot connect to {host}:{port}: {os.strerror(err)}")
        sock.setblocking(True)
        self._tune(sock)

    def open(self) -> None:
        """Connect, blocking up to OPEN_TIMEOUT, in READ_TIMEOUT steps so cancel() is heard."""
        self.open_nowait()
        waited = 0.0
        while self.connecting and not self._cancelled and waited < OPEN_TIMEOUT:
            sock = self.sock
            if sock is None or _wait(sock, select.POLLOUT, READ_TIMEOUT):
                break
            waited += READ_TIMEOUT
        if self.connecting and (self._cancelled or waited >= OPEN_TIMEOUT):
            self.close()
            self.connecting = False
            host, port = self.address
            raise TransportError(f"cannot connect to {host}:{port}: {'cancelled' if self._cancelled else 'timed out'}")
        if self.connecting:
            self.finish_open()


class TcpListenTransport(StreamSocketTransport):
    """`tcp-listen://HOST:PORT`: the device dials the gateway (an ESP8266 as TCP client).

    The listening socket lives as long as the transport. A device that dials again
    while its old connection still looks open (it rebooted, the old one is half-open)
    replaces the old connection: the newest connection is the device.

    On the loop, the listener is watched for as long as the transport lives
    (`listen_fileno`), and `accept()` swaps the new connection in.
    """

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

    def _accept(self) -> bool:
        conn, addr = self.listener.accept()
        self._tune(conn)
        old, self.sock = self.sock, conn
        self.peer = f"{addr[0]}:{addr[1]}"
        _shutdown(old)
        return old is not None

    def open_nowait(self) -> None:
        self._listen()

    def listen_fileno(self) -> int:
        return self._listen().fileno()

    def accept(self) -> bool:
        """Take the device's new connection (the listener is readable); True when it
        replaced an older one."""
        try:
            self.listener.setblocking(False)
            return self._accept()
        except (OSError, AttributeError) as exc:
            raise TransportError(f"accept failed: {exc}") from None

    def open(self) -> None:
        listener = self._listen()
        try:
            ready = _wait(listener, select.POLLIN, READ_TIMEOUT)
        except (OSError, ValueError) as exc:
            raise TransportError(f"listener closed: {exc}") from None
        if not ready:
            raise NotConnectedYet(f"waiting for the device to dial {self.address[0]}:{self.address[1]}")
        try:
            listener.setblocking(True)
            self._accept()
        except OSError as exc:
            raise NotConnectedYet(f"accept failed: {exc}") from None

    def read(self, timeout: float | None = READ_TIMEOUT) -> bytes:
        listener, sock = self.listener, self.sock
        if sock is None:
            raise TransportError("socket is closed")
        poller = select.poll()
        try:
            poller.register(sock, select.POLLIN)
            if listener is not None:
                poller.register(listener, select.POLLIN)
            ready = {fd for fd, _ in poller.poll(None if timeout is None else timeout * 1000)}
        except (OSError, ValueError) as exc:  # closed from another thread
            raise TransportError(f"socket closed: {exc}") from None
        if listener is not None and listener.fileno() in ready:
            try:
                listener.setblocking(True)
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
    pollable = True

    def __init__(self, url: SplitResult, options: dict[str, str]):
        super().__init__(url, options)
        self.address = host_port(url)
        _no_options(url, options, allowed=("bind",))
        self.bind = parse_hostport(options["bind"]) if "bind" in options else None
        self.sock: socket.socket | None = None
        self.refused = 0

    def open_nowait(self) -> None:
        self.open()

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

    def read(self, timeout: float | None = READ_TIMEOUT) -> bytes:
        sock = self.sock
        if sock is None:
            raise TransportError("socket is closed")
        try:
            if not _wait(sock, select.POLLIN, READ_TIMEOUT if timeout is None else timeout):
                return b""
        except (OSError, ValueError) as exc:
            raise TransportError(f"read failed: {exc}") from None
        return self.read_nowait()

    def read_nowait(self) -> bytes:
        """One datagram, or b"" when none is waiting."""
        sock = self.sock
        if sock is None:
            raise TransportError("socket is closed")
        try:
            return sock.recv(RECV_SIZE, socket.MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError):
            return b""
        except ConnectionRefusedError:
            self.refused += 1
            return b""
        except (OSError, ValueError) as exc:
            raise TransportError(f"read failed: {exc}") from None

    def fileno(self) -> int:
        sock = self.sock
        if sock is None:
            raise TransportError("socket is closed")
        return sock.fileno()

    def try_write(self, data: bytes) -> int:
        """One datagram; a full socket buffer takes none of it (0)."""
        sock = self.sock
        if sock is None:
            raise TransportError("socket is closed")
        try:
            sock.send(data, socket.MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError):
            return 0
        except ConnectionRefusedError:
            self.refused += 1  # the device is not listening (yet): the datagram is lost
        except OSError as exc:
            raise TransportError(f"write failed: {exc}") from None
        return len(data)

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
