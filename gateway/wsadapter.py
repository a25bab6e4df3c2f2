"""The ws4py WebSocket subclass: one client connection, owned by the I/O loop.

ws4py's WSGI application creates a `ClientSocket` on the HTTP thread and writes the 101;
`Manager.add()` then hands it to the loop thread (gateway/manager.py), which from there
on is the only thread that reads, writes and closes its socket. Everything else that
wants to send to the client runs on the loop too (device lines, acks, pings): it queues
frames with `send_frames()`, and the loop sends all of a round's frames in one
non-blocking `send()` at the end of the round (`flush()`), keeping the unsent tail and
waiting for EPOLLOUT while one is pending. So a client that stops reading delays nobody;
when more than `queue` frames wait for it, it is closed with 1008 and counted.

Bytes read go through the frame layer (gateway/wsframes.py, no I/O): messages go to the
client's protocol (gateway/client.py), pings are answered, a close is answered, a broken
frame or an oversize message fails the connection with 1002/1007/1009.

A connection's states, and the only transitions:

    OPEN --close() or the peer's close--> CLOSING --frames out, peer closed--> CLOSED
    OPEN or CLOSING --EOF, reset, send error, close deadline--> CLOSED

CLOSING queues nothing more: the close frame is the last frame. A close the gateway
starts waits FINISH_TIMEOUT at most for the peer's answer; a failed connection (a
protocol error) and an answered close are closed as soon as the close frame is out.

Flow control: a client with at least half its queue waiting is `full`; a device that can
be paused (TCP) is not read while one of its clients is full (gateway/device.py), for
ROOM_WAIT at most; a client that did not drain by then is marked `slow` and not waited
for again until it has drained.

What this relies on in ws4py 0.6.0 (tests/test_ws4py_internals.py checks it):
`WebSocket.__init__(sock, protocols, extensions, environ)` as called by
`WebSocketWSGIApplication` with `handler_cls`, and its attributes `sock`, `environ`,
`protocols`; `WebSocketWSGIHandler.finish_response()` calling
`server.link_websocket_to_server(ws)`, which calls `manager.add(ws)`. Not used: ws4py's
`once()`, `send()`, `close()` machinery, `terminate()`, `run()` (all replaced here; its
`send()` is a blocking unlocked `sendall`).
"""

from __future__ import annotations

import logging
import ssl
import time
from enum import Enum

from ws4py.websocket import WebSocket

from . import frames
from .manager import EPOLLIN, EPOLLOUT, Manager, Timer
from .wsframes import Close, Fail, FrameReader, Message, Ping, Pong

log = logging.getLogger(__name__)

RECV_SIZE = 65536
FINISH_TIMEOUT = 2.0  # seconds a closing client gets to take its close frame and answer
SEND_FRAMES = 4096  # frames joined into one send at most
SEND_BYTES = 1 << 20  # ... and about this many bytes

_RETRY = (BlockingIOError, InterruptedError, ssl.SSLWantWriteError, ssl.SSLWantReadError)


class ConnState(Enum):
    OPEN = "open"
    CLOSING = "closing"
    CLOSED = "closed"


class ClientSocket(WebSocket):
    """Created by ws4py's WSGI application after a successful handshake."""

    def __init__(self, sock, protocols=None, extensions=None, environ=None):
        super().__init__(sock, protocols, extensions, environ)
        self.client = environ["gateway.client"]
        self.limit: int = environ["gateway.queue"]
        self.registry = environ["gateway.registry"]  # the Gateway: adopt() / forget()
        self.reader = FrameReader(environ["gateway.max_message"])
        self.environ = None  # do not keep the WSGI environ alive for the connection
        self.stream = None  # ws4py's parser: the frame layer has its own
        self.secure = isinstance(sock, ssl.SSLSocket)
        self.label = f"{self.client.peer} #{self.client.id}"
        self.fd = sock.fileno()
        self.loop: Manager | None = None
        self.state = ConnState.OPEN
        self.frames: list[bytes] = []  # queued, not sent yet
        self.tail = b""  # unsent bytes of the last send
        self.tail_frames = 0  # frames (partly) in `tail`
        self.dirty = False  # queued for flush() at the end of this loop round
        self.watching_out = False  # EPOLLOUT asked for
        self.high = max(1, self.limit // 2)
        self.full = False  # at least `high` frames waiting (flow control)
        self.slow = False  # did not drain within ROOM_WAIT: not waited for until it does
        self.overflow = False
        self.close_when_sent = False  # close the socket once the queue is out
        self.close_timer: Timer | None = None
        self.awaiting_pong = False
        self.last_ping = 0.0

    def __repr__(self) -> str:
        return f"<ClientSocket {self.label} {self.state.value}>"

    # -- handed over by Manager._adopt ---------------------------------------------------

    def adopted(self, loop: Manager) -> None:
        self.loop = loop
        self.sock.setblocking(False)
        self.registry.adopt(self)
        try:
            self.client.opened(self)
        except Exception:
            log.exception("client %s: could not attach", self.label)
            self.close(1011, "internal error")

    def abandon(self) -> None:
        """No loop to hand the socket to (the gateway is stopping): just close it."""
        self.state = ConnState.CLOSED
        try:
            self.sock.close()
        except OSError:
            pass
        self.registry.forget(self)

    # -- sending (loop thread) -----------------------------------------------------------

    @property
    def queued(self) -> int:
        return len(self.frames) + self.tail_frames

    def send_frames(self, items: list[bytes], now: bool = False) -> bool:
        """Queue frames for this round's send (`now`: send them at once when nothing
        waits before them: a device line, which is one send per client per read
        anyway); False when closing or just overflowed."""
        if self.state is not ConnState.OPEN:
            return False
        frames_ = self.frames
        if now and not frames_ and not self.tail:
            self._send_now(items)
            return True
        if len(frames_) + self.tail_frames + len(items) > self.limit:
            self.overflow = True
            self.loop.stats.overflows += 1
            log.warning("client %s: outbound queue overflow, closing with 1008", self.label)
            frames_.clear()
            self.close(1008, "outbound queue overflow")
            return False
        frames_.extend(items)
        if not self.full and len(frames_) + self.tail_frames >= self.high:
            self._set_full(True)
        if not self.dirty:
            self.loop.mark_dirty(self)
        return True

    def _send_now(self, items: list[bytes]) -> None:
        loop = self.loop
        loop.stats.frames_sent += len(items)
        if len(items) == 1:
            data = items[0]
        elif loop.joined_for is items:  # the same frames for every client of a device
            data = loop.joined
        else:
            data = loop.joined = b"".join(items)
            loop.joined_for = items
        if not self._send(data, len(items)) and self.tail_frames >= self.high and not self.full:
            self._set_full(True)

    def _send(self, data: bytes, count: int) -> bool:
        """One non-blocking send of `data` (`count` frames). False when the socket did
        not take all of it (the rest is kept as `tail`, EPOLLOUT asked for) or failed
        (the connection is then closed)."""
        try:
            sent = self.sock.send(data)
        except _RETRY:
            sent = 0
        except (OSError, ValueError) as exc:
            log.info("client %s: send failed: %s", self.label, exc)
            self._close()
            return False
        if sent == len(data):
            self.tail = b""
            self.tail_frames = 0
            return True
        self.tail = data[sent:]
        # Frames still (partly) unsent, in proportion: counting the whole batch would
        # make a client that keeps reading look full (flow control).
        self.tail_frames = max(1, -(-count * len(self.tail) // len(data)))
        if not self.watching_out:
            self.watching_out = True
            self.loop.modify(self.fd, EPOLLIN | EPOLLOUT)
        return False

    def flush(self) -> None:
        """Send what is queued, without blocking; keep the unsent tail."""
        if self.state is ConnState.CLOSED:
            return
        frames_ = self.frames
        while frames_ or self.tail:
            if frames_:
                if len(frames_) <= SEND_FRAMES and (len(frames_) == 1 or len(frames_[0]) * len(frames_) <= SEND_BYTES):
                    batch = frames_[:]
                    frames_.clear()
                else:
                    k = max(1, min(SEND_FRAMES, SEND_BYTES // (len(frames_[0]) or 1)))
                    batch = frames_[:k]
                    del frames_[:k]
                self.loop.stats.frames_sent += len(batch)
                joined = batch[0] if len(batch) == 1 else b"".join(batch)
                data = self.tail + joined if self.tail else joined
                count = self.tail_frames + len(batch)
            else:
                data, count = self.tail, self.tail_frames
            if not self._send(data, count):
                if self.state is ConnState.CLOSED:
                    return
                break
        if not self.tail and self.watching_out:
            self.watching_out = False
            self.loop.modify(self.fd, EPOLLIN)
        if self.full and len(frames_) + self.tail_frames < self.high:
            self._set_full(False)
        if self.close_when_sent and not self.tail and not frames_:
            self._close()

    # -- reading (loop thread) -----------------------------------------------------------

    def on_io(self, events: int) -> None:
        if events == EPOLLIN:  # the usual case
            self._read()
            return
        if events & EPOLLOUT and self.state is not ConnState.CLOSED:
            self.flush()
        if events & ~EPOLLOUT and self.state is not ConnState.CLOSED:
            self._read()

    def _read(self) -> None:
        sock = self.sock
        try:
            data = sock.recv(RECV_SIZE)
            if self.secure:
                while sock.pending():  # decrypted bytes OpenSSL holds: epoll will not say so
                    data += sock.recv(sock.pending())
        except _RETRY:
            return
        except (OSError, ValueError) as exc:
            log.info("client %s: connection reset: %s", self.label, exc)
            self._close()
            return
        if not data:
            self._close()
            return
        reader = self.reader
        if reader.closed:
            return  # after a close or a failure: read on until the peer closes
        events = reader.feed(data)
        if len(events) == 1 and type(events[0]) is Message and self.state is ConnState.OPEN:
            # One message, the whole read (unless part of a next frame came too).
            ev = events[0]
            try:
                self.client.on_message(ev.data, ev.binary, not reader.buffered)
            except Exception:
                log.exception("client %s: message handling failed", self.label)
                self.client.error(None, "internal error")
            return
        alone = len(events) == 1 and not reader.buffered
        for ev in events:
            kind = type(ev)
            if kind is Message:
                if self.state is ConnState.OPEN:
                    try:
                        self.client.on_message(ev.data, ev.binary, alone)
                    except Exception:
                        log.exception("client %s: message handling failed", self.label)
                        self.client.error(None, "internal error")
            elif kind is Ping:
                if self.state is ConnState.OPEN:
                    self.send_frames([frames.pong(ev.payload)])
            elif kind is Pong:
                self.awaiting_pong = False
            elif kind is Close:
                self._peer_closed(ev)
            elif kind is Fail:
                self._failed(ev)

    def _peer_closed(self, ev: Close) -> None:
        if self.state is ConnState.OPEN:
            log.info("client %s: closed the connection with %s", self.label, ev.code)
            self._queue_close(ev.code, ev.reason)  # the usual answer echoes it (RFC 6455 5.5.1)
        self.close_when_sent = True  # either way the closing handshake is complete
        self.loop.mark_dirty(self)

    def _failed(self, ev: Fail) -> None:
        if ev.code == 1009:
            log.info("client %s: %s, closing with 1009", self.label, ev.reason)
            self.registry.stats.messages_oversize += 1
        else:
            log.warning("client %s: malformed frame (%s), closing with %d", self.label, ev.reason, ev.code)
        if self.state is ConnState.OPEN:
            self._queue_close(ev.code, ev.reason)
        self.close_when_sent = True  # failing the connection: no closing handshake
        self.loop.mark_dirty(self)

    # -- closing (loop thread) -----------------------------------------------------------

    def close(self, code: int = 1000, reason: str = "") -> None:
        """Start the closing handshake; the socket is closed once the peer answered, or
        after FINISH_TIMEOUT."""
        if self.state is not ConnState.OPEN:
            return
        self._queue_close(code, reason)
        self.close_timer = self.loop.call_later(FINISH_TIMEOUT, self._close)

    def _queue_close(self, code: int | None, reason: str) -> None:
        self.state = ConnState.CLOSING
        self.frames.append(frames.close(code, reason))
        self.loop.mark_dirty(self)

    def _close(self) -> None:
        if self.state is ConnState.CLOSED:
            return
        self.state = ConnState.CLOSED
        if self.close_timer is not None:
            self.close_timer.cancel()
        self.loop.forget(self.fd, self)
        try:
            self.sock.close()
        except OSError:
            pass
        self.frames = []
        self.tail = b""
        self.tail_frames = 0
        try:
            self.client.closed()
        except Exception:
            log.exception("client %s: error while closing", self.label)
        finally:
            self.registry.forget(self)
        if self.full:
            self._set_full(False)

    def _set_full(self, full: bool) -> None:
        """Flow control: the device counts its full clients; one that drained (or left)
        may let it be read again."""
        self.full = full
        link = self.client.link
        if full:
            link.full_clients += 1
        else:
            self.slow = False
            link.full_clients -= 1
            link.room()


class Keepalive:
    """Ping every client every `interval` seconds; close one that did not answer the
    previous ping (1011). A timer on the loop: nothing wakes in between."""

    def __init__(self, loop: Manager, interval: float):
        self.loop = loop
        self.interval = interval
        self.ping = frames.ping(b"gw")

    def start(self) -> None:
        if self.interval > 0:
            self.loop.call(self._schedule)

    def _schedule(self) -> None:
        self.loop.call_later(self.interval, self._tick)

    def _tick(self) -> None:
        now = time.monotonic()
        for ws in self.loop.clients():
            if ws.state is not ConnState.OPEN:
                continue
            if ws.awaiting_pong:
                self.loop.stats.keepalive_drops += 1
                log.info("client %s: no pong for %.0f s, closing", ws.label, now - ws.last_ping)
                ws.close(1011, "keepalive timeout")
                continue
            ws.awaiting_pong = True
            ws.last_ping = now
            ws.send_frames([self.ping])
        self._schedule()
