"""Everything the gateway sends to WebSocket clients goes through here.

Each client has an `Outbox`: a bounded list of frames that any thread may add to. One
`Sender` thread ("ws-tx") is the only writer of every client socket (ws4py's own
`send()` writes with a bare, unlocked, blocking `sendall`, which lets one stalled client
freeze the thread that calls it and lets two threads interleave their bytes). The Sender
writes without blocking: it joins all queued frames of a client into one `send()`, keeps
the unsent tail, and waits for the socket to become writable again while it serves the
others. So a client that stops reading delays nobody; when its outbox overflows it is
closed with 1008 and counted.

The Sender is also the only thread that closes client sockets, once their last frames
(the close frame) are out or a deadline passed. That keeps a closed descriptor number
from being reused under a thread that still writes to it.
"""

from __future__ import annotations

import logging
import os
import select
import socket
import ssl
import threading
import time
from collections import deque
from contextlib import nullcontext

from . import frames

log = logging.getLogger(__name__)

FINISH_TIMEOUT = 2.0  # seconds a closing client gets to take its last frames
TICK = 0.5  # seconds between housekeeping rounds (keepalive, finish deadlines)


class Outbox:
    """The frames waiting for one client. Any thread may `put`; only the Sender writes."""

    def __init__(self, sock: socket.socket, limit: int, sender: "Sender", label: str):
        self.sock = sock
        self.fd = sock.fileno()
        self.limit = limit
        self.sender = sender
        self.label = label
        self.lock = threading.Lock()
        # A TLS connection must not be used by two threads at once (OpenSSL state): the
        # manager thread's reads and our writes then take this lock. A plain TCP socket
        # is full duplex; one reader and one writer need none.
        self.io_lock = threading.Lock() if isinstance(sock, ssl.SSLSocket) else nullcontext()
        # Guarded by `lock`:
        self.frames: list[bytes] = []
        self.scheduled = False  # in the Sender's ready list or waiting for EPOLLOUT
        self.closing = False  # a close frame is queued: nothing may follow it
        self.finished = False  # the socket is to be closed once the queue is out
        self.dead = False  # overflowed or failed: nothing more is sent
        self.overflow = False
        self.drop_code: int | None = None
        self.drop_reason = ""
        # Sender thread only:
        self.tail = b""
        self.finish_deadline = 0.0
        self.shut = False
        self.closed = False
        # Keepalive (written by the Sender and by the manager thread's pong handler;
        # single attribute stores, no lock needed):
        self.awaiting_pong = False
        self.last_ping = 0.0

    def put(self, data: bytes, close: bool = False) -> bool:
        return self.put_many((data,), close)

    def put_many(self, items, close: bool = False) -> bool:
        """Queue frames; False when the client is closing, dead or just overflowed."""
        with self.lock:
            if self.closing or self.dead:
                return False
            if len(self.frames) + len(items) > self.limit:
                self.dead = self.overflow = True
                self.drop_code, self.drop_reason = 1008, "outbound queue overflow"
                self.frames = []
                # Always: the Sender may be waiting for this socket to drain, which a
                # stalled client never does.
                schedule = self.scheduled = True
                result = False
            else:
                self.frames.extend(items)
                if close:
                    self.closing = True
                schedule = not self.scheduled
                self.scheduled = True
                result = True
        if schedule:
            self.sender.schedule(self)
        return result

    def drop(self, code: int, reason: str) -> None:
        """Close this client from any thread: a close frame if it fits, then shutdown."""
        with self.lock:
            if self.dead:
                return
            self.dead = True
            self.drop_code, self.drop_reason = code, reason
            self.frames = []
            schedule = self.scheduled = True
        if schedule:
            self.sender.schedule(self)

    def finish(self) -> None:
        """The connection is over: send what is queued, then close the socket."""
        with self.lock:
            self.finished = True
            schedule = self.scheduled = True  # always: see put_many
        if schedule:
            self.sender.schedule(self)

    @property
    def queued(self) -> int:
        return len(self.frames)


class Sender(threading.Thread):
    """The one thread that writes to (and closes) client sockets."""

    def __init__(self, ping_interval: float = 20.0):
        super().__init__(name="ws-tx")
        self.ping_interval = ping_interval
        self._ready: deque[Outbox] = deque()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._signalled = False
        self._closed = False
        self._epoll = select.epoll()
        self._epoll.register(self._wake_r, select.EPOLLIN)
        self._writable: dict[int, Outbox] = {}  # waiting for EPOLLOUT (Sender only)
        self._finishing: set[Outbox] = set()  # Sender only
        self._lock = threading.Lock()
        self._all: set[Outbox] = set()  # guarded by _lock
        self._stopping = threading.Event()
        self._next_ping = time.monotonic() + ping_interval if ping_interval else float("inf")
        self.overflows = 0
        self.keepalive_drops = 0
        self.frames_sent = 0

    # -- called from any thread -----------------------------------------------------

    def outbox(self, sock: socket.socket, limit: int, label: str) -> Outbox:
        sock.setblocking(False)
        ob = Outbox(sock, limit, self, label)
        with self._lock:
            self._all.add(ob)
        return ob

    def schedule(self, ob: Outbox) -> None:
        if self._closed:
            return
        self._ready.append(ob)
        if not self._signalled:
            self._signalled = True
            try:
                os.write(self._wake_w, b"x")
            except BlockingIOError:
                pass  # the pipe is full of wake-ups already
            except OSError:
                pass  # closed at shutdown

    def outboxes(self) -> list[Outbox]:
        with self._lock:
            return list(self._all)

    def stop(self, timeout: float = 5.0) -> None:
        self._stopping.set()
        if self.ident is not None:
            os.write(self._wake_w, b"x")
            self.join(timeout)
        if self.is_alive():
            log.warning("sender thread did not stop within %.1f s", timeout)
            return
        # Closed here, after the join, and never while a late put() could write to it:
        # a closed descriptor number is soon reused by another socket.
        self._closed = True
        self._epoll.close()
        os.close(self._wake_r)
        os.close(self._wake_w)

    # -- the Sender thread ------------------------------------------------------------

    def run(self) -> None:
        try:
            self._loop()
        finally:
            for ob in self.outboxes():
                self._close(ob)

    def _loop(self) -> None:
        next_tick = time.monotonic() + TICK
        stop_deadline = None
        while True:
            timeout = max(0.0, next_tick - time.monotonic())
            try:
                events = self._epoll.poll(timeout)
            except InterruptedError:
                events = []
            for fd, _ in events:
                if fd == self._wake_r:
                    try:
                        while os.read(self._wake_r, 4096):
                            pass
                    except BlockingIOError:
                        pass
                else:
                    ob = self._writable.get(fd)
                    if ob is not None:
                        self._flush(ob)
            self._signalled = False
            ready = self._ready
            while ready:
                self._flush(ready.popleft())
            now = time.monotonic()
            if now >= next_tick:
                next_tick = now + TICK
                self._housekeeping(now)
            if self._stopping.is_set():
                if stop_deadline is None:
                    stop_deadline = now + FINISH_TIMEOUT
                if now >= stop_deadline or not self.outboxes():
                    return

    def _flush(self, ob: Outbox) -> None:
        if ob.closed:
            return
        while True:
            with ob.lock:
                batch, ob.frames = ob.frames, []
                dead, finished = ob.dead, ob.finished
                if dead or (not batch and not ob.tail):
                    ob.scheduled = False
            if dead:
                self._kill(ob)
                if finished:
                    self._close(ob)
                return
            if batch:
                self.frames_sent += len(batch)
                data = ob.tail + b"".join(batch) if ob.tail else (batch[0] if len(batch) == 1 else b"".join(batch))
            else:
                data = ob.tail
            if not data:
                self._unwatch(ob)
                if finished:
                    self._close(ob)
                return
            try:
                with ob.io_lock:
                    sent = ob.sock.send(data)
            except (BlockingIOError, InterruptedError, ssl.SSLWantWriteError, ssl.SSLWantReadError):
                sent = 0
            except OSError as exc:
                log.info("client %s: send failed: %s", ob.label, exc)
                ob.tail = b""
                with ob.lock:
                    ob.dead = True
                    ob.frames = []
                self._kill(ob)
                if finished:
                    self._close(ob)
                return
            if sent < len(data):
                ob.tail = data[sent:]
                self._watch(ob)
                if finished and not ob.finish_deadline:
                    ob.finish_deadline = time.monotonic() + FINISH_TIMEOUT
                    self._finishing.add(ob)
                return
            ob.tail = b""

    def _watch(self, ob: Outbox) -> None:
        if ob.fd in self._writable:
            return
        try:
            self._epoll.register(ob.fd, select.EPOLLOUT)
        except FileExistsError:
            self._epoll.modify(ob.fd, select.EPOLLOUT)
        except OSError:
            return
        self._writable[ob.fd] = ob

    def _unwatch(self, ob: Outbox) -> None:
        if self._writable.get(ob.fd) is ob:
            del self._writable[ob.fd]
            try:
                self._epoll.unregister(ob.fd)
            except OSError:
                pass

    def _kill(self, ob: Outbox) -> None:
        """Stop talking to a dead client: a close frame if it fits, then shutdown.

        The manager thread then reads EOF, runs the client's `closed()` and calls
        `finish()`, which brings us back to close the socket.
        """
        if ob.shut:
            return
        ob.shut = True
        self._unwatch(ob)
        if ob.overflow:
            self.overflows += 1
            log.warning("client %s: outbound queue overflow, closing with 1008", ob.label)
        with ob.io_lock:
            if ob.drop_code and not ob.tail:
                try:
                    ob.sock.send(frames.close(ob.drop_code, ob.drop_reason))
                except (OSError, ValueError):
                    pass
            ob.tail = b""
            _shutdown(ob.sock)

    def _close(self, ob: Outbox) -> None:
        if ob.closed:
            return
        ob.closed = True
        self._unwatch(ob)
        self._finishing.discard(ob)
        with ob.io_lock:
            _shutdown(ob.sock)
            try:
                ob.sock.close()
            except OSError:
                pass
        with self._lock:
            self._all.discard(ob)

    def _housekeeping(self, now: float) -> None:
        for ob in list(self._finishing):
            if now >= ob.finish_deadline:
                self._close(ob)
        if now >= self._next_ping and not self._stopping.is_set():
            self._next_ping = now + self.ping_interval
            ping = frames.ping(b"gw")
            for ob in self.outboxes():
                if ob.closed or ob.finished:
                    continue
                if ob.awaiting_pong:
                    self.keepalive_drops += 1
                    log.info("client %s: no pong for %.0f s, closing", ob.label, now - ob.last_ping)
                    ob.drop(1011, "keepalive timeout")
                    continue
                ob.awaiting_pong = True
                ob.last_ping = now
                ob.put(ping)


def _shutdown(sock: socket.socket) -> None:
    """Shut a socket down at the OS level; safe while the manager thread reads it, which
    then sees EOF. For TLS, the plain socket's shutdown: SSLSocket.shutdown() would also
    drop its OpenSSL state under the reader."""
    try:
        socket.socket.shutdown(sock, socket.SHUT_RDWR)
    except OSError:
        pass
