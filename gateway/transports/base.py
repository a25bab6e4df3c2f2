"""The one small interface every transport implements.

A transport moves bytes; it knows nothing of lines, clients or reconnecting. The device
link (gateway/device.py) owns one transport and calls it from two threads: its reader
thread calls `read()` (or hands `read_nowait()` to the gateway's loop thread, for a
`pollable` transport), its writer thread calls `write()`. `open()` and `close()` are
called by the reader thread only, except `close()` at shutdown, after `cancel()`.
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
    #: Has a descriptor an event loop can watch, and `read_nowait()` (see
    #: DeviceLink._read_in_loop): the gateway's loop thread may read it instead of the
    #: reader thread.
    pollable = False

    def __init__(self, url: SplitResult, options: dict[str, str]):
        """Check `url` and `options`; raise ValueError naming what is wrong. No I/O."""
        self.url = url

    def open(self) -> None:
        raise NotImplementedError

    def read(self) -> bytes:
        """Bytes the device sent, b"" when none came within READ_TIMEOUT.

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

    def close(self) -> None:
        """Close the connection to the device; open() may follow."""
        raise NotImplementedError

    def release(self) -> None:
        """Close for good, with what is kept across reconnects (a listening socket)."""
        self.close()

    def describe(self) -> str:
        return self.url.geturl()
