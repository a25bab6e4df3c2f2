"""One corpus of awkward lines, sent as raw bytes through one real gateway to the simulator,
the sketch (ESP8266 host emulation, TCP server) and the MicroPython script (unix port,
TCP server): the same answers from all three, apart from the differences that
firmware_notes/protocol.md documents (DIFFERENCES below)."""

from __future__ import annotations

import pytest
import websocket
from conftest import wait_for, ws_url
from firmware_build import firmware_hosts
from firmware_run import MAX_LINE, Board

HOSTS = firmware_hosts()
pytestmark = pytest.mark.skipif(HOSTS is None, reason="no ../shared/firmware-hosts: the firmware is not built here")

CORPUS = [
    # empty, and whitespace of every kind
    b"", b" ", b"\t", b"\x0b\x0c", b" \tPING\t ", b"PING\xc2\xa0", b"\xe2\x80\x83PING", b"PING\xe3\x80\x80",
    b"\x1cPING", b"GO\t3", b"PING\rPING",
    # case
    b"ping", b"p\xc4\xb1ng", b"led off", b"LED \xc3\xb6n", b"GET Led", b"SET INTERVAL 0",
    # NUL
    b"\x00", b"PING\x00", b"PI\x00NG", b"ECHO a\x00b",
    # ECHO and text that is not ASCII, or not UTF-8
    b"ECHO", b"ECHO ", b"ECHO  two  spaces ", b"ECHO\ttab", b"ECHO \xc3\xbcn\xc3\xafc\xc3\xb6d\xc3\xa9 \xe2\x9c\x93",
    b"ECHO \xff\xfe", b"ECHO \xed\xa0\x80", b"ECHO \xc0\x80", b"ECHO \xf4\x90\x80\x80", b"ECHO \xe2\x82",
    b"HELLO \xff",
    # commands with arguments
    b"LED ON", b"LED ON\xc2\xa0", b"LED  on ", b"LED ONN", b"GET led", b"GET led\xc2\xa0", b"GET pressure",
    b"PING x", b"HELLO", b"ERR", b"OK LED ON",
    # numbers of every odd form
    b"GO 0", b"GO 3", b"GO +2", b"GO 007", b"GO -0", b"GO -1", b"GO 1.5", b"GO 1_0", b"GO \xd9\xa3",
    b"GO \xef\xbc\x91", b"GO 10000001", b"GO 99999999999999999999", b"GO 0x10", b"GO 1e3", b"GO ", b"GO 1 2",
    b"SET", b"SET interval", b"SET  interval   0 ", b"SET interval .", b"SET interval e3", b"SET interval 1e",
    b"SET interval 1_0", b"SET interval \xd9\xa1", b"SET interval inf", b"SET interval nan", b"SET interval -1",
    b"SET interval 1e999", b"SET interval -0", b"SET interval 0x10", b"SET interval +.5e9", b"SET interval 0",
    b"SET interval\xe2\x80\x830", b"SET volume 3",
    # length
    b"ECHO " + b"x" * (MAX_LINE - 5), b"ECHO " + b"x" * (MAX_LINE - 4), b"X" * 5000, b"PING",
]


def expected(device: str, line: bytes, simulator_answer):
    """DIFFERENCES: what protocol.md documents, as a function of the simulator's answer."""
    if device != "simulator" and len(line) > MAX_LINE:
        return ["ERR line too long"]  # the firmware's line buffer; the simulator has none
    if device == "sketch" and b"\x00" in line:
        return None  # the sketch drops NUL bytes: compare with the line without them
    return simulator_answer


class RawClient:
    """websocket-client in binary mode: raw bytes to the device, its lines back (all three
    end them with LF), decoded as a reader would (invalid UTF-8 as U+FFFD)."""

    def __init__(self, gw, device: str):
        self.ws = websocket.create_connection(ws_url(gw, device, format="binary"), timeout=10)
        self.buffer = b""
        self.n = 0

    def ask(self, line: bytes) -> list[str]:
        """Send `line`, then an ECHO marker; the lines answered before the marker."""
        self.n += 1
        marker = f"end-{self.n}"
        self.ws.send_binary(line + b"\nECHO " + marker.encode() + b"\n")
        answers = []
        while True:
            while b"\n" not in self.buffer:
                self.buffer += self.ws.recv()
            raw, self.buffer = self.buffer.split(b"\n", 1)
            text = raw.decode("utf-8", "replace")
            if text == marker:
                return answers
            answers.append(text)


def test_one_corpus_three_devices(tmp_path, start_gateway):
    sketch = Board.sketch(HOSTS, "tcp-server", tmp_path).start()
    micropython = Board.micropython(HOSTS, "tcp-server", tmp_path).start()
    try:
        gw = start_gateway(devices=["simulator=sim://?interval=0", f"sketch={sketch.url}",
                                    f"micropython={micropython.url}"], wait_connected=False)
        for name in ("simulator", "sketch", "micropython"):
            wait_for(lambda: gw.links[name].wait_connected(0.1), 15, what=f"{name} connected")
        clients = {name: RawClient(gw, name) for name in ("simulator", "sketch", "micropython")}
        for client in clients.values():
            client.ask(b"SET interval 0")  # the firmware's telemetry is on from the start
        problems = []
        seen = {}
        for line in CORPUS:
            answers = seen[line] = {name: client.ask(line) for name, client in clients.items()}
            for name in ("sketch", "micropython"):
                want = expected(name, line, answers["simulator"])
                if want is None:
                    want = clients["simulator"].ask(line.replace(b"\x00", b""))
                if answers[name] != want:
                    problems.append(f"{line[:60]!r}: {name} {answers[name]!r:.200} != {want!r:.200}")
        assert not problems, "\n".join(problems)
        # The answers compared are the real ones (a client that heard nothing would agree too)
        assert seen[b"PING"]["sketch"] == seen[b"PING\rPING"]["micropython"][1:] == ["PONG"]
        assert seen[b"PING\xc2\xa0"]["simulator"] == ["ERR unknown command: PING\xa0"]
        assert seen[b"ECHO \xed\xa0\x80"]["micropython"] == ["\ufffd" * 3]
        assert seen[b"PI\x00NG"]["sketch"] == ["PONG"]
        assert seen[b"GO 3"]["sketch"] == ["t=1 v=0.0100", "t=2 v=0.0200", "t=3 v=0.0300"]
    finally:
        sketch.stop()
        micropython.stop()
