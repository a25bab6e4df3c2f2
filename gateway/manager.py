"""The one I/O loop: ws4py's manager thread, owner of every socket with a descriptor.

ws4py's `WebSocketManager` is one thread that polls every client socket. Here it is the
only thread that reads, writes and closes client sockets, and the only one that reads
and writes every device with a descriptor (TCP, tcp-listen, UDP, serial ports and ptys).
Other threads never touch those sockets: they hand work to the loop.

    loop.call(fn, *args)           any thread: run fn(*args) on the loop, in call order
    loop.call_later(s, fn, *args)  loop thread: a timer; .cancel() it
    loop.register(fd, handler, ev) loop thread: handler.on_io(events) when fd is ready
    loop.mark_dirty(obj)           loop thread: obj.flush() at the end of this round

One round of the loop: wait in epoll (until the next timer, or for ever when none is
due: an idle gateway sleeps), handle the ready descriptors, run the calls handed over
by other threads, run the timers that are due, then `flush()` everything marked dirty:
the frames queued for a client during the round go out in one send, the lines queued for
a device in one write. Nothing on the loop blocks: writes are non-blocking and keep their
unsent tail (EPOLLOUT while one is pending), opening a device happens on a worker thread
(gateway/workers.py) and is handed back.

What it uses of ws4py (see also wsadapter.py): `WebSocketManager` as the thread, with
its `websockets` dict (fd -> WebSocket), `lock`, `running`, `poller.poller` (the
`select.epoll` object of its `EPollPoller`), `__len__`/`__iter__`. `add()` is what ws4py's
`WSGIServer.link_websocket_to_server()` calls on the HTTP thread once the handshake's
101 is written: here it hands the socket over to the loop. ws4py's own `run()` loop,
`remove()`, `close_all()` and `broadcast()` are not used (they write with blocking,
unlocked `sendall` calls from whatever thread calls them).
"""

from __future__ import annotations

import heapq
import itertools
import logging
import os
import select
import threading
import time
from collections import deque
from typing import Callable, Protocol

from ws4py.manager import WebSocketManager

log = logging.getLogger(__name__)

EPOLLIN, EPOLLOUT = select.EPOLLIN, select.EPOLLOUT
EPOLLERR, EPOLLHUP = select.EPOLLERR, select.EPOLLHUP


class Handler(Protocol):
    def on_io(self, events: int) -> None: ...


class Flushable(Protocol):
    dirty: bool

    def flush(self) -> None: ...


class Timer:
    __slots__ = ("when", "fn", "args", "cancelled")

    def __init__(self, when: float, fn: Callable, args: tuple):
        self.when = when
        self.fn = fn
        self.args = args
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class LoopStats:
    """Counters of the loop's clients, for /metrics."""

    def __init__(self):
        self.frames_sent = 0
        self.overflows = 0  # clients closed with 1008 for not reading
        self.keepalive_drops = 0  # clients closed for not answering a ping


class Manager(WebSocketManager):
    def __init__(self):
        super().__init__()
        self.name = "WebSocketManager"
        self._epoll: select.epoll = self.poller.poller  # ws4py's EPollPoller keeps it there
        self._handlers: dict[int, Handler] = {}  # device and listener descriptors
        self._calls: deque[tuple[Callable, tuple]] = deque()
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._epoll.register(self._wake_r, EPOLLIN)
        self._signalled = False
        self._timers: list[tuple[float, int, Timer]] = []
        self._seq = itertools.count()
        self._dirty: list[Flushable] = []
        self._stopping = False
        self._stop_deadline = 0.0
        self._on_stop: list[Callable[[], None]] = []
        self._ident = -1  # the loop thread's, once it runs
        # The frames of one device read, joined once for all its clients (wsadapter): the
        # list they were joined from (kept alive here, so `is` cannot match a new one).
        self.joined_for: list[bytes] | None = None
        self.joined = b""
        self.stats = LoopStats()

    # -- any thread -------------------------------------------------------------------

    def call(self, fn: Callable, *args) -> bool:
        """Run `fn(*args)` on the loop thread soon; False if the loop has ended."""
        if not self.running:
            return False
        self._calls.append((fn, args))
        if not self._signalled:
            self._signalled = True
            try:
                os.write(self._wake_w, b"x")
            except (BlockingIOError, OSError):
                pass  # full of wake-ups already, or closed at the very end
        return True

    def in_loop(self) -> bool:
        return threading.get_ident() == self._ident

    def add(self, websocket) -> None:
        """ws4py's HTTP thread, after the 101: the socket is the loop's from here."""
        if not self.call(self._adopt, websocket):
            websocket.abandon()

    # -- loop thread only ------------------------------------------------------------

    def call_later(self, delay: float, fn: Callable, *args) -> Timer:
        timer = Timer(time.monotonic() + delay, fn, args)
        heapq.heappush(self._timers, (timer.when, next(self._seq), timer))
        return timer

    def register(self, fd: int, handler: Handler, events: int = EPOLLIN) -> None:
        self._handlers[fd] = handler
        try:
            self._epoll.register(fd, events)
        except FileExistsError:
            self._epoll.modify(fd, events)

    def modify(self, fd: int, events: int) -> None:
        try:
            self._epoll.modify(fd, events)
        except (OSError, ValueError):
            pass

    def unregister(self, fd: int) -> None:
        if self._handlers.pop(fd, None) is not None or fd in self.websockets:
            try:
                self._epoll.unregister(fd)
            except (OSError, ValueError):
                pass

    def mark_dirty(self, obj: Flushable) -> None:
        if not obj.dirty:
            obj.dirty = True
            self._dirty.append(obj)

    def _adopt(self, ws) -> None:
        fd = ws.sock.fileno() if ws.sock is not None else -1
        if fd < 0 or self._stopping:
            ws.abandon()
            return
        with self.lock:
            self.websockets[fd] = ws
        try:
            self._epoll.register(fd, EPOLLIN)
        except FileExistsError:
            self._epoll.modify(fd, EPOLLIN)
        ws.adopted(self)

    def forget(self, fd: int, ws) -> None:
        """A client socket is about to be closed (wsadapter.ClientSocket._close)."""
        with self.lock:
            if self.websockets.get(fd) is ws:
                del self.websockets[fd]
        try:
            self._epoll.unregister(fd)
        except (OSError, ValueError):
            pass

    def clients(self) -> list:
        return list(self.websockets.values())

    # -- stopping --------------------------------------------------------------------

    def on_stop(self, fn: Callable[[], None]) -> None:
        """Run `fn()` on the loop when it starts stopping (devices register here)."""
        self._on_stop.append(fn)

    def stop(self, timeout: float = 2.0) -> None:
        """Any thread: close every client with 1001 and end the loop, waiting at most
        `timeout` for clients to take their close frames."""
        if not self.call(self._begin_stop, timeout):
            self.running = False

    def _begin_stop(self, timeout: float) -> None:
        if self._stopping:
            return
        self._stopping = True
        self._stop_deadline = time.monotonic() + timeout
        for fn in self._on_stop:
            self._guard(fn, ())
        for ws in self.clients():
            self._guard(ws.close, (1001, "gateway shutting down"))

    # -- the thread ------------------------------------------------------------------

    def start(self) -> None:
        self.running = True  # before the thread runs: add() and call() may come first
        super().start()

    def run(self) -> None:
        self._ident = threading.get_ident()
        try:
            self._loop()
        except Exception:
            log.exception("the I/O loop failed")
        finally:
            self.running = False
            for ws in self.clients():
                self._guard(ws.abandon, ())
            with self.lock:
                self.websockets.clear()
            self._handlers.clear()
            self._calls.clear()
            self.poller.release()
            os.close(self._wake_r)
            os.close(self._wake_w)

    def _loop(self) -> None:
        poll = self._epoll.poll
        sockets = self.websockets
        handlers = self._handlers
        calls = self._calls
        timers = self._timers
        wake_r = self._wake_r
        monotonic = time.monotonic
        while True:
            if calls or self._dirty:
                timeout = 0
            elif timers:
                timeout = timers[0][0] - monotonic()
                if timeout < 0:
                    timeout = 0
            else:
                timeout = -1
            if self._stopping:
                if not sockets or time.monotonic() >= self._stop_deadline:
                    return
                timeout = min(timeout if timeout >= 0 else 1.0, max(0.0, self._stop_deadline - time.monotonic()))
            try:
                events = poll(timeout)
            except InterruptedError:
                continue
            for fd, ev in events:
                handler = sockets.get(fd) or handlers.get(fd)
                if handler is not None:
                    try:
                        handler.on_io(ev)
                    except Exception:
                        log.exception("error in %r on the I/O loop", handler)
                elif fd == wake_r:
                    try:
                        while os.read(wake_r, 4096):
                            pass
                    except BlockingIOError:
                        pass
                    # Only now: a call() that saw the flag still set, from before the
                    # drain, is in `calls` already and runs in this round. Cleared before
                    # the drain, a call() in between could set it, have its byte drained
                    # here, and leave it set with no byte: the next call() would then
                    # not wake the loop.
                    self._signalled = False
            if calls:
                for _ in range(len(calls)):
                    fn, args = calls.popleft()
                    self._guard(fn, args)
            if timers and timers[0][0] <= (now := monotonic()):
                while timers and timers[0][0] <= now:
                    timer = heapq.heappop(timers)[2]
                    if not timer.cancelled:
                        self._guard(timer.fn, timer.args)
            dirty = self._dirty
            while dirty:  # usually empty: writes went out at once
                self._dirty = []
                for obj in dirty:
                    obj.dirty = False
                    try:
                        obj.flush()
                    except Exception:
                        log.exception("error in %r's flush on the I/O loop", obj)
                dirty = self._dirty

    @staticmethod
    def _guard(fn: Callable, args: tuple) -> None:
        try:
            fn(*args)
        except Exception:
            log.exception("error in %s on the I/O loop", getattr(fn, "__qualname__", fn))
