"""The one small interface every transport implements.

A transport moves bytes; it knows nothing of lines, clients or reconnecting. The device
link (gateway/device.py) owns one transport and drives it one of two ways:

- `pollable` (it has a descriptor): the I/O loop thread owns it. A worker thread calls
  `open_nowait()` (which may block briefly: a name to resolve, a port to open); the
  loop then calls `fileno()`, `read_nowait()`, `try_write()` and `close()`, and
  `finish_open()` once the descriptor is writable if `connecting` was set. A listening
  transport (tcp-listen) also has `listen_fileno()` and `accept()`.
- `pushes` (mqtt://, on a connection the gateway shares): the link calls `attach(side)`
  once on the loop; the transport then calls `side.up()`, `side.data(payload)` and
  `side.down(state, reason)` from its own thread, and the link writes with
  `write_async(data, done)`, `done(error or None)` from any thread; `release()` detaches.
- otherwise: one thread of the link's own calls `open()`, `read()`, `write()` and
  `close()`; the loop calls `wakeup()` to have a blocked `read()` return early (a write
  is waiting), and `cancel()` at shutdown.

The blocking half (`open`, `read`, `write`) works for every transport, so a thread can
always own one (the back-to-back tests in tests/test_transports.py do).
"""

from __future__ import annotations

from urllib.parse import SplitResult

READ_TIMEOUT = 0.2  # seconds a read may block, so the reader notices a stop request
OPEN_TIMEOUT = 5.0  # seconds an open may take (connect, or wait for a device to dial in)


class TransportError(OSError):
    """The device could not be reached, or was lost: reconnect with backoff."""


class NotConnectedYet(TransportError):
    """A listening transport has no device yet: try again at once, without backoff."""


class WriteTimeout(TransportError):
    """The device did not take the bytes in time; the link stays up."""


class Transport:
    """Base class: open, read with a timeout, write, cancel, close."""

    #: Each read() returns one whole message (a UDP datagram): its end ends a line.
    message_oriented = False
    #: Has a descriptor the I/O loop watches (see the module docstring).
    pollable = False
    #: `read(None)` blocks until there is data or `wakeup()`/`cancel()` is called, not
    #: READ_TIMEOUT at most: an idle device then wakes no thread.
    wakes_up = False
    #: A push transport (see the module docstring): no descriptor, no thread.
    pushes = False

    def __init__(self, url: SplitResult, options: dict[str, str]):
        """Check `url` and `options`; raise ValueError naming what is wrong. No I/O."""
        self.url = url

    def open(self) -> None:
        raise NotImplementedError

    def open_nowait(self) -> None:
        """`open()` for the loop's worker (pollable transports; see the module docstring)."""
        self.open()

    def read(self, timeout: float | None = READ_TIMEOUT) -> bytes:
        """Bytes the device sent, b"" when none came within `timeout` (None: until woken,
        for a transport that `wakes_up`; READ_TIMEOUT for the others).

        Raises TransportError when the device is gone.
        """
        raise NotImplementedError

    def fileno(self) -> int:
        """The descriptor to watch for readability (pollable transports only)."""
        raise NotImplementedError

    def read_nowait(self) -> bytes:
        """What the device sent, without waiting; b"" when nothing is there after all.

        Raises TransportError when the device is gone (pollable transports only)."""
        raise NotImplementedError

    def write(self, data: bytes) -> None:
        """Write all of `data` (for a message-oriented transport, one message)."""
        raise NotImplementedError

    def cancel(self) -> None:
        """Make a blocked read() or open() return soon (called from another thread)."""

    def wakeup(self) -> None:
        """Make a blocked read() return soon, b"" if nothing came (another thread)."""
        self.cancel()

    def close(self) -> None:
        """Close the connection to the device; open() may follow."""
        raise NotImplementedError

    def release(self) -> None:
        """Close for good, with what is kept across reconnects (a listening socket)."""
        self.close()

    def describe(self) -> str:
        return self.url.geturl()
