"""Bad input from clients, byte by byte on raw sockets; after each, proof that the gateway
still bridges for everyone else, and that it logged a line, not a traceback."""

from __future__ import annotations

import logging
import os
import socket
import struct

import pytest
import websocket
from conftest import wait_for, ws_url

HANDSHAKE = (b"GET /ws/sim HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
             b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")


def raw_client(gw) -> socket.socket:
    sock = socket.create_connection(gw.address, timeout=5)
    sock.sendall(HANDSHAKE)
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(1)
    assert head.startswith(b"HTTP/1.1 101")
    return sock


def frame(opcode: int, payload: bytes, fin: bool = True, mask: bool = True, rsv: int = 0,
          length: int | None = None) -> bytes:
    n = len(payload) if length is None else length
    head = bytes([(0x80 if fin else 0) | (rsv << 4) | opcode])
    mbit = 0x80 if mask else 0
    if n < 126:
        head += bytes([mbit | n])
    elif n < 65536:
        head += bytes([mbit | 126]) + struct.pack("!H", n)
    else:
        head += bytes([mbit | 127]) + struct.pack("!Q", n)
    if not mask:
        return head + payload
    key = os.urandom(4)
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


def close_code(sock: socket.socket) -> int | None:
    """Read frames until the server's close frame; its code (None: closed without one)."""
    buf = b""
    while True:
        try:
            data = sock.recv(65536)
        except (ConnectionResetError, socket.timeout):
            return None
        if not data:
            return None
        buf += data
        while len(buf) >= 2:
            n = buf[1] & 0x7F
            start = 2
            if n == 126:
                n, start = struct.unpack("!H", buf[2:4])[0], 4
            elif n == 127:
                n, start = struct.unpack("!Q", buf[2:10])[0], 10
            if len(buf) < start + n:
                break
            opcode, payload, buf = buf[0] & 0x0F, buf[start:start + n], buf[start + n:]
            if opcode == 0x8:
                return struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else None


@pytest.fixture
def gateway(start_gateway, caplog):
    caplog.set_level(logging.INFO)
    gw = start_gateway(limits={"max_message": 4096})
    healthy = websocket.create_connection(ws_url(gw), timeout=5)
    yield gw
    # The gateway still bridges, for a client that was there and for a new one.
    for ws in (healthy, websocket.create_connection(ws_url(gw), timeout=5)):
        ws.send("PING")
        while (line := ws.recv()) != "PONG":
            assert line == "split", line  # what test_fragmented_message... wrote
        ws.close()
    tracebacks = [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]
    assert not tracebacks, [r.getMessage() for r in tracebacks]


@pytest.mark.parametrize("data, code", [
    (frame(0x1, b"PING", mask=False), 1002),  # clients must mask
    (frame(0x1, b"PING", rsv=4), 1002),  # reserved bit without an extension
    (frame(0x3, b"x"), 1002),  # reserved data opcode
    (frame(0xB, b"x"), 1002),  # reserved control opcode
    (frame(0x9, b"ping", fin=False), 1002),  # fragmented control frame
    (frame(0x9, b"p" * 126), 1002),  # control frame over 125 bytes
    (frame(0x1, b"\xff\xfeinvalid"), 1007),  # invalid UTF-8 in a text frame
    (frame(0x1, b"caf\xc3"), 1007),  # a text message ending mid-character
    (frame(0x1, b"", length=2 ** 62), 1009),  # a header declaring 2^62 bytes
    (frame(0x1, b"x" * 5000), 1009),  # over max_message
    (frame(0x1, b"x" * 3000, fin=False) + frame(0x0, b"y" * 3000), 1009),  # over it in fragments
    (frame(0x0, b"orphan"), 1002),  # a continuation with nothing to continue
    (frame(0x1, b"a", fin=False) + frame(0x1, b"b"), 1002),  # a new message inside a fragmented one
    # Close frames RFC 6455 forbids (5.5.1, 7.4): answered with a close frame 1002, not a hang-up.
    (frame(0x8, b"\x03"), 1002),  # a 1-byte payload
    (frame(0x8, struct.pack("!H", 999)), 1002),  # 0-999: not used
    (frame(0x8, struct.pack("!H", 1004)), 1002),  # reserved
    (frame(0x8, struct.pack("!H", 1005)), 1002),  # "no code": never on the wire
    (frame(0x8, struct.pack("!H", 1006)), 1002),  # "abnormal": never on the wire
    (frame(0x8, struct.pack("!H", 1015)), 1002),  # "TLS failure": never on the wire
    (frame(0x8, struct.pack("!H", 1016)), 1002),  # 1016-2999 unassigned
    (frame(0x8, struct.pack("!H", 2999)), 1002),
    (frame(0x8, struct.pack("!H", 1000) + b"\xff"), 1007),  # a reason that is not UTF-8
], ids=["unmasked", "rsv", "opcode-3", "opcode-B", "fragmented-ping", "long-ping", "bad-utf8", "cut-utf8",
        "2^62", "oversize", "oversize-fragments", "orphan-continuation", "nested-message",
        "close-1-byte", "close-999", "close-1004", "close-1005", "close-1006", "close-1015", "close-1016",
        "close-2999", "close-bad-reason"])
def test_malformed_frames_are_closed_with_the_right_code(gateway, caplog, data, code):
    sock = raw_client(gateway)
    address = "%s:%d" % sock.getsockname()
    sock.sendall(data)
    assert close_code(sock) == code
    sock.close()
    assert gateway.links["sim"].counters.lines_out == 0
    # One line that names the client, at INFO or WARNING.
    said = [r for r in caplog.records if address in r.getMessage() and r.name.startswith("gateway")]
    assert len(said) == 1 and said[0].levelno in (logging.INFO, logging.WARNING), [r.getMessage() for r in said]


def test_fragmented_message_within_limits_is_one_line(gateway):
    sock = raw_client(gateway)
    sock.sendall(frame(0x1, b"EC", fin=False) + frame(0x9, b"ping-in-between") + frame(0x0, b"HO split", fin=True))
    wait_for(lambda: gateway.links["sim"].counters.lines_out == 1, what="the line to be written")
    sock.sendall(frame(0x8, struct.pack("!H", 1000)))
    assert close_code(sock) == 1000
    sock.close()


@pytest.mark.parametrize("garbage", [
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 40 + b"\r\n\r\n",  # a TLS hello to plain HTTP
    b"NONSENSE\r\n\r\n",
    b"GET / HTTP/1.1\r\n" + b"X-Long: " + b"a" * 70000 + b"\r\n\r\n",
    b"\x00" * 1000 + b"\r\n\r\n",
], ids=["tls-hello", "nonsense", "long-header", "zeros"])
def test_garbage_before_the_handshake_gets_an_error_status_or_a_hang_up(gateway, garbage):
    sock = socket.create_connection(gateway.address, timeout=5)
    try:
        sock.sendall(garbage)
        answer = sock.recv(100)
    except ConnectionResetError:
        answer = b""
    # An error status, an error page (http.server answers a request line without a
    # version the HTTP/0.9 way: the page alone), or a hang-up.
    assert answer == b"" or (answer.startswith(b"HTTP/1.") and int(answer[9:12]) >= 400) or b"Error" in answer
    sock.close()


def test_abrupt_disconnects_mid_frame(gateway):
    for cut in (1, 2, 6, 10):
        sock = raw_client(gateway)
        sock.sendall(frame(0x1, b"ECHO abrupt")[:cut])
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # RST on close
        sock.close()
    wait_for(lambda: gateway.client_count() == 1, what="the cut clients to be forgotten")
    assert gateway.links["sim"].counters.lines_out == 0
