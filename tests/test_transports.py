"""Every transport, back to back with a real peer playing the device.

One suite, written once against a `Peer` (the device's side of the link), rerun for each
transport: a real pty (`serial://` on the slave's path, and on a by-id style symlink so
the device can come back), `tcp://` (the test listens as the device), `tcp-listen://`
(the test dials in as the device), `udp://` (a UDP socket as the device), `socket://`
through pyserial, and `loop://`. Everything on 127.0.0.1; waits are bounded.

The peers are imported by tests/test_device_link.py, which runs a DeviceLink over them.
"""

from __future__ import annotations

import os
import pty
import select
import socket
import struct
import threading
import time
import tty

import pytest

from conftest import free_port, wait_for
from gateway import transports
from gateway.transports.base import READ_TIMEOUT, NotConnectedYet, TransportError

MiB = 1 << 20
PATTERN = bytes(range(256)) * 4


def payload(size: int) -> bytes:
    """`size` bytes that do not repeat with a period that would hide a lost chunk."""
    out = bytearray()
    i = 0
    while len(out) < size:
        out += struct.pack("!I", i) + PATTERN[i % 251 : i % 251 + 60]
        i += 1
    return bytes(out[:size])


def read_exactly(transport, size: int, timeout: float = 10.0) -> tuple[bytes, int]:
    """(bytes, number of read() calls) once `size` bytes came; fail after `timeout`."""
    got = bytearray()
    calls = 0
    deadline = time.monotonic() + timeout
    while len(got) < size:
        if time.monotonic() > deadline:
            raise AssertionError(f"only {len(got)} of {size} bytes within {timeout} s")
        got += transport.read()
        calls += 1
    return bytes(got), calls


def read_until_error(transport, timeout: float = 3.0) -> TransportError:
    """Read until the transport reports the device lost; fail after `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            transport.read()
        except TransportError as exc:
            return exc
    raise AssertionError(f"read() did not raise TransportError within {timeout} s")


def write_until_error(transport, timeout: float = 3.0) -> TransportError:
    """Write until the transport reports the device lost (a TCP peer answers the first
    write after its close with a reset); fail after `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            transport.write(b"x\n")
        except TransportError as exc:
            return exc
        select.select([], [], [], 0.01)  # bounded poll interval, not a synchronisation
    raise AssertionError(f"write() did not raise TransportError within {timeout} s")


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class BackgroundCall:
    """Run `fn(*args)` in a named thread; `result()` joins it and re-raises its error."""

    def __init__(self, fn, *args, name: str = "test-bg"):
        self.error: BaseException | None = None
        self.value = None

        def run():
            try:
                self.value = fn(*args)
            except BaseException as exc:  # handed to the test thread
                self.error = exc

        self.thread = threading.Thread(target=run, name=name, daemon=True)
        self.thread.start()

    def result(self, timeout: float = 10.0):
        self.thread.join(timeout)
        assert not self.thread.is_alive(), f"{self.thread.name} did not finish within {timeout} s"
        if self.error is not None:
            raise self.error
        return self.value


# -- peers: the device's side of each link ------------------------------------------------


class Peer:
    """The device. `url` is what the transport (or DeviceLink) is created from.

    `connect(transport)` opens the transport and completes the device's side; a
    DeviceLink opens its transport itself, then calls `attach()` for the device's side.
    """

    name = "?"
    message_oriented = False
    can_lose = True  # the device can vanish and come back
    cannot_lose_reason = ""
    large = MiB  # bytes for the large-transfer tests
    max_write = None  # largest single write the tests make (UDP: one datagram); None: any

    def __init__(self, tmp_path):
        self.tmp_path = tmp_path

    url: str

    def connect(self, transport) -> None:
        transport.open()
        self.attach()

    def attach(self, timeout: float = 5.0) -> None:
        """The device's side after the transport opened (accept, dial): nothing here."""

    def send(self, data: bytes) -> None:
        raise NotImplementedError

    def recv(self, timeout: float = 5.0) -> bytes:
        """What the device received next (one datagram for a message-oriented link)."""
        raise NotImplementedError

    def recv_exactly(self, size: int, timeout: float = 10.0) -> bytes:
        got = bytearray()
        deadline = time.monotonic() + timeout
        while len(got) < size:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"device got only {len(got)} of {size} bytes within {timeout} s")
            got += self.recv(left)
        return bytes(got)

    def lose(self, reset: bool = False) -> None:
        """The device vanishes (unplugged, rebooted, connection reset with `reset`)."""
        raise NotImplementedError

    def restore(self) -> None:
        """The device is back where it was."""
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


class PtyPeer(Peer):
    """A pty: the transport opens the slave's path, the test plays the device on the master."""

    name = "pty"
    can_lose = True

    def __init__(self, tmp_path):
        super().__init__(tmp_path)
        self.master: int | None = None
        self.slave: int | None = None
        self._open_pty()
        self.url = "serial://" + self.path

    def _open_pty(self) -> None:
        self.master, self.slave = pty.openpty()
        tty.setraw(self.slave)  # no echo, no line discipline: bytes pass as they are
        self.path = os.ttyname(self.slave)

    def send(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            select.select([], [self.master], [], 5.0)
            view = view[os.write(self.master, view):]

    def recv(self, timeout: float = 5.0) -> bytes:
        ready, _, _ = select.select([self.master], [], [], timeout)
        if not ready:
            raise AssertionError(f"device received nothing within {timeout} s")
        return os.read(self.master, 65536)

    def lose(self, reset: bool = False) -> None:
        self._close_pty()  # the pty's path vanishes with its master, like an unplugged adapter

    def restore(self) -> None:
        raise NotImplementedError("a pty's path dies with its master; PtyLinkPeer can return")

    def _close_pty(self) -> None:
        for fd in (self.master, self.slave):
            if fd is not None:
                os.close(fd)
        self.master = self.slave = None

    def close(self) -> None:
        self._close_pty()


class PtyNoReturnPeer(PtyPeer):
    """A pty opened by its own path (os.ttyname(slave)): it cannot come back there."""

    name = "pty"
    can_lose = True
    can_return = False


class PtyLinkPeer(PtyPeer):
    """A pty opened through a stable symlink, as /dev/serial/by-id/... names a USB adapter:
    an unplugged device comes back as a new pty, and the link is pointed at it."""

    name = "pty-link"
    can_return = True

    def __init__(self, tmp_path):
        self.link = str(tmp_path / "ttyDEVICE")
        super().__init__(tmp_path)
        self.url = "serial://" + self.link

    def _open_pty(self) -> None:
        super()._open_pty()
        tmp = self.link + ".new"
        os.symlink(self.path, tmp)
        os.replace(tmp, self.link)

    def lose(self, reset: bool = False) -> None:
        super().lose()
        os.unlink(self.link)

    def restore(self) -> None:
        self._open_pty()

    def close(self) -> None:
        super().close()
        if os.path.lexists(self.link):
            os.unlink(self.link)


class StreamPeer(Peer):
    """A TCP connection as the device's side."""

    conn: socket.socket | None = None

    def send(self, data: bytes) -> None:
        self.conn.sendall(data)

    def recv(self, timeout: float = 5.0) -> bytes:
        self.conn.settimeout(timeout)
        try:
            data = self.conn.recv(65536)
        except socket.timeout:
            raise AssertionError(f"device received nothing within {timeout} s") from None
        if not data:
            raise AssertionError("the transport closed the connection")
        return data

    def _drop_conn(self, reset: bool) -> None:
        conn, self.conn = self.conn, None
        if conn is None:
            return
        if reset:  # close with a zero linger time: the kernel sends RST, not FIN
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        conn.close()


class TcpServerPeer(StreamPeer):
    """`tcp://`: the device is a TCP server (an ESP8266 listening), the transport dials."""

    name = "tcp"
    scheme = "tcp"

    def __init__(self, tmp_path):
        super().__init__(tmp_path)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.url = f"{self.scheme}://127.0.0.1:{self.port}"

    def attach(self, timeout: float = 5.0) -> None:
        self.listener.settimeout(timeout)
        conn, _ = self.listener.accept()
        self._drop_conn(False)
        self.conn = conn

    def lose(self, reset: bool = False) -> None:
        # The device is gone: its connection, and nobody listening any more.
        self._drop_conn(reset)
        self.listener.close()

    def restore(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", self.port))  # SO_REUSEADDR is set

    def close(self) -> None:
        self._drop_conn(False)
        self.listener.close()


class PyserialSocketPeer(TcpServerPeer):
    """`socket://HOST:PORT`: the same TCP server, dialled by pyserial's socket handler."""

    name = "socket"
    scheme = "socket"


class TcpClientPeer(StreamPeer):
    """`tcp-listen://`: the device dials the gateway (an ESP8266 as TCP client)."""

    name = "tcp-listen"

    def __init__(self, tmp_path):
        super().__init__(tmp_path)
        self.port = free_port()
        self.url = f"tcp-listen://127.0.0.1:{self.port}"

    def connect(self, transport) -> None:
        # The device dials (retrying until the transport listens) while the transport
        # waits for it; open() says NotConnectedYet until the call came.
        dialer = BackgroundCall(self.attach, name="test-dial")
        deadline = time.monotonic() + 5.0
        while True:
            try:
                transport.open()
                break
            except NotConnectedYet:
                assert time.monotonic() < deadline, "the device's dial-in was not accepted"
        dialer.result()

    def dial(self, timeout: float = 5.0) -> socket.socket:
        """Dial the transport, retrying while it is not listening yet."""
        def attempt():
            try:
                return socket.create_connection(("127.0.0.1", self.port), timeout=timeout)
            except ConnectionRefusedError:
                return None
        return wait_for(attempt, timeout, what=f"tcp-listen on port {self.port} to accept")

    def attach(self, timeout: float = 5.0) -> None:
        conn = self.dial(timeout)
        self._drop_conn(False)
        self.conn = conn

    def lose(self, reset: bool = False) -> None:
        self._drop_conn(reset)

    def restore(self) -> None:
        pass  # the device dials again in attach()

    def close(self) -> None:
        self._drop_conn(False)


class UdpPeer(Peer):
    """`udp://`: the device is a UDP socket; one datagram per line both ways.

    With `bind` the transport's own address is fixed (`?bind=`), so the device knows
    where to send before it heard anything; without it the device answers the address
    the transport's first datagram came from.
    """

    name = "udp"
    message_oriented = True
    can_lose = False
    cannot_lose_reason = "UDP has no connection to lose: a silent device is not an error"
    large = MiB  # sent as 32 KiB datagrams, each waited for (UDP has no flow control)
    max_write = 32 * 1024
    bind = True

    def __init__(self, tmp_path):
        super().__init__(tmp_path)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.url = f"udp://127.0.0.1:{self.port}"
        self.transport_addr = None
        if self.bind:
            self.transport_addr = ("127.0.0.1", free_udp_port())
            self.url += f"?bind=127.0.0.1:{self.transport_addr[1]}"

    def connect(self, transport) -> None:
        transport.open()
        if self.transport_addr is None:
            transport.write(b"hello\n")  # tells the device where the transport is
            assert self.recv() == b"hello\n"

    def send(self, data: bytes) -> None:
        assert self.transport_addr is not None, "the device has not heard from the transport yet"
        self.sock.sendto(data, self.transport_addr)

    def recv(self, timeout: float = 5.0) -> bytes:
        self.sock.settimeout(timeout)
        try:
            data, addr = self.sock.recvfrom(65536)
        except socket.timeout:
            raise AssertionError(f"device received nothing within {timeout} s") from None
        if self.bind:
            assert addr == self.transport_addr, f"datagram from {addr}, not the ?bind= address"
        self.transport_addr = addr
        return data

    def close(self) -> None:
        self.sock.close()


class UdpNoBindPeer(UdpPeer):
    name = "udp-nobind"
    bind = False


class LoopPeer(Peer):
    """`loop://`: pyserial's loopback. What the transport writes is what it reads: the
    device is the loop itself, so `send` writes through the transport."""

    name = "loop"
    url = "loop://"
    can_lose = False
    cannot_lose_reason = "loop:// is in-process: there is no device to lose"
    # loop:// moves one byte per queue operation (about 2 s per MiB each way), so its
    # large transfer is smaller; test_loop_takes_a_large_write covers one big write.
    large = 256 * 1024

    def connect(self, transport) -> None:
        transport.open()
        self.transport = transport

    def send(self, data: bytes) -> None:
        self.transport.write(data)

    def recv(self, timeout: float = 5.0) -> bytes:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            data = self.transport.read()
            if data:
                return data
        raise AssertionError(f"nothing came back within {timeout} s")

    def close(self) -> None:
        pass


PEERS = {
    "pty": PtyNoReturnPeer,
    "pty-link": PtyLinkPeer,
    "tcp": TcpServerPeer,
    "tcp-listen": TcpClientPeer,
    "udp": UdpPeer,
    "udp-nobind": UdpNoBindPeer,
    "socket": PyserialSocketPeer,
    "loop": LoopPeer,
}


@pytest.fixture(params=list(PEERS))
def peer(request, tmp_path):
    p = PEERS[request.param](tmp_path)
    yield p
    p.close()


@pytest.fixture
def transport(peer):
    """The transport for `peer`, not opened yet; released in teardown."""
    t = transports.create(peer.url)
    yield t
    t.cancel()
    t.release()


@pytest.fixture
def link(peer, transport):
    """`peer` connected to `transport`."""
    peer.connect(transport)
    return transport


def need_loss(peer, returns: bool = False) -> None:
    if not peer.can_lose:
        pytest.skip(peer.cannot_lose_reason)
    if returns and not getattr(peer, "can_return", True):
        pytest.skip("a pty's path vanishes with its master; the pty-link variant covers its return")


# -- the suite ---------------------------------------------------------------------------


def test_idle_read_returns_empty_within_read_timeout(link):
    started = time.monotonic()
    assert link.read() == b""
    elapsed = time.monotonic() - started
    assert READ_TIMEOUT * 0.5 <= elapsed < READ_TIMEOUT + 1.0


def test_device_to_transport(peer, link):
    peer.send(b"hello from the device\n")
    data, _ = read_exactly(link, len(b"hello from the device\n"))
    assert data == b"hello from the device\n"


def test_transport_to_device(peer, link):
    link.write(b"LED ON\n")
    assert peer.recv_exactly(len(b"LED ON\n")) == b"LED ON\n"


def test_both_ways_interleaved(peer, link):
    for i in range(20):
        link.write(b"PING %d\n" % i)
        assert peer.recv_exactly(len(b"PING %d\n" % i)) == b"PING %d\n" % i
        peer.send(b"PONG %d\n" % i)
        assert read_exactly(link, len(b"PONG %d\n" % i))[0] == b"PONG %d\n" % i


def test_large_transfer_device_to_transport(peer, link):
    data = payload(peer.large)
    if peer.message_oriented:
        # Lock step, one datagram at a time: UDP has no flow control to lean on.
        got = bytearray()
        for i in range(0, len(data), peer.max_write):
            peer.send(data[i : i + peer.max_write])
            got += read_exactly(link, len(data[i : i + peer.max_write]))[0]
    else:
        sender = BackgroundCall(peer.send, data, name="test-device-send")
        got, _ = read_exactly(link, len(data), timeout=20)
        sender.result()
    assert len(got) == len(data)
    assert got == data


def test_large_transfer_transport_to_device(peer, link):
    data = payload(peer.large)
    step = peer.max_write or len(data)
    if peer.message_oriented:
        got = bytearray()
        for i in range(0, len(data), step):
            link.write(data[i : i + step])
            datagram = peer.recv()
            assert datagram == data[i : i + step]  # one write, one datagram
            got += datagram
    else:
        def write_all():
            for i in range(0, len(data), step):
                link.write(data[i : i + step])
        writer = BackgroundCall(write_all, name="test-transport-write")
        got = peer.recv_exactly(len(data), timeout=20)
        writer.result()
    assert got == data


def test_reads_take_what_is_waiting(peer, link):
    """A read returns what is waiting, not a byte at a time (pyserial's socket://
    in_waiting says only 0 or 1: reading by it gave 2 bytes per read())."""
    if peer.message_oriented:
        pytest.skip("one read per datagram by design (test_udp_one_datagram_per_read)")
    size = 64 * 1024
    sender = BackgroundCall(peer.send, payload(size), name="test-device-send")
    got, calls = read_exactly(link, size)
    sender.result()
    assert got == payload(size)
    # How much is waiting at each read depends on how the sender and the reader are
    # scheduled (loop:// hands bytes over through a 4 KiB queue): on a loaded machine a few
    # hundred reads. Reading by in_waiting took one to two bytes a read: 32,768 or more.
    assert calls <= size // 64, f"{calls} read() calls for {size} bytes"


def test_close_then_open_again(peer, transport):
    peer.connect(transport)
    transport.write(b"first\n")
    assert peer.recv_exactly(6) == b"first\n"
    transport.close()
    peer.connect(transport)
    transport.write(b"second\n")
    assert peer.recv_exactly(7) == b"second\n"
    peer.send(b"back\n")
    assert read_exactly(transport, 5)[0] == b"back\n"


@pytest.mark.parametrize("reset", [False, True], ids=["closed", "reset"])
def test_device_lost_raises_on_read(peer, link, reset):
    need_loss(peer)
    if reset and not isinstance(peer, StreamPeer):
        pytest.skip("only a TCP peer can reset the connection")
    peer.send(b"last words\n")
    assert read_exactly(link, 11)[0] == b"last words\n"
    peer.lose(reset=reset)
    exc = read_until_error(link)
    assert isinstance(exc, TransportError)
    assert str(exc)


def test_device_lost_raises_on_write(peer, link):
    need_loss(peer)
    peer.lose()
    assert isinstance(write_until_error(link), TransportError)


def test_device_lost_then_back_open_works(peer, link):
    need_loss(peer, returns=True)
    peer.lose()
    read_until_error(link)
    link.close()
    peer.restore()
    peer.connect(link)
    peer.send(b"i am back\n")
    assert read_exactly(link, 10)[0] == b"i am back\n"
    link.write(b"welcome\n")
    assert peer.recv_exactly(8) == b"welcome\n"


def test_open_fails_with_transport_error_while_device_is_gone(peer, transport):
    need_loss(peer, returns=True)
    if peer.name == "tcp-listen":
        pytest.skip("tcp-listen waits for the device: NotConnectedYet (test_tcp_listen_*)")
    peer.connect(transport)
    peer.lose()
    transport.close()
    with pytest.raises(TransportError) as info:
        transport.open()
    assert str(info.value)
    peer.restore()
    peer.connect(transport)
    transport.write(b"ok\n")
    assert peer.recv_exactly(3) == b"ok\n"


# -- per-transport details -----------------------------------------------------------------


@pytest.fixture
def tcp_listen(tmp_path):
    peer = TcpClientPeer(tmp_path)
    t = transports.create(peer.url)
    yield peer, t
    t.release()
    peer.close()


def test_tcp_listen_second_dial_in_replaces_the_first(tcp_listen):
    peer, t = tcp_listen
    peer.connect(t)
    first = peer.conn
    peer.send(b"one\n")
    assert read_exactly(t, 4)[0] == b"one\n"

    with peer.dial() as second:
        second.sendall(b"two\n")
        assert read_exactly(t, 4)[0] == b"two\n"  # read() takes the new connection first
        t.write(b"to the newest\n")
        second.settimeout(5)
        assert second.recv(100) == b"to the newest\n"
        first.settimeout(5)
        try:
            assert first.recv(100) == b"", "the replaced connection should be closed"
        except ConnectionResetError:
            pass


def test_tcp_listen_keeps_listening_across_close_and_release_stops(tcp_listen):
    peer, t = tcp_listen
    peer.connect(t)
    t.close()  # the device's connection, not the listener
    peer.attach()  # dials again: the listener is still there
    t.open()
    peer.send(b"again\n")
    assert read_exactly(t, 6)[0] == b"again\n"
    t.release()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", peer.port), timeout=2).close()


def test_tcp_listen_open_without_device_is_quick_not_connected_yet(tcp_listen):
    _, t = tcp_listen
    started = time.monotonic()
    with pytest.raises(NotConnectedYet):
        t.open()
    assert time.monotonic() - started < READ_TIMEOUT + 1.0


@pytest.fixture
def udp(tmp_path):
    peer = UdpPeer(tmp_path)
    t = transports.create(peer.url)
    peer.connect(t)
    yield peer, t
    t.release()
    peer.close()


def test_udp_one_datagram_per_read(udp):
    peer, t = udp
    peer.send(b"a=1\n")
    peer.send(b"b=2\n")
    assert read_exactly(t, 1)[0] == b"a=1\n"
    assert read_exactly(t, 1)[0] == b"b=2\n"


def test_udp_one_write_is_one_datagram(udp):
    peer, t = udp
    t.write(b"LED ON\n")
    t.write(b"GET temp\nGET hum\n")
    assert peer.recv() == b"LED ON\n"
    assert peer.recv() == b"GET temp\nGET hum\n"


def test_udp_ignores_datagrams_from_strangers(udp):
    peer, t = udp
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as stranger:
        stranger.sendto(b"not the device\n", peer.transport_addr)
    peer.send(b"the device\n")
    assert read_exactly(t, 1)[0] == b"the device\n"


def test_udp_device_not_listening_is_not_an_error(udp):
    peer, t = udp
    peer.sock.close()  # the device is off: the kernel answers port unreachable
    for _ in range(3):
        t.write(b"PING\n")
        assert t.read() == b""
    assert t.refused >= 1


def test_loop_takes_a_large_write():
    """write() writes all of `data` (base.py). pyserial's loop:// emulates 9600 baud and,
    given a write timeout, refuses any write longer than 4800 bytes after sleeping it out;
    DeviceLink batches up to 64 KiB of lines into one write."""
    t = transports.create("loop://")
    t.open()
    try:
        writer = BackgroundCall(t.write, b"x" * 8192, name="test-loop-write")
        got = bytearray()
        deadline = time.monotonic() + 1.0
        while len(got) < 8192 and time.monotonic() < deadline:
            got += t.read()
        assert len(got) == 8192
        writer.result(2.0)
    finally:
        port = t.port
        if port is not None:
            port.cancel_write()  # ends a write-timeout sleep early, should there be one
        writer.thread.join(5)
        t.close()


# -- configuration: create() checks the URL, opens nothing ---------------------------------


@pytest.mark.parametrize("url, message", [
    ("nourl", "SCHEME://"),
    ("ftp://127.0.0.1:21", "unknown scheme 'ftp'"),
    ("tcp://nohost", "needs HOST:PORT"),
    ("tcp://:2323", "needs HOST:PORT"),
    ("tcp://127.0.0.1:99999", "bad port"),
    ("tcp://127.0.0.1:23/path", "no path"),
    ("tcp://127.0.0.1:23?nodelay=1", "unknown tcp option 'nodelay'"),
    ("tcp-listen://127.0.0.1", "needs HOST:PORT"),
    ("tcp-listen://127.0.0.1:23?backlog=5", "unknown tcp-listen option 'backlog'"),
    ("udp://127.0.0.1", "needs HOST:PORT"),
    ("udp://127.0.0.1:9?bind=nope", "expected HOST:PORT, not 'nope'"),
    ("udp://127.0.0.1:9?bind=127.0.0.1:", "expected HOST:PORT"),
    ("udp://127.0.0.1:9?bind=127.0.0.1:70000", "expected HOST:PORT"),
    ("udp://127.0.0.1:9?bind=:9", "expected HOST:PORT"),
    ("udp://127.0.0.1:9?mcast=1", "unknown udp option 'mcast'"),
    ("serial://dev/ttyUSB0", "serial:///dev/ttyUSB0"),
    ("serial://", "serial:///dev/ttyUSB0"),
    ("serial:///dev/ttyUSB0?parity=Q", "parity must be one of"),
    ("serial:///dev/ttyUSB0?baudrate=0", "baudrate"),
    ("serial:///dev/ttyUSB0?baudrate=-9600", "baudrate"),
    ("serial:///dev/ttyUSB0?baudrate=fast", "baudrate"),
    ("serial:///dev/ttyUSB0?baudrate=", "baudrate"),
    ("serial:///dev/ttyUSB0?bytesize=9", "bytesize must be 5, 6, 7 or 8"),
    ("serial:///dev/ttyUSB0?stopbits=3", "stopbits must be 1, 1.5 or 2"),
    ("serial:///dev/ttyUSB0?rtscts=maybe", "rtscts must be true or false"),
    ("serial:///dev/ttyUSB0?speed=9600", "unknown serial option 'speed'"),
    ("sim://?bogus=1", "unknown sim option 'bogus'"),
    ("sim://?interval=soon", "interval must be a number"),
    ("sim://?interval=-1", "interval must be between"),
    ("sim://host", "takes no host or path"),
])
def test_create_rejects_bad_urls(url, message):
    with pytest.raises(ValueError) as info:
        transports.create(url)
    assert message in str(info.value)


@pytest.mark.parametrize("url", [
    "tcp://127.0.0.1:2323?eol=crlf&max_line=100&pace_ms=5&encoding=latin-1&history=10",
    "udp://127.0.0.1:2324?bind=127.0.0.1:0&eol=cr",
    "serial:///dev/ttyUSB0?baudrate=115200&parity=e&stopbits=1.5&bytesize=7&rtscts=yes",
    "loop://?eol=crlf",
    "socket://127.0.0.1:7000",
    "sim://?interval=0.5",
])
def test_create_accepts_good_urls_and_opens_nothing(url):
    t = transports.create(url)
    t.release()


def test_create_does_not_listen_or_connect():
    port = free_port()
    t = transports.create(f"tcp-listen://127.0.0.1:{port}")
    try:
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=2).close()
    finally:
        t.release()


def test_serial_open_of_a_missing_port_is_a_transport_error(tmp_path):
    t = transports.create(f"serial://{tmp_path}/ttyMISSING")
    with pytest.raises(TransportError) as info:
        t.open()
    assert "ttyMISSING" in str(info.value)
    t.release()


@pytest.mark.parametrize("url", ["tcp://a..b:1", "udp://a..b:1", "tcp://" + "x" * 64 + ".example:1"])
def test_malformed_host_name_is_refused_at_create_or_a_transport_error_at_open(url):
    try:
        t = transports.create(url)
    except ValueError:
        return  # refused at config time: as good
    try:
        with pytest.raises(TransportError):
            t.open()
    finally:
        t.release()


def test_tcp_open_refused_is_a_transport_error():
    t = transports.create(f"tcp://127.0.0.1:{free_port()}")
    with pytest.raises(TransportError) as info:
        t.open()
    assert "cannot connect" in str(info.value)
    t.release()
