"""ws4py's manager thread, with a leaner loop and room for device sockets.

ws4py's `WebSocketManager` reads every client: one thread, one epoll, `once()` per
readable socket. This subclass keeps that, and keeps ws4py's `remove()` and
`close_all()`, but changes three things:

- its loop polls without holding the manager's lock (epoll may be changed from other
  threads while one waits in it) and without ws4py's generator, and it closes its epoll
  itself when it ends, never under a thread still polling it;
- device sockets can be read here too (`watch()`): a TCP device's reply is then read,
  numbered and sent to the clients by the thread that wrote the request, with no second
  thread to wake (see DeviceLink._read_in_loop). On a ping-pong exchange that is one
  thread woken per direction instead of two, the largest single cost on this path.

- `add()` does not log the client's addresses: ws4py's asks the socket for its peer,
  which raises when the client reset the connection just after the handshake, and the
  client then escaped the manager with a traceback in the HTTP thread. Such a client is
  now registered like any other and dropped by its first read (one INFO line).

A watched device callback returns False to be unwatched; it must never block.
"""

from __future__ import annotations

import logging
import select
from typing import Callable

from ws4py.manager import WebSocketManager

log = logging.getLogger(__name__)

POLL_TIMEOUT = 0.1  # seconds: how soon the loop notices stop()


class Manager(WebSocketManager):
    def __init__(self):
        super().__init__()
        self.name = "WebSocketManager"
        self._epoll: select.epoll = self.poller.poller  # ws4py's EPollPoller keeps it there
        self._readers: dict[int, Callable[[], bool]] = {}  # fd -> device callback

    # -- clients (ws4py's HTTP handler thread) ------------------------------------------

    def add(self, websocket) -> None:
        if websocket in self:
            return
        websocket.opened()
        with self.lock:
            fd = websocket.sock.fileno()
            self.websockets[fd] = websocket
            self.poller.register(fd)

    # -- device sockets (any thread) --------------------------------------------------

    def watch(self, fd: int, on_readable: Callable[[], bool]) -> bool:
        """Call `on_readable()` on this thread whenever `fd` is readable, until it
        returns False or `unwatch(fd)`. False if the loop is not running."""
        with self.lock:
            if not self.running:
                return False
            self._readers[fd] = on_readable
            try:
                self._epoll.register(fd, select.EPOLLIN)
            except FileExistsError:
                self._epoll.modify(fd, select.EPOLLIN)
            except (OSError, ValueError):
                self._readers.pop(fd, None)
                return False
        return True

    def unwatch(self, fd: int, on_readable: Callable[[], bool] | None = None) -> None:
        """Stop calling back for `fd` (a callback already running may still finish);
        with `on_readable`, only if that is still the one watching it."""
        with self.lock:
            current = self._readers.get(fd)
            if current is None or (on_readable is not None and current is not on_readable):
                return
            del self._readers[fd]
            try:
                self._epoll.unregister(fd)
            except (OSError, ValueError):
                pass

    # -- the thread ---------------------------------------------------------------------

    def start(self) -> None:
        self.running = True  # before the thread runs: add() and watch() may come first
        super().start()

    def stop(self) -> None:
        """Ask the loop to end; it releases its epoll itself within POLL_TIMEOUT."""
        self.running = False

    def run(self) -> None:
        try:
            self._loop()
        finally:
            with self.lock:
                self.running = False
                self.websockets.clear()
                self._readers.clear()
                self.poller.release()

    def _loop(self) -> None:
        poll = self._epoll.poll
        sockets = self.websockets
        readers = self._readers
        while self.running:
            try:
                events = poll(POLL_TIMEOUT)
            except InterruptedError:
                continue
            for fd, _ in events:
                ws = sockets.get(fd)
                if ws is not None:
                    self._serve(fd, ws)
                    continue
                on_readable = readers.get(fd)
                if on_readable is not None:
                    try:
                        keep = on_readable()
                    except Exception:
                        log.exception("device read callback failed")
                        keep = False
                    if not keep:
                        # Not a newer watch of the same fd by the device's reader, which
                        # may have taken the device back and handed it over again.
                        self.unwatch(fd, on_readable)

    def _serve(self, fd: int, ws) -> None:
        """What ws4py's loop does for one readable client socket."""
        keep = False
        if not ws.terminated:
            try:
                keep = ws.once()
            except Exception as exc:  # ws4py's loop logs and drops the client too
                log.error("client %s: closing after an error in once(): %r", getattr(ws, "label", fd), exc)
        if keep:
            return
        with self.lock:
            if self.websockets.get(fd) is ws:
                del self.websockets[fd]
                try:
                    self._epoll.unregister(fd)
                except (OSError, ValueError):
                    pass
        if not ws.terminated:
            try:
                ws.terminate()  # runs the client's closed(): it must not end this loop
            except Exception:
                log.exception("client %s: error while closing", getattr(ws, "label", fd))
