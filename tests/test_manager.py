"""The gateway's manager loop (gateway/manager.py): device sockets watched beside clients."""

from __future__ import annotations

import socket
import struct
import threading

import pytest
from conftest import wait_for

from gateway.manager import Manager


@pytest.fixture
def manager():
    m = Manager()
    m.start()
    yield m
    m.stop()
    m.join(5)
    assert not m.is_alive(), "the manager loop did not end"


def test_a_watched_socket_is_read_on_the_loop_until_its_callback_says_no(manager):
    a, b = socket.socketpair()
    a.setblocking(False)
    got, threads = [], []

    def on_readable() -> bool:
        threads.append(threading.current_thread().name)
        got.append(a.recv(100))
        return got[-1] != b"last"

    try:
        assert manager.watch(a.fileno(), on_readable)
        b.send(b"one")
        wait_for(lambda: got == [b"one"], what="the first read")
        b.send(b"last")
        wait_for(lambda: got == [b"one", b"last"], what="the second read")
        wait_for(lambda: a.fileno() not in manager._readers, what="unwatched after a False")
        b.send(b"unread")  # nobody reads this now
        assert threads == ["WebSocketManager", "WebSocketManager"]
        assert a.recv(100) == b"unread"
    finally:
        a.close()
        b.close()


def test_unwatch_with_a_callback_leaves_a_newer_watch_alone(manager):
    a, b = socket.socketpair()
    try:
        def first() -> bool:
            return True

        def second() -> bool:
            return True

        assert manager.watch(a.fileno(), first)
        manager.unwatch(a.fileno())
        assert manager.watch(a.fileno(), second)  # the owner watched again meanwhile
        manager.unwatch(a.fileno(), first)  # a late unwatch of the old watch: no effect
        assert manager._readers.get(a.fileno()) is second
        manager.unwatch(a.fileno(), second)
        assert a.fileno() not in manager._readers
    finally:
        a.close()
        b.close()


def test_watch_is_refused_once_the_loop_has_ended():
    m = Manager()
    m.start()
    m.stop()
    m.join(5)
    a, b = socket.socketpair()
    try:
        assert not m.watch(a.fileno(), lambda: True)
    finally:
        a.close()
        b.close()


def test_a_client_reset_right_after_its_handshake_is_added_then_dropped(manager):
    """ws4py's add() logged the peer's address and raised when the client had already
    reset the connection (a traceback in the HTTP thread, the client never managed)."""
    from ws4py.websocket import WebSocket

    listener = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(listener.getsockname())
    conn, _ = listener.accept()
    client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    client.close()  # RST

    def reset() -> bool:
        try:
            conn.getpeername()
        except OSError:
            return True
        return False

    try:
        wait_for(reset, what="the reset to arrive")
        ws = WebSocket(conn)
        manager.add(ws)  # raised OSError (ENOTCONN) inside ws4py's add()
        wait_for(lambda: ws.terminated, what="the reset client to be dropped by its first read")
        assert len(manager) == 0
    finally:
        listener.close()
        conn.close()
