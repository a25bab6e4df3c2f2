"""Everything the gateway sends to WebSocket clients goes through here.

Each client has an `Outbox`: a bounded list of frames that any thread may add to. Each
client socket has one writer at a time (ws4py's own `send()` writes with a bare, unlocked,
blocking `sendall`, which lets one stalled client freeze the thread that calls it and
lets two threads interleave their bytes). Usually that is the `Sender` thread ("ws-tx"):
it writes without blocking, joins all queued frames of a client into one `send()`, keeps
the unsent tail, and waits for the socket to become writable again while it serves the
others. So a client that stops reading delays nobody; when its outbox overflows it is
closed with 1008 and counted.

A shortcut saves the hand-off to the Sender (a wake-up and a thread switch per frame on
a request/answer exchange): a thread that queues frames for an idle plain-TCP outbox
(nothing queued, nothing unsent, the Sender not holding it) sends them itself, once,
without blocking, while the outbox is marked `writing`; everything else, and whatever
that send did not take, is the Sender's. `writing` and `scheduled` are only changed under
the outbox lock, and a socket is written only by the one thread that set one of them,
so there is still one writer per socket. TLS connections always go through the Sender,
under their io_lock.

Flow control for devices that have it (TCP): an outbox more than half full is `full`;
the device's reader calls `wait_for_room()` before it reads on (the loop thread, which
must not wait, hands the device back to its reader for that), and waits (at most
ROOM_WAIT) for such outboxes of its clients to drop below half. So a burst reaches a
client that keeps reading whole, the device being paused by TCP meanwhile, instead of
overflowing its queue. A client that did not drain in time is marked `slow` and not
waited for again until it has: a stalled client still overflows and is closed, and
delays the others once, by ROOM_WAIT at most.

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
SEND_FRAMES = 4096  # frames joined into one send at most: the rest stay queued (and counted)
SEND_BYTES = 1 << 20  # ... and about this many bytes (judged by the first frame's size)
ROOM_WAIT = 0.5  # seconds a device reader waits for a client's queue to drain (wait_for_room)


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
        self.direct_ok = not isinstance(sock, ssl.SSLSocket)  # see the module docstring
        self.high = max(1, limit // 2)  # frames queued from which the outbox is `full`
        # Guarded by `lock`:
        self.frames: list[bytes] = []
        self.scheduled = False  # in the Sender's ready list or waiting for EPOLLOUT
        self.writing = False  # another thread is sending a direct write (see put_many)
        self.sent_direct = 0  # frames sent by direct writes
        self.full = False  # at least `high` frames queued (flow control)
        # Written by the device reader that waited for it and by the Sender; a stale
        # read costs one wait of ROOM_WAIT at most:
        self.slow = False  # did not drain within ROOM_WAIT: not waited for until it does
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
        direct = schedule = False
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
            elif self.direct_ok and not (self.scheduled or self.writing or self.frames or close or self.finished):
                direct = self.writing = True  # this thread is the socket's writer until it clears it
                result = True
            else:
                frames = self.frames
                frames.extend(items)
                if close:
                    self.closing = True
                if not (self.scheduled or self.writing):  # a direct writer hands over itself
                    schedule = self.scheduled = True
                if len(frames) >= self.high and not self.full:
                    self.full = True
                    self.sender.note_full(self)
                result = True
        if direct:
            self._send_direct(items)
        elif schedule:
            self.sender.schedule(self)
        return result

    def _send_direct(self, items) -> None:
        """Send `items` on this thread without blocking; hand what is left to the Sender."""
        data = items[0] if len(items) == 1 else b"".join(items)
        try:
            sent = self.sock.send(data)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            sent = 0  # the Sender meets the error again and closes
        with self.lock:
            self.writing = False
            self.sent_direct += len(items)
            if sent < len(data):
                # The Sender keeps an unsent tail in `tail`; it is not flushing this
                # outbox now (see Sender._flush), so this store does not race with it.
                self.tail = data[sent:]
            if self.tail or self.frames or self.dead or self.finished:
                schedule = not self.scheduled
                self.scheduled = True
            else:
                schedule = False
        if schedule:
            self.sender.schedule(self)

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
    """The thread that writes to client sockets (but for direct writes, see the module
    docstring) and the only one that closes them."""

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
        self._frames_sent = 0  # by this thread, and by direct writes to outboxes now closed
        self._full: set[Outbox] = set()  # outboxes at least half full (single set ops: atomic)
        self._room = threading.Condition()  # device readers wait here for queues to drain
        self._room_waiters = 0  # guarded by _room
        self._room_due = False  # Sender only: a full outbox drained in this round

    @property
    def frames_sent(self) -> int:
        with self._lock:  # _close moves a closed outbox's count over under this lock
            return self._frames_sent + sum(ob.sent_direct for ob in self._all)

    # -- flow control (see the module docstring) ------------------------------------

    def note_full(self, ob: Outbox) -> None:
        self._full.add(ob)

    @property
    def any_full(self) -> bool:
        return bool(self._full)

    def wait_for_room(self, outboxes: list[Outbox], stop: threading.Event) -> bool:
        """Wait until none of `outboxes` is full, or ROOM_WAIT passed (the ones still full
        are then marked slow). True if it waited."""
        deadline = time.monotonic() + ROOM_WAIT
        waited = False
        with self._room:
            while not stop.is_set():
                waiting = [ob for ob in outboxes if ob.full and not ob.slow and not ob.dead and not ob.closing]
                if not waiting:
                    break
                left = deadline - time.monotonic()
                if left <= 0:
                    for ob in waiting:
                        ob.slow = True
                        log.info("client %s: queue did not drain within %.1f s; not waiting for it", ob.label, ROOM_WAIT)
                    break
                waited = True
                self._room_waiters += 1
                try:
                    self._room.wait(min(left, 0.05))
                finally:
                    self._room_waiters -= 1
        return waited

    def _drained(self, ob: Outbox) -> None:
        """`ob` is below half full again (Sender thread, under ob.lock)."""
        ob.full = ob.slow = False
        self._full.discard(ob)
        self._room_due = True

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
            if self._room_due:
                self._room_due = False
                if self._room_waiters:
                    with self._room:
                        self._room.notify_all()
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
                if ob.writing:
                    # Another thread is sending a direct write: it schedules this outbox
                    # again when it is done, if anything is left.
                    ob.scheduled = False
                    return
                frames = ob.frames
                if len(frames) <= SEND_FRAMES:
                    batch, ob.frames = frames, []
                else:  # one send at a time: what stays queued is counted against the limit
                    k = min(SEND_FRAMES, max(1, SEND_BYTES // (len(frames[0]) or 1)))
                    batch = frames[:k]
                    del frames[:k]
                if ob.full and len(ob.frames) < ob.high:
                    self._drained(ob)
                dead, finished, tail = ob.dead, ob.finished, ob.tail
                if dead or (not batch and not tail):
                    # From here a direct writer may take the socket (unless dead or
                    # finished): no more sends, and `tail` is no longer ours.
                    ob.scheduled = False
            if dead:
                self._kill(ob)
                if finished:
                    self._close(ob)
                return
            if batch:
                self._frames_sent += len(batch)
                data = tail + b"".join(batch) if tail else (batch[0] if len(batch) == 1 else b"".join(batch))
            else:
                data = tail
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
        self._full.discard(ob)
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
        self._full.discard(ob)
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
            self._frames_sent += ob.sent_direct  # no direct write is left: the outbox is closed

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
