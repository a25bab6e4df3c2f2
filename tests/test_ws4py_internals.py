"""The ws4py 0.6.0 internals the gateway relies on: these fail if an upgrade changes one.

Each section names the module that relies on what it tests; the module's docstring says
why. Only what is relied on is tested here, not ws4py's behaviour in general.
"""

from __future__ import annotations

import struct

import pytest
from ws4py import messaging, streaming

KEY = b"\x0f\xa5\x5a\xf0"


def mask(data: bytes) -> bytes:
    return bytes(b ^ KEY[i & 3] for i, b in enumerate(data))


def frame(opcode: int, payload: bytes = b"", *, fin: bool = True, masked: bool = True, rsv: int = 0,
          length: int | None = None) -> bytes:
    n = len(payload) if length is None else length
    b0 = (0x80 if fin else 0) | rsv | opcode
    m = 0x80 if masked else 0
    if n < 126:
        head = bytes((b0, m | n))
    elif n < 65536:
        head = struct.pack("!BBH", b0, m | 126, n)
    else:
        head = struct.pack("!BBQ", b0, m | 127, n)
    return head + (KEY + mask(payload) if masked else payload)


class Parser:
    """A Stream driven the way gateway/wsframes.py drives it."""

    def __init__(self) -> None:
        self.stream = streaming.Stream()
        self.gen = self.stream.receiver()  # kept: ws4py cleans the Stream up when it is collected
        self.need = next(self.gen)
        self.asks = [self.need]

    def send(self, data: bytes) -> None:
        pos = 0
        while pos < len(data):
            take = min(self.need, len(data) - pos)
            self.need = self.gen.send(data[pos:pos + take])
            self.asks.append(self.need)
            pos += take


# == Stream (gateway/wsframes.py) ========================================================


def test_stream_defaults_expect_masked_frames():
    stream = streaming.Stream()
    assert stream.expect_masking is True
    assert stream.message is None and stream.pings == [] and stream.pongs == [] and stream.errors == []
    assert stream.has_message is False


@pytest.mark.parametrize("payload, masked, asks", [
    (b"abc", True, [1, 1, 4, 3, 1]),
    (b"x" * 200, True, [1, 1, 2, 4, 200, 1]),
    (b"x" * 70000, True, [1, 1, 8, 4, 70000, 1]),
    (b"", True, [1, 1, 4, 1]),
    (b"abc", False, [1, 1, 3, 1]),
    (b"", False, [1, 1, 1]),
], ids=["7-bit", "16-bit", "64-bit", "empty", "unmasked", "unmasked empty"])
def test_receiver_asks_header_pieces_then_the_payload_then_1(payload, masked, asks):
    parser = Parser()
    parser.send(frame(0x2, payload, masked=masked))
    assert parser.asks == asks
    # processed after its last piece, before the next ask
    if masked or not payload:  # ws4py checks the mask only when there is a payload
        assert parser.stream.has_message and parser.stream.message.data == payload
    else:
        assert [e.code for e in parser.stream.errors] == [1002]


def test_bytes_past_the_payload_end_up_in_it():
    """Why wsframes feeds exactly what is asked: a bigger chunk corrupts the frame and loses the next."""
    parser = Parser()
    data = frame(0x2, b"abc") + frame(0x2, b"de")
    parser.send(data[:6])
    assert parser.need == 3
    parser.need = len(data) - 6  # send the rest in one piece
    parser.send(data[6:])
    assert parser.stream.message.data != b"abc"


@pytest.mark.parametrize("data, header_bytes", [
    (frame(0x1, b"x", rsv=0x40), 1),
    (frame(0x1, b"x", rsv=0x10), 1),
    (frame(0x3, b"x"), 1),
    (frame(0xB, b"x"), 1),
    (frame(0x9, b"x", fin=False), 1),
    (frame(0x9, b"x" * 126), 2),
    (frame(0x8, b"x" * 200), 2),
    (frame(0x2, length=1 << 63), 10),
], ids=["rsv1", "rsv3", "opcode 3", "opcode 0xB", "fragmented ping", "ping of 126", "close of 200",
        "64-bit top bit"])
def test_header_errors_are_1002_on_the_header_bytes(data, header_bytes):
    parser = Parser()
    parser.send(data[:header_bytes - 1])
    assert parser.stream.errors == []
    parser.send(data[header_bytes - 1:header_bytes])
    errors = parser.stream.errors
    assert len(errors) == 1 and isinstance(errors[0], messaging.CloseControlMessage)
    assert errors[0].code == 1002 and isinstance(errors[0].reason, (str, bytes))


def test_invalid_utf8_in_a_text_fragment_is_1007():
    parser = Parser()
    parser.send(frame(0x1, b"ok", fin=False))
    assert parser.stream.errors == []
    parser.send(frame(0x0, b"\xff", fin=False))
    assert [e.code for e in parser.stream.errors] == [1007]


def test_fragments_extend_one_message_until_fin():
    parser = Parser()
    stream = parser.stream
    parser.send(frame(0x1, "h\xe9".encode()[:2], fin=False))
    assert isinstance(stream.message, messaging.TextMessage)
    assert stream.message.completed is False and stream.has_message is False
    assert stream.message.is_binary is False and stream.message.data == b"h\xc3"
    parser.send(frame(0x9, b"ping!"))
    assert [type(p) for p in stream.pings] == [messaging.PingControlMessage]
    assert stream.pings[0].data == b"ping!" and isinstance(stream.pings[0].data, bytes)
    stream.pings = []
    parser.send(frame(0x0, "h\xe9".encode()[2:]))
    assert stream.has_message and stream.message.completed
    assert stream.message.data == "h\xe9".encode() and isinstance(stream.message.data, bytes)
    stream.message = None  # as wsframes does (and ws4py's WebSocket.process)
    parser.send(frame(0x2, b"\x00\x01"))
    assert isinstance(stream.message, messaging.BinaryMessage)
    assert stream.message.is_binary is True and stream.message.data == b"\x00\x01" and stream.has_message
    stream.message = None
    parser.send(frame(0xA, b""))
    assert [p.data for p in stream.pongs] == [b""] and isinstance(stream.pongs[0], messaging.PongControlMessage)
    assert stream.errors == [] and stream.message is None


def test_a_new_message_after_a_completed_one_that_was_cleared():
    parser = Parser()
    parser.send(frame(0x1, b"a"))
    parser.stream.message = None
    parser.send(frame(0x1, b"b", fin=False) + frame(0x0, b"c"))
    assert parser.stream.message.data == b"bc" and parser.stream.errors == []


# == Manager, handshake, WebSocket (gateway/manager.py, gateway/wsadapter.py, server.py) ======


def test_websocket_manager_is_a_thread_with_an_epoll_poller_and_a_table():
    import select
    import threading

    from ws4py.manager import EPollPoller, WebSocketManager

    m = WebSocketManager()
    try:
        assert isinstance(m, threading.Thread)
        assert isinstance(m.poller, EPollPoller)
        assert isinstance(m.poller.poller, select.epoll)  # Manager registers its own fds on it
        assert m.websockets == {} and m.running is False
        assert hasattr(m.lock, "acquire")
        assert len(m) == 0 and list(iter(m)) == []
    finally:
        m.poller.release()


def test_the_wsgi_server_hands_a_new_websocket_to_manager_add():
    """After the 101, ws4py's handler calls server.link_websocket_to_server(ws), which
    calls server.manager.add(ws): Manager.add() is where the loop takes the socket over."""
    from ws4py.server.wsgirefserver import WebSocketWSGIHandler, WSGIServer

    added = []

    class FakeManager:
        def add(self, ws):
            added.append(ws)

    server = WSGIServer.__new__(WSGIServer)  # not bound: only the method is under test
    server.manager = FakeManager()
    server.link_websocket_to_server("ws")
    assert added == ["ws"]
    import inspect

    assert "link_websocket_to_server" in inspect.getsource(WebSocketWSGIHandler.finish_response)


def test_the_wsgi_application_builds_the_handler_class_with_sock_protocols_extensions_environ():
    from ws4py.server.wsgiutils import WebSocketWSGIApplication

    made = []

    class Handler:
        def __init__(self, sock, protocols, extensions, environ):
            made.append((sock, protocols, extensions, environ))

    app = WebSocketWSGIApplication(protocols=["json"], handler_cls=Handler)
    environ = {"gateway.client": "c"}
    ws = app.make_websocket("sock", ["json"], [], environ)
    assert environ["ws4py.websocket"] is ws
    assert made == [("sock", ["json"], [], {"gateway.client": "c"})]  # a copy of the environ


def test_websocket_init_sets_the_attributes_the_adapter_uses():
    import socket

    from ws4py.websocket import WebSocket

    a, b = socket.socketpair()
    try:
        ws = WebSocket(a, protocols=["json"], extensions=[], environ={"k": 1})
        assert ws.sock is a and ws.protocols == ["json"] and ws.environ == {"k": 1}
        assert isinstance(ws.stream, streaming.Stream)  # replaced by None: wsframes parses
    finally:
        a.close()
        b.close()


def test_wsgiref_server_close_would_close_all_through_the_manager():
    """Gateway.shutdown() deletes server.manager before server_close(): ws4py's would
    otherwise call manager.close_all() (blocking sends) and join the loop again."""
    import inspect

    from ws4py.server.wsgirefserver import WSGIServer

    source = inspect.getsource(WSGIServer.server_close)
    assert "hasattr(self, 'manager')" in source and "close_all" in source
