"""The standalone simulator (gateway/simulator/serve.py) on real links: TCP, UDP, a pty.

Each server runs `serve()` in a thread named "sim-serve", stopped and joined in teardown;
the test is the gateway's side of the link, talking SPEC section 7. Then the command
line: `python -m gateway.simulator --listen ...` as a subprocess.
"""

from __future__ import annotations

import os
import re
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from gateway.simulator.serve import SimulatorServer

ROOT = Path(__file__).resolve().parents[1]
KINDS = {"tcp": "tcp://127.0.0.1:0", "udp": "udp://127.0.0.1:0", "pty": "pty"}
GO_LINE = re.compile(r"t=(\d+) v=-?\d+\.\d{4}")
TELEMETRY = re.compile(r"temp=-?\d+\.\d\d hum=-?\d+\.\d led=[01] uptime=\d+")


class LineClient:
    """The gateway's side of a link to the simulator: send lines, read lines."""

    def __init__(self):
        self._buf = b""
        self.datagrams: list[bytes] = []

    def _send(self, data: bytes) -> None:
        raise NotImplementedError

    def _recv(self, timeout: float) -> bytes:
        """Bytes that came within `timeout`, b"" if none; raise EOFError when closed."""
        raise NotImplementedError

    def send_line(self, text: str) -> None:
        self._send(text.encode() + b"\n")

    def read_lines(self, count: int, timeout: float = 5.0, skip=None) -> list[str]:
        """The next `count` lines (those matching `skip` left out)."""
        lines: list[str] = []
        deadline = time.monotonic() + timeout
        while len(lines) < count:
            while b"\n" in self._buf and len(lines) < count:
                line, self._buf = self._buf.split(b"\n", 1)
                text = line.decode()
                if skip is None or not skip.fullmatch(text):
                    lines.append(text)
            if len(lines) >= count:
                break
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"got {len(lines)} of {count} lines within {timeout} s: {lines[-3:]}")
            self._buf += self._recv(left)
        return lines

    def read_line(self, timeout: float = 5.0, skip=None) -> str:
        return self.read_lines(1, timeout, skip)[0]

    def ask(self, line: str, answers: int = 1) -> list[str]:
        self.send_line(line)
        return self.read_lines(answers, skip=TELEMETRY)


class TcpClient(LineClient):
    def __init__(self, url: str):
        super().__init__()
        parts = urlsplit(url)
        self.sock = socket.create_connection((parts.hostname, parts.port), timeout=5)

    def _send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _recv(self, timeout: float) -> bytes:
        ready, _, _ = select.select([self.sock], [], [], timeout)
        if not ready:
            return b""
        data = self.sock.recv(65536)
        if not data:
            raise EOFError("the simulator closed the connection")
        return data

    def close(self) -> None:
        self.sock.close()


class UdpClient(LineClient):
    def __init__(self, url: str):
        super().__init__()
        parts = urlsplit(url)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        self.sock.connect((parts.hostname, parts.port))

    def _send(self, data: bytes) -> None:
        self.sock.send(data)

    def _recv(self, timeout: float) -> bytes:
        ready, _, _ = select.select([self.sock], [], [], timeout)
        if not ready:
            return b""
        data = self.sock.recv(65536)
        self.datagrams.append(data)
        return data

    def close(self) -> None:
        self.sock.close()


class PtyClient(LineClient):
    """Opens the simulator's pty path as a serial port would (the slave is raw already)."""

    def __init__(self, path: str):
        super().__init__()
        self.fd = os.open(path, os.O_RDWR | os.O_NOCTTY)

    def _send(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self.fd, view):]

    def _recv(self, timeout: float) -> bytes:
        ready, _, _ = select.select([self.fd], [], [], timeout)
        return os.read(self.fd, 65536) if ready else b""

    def close(self) -> None:
        os.close(self.fd)


CLIENTS = {"tcp": TcpClient, "udp": UdpClient, "pty": PtyClient}


@pytest.fixture
def simulator():
    """simulator(kind, interval=0) -> (server, client); both closed, the thread joined."""
    started: list[tuple[SimulatorServer, threading.Thread]] = []
    clients: list[LineClient] = []

    def start(kind: str, interval: float = 0.0):
        server = SimulatorServer(KINDS[kind], interval)
        thread = threading.Thread(target=server.serve, name="sim-serve")
        thread.start()
        started.append((server, thread))
        client = CLIENTS[kind](server.url)
        clients.append(client)
        return server, client

    start.clients = clients
    yield start
    for client in clients:
        client.close()
    for server, thread in started:
        server.stop()
        thread.join(5)
        assert not thread.is_alive(), "sim-serve did not stop within 5 s"


@pytest.fixture(params=list(KINDS))
def kind(request):
    return request.param


def test_url_names_the_bound_address(simulator, kind):
    server, _ = simulator(kind)
    if kind == "pty":
        assert server.url.startswith("/dev/")
    else:
        parts = urlsplit(server.url)
        assert (parts.scheme, parts.hostname) == (kind, "127.0.0.1")
        assert parts.port and parts.port != 0


def test_ping_pong(simulator, kind):
    _, client = simulator(kind)
    assert client.ask("PING") == ["PONG"]
    assert client.ask("PING") == ["PONG"]


def test_protocol_table_over_the_link(simulator, kind):
    _, client = simulator(kind)
    assert client.ask("ECHO hello  world") == ["hello  world"]
    assert client.ask("LED ON", 2) == ["OK LED ON", "led=1"]
    assert client.ask("GET led") == ["led=1"]
    assert re.fullmatch(r"temp=\d+\.\d\d", client.ask("GET temp")[0])
    assert client.ask("SET interval 0") == ["OK interval 0"]
    assert client.ask("FROB") == ["ERR unknown command: FROB"]


def test_go_1000_numbered_lines_in_order(simulator, kind):
    _, client = simulator(kind)
    client.send_line("GO 1000")
    lines = client.read_lines(1000, timeout=15)
    numbers = []
    for line in lines:
        m = GO_LINE.fullmatch(line)
        assert m, f"not a GO line: {line!r}"
        numbers.append(int(m.group(1)))
    assert numbers == list(range(1, 1001))
    assert client.ask("PING") == ["PONG"]  # and it still answers afterwards
    if kind == "udp":
        assert all(d.count(b"\n") == 1 for d in client.datagrams), "one datagram per line"


def test_telemetry_every_interval(simulator, kind):
    _, client = simulator(kind, interval=0.1)
    if kind == "udp":
        client.send_line("PING")  # the simulator answers whoever sent last: say hello
    stamps = []
    deadline = time.monotonic() + 5
    while len(stamps) < 4:
        line = client.read_line(timeout=max(0.1, deadline - time.monotonic()))
        if line == "PONG":
            continue
        assert TELEMETRY.fullmatch(line), f"not telemetry: {line!r}"
        stamps.append(time.monotonic())
    span = stamps[-1] - stamps[0]
    assert 0.2 <= span < 3.0, f"3 intervals of 0.1 s took {span:.2f} s"


def test_set_interval_0_stops_telemetry(simulator):
    _, client = simulator("tcp", interval=0.1)
    assert TELEMETRY.fullmatch(client.read_line())
    client.send_line("SET interval 0")
    line = client.read_line()
    while line != "OK interval 0":
        assert TELEMETRY.fullmatch(line)
        line = client.read_line()
    assert client._buf == b"" and client._recv(0.4) == b""  # four intervals: nothing more


def test_tcp_reconnect_works(simulator):
    server, first = simulator("tcp")
    assert first.ask("PING") == ["PONG"]
    first.close()
    simulator.clients.remove(first)
    second = TcpClient(server.url)
    simulator.clients.append(second)
    assert second.ask("PING") == ["PONG"]
    assert second.ask("ECHO again") == ["again"]


def test_tcp_new_connection_replaces_the_old(simulator):
    server, first = simulator("tcp")
    assert first.ask("PING") == ["PONG"]
    second = TcpClient(server.url)
    simulator.clients.append(second)
    assert second.ask("PING") == ["PONG"]
    with pytest.raises(EOFError):  # like an ESP8266 sketch: one client at a time
        first.read_line(timeout=5)


def test_tcp_reconnect_drops_the_old_connections_output(simulator):
    server, first = simulator("tcp")
    first.send_line("GO 10000000")  # a burst the first client never reads to the end
    assert GO_LINE.fullmatch(first.read_line())
    second = TcpClient(server.url)
    simulator.clients.append(second)
    assert second.ask("PING", 1) == ["PONG"]  # not the rest of the burst


def test_tcp_close_and_redial_in_one_select_round_does_not_block():
    """The old connection's EOF and a new dial-in ready in one select() round: the old
    socket's turn must not read the new connection (a blocking recv there hung the
    simulator until the new client spoke). White box: the round is driven by hand."""
    server = SimulatorServer("tcp://127.0.0.1:0", 0)
    parts = urlsplit(server.url)
    first = socket.create_connection((parts.hostname, parts.port), timeout=5)
    second = None
    try:
        server._step()  # accepts the first connection
        assert server.conn is not None
        first.close()
        second = socket.create_connection((parts.hostname, parts.port), timeout=5)
        select.select([server.sock], [], [], 5)  # the second dial is waiting in the backlog
        step = threading.Thread(target=server._step, name="sim-step", daemon=True)
        step.start()
        step.join(1.0)
        blocked = step.is_alive()
        if blocked:
            second.sendall(b"PING\n")  # unblocks the stuck recv
            step.join(5)
        assert not blocked, "one select round blocked on the new connection"
    finally:
        first.close()
        if second is not None:
            second.close()
        server.close()


def test_stop_ends_serve_promptly(kind):
    server = SimulatorServer(KINDS[kind], 0.5)
    thread = threading.Thread(target=server.serve, name="sim-serve")
    thread.start()
    started = time.monotonic()
    server.stop()
    thread.join(5)
    assert not thread.is_alive()
    assert time.monotonic() - started < 1.0
    assert server.sock is None and server.master_fd is None  # serve() closed everything


def test_bad_listen_is_a_value_error():
    with pytest.raises(ValueError, match="--listen takes"):
        SimulatorServer("ftp://127.0.0.1:1")


# -- python -m gateway.simulator ----------------------------------------------------------


def run_simulator(*args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "gateway.simulator", *args],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )


def read_stdout_line(proc: subprocess.Popen, timeout: float = 10.0) -> str:
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    assert ready, f"the simulator printed nothing within {timeout} s"
    return proc.stdout.readline().decode().strip()


@pytest.fixture
def process():
    procs: list[subprocess.Popen] = []

    def start(*args):
        proc = run_simulator(*args)
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait(5)
        proc.stdout.close()
        proc.stderr.close()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_command_line_tcp(process, sig):
    proc = process("--listen", "tcp://127.0.0.1:0")
    line = read_stdout_line(proc)
    m = re.fullmatch(r"simulator listening on (tcp://127\.0\.0\.1:(\d+))", line)
    assert m, f"unexpected first line: {line!r}"
    assert int(m.group(2)) != 0
    client = TcpClient(m.group(1))
    try:
        assert client.ask("PING") == ["PONG"]
        client.send_line("GO 100")
        assert client.read_lines(100, skip=TELEMETRY)[-1].startswith("t=100 ")
    finally:
        client.close()
    proc.send_signal(sig)
    assert proc.wait(5) == 0
    assert proc.stderr.read() == b""


def test_command_line_udp(process):
    proc = process("--listen", "udp://127.0.0.1:0", "--interval", "0")
    m = re.fullmatch(r"simulator listening on (udp://127\.0\.0\.1:\d+)", read_stdout_line(proc))
    assert m
    client = UdpClient(m.group(1))
    try:
        assert client.ask("PING") == ["PONG"]
    finally:
        client.close()
    proc.terminate()
    assert proc.wait(5) == 0


@pytest.mark.parametrize("listen", [
    "ftp://127.0.0.1:1",
    "tcp://127.0.0.1",
    "tcp://127.0.0.1:http",
    "tcp://127.0.0.1:99999",
    "udp://:5",
    "127.0.0.1:2323",
])
def test_command_line_bad_listen_exits_2(listen):
    proc = subprocess.run(
        [sys.executable, "-m", "gateway.simulator", "--listen", listen],
        cwd=ROOT, capture_output=True, timeout=20,
    )
    assert proc.returncode == 2
    assert proc.stdout == b""
    err = proc.stderr.decode()
    assert "--listen" in err and err.count("\n") <= 3, err


def test_command_line_needs_listen():
    proc = subprocess.run([sys.executable, "-m", "gateway.simulator"], cwd=ROOT, capture_output=True, timeout=20)
    assert proc.returncode == 2
    assert b"--listen" in proc.stderr
