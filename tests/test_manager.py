"""The I/O loop (gateway/manager.py): calls handed over, timers, descriptors, stopping,
and that an idle loop sleeps."""

from __future__ import annotations

import socket
import threading
import time

import pytest
from conftest import wait_for

from gateway.manager import EPOLLIN, Manager


@pytest.fixture
def manager():
    m = Manager()
    m.start()
    yield m
    m.stop(1.0)
    m.join(5)
    assert not m.is_alive(), "the loop did not end"


def asleep(manager) -> bool:
    """The loop thread is blocked (in epoll_wait), as /proc says."""
    import os

    with open(f"/proc/{os.getpid()}/task/{manager.native_id}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0] == "S"


def test_calls_run_on_the_loop_thread_in_order(manager):
    seen = []
    done = threading.Event()
    for i in range(100):
        manager.call(lambda i=i: seen.append((i, threading.current_thread().name)))
    manager.call(done.set)
    assert done.wait(5)
    assert [i for i, _ in seen] == list(range(100))
    assert {name for _, name in seen} == {"WebSocketManager"}


def test_timers_fire_in_time_order_and_a_cancelled_one_never(manager):
    fired = []
    done = threading.Event()

    def arm():
        manager.call_later(0.15, fired.append, "late")
        cancelled = manager.call_later(0.05, fired.append, "cancelled")
        manager.call_later(0.02, fired.append, "early")
        manager.call_later(0.2, done.set)
        cancelled.cancel()

    manager.call(arm)
    assert done.wait(5)
    assert fired == ["early", "late"]


def test_a_registered_descriptor_is_served_on_the_loop(manager):
    a, b = socket.socketpair()
    got = []
    threads = set()

    class Reader:
        def on_io(self, events):
            threads.add(threading.current_thread().name)
            data = a.recv(100)
            got.append(data)

    manager.call(manager.register, a.fileno(), Reader(), EPOLLIN)
    b.sendall(b"one")
    wait_for(lambda: got == [b"one"], what="the first read")
    b.sendall(b"two")
    wait_for(lambda: got == [b"one", b"two"], what="the second read")
    manager.call(manager.unregister, a.fileno())
    done = threading.Event()
    manager.call(done.set)
    assert done.wait(5)
    b.sendall(b"three")
    time.sleep(0.1)  # nothing may come: a bounded look for a read that must not happen
    assert got == [b"one", b"two"]
    assert threads == {"WebSocketManager"}
    a.close()
    b.close()


def test_an_error_in_a_callback_is_logged_and_the_loop_goes_on(manager, caplog):
    done = threading.Event()
    manager.call(lambda: 1 / 0)
    manager.call(done.set)
    assert done.wait(5)
    assert manager.is_alive()
    assert "ZeroDivisionError" in caplog.text


def test_an_idle_loop_sleeps(manager):
    """No timer, nothing to read: the loop thread sleeps in epoll_wait and uses no CPU."""
    import os

    native = manager.native_id
    done = threading.Event()
    manager.call(done.set)
    assert done.wait(5)

    def cpu_ticks() -> int:
        with open(f"/proc/{os.getpid()}/task/{native}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])  # utime + stime

    def switches() -> int:
        with open(f"/proc/{os.getpid()}/task/{native}/status") as f:
            for line in f:
                if line.startswith("voluntary_ctxt_switches"):
                    return int(line.split()[1])
        raise AssertionError("no voluntary_ctxt_switches")

    # The round that ran done.set() may still be finishing: wait until the thread is
    # blocked, so that going to sleep is not counted as a wake-up.
    wait_for(lambda: asleep(manager) and asleep(manager), what="the loop to sleep")
    before = switches()
    ticks = cpu_ticks()
    time.sleep(1.0)  # the measurement window: the loop must not wake in it
    assert switches() - before == 0, "the idle loop woke up"
    assert cpu_ticks() - ticks == 0


def test_call_after_the_loop_ended_is_refused():
    m = Manager()
    m.start()
    m.stop(0.5)
    m.join(5)
    assert not m.is_alive()
    assert m.call(print) is False


def test_a_client_reset_right_after_its_handshake_is_added_then_dropped(manager):
    """ws4py's add() logged the peer's address and raised when the client had already
    reset the connection (a traceback in the HTTP thread, the client never managed).
    Here the socket is handed to the loop, whose first read finds the reset."""
    import struct

    from gateway.client import Options

    listener = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(listener.getsockname())
    conn, _ = listener.accept()
    client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    client.close()  # RST

    class Registry:
        def __init__(self):
            self.forgotten = threading.Event()

        def adopt(self, ws):
            pass

        def forget(self, ws):
            self.forgotten.set()

    class FakeClient:  # the protocol side is not under test here
        peer, id, link = "test", 1, None
        options = Options()

        def opened(self, ws):
            pass

        def closed(self):
            pass

    try:
        from gateway.wsadapter import ClientSocket

        registry = Registry()
        ws = ClientSocket(conn, environ={"gateway.client": FakeClient(), "gateway.queue": 10,
                                         "gateway.registry": registry, "gateway.max_message": 100})
        manager.add(ws)
        assert registry.forgotten.wait(5), "the reset client was not dropped"
        wait_for(lambda: len(manager) == 0, what="the loop to let it go")
    finally:
        listener.close()


def test_a_call_after_a_burst_of_calls_from_many_threads_still_wakes_the_loop(manager):
    """Calls race the loop's drain of its wake-up pipe; whatever the interleaving, a
    later call() must wake a loop that went idle (it once stayed asleep until some
    other event came, holding a new client's hello for seconds)."""
    for round_ in range(30):
        done = threading.Barrier(5)
        ran = []

        def burst():
            done.wait()
            for _ in range(300):
                manager.call(ran.append, 1)

        threads = [threading.Thread(target=burst, name=f"test-burst-{i}") for i in range(4)]
        for t in threads:
            t.start()
        done.wait()
        for t in threads:
            t.join(5)
        wait_for(lambda: len(ran) == 1200, 5, what=f"round {round_}: the burst's calls")
        manager.call(lambda: None)
        late = threading.Event()
        wait_for(lambda: asleep(manager), what="the loop to go back to sleep")
        manager.call(late.set)
        assert late.wait(2), f"round {round_}: a call after the burst did not wake the loop"
