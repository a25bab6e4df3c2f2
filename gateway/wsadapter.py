"""The ws4py WebSocket subclass: adaptation only, between ws4py and `Client`.

What it changes in ws4py 0.6.0 (see shared/WS4PY_NOTES.md):
- writes: `_write()` queues in the client's outbox; the Sender thread writes. ws4py's own
  `sendall` from the manager thread would let one stalled client freeze all of them.
- reads: one large `recv`, then each whole frame is parsed here when it is the common
  kind (one masked, unfragmented text or binary frame within `max_message`, valid UTF-8
  for text): about 3 us a frame instead of ws4py's ~30 us generator chain. Every other
  frame (control, fragmented, malformed, oversized) goes to ws4py's own parser, fed
  exactly the number of bytes it asks for next (a bigger `reading_buffer_size` alone
  loses frames: the parser drops bytes past the current frame), so its checks and close
  codes are ws4py's. A frame is given whole to one parser or the other, never split.
- lines a client sends in one `recv` reach a TCP device in one write from this thread
  (see DeviceLink.hold_writes), not one hand-off to the device's writer thread each.
- a message larger than `max_message` is refused with 1009 as soon as its header says so.
- a close frame without a code is answered without a code, not with the reserved 1005;
  codes 1012-1014 are accepted.
- closing the socket is the Sender's job, after the close frame is out.
- a connection reset is one INFO line, not an ERROR with a traceback.
"""

from __future__ import annotations

import logging
import socket
import ssl

from ws4py import streaming
from ws4py.websocket import DEFAULT_READING_SIZE, WebSocket

from . import frames
from .client import Client
from .outbound import Sender

log = logging.getLogger(__name__)

RECV_SIZE = 65536

# ws4py refuses the close codes RFC 6455's registry added after it was written
# (1012 service restart, 1013 try again later, 1014 bad gateway). The list is read at
# parse time, so extending it is enough.
for _code in (1012, 1013, 1014):
    if _code not in streaming.VALID_CLOSING_CODES:
        streaming.VALID_CLOSING_CODES.append(_code)


class ClientSocket(WebSocket):
    """Created by ws4py's WSGI application after a successful handshake."""

    def __init__(self, sock, protocols=None, extensions=None, environ=None):
        super().__init__(sock, protocols, extensions, environ)
        self.client: Client = environ["gateway.client"]
        self.sender: Sender = environ["gateway.sender"]
        self.max_message: int = environ["gateway.max_message"]
        self.queue_limit: int = environ["gateway.queue"]
        self.registry = environ["gateway.registry"]  # the Gateway: adopt() / forget()
        self.outbox = None
        self.secure = isinstance(sock, ssl.SSLSocket)
        self.label = self.client.peer
        self._slow_left = 0  # bytes of the current frame still to feed to ws4py's parser
        # Do not keep the WSGI environ (and its copies) alive for the whole connection.
        self.environ = None

    # -- ws4py callbacks ----------------------------------------------------------------

    def opened(self) -> None:
        # Runs on the HTTP thread before ws4py registers the socket with its manager:
        # keep it short and never let it raise.
        try:
            self.registry.adopt(self)
            self.outbox = self.sender.outbox(self.sock, self.queue_limit, f"{self.label} #{self.client.id}")
            self.client.opened(self.outbox)
        except Exception:
            log.exception("client %s: could not attach", self.label)
            if self.outbox is not None:
                self.outbox.drop(1011, "internal error")

    def received_message(self, message) -> None:
        # ws4py's parser found a message (the frames _parse leaves to it).
        self._deliver(bytes(message.data), message.is_binary)  # ws4py clears message.data after

    def _deliver(self, data: bytes, is_binary: bool, alone: bool = False) -> None:
        try:
            self.client.on_message(data, is_binary, alone)
        except Exception:
            log.exception("client %s: message handling failed", self.label)
            self.client.error(None, "internal error")

    def ponged(self, pong) -> None:
        if self.outbox is not None:
            self.outbox.awaiting_pong = False

    def closed(self, code, reason=None) -> None:
        try:
            self.client.closed()
        finally:
            self.registry.forget(self)

    def unhandled_error(self, error) -> None:
        log.info("client %s: connection error: %s", self.label, error)

    # -- writing goes through the outbox --------------------------------------------------

    def _write(self, data: bytes) -> None:
        if self.outbox is not None:
            self.outbox.put(data)

    def close(self, code=1000, reason="") -> None:
        if self.server_terminated:
            return
        self.server_terminated = True
        if isinstance(reason, (bytes, bytearray)):
            reason = bytes(reason).decode("utf-8", "replace")
        if self.stream is not None and self.stream.closing is not None:
            log.info("client %s: closed the connection with %s", self.label, code)  # we answer it
        elif code in (1002, 1003, 1007):  # ws4py's parser refused what the client sent
            log.warning("client %s: malformed frame (%s), closing with %d", self.label, reason or "protocol error", code)
        # ws4py reports "no code" as 1005, which must never go on the wire (RFC 6455 7.4.1).
        frame = frames.close(None if code in (1005, 1006, None) else code, reason or "")
        if self.outbox is not None:
            self.outbox.put(frame, close=True)

    def close_connection(self) -> None:
        # Runs on the manager thread once the connection is over; the Sender closes the
        # socket after the queued frames (the close frame) are out.
        if self.outbox is not None:
            self.outbox.finish()
        elif self.sock is not None:
            try:
                self.sock.shutdown(socket.SHUT_RDWR)
                self.sock.close()
            except OSError:
                pass
        self.sock = None

    # -- reading ------------------------------------------------------------------------------

    def once(self) -> bool:
        sock = self.sock
        if self.terminated or sock is None or self.outbox is None:
            return False
        try:
            if self.secure:
                with self.outbox.io_lock:
                    data = sock.recv(RECV_SIZE)
                    # Decrypted bytes OpenSSL holds already: epoll will not say so.
                    while sock.pending():
                        data += sock.recv(sock.pending())
            else:  # plain TCP: full duplex, the Sender's writes need no lock against this read
                data = sock.recv(RECV_SIZE)
        except (BlockingIOError, InterruptedError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
            return True
        except (OSError, ValueError) as exc:
            log.info("client %s: connection reset: %s", self.label, exc)
            return False
        if not data:
            return False
        n = len(data) - 6
        if 0 <= n < 126 and data[1] == 0x80 | n and (data[0] == 0x81 or data[0] == 0x82) \
                and not self.buf and not self._slow_left and n <= self.max_message and self.stream.message is None:
            # The read is one whole, short, masked text or binary frame: a request line,
            # usually. The same checks as in _parse, without its loop.
            payload = _unmask(data[2:6], data[6:])
            if data[0] == 0x82 or payload.isascii():
                self._deliver(payload, data[0] == 0x82, True)
                return self.stream is not None
        buf = self.buf + data if self.buf else data
        self.buf = b""
        link = self.client.link
        link.hold_writes()  # lines of this read go to the device together, from here
        try:
            return self._parse(buf)
        finally:
            link.release_writes()

    def _parse(self, buf: bytes) -> bool:
        pos, end = 0, len(buf)
        while pos < end:
            if self._slow_left:  # inside a frame that ws4py parses
                take = min(self._slow_left, end - pos)
                self._slow_left -= take
                if not self._feed_ws4py(buf, pos, pos + take):
                    return False
                pos += take
                continue
            if end - pos < 2:
                break
            b0, b1 = buf[pos], buf[pos + 1]
            n = b1 & 0x7F
            head = 2 if n < 126 else 4 if n == 126 else 10
            if b1 & 0x80:
                head += 4
            if end - pos < head:
                break
            if n == 126:
                n = int.from_bytes(buf[pos + 2:pos + 4], "big")
            elif n == 127:
                n = int.from_bytes(buf[pos + 2:pos + 10], "big")
            # FIN + text/binary, masked, within the limit, no fragmented message pending.
            if (b0 == 0x81 or b0 == 0x82) and b1 & 0x80 and n <= self.max_message and self.stream.message is None:
                stop = pos + head + n
                if stop > end:
                    break  # the rest of this frame is still to come
                payload = _unmask(buf[pos + head - 4:pos + head], buf[pos + head:stop]) if n else b""
                if b0 == 0x81 and not payload.isascii():
                    try:
                        payload.decode("utf-8")
                    except UnicodeDecodeError:
                        self._slow_left = head + n  # ws4py closes with 1007, as for any invalid text
                        continue
                self._deliver(payload, b0 == 0x82, pos == 0 and stop == end)
                pos = stop
                if self.stream is None:
                    return False
                continue
            self._slow_left = head + n
        if pos < end:
            self.buf = buf[pos:]
        return True

    def _feed_ws4py(self, buf: bytes, pos: int, stop: int) -> bool:
        """Feed buf[pos:stop] to ws4py's parser, exactly as many bytes as it asks for at a time."""
        while pos < stop:
            need = self.reading_buffer_size or DEFAULT_READING_SIZE
            chunk = buf[pos:min(pos + need, stop)]
            pos += len(chunk)
            if not self.process(chunk) or self.stream is None:
                return False
            if self._too_big():
                return False
        return True

    def _too_big(self) -> bool:
        """Refuse a message over max_message as soon as a frame header announces it."""
        need = self.reading_buffer_size or 0
        pending = self.stream.message
        size = need + (len(pending.data) if pending is not None and not pending.completed else 0)
        if size <= self.max_message:
            return False
        log.info("client %s: message over %d bytes, closing with 1009", self.label, self.max_message)
        self.close(1009, f"message larger than {self.max_message} bytes")
        return True


def _unmask(key: bytes, data: bytes) -> bytes:
    """XOR `data` with the 4-byte masking `key` (RFC 6455 5.3), as one big-integer XOR."""
    n = len(data)
    keys = key * ((n >> 2) + 1)
    return (int.from_bytes(data, "little") ^ int.from_bytes(keys[:n], "little")).to_bytes(n, "little")
