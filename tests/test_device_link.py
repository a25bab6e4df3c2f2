"""DeviceLink + Hub end to end, over the real peers of tests/test_transports.py.

A DeviceLink runs on an I/O loop of its own (gateway/manager.py) against a real pty, a
TCP server, a TCP client dialling in, a UDP socket and pyserial's socket:// (which has a
thread of its own); test subscribers attached to the Hub decode the WebSocket frames
they are handed. Waits are `wait_for` with a deadline, never sleeps.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import socket
import struct
import threading
import time

import pytest

from conftest import wait_for
from gateway import device as device_module
from gateway import transports
from gateway.config import DeviceConfig
from gateway.device import BACKOFF_FIRST, DeviceLink, WriteRequest
from gateway.frames import BINARY, TEXT
from gateway.hub import Hub, State
from gateway.manager import Manager
from gateway.transports.base import TransportError
from test_transports import PEERS, StreamPeer, TcpServerPeer

LINK_PEERS = ["pty", "pty-link", "tcp", "tcp-listen", "udp", "socket"]
_names = itertools.count(1)


def decode_frames(data: bytes) -> list[tuple[int, bytes]]:
    """Server frames (unmasked, FIN set) as (opcode, payload)."""
    out = []
    pos = 0
    while pos < len(data):
        b0, b1 = data[pos], data[pos + 1]
        assert b0 & 0x80, "a server frame is never fragmented here"
        assert not b1 & 0x80, "a server frame is never masked"
        n = b1 & 0x7F
        pos += 2
        if n == 126:
            (n,) = struct.unpack_from("!H", data, pos)
            pos += 2
        elif n == 127:
            (n,) = struct.unpack_from("!Q", data, pos)
            pos += 8
        out.append((b0 & 0x0F, bytes(data[pos : pos + n])))
        pos += n
    assert pos == len(data), "trailing bytes after the last frame"
    return out


class Collector:
    """A hub subscriber: keeps every frame it is handed, decoded."""

    def __init__(self, fmt: str):
        self.fmt = fmt
        self._lock = threading.Lock()
        self.frames: list[tuple[int, bytes]] = []

    def deliver(self, items: list[bytes]) -> None:
        decoded = [f for item in items for f in decode_frames(item)]
        with self._lock:
            self.frames.extend(decoded)

    def snapshot(self) -> list[tuple[int, bytes]]:
        with self._lock:
            return list(self.frames)

    def messages(self) -> list[dict]:
        return [json.loads(p) for op, p in self.snapshot() if op == TEXT]

    def lines(self) -> list[dict]:
        return [m for m in self.messages() if m["type"] == "line"]

    def states(self) -> list[str]:
        return [m["state"] for m in self.messages() if m["type"] == "status"]

    def texts(self) -> list[str]:
        return [p.decode() for op, p in self.snapshot() if op == TEXT]


class Client:
    """The writer side of a client: hears acks and failures."""

    def __init__(self):
        self.acks: list[object] = []
        self.errors: list[tuple[object, str]] = []

    def deliver(self, items):
        pass

    def acked(self, request):
        self.acks.append(request.id)

    def failed(self, request, error):
        self.errors.append((request.id, error))


class Recording:
    """A transport wrapper that notes when open() was called and whether it worked."""

    def __init__(self, inner):
        self.inner = inner
        self.opens: list[tuple[float, bool]] = []

    def open(self):
        try:
            self.inner.open()
        except TransportError:
            self.opens.append((time.monotonic(), False))
            raise
        self.opens.append((time.monotonic(), True))

    def open_nowait(self):
        """The loop's way: a TCP connect may finish (or fail) in finish_open()."""
        try:
            self.inner.open_nowait()
        except TransportError:
            self.opens.append((time.monotonic(), False))
            raise
        if not getattr(self.inner, "connecting", False):
            self.opens.append((time.monotonic(), True))

    def finish_open(self):
        try:
            self.inner.finish_open()
        except TransportError:
            self.opens.append((time.monotonic(), False))
            raise
        self.opens.append((time.monotonic(), True))

    def __getattr__(self, name):
        return getattr(self.inner, name)


class Running:
    """A started DeviceLink on `peer`, with a text and a json subscriber."""

    def __init__(self, peer, wrap=None):
        self.peer = peer
        self.name = f"link{next(_names)}"
        self.hub = Hub(self.name, run="test-run")
        self.text = Collector("text")
        self.json = Collector("json")
        self.hub.attach(self.text, 1)
        self.hub.attach(self.json, 2)
        transport = transports.create(peer.url)
        self.transport = wrap(transport) if wrap else transport
        self.loop = Manager()
        self.loop.start()
        self.link = DeviceLink(DeviceConfig(name=self.name, url=peer.url), self.hub, self.transport, loop=self.loop)
        self.link.start()
        try:
            self.peer.attach()
            assert self.link.wait_connected(5), f"{self.name} did not connect to {peer.url}"
        except BaseException:
            self.stop()
            raise

    def threads(self) -> list[str]:
        """This link's threads still alive: its own (a transport without a descriptor),
        its opener, and its loop."""
        mine = (f"device:{self.name}", f"device-open:{self.name}")
        alive = [t.name for t in threading.enumerate() if t.name.startswith(mine)]
        if self.loop.is_alive():
            alive.append(self.loop.name)
        return alive

    def send_lines(self, lines: list[str]) -> None:
        """The device sends `lines`: one datagram each on UDP, else one stream cut at
        awkward places (mid-line, between CR and LF)."""
        if self.peer.message_oriented:
            for line in lines:
                self.peer.send(line.encode() + b"\n")
            return
        data = b"".join(line.encode() + b"\r\n" for line in lines)
        cuts = [0, *range(7, len(data), 997), len(data)]
        for a, b in zip(cuts, cuts[1:]):
            self.peer.send(data[a:b])

    def wait_lines(self, count: int, timeout: float = 10.0) -> list[dict]:
        wait_for(lambda: len(self.json.lines()) >= count, timeout, what=f"{count} lines on {self.name}")
        return self.json.lines()

    def stop(self) -> None:
        self.link.stop(timeout=5)
        self.loop.stop(1.0)
        self.loop.join(5)


@pytest.fixture(params=LINK_PEERS)
def peer(request, tmp_path):
    p = PEERS[request.param](tmp_path)
    yield p
    p.close()


@pytest.fixture
def running(peer):
    r = Running(peer)
    yield r
    r.stop()
    assert r.threads() == [], f"threads left after stop(): {r.threads()}"


@contextlib.contextmanager
def tcp_link(tmp_path, wrap=None):
    """A Running link on a TCP device of its own; stopped and closed after, with no
    thread of it left."""
    peer = TcpServerPeer(tmp_path)
    try:
        r = Running(peer, wrap)
        try:
            yield r
        finally:
            r.stop()
    finally:
        peer.close()
    assert r.threads() == [], f"threads left after stop(): {r.threads()}"


def need_return(peer) -> None:
    if not peer.can_lose:
        pytest.skip(peer.cannot_lose_reason)
    if not getattr(peer, "can_return", True):
        pytest.skip("a pty's path vanishes with its master; the pty-link variant covers its return")


# -- lines in -----------------------------------------------------------------------------


def test_device_lines_arrive_numbered_in_order(running):
    batches = [[f"t={i} v={i * 0.5:.1f}" for i in range(n, n + 100)] for n in range(1, 301, 100)]
    sent: list[str] = []
    for batch in batches:  # batches waited for: UDP has no flow control
        running.send_lines(batch)
        sent += batch
        running.wait_lines(len(sent))
    lines = running.json.lines()
    assert [m["seq"] for m in lines] == list(range(1, len(sent) + 1))
    assert [m["line"] for m in lines] == sent
    assert all(m["device"] == running.name for m in lines)
    assert lines[0]["data"] == {"t": 1, "v": 0.5}  # telemetry parsed on the way
    assert running.text.texts() == sent  # text frames: the line, no terminator, no status
    assert running.hub.seq == len(sent)


def test_json_subscriber_got_hello_then_connected(running):
    first = running.json.messages()[0]
    assert first["type"] == "hello" and first["device"] == running.name and first["run"] == "test-run"
    assert "connected" in running.json.states()
    assert running.link.state is State.CONNECTED


def test_invalid_utf8_line_is_a_binary_text_frame_and_json_raw(running):
    running.peer.send(b"boot\xff\xfenoise\n")
    running.wait_lines(1)
    (line,) = running.json.lines()
    assert line["raw"] and "\ufffd" in line["line"]
    wait_for(lambda: (BINARY, b"boot\xff\xfenoise") in running.text.snapshot(), what="binary frame")


# -- lines out ----------------------------------------------------------------------------


def test_client_writes_reach_the_device(running):
    client = Client()
    assert running.link.submit(WriteRequest(b"LED ON\n", client=client, id=1)) is None
    assert running.peer.recv_exactly(7) == b"LED ON\n"
    wait_for(lambda: client.acks == [1], what="ack")
    assert client.errors == []


def test_many_writes_arrive_in_order(running):
    client = Client()
    lines = [b"ECHO %d\n" % i for i in range(200)]
    for i, line in enumerate(lines):
        assert running.link.submit(WriteRequest(line, client=client, id=i)) is None
    if running.peer.message_oriented:
        got = [running.peer.recv() for _ in lines]  # one datagram per line
        assert got == lines
    else:
        assert running.peer.recv_exactly(sum(map(len, lines))) == b"".join(lines)
    wait_for(lambda: len(client.acks) == len(lines), what="acks")
    assert client.acks == list(range(len(lines)))
    assert running.link.counters.lines_out == len(lines)


# -- losing the device and getting it back -------------------------------------------------


def test_device_vanishes_mid_line_then_returns(running):
    peer, hub = running.peer, running.hub
    need_return(peer)
    running.send_lines(["before"])
    running.wait_lines(1)
    peer.send(b"PART")  # a line in flight, no terminator yet
    if not isinstance(peer, StreamPeer):
        # A pty's master closing discards what the slave has not read yet: let it arrive.
        wait_for(lambda: hub.partial == b"PART", what="the partial line to be read")
    peer.lose()

    wait_for(lambda: running.link.state is State.RECONNECTING, what="reconnecting")
    lines = running.wait_lines(2)
    assert [m["line"] for m in lines] == ["before", "PART"]  # the partial line is kept
    assert [m["seq"] for m in lines] == [1, 2]
    messages = running.json.messages()
    part_at = next(i for i, m in enumerate(messages) if m.get("line") == "PART")
    first_up = next(i for i, m in enumerate(messages) if m.get("state") == "connected")
    lost_at = next(i for i, m in enumerate(messages) if m.get("state") == "reconnecting" and i > first_up)
    assert part_at < lost_at, "the partial line comes before the reconnecting status"

    client = Client()
    error = running.link.submit(WriteRequest(b"PING\n", client=client, id=9))
    assert error and "reconnecting" in error

    peer.restore()
    peer.attach()
    assert running.link.wait_connected(5), "the link did not reconnect"
    wait_for(lambda: running.json.states()[-1:] == ["connected"], what="connected status")
    states = running.json.states()
    assert states[states.index("connected") + 1 :] == ["reconnecting", "connected"]

    running.send_lines(["after"])
    lines = running.wait_lines(3)
    assert (lines[-1]["line"], lines[-1]["seq"]) == ("after", 3)  # numbering goes on
    assert running.link.submit(WriteRequest(b"PING\n", client=client, id=10)) is None
    assert peer.recv_exactly(5) == b"PING\n"
    assert running.link.counters.reconnects == 1


def test_tcp_reset_is_a_loss_too(tmp_path):
    with tcp_link(tmp_path) as r:
        peer = r.peer
        peer.lose(reset=True)
        wait_for(lambda: r.link.state is State.RECONNECTING, what="reconnecting")
        peer.restore()
        peer.attach()
        assert r.link.wait_connected(5)


def test_reconnect_backoff_doubles_up_to_the_cap(tmp_path, monkeypatch):
    monkeypatch.setattr(device_module, "BACKOFF_MAX", 0.4)
    with tcp_link(tmp_path, wrap=Recording) as r:
        peer = r.peer
        peer.lose()  # and stays away: every open is refused
        wait_for(lambda: sum(not ok for _, ok in r.transport.opens) >= 4, 5, what="4 failed opens")
        peer.restore()
        peer.attach()
        assert r.link.wait_connected(5)
    failed = [t for t, ok in r.transport.opens if not ok]
    gaps = [b - a for a, b in zip(failed, failed[1:])][:3]
    for gap, want in zip(gaps, [BACKOFF_FIRST, 2 * BACKOFF_FIRST, 0.4]):
        assert want - 0.02 <= gap < want + 0.5, f"gaps {gaps}: expected about {want}"


class FailsFirstOpen(Recording):
    """The real transport, whose first open() fails with something not a TransportError
    (as getaddrinfo's UnicodeError for tcp://a..b:1, or a driver's odd exception)."""

    def open_nowait(self):
        if not self.opens:
            self.opens.append((time.monotonic(), False))
            raise ValueError("unexpected failure inside open()")
        super().open_nowait()


def test_unexpected_error_in_open_is_retried_not_fatal(tmp_path):
    peer = TcpServerPeer(tmp_path)
    name = f"link{next(_names)}"
    hub = Hub(name, run="test-run")
    loop = Manager()
    loop.start()
    link = DeviceLink(DeviceConfig(name=name, url=peer.url), hub, FailsFirstOpen(transports.create(peer.url)),
                      loop=loop)
    link.start()
    try:
        wait_for(lambda: link.state is State.CONNECTED, 5, what="the link to connect after a failed open")
        peer.attach()
        assert [ok for _, ok in link.transport.opens][:2] == [False, True]
    finally:
        link.stop(timeout=5)
        loop.stop(1.0)
        loop.join(5)
        peer.close()


# -- stopping -----------------------------------------------------------------------------


def test_stop_joins_its_threads_and_says_disconnected(running):
    own = [t for t in running.threads() if t.startswith(f"device:{running.name}")]
    assert own == ([f"device:{running.name}"] if running.peer.name == "socket" else []), \
        "only a transport without a descriptor has a thread of its own"
    started = time.monotonic()
    running.stop()
    assert time.monotonic() - started < 2.0
    assert running.threads() == []
    assert running.link.state is State.DISCONNECTED
    assert running.json.states()[-1] == "disconnected"
    error = running.link.submit(WriteRequest(b"PING\n"))
    assert error and "disconnected" in error
    peer = running.peer
    if isinstance(peer, StreamPeer):
        peer.conn.settimeout(5)
        try:
            assert peer.conn.recv(100) == b"", "the device's connection should be closed"
        except ConnectionResetError:
            pass
    if peer.name == "tcp-listen":
        with pytest.raises(ConnectionRefusedError):  # the listener is released too
            socket.create_connection(("127.0.0.1", peer.port), timeout=2).close()


def test_stop_while_the_device_is_gone_is_prompt(running):
    need_return(running.peer)
    running.peer.lose()
    wait_for(lambda: running.link.state is State.RECONNECTING, what="reconnecting")
    started = time.monotonic()
    running.stop()
    assert time.monotonic() - started < 1.5
    assert running.threads() == []


# -- UDP: one datagram per line ------------------------------------------------------------


@pytest.mark.parametrize("peer", ["udp"], indirect=True)
def test_udp_datagram_boundaries_are_line_ends(running):
    peer = running.peer
    peer.send(b"no terminator")
    peer.send(b"two\nlines\n")
    peer.send(b"crlf\r\n")
    lines = running.wait_lines(4)
    assert [m["line"] for m in lines] == ["no terminator", "two", "lines", "crlf"]
    assert running.hub.partial == b""


# -- on the loop ---------------------------------------------------------------------------------


class ThreadNoting(Collector):
    """A collector that notes which thread handed it each batch of frames."""

    def __init__(self, fmt: str):
        super().__init__(fmt)
        self.threads: list[str] = []

    def deliver(self, items: list[bytes]) -> None:
        self.threads.append(threading.current_thread().name)
        super().deliver(items)


@pytest.mark.parametrize("peer", ["pty", "tcp", "tcp-listen", "udp"], indirect=True)
def test_a_device_with_a_descriptor_is_read_by_the_loop_and_has_no_thread(running):
    noting = ThreadNoting("text")
    running.hub.attach(noting, 3)
    running.send_lines(["one", "two"])
    wait_for(lambda: noting.texts() == ["one", "two"], what="lines read by the loop")
    assert set(noting.threads) == {"WebSocketManager"}
    assert [t for t in running.threads() if t.startswith(f"device:{running.name}")] == []


def test_tcp_listen_a_new_connection_starts_a_new_line(tmp_path):
    """The device sent half a line, then dialled in again and said "boot ok": the half
    line is delivered on its own, not glued to the new connection's first line."""
    peer = PEERS["tcp-listen"](tmp_path)
    try:
        r = Running(peer)
        try:
            peer.send(b"temp=21.5 hu")
            wait_for(lambda: r.hub.partial == b"temp=21.5 hu", what="the partial line")
            second = socket.create_connection(("127.0.0.1", peer.port), timeout=5)
            wait_for(lambda: r.link.counters.reconnects == 0 and r.hub.partial == b"", what="the new connection")
            second.sendall(b"boot ok\n")
            lines = r.wait_lines(2)
            assert [m["line"] for m in lines] == ["temp=21.5 hu", "boot ok"]
            second.close()
        finally:
            r.stop()
    finally:
        peer.close()


def test_lines_submitted_in_one_round_go_out_together_in_order(tmp_path):
    client = Client()
    with tcp_link(tmp_path) as r:
        expected = [b"L%d\n" % i for i in range(300)]

        def submit_all():
            for i, line in enumerate(expected):
                assert r.link.submit(WriteRequest(line, client=client, id=i)) is None

        r.loop.call(submit_all)
        assert r.peer.recv_exactly(sum(map(len, expected))) == b"".join(expected)
        wait_for(lambda: r.link.counters.lines_out == 300, what="every line counted")
        assert client.acks == list(range(300))


def test_a_failing_listener_costs_a_reconnect_not_the_device(tmp_path):
    """A bug behind publish() (here a sink that raises once) is logged and the link
    reconnects; the device is not left unread."""
    class FailsOnce:
        failed = False

        def on_records(self, device, records):
            if not self.failed:
                self.failed = True
                raise RuntimeError("sink bug")

        def on_state(self, device, state):
            pass

    with tcp_link(tmp_path) as r:
        r.hub.listeners.append(FailsOnce())
        r.send_lines(["boom"])
        wait_for(lambda: r.link.counters.reconnects == 1, what="a reconnect after the failure")
