"""The ws4py WebSocket subclass: adaptation only, between ws4py and `Client`.

What it changes in ws4py 0.6.0 (see shared/WS4PY_NOTES.md):
- writes: `_write()` queues in the client's outbox; the Sender thread writes. ws4py's own
  `sendall` from the manager thread would let one stalled client freeze all of them.
- reads: one large `recv`, then the parser is fed exactly the number of bytes it asks
  for next (ws4py reads 2 bytes at a time otherwise; a bigger `reading_buffer_size`
  alone loses frames, because the parser drops bytes past the current frame).
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
        data = bytes(message.data)  # ws4py sets message.data to None after we return
        try:
            self.client.on_message(data, message.is_binary)
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
        if code in (1002, 1003, 1007):  # ws4py's parser refused what the client sent
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
            with self.outbox.io_lock:
                data = sock.recv(RECV_SIZE)
                if self.secure:
                    # Decrypted bytes OpenSSL holds already: epoll will not say so.
                    while sock.pending():
                        data += sock.recv(sock.pending())
        except (BlockingIOError, InterruptedError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
            return True
        except (OSError, ValueError) as exc:
            log.info("client %s: connection reset: %s", self.label, exc)
            return False
        if not data:
            return False
        buf = self.buf + data if self.buf else data
        self.buf = b""
        pos, end = 0, len(buf)
        while pos < end:
            need = self.reading_buffer_size or DEFAULT_READING_SIZE
            chunk = buf[pos:pos + need]
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
