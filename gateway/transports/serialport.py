"""Serial ports and every pyserial URL handler, through `serial.serial_for_url`.

`serial:///dev/ttyUSB0?baudrate=115200` opens the path with the given settings;
`socket://`, `rfc2217://`, `loop://`, `spy://` and `hwgrep://` URLs go to pyserial as
they are, so ptys, USB adapters found by id and RFC 2217 servers come for free.

`serial://` and `hwgrep://` ports are `pollable`: pyserial opens and configures them
(baud rate, parity, ...) and closes them, but the bytes move through the port's
descriptor with poll, os.read and os.write. pyserial 3.5's own POSIX `read()` and
`write()` call select(), which fails for descriptors above 1023 (a gateway with a
thousand clients has those). The other pyserial URLs (`socket://`, `rfc2217://`,
`loop://`, `spy://`) have no descriptor to watch and are read by a thread of their own
through pyserial.

Modem control (`signals`: serial://, hwgrep://, rfc2217://): `set_signals(dtr, rts)` and
`set_break(on)` set pyserial's `dtr`, `rts` and `break_condition`. On a local port these
are ioctls, quick enough for the I/O loop; an rfc2217:// port asks its server over the
network and waits for the answer (`signals_block`: the device link runs them on a
worker). The device link times a sequence (a reset, a BREAK of N ms) with loop timers.

For an RFC 2217 client holding the port (gateway/rfc2217.py): `set_baudrate(baud)`,
`configure(**settings)` and `purge(input, output)` change the open port; the device link
reopens it with the configured settings when the client lets go.
"""

from __future__ import annotations

import errno
import os
import select
from urllib.parse import SplitResult

import serial

from ..counts import parse_count
from .base import READ_TIMEOUT, Transport, TransportError, WriteTimeout

RECV_SIZE = 65536
WRITE_TIMEOUT = 5.0

_BOOL = {"1": True, "true": True, "yes": True, "on": True,
         "0": False, "false": False, "no": False, "off": False}


def _serial_settings(options: dict[str, str]) -> dict:
    """The `serial://` query, checked and converted to `serial_for_url` arguments."""
    settings: dict = {}
    for key, value in options.items():
        if key == "baudrate":
            try:
                settings[key] = parse_count(value, 1)
            except ValueError:
                raise ValueError(f"baudrate must be a positive whole number, not {value!r}") from None
        elif key == "bytesize":
            if value not in ("5", "6", "7", "8"):
                raise ValueError(f"bytesize must be 5, 6, 7 or 8, not {value!r}")
            settings[key] = int(value)
        elif key == "parity":
            if value.upper() not in serial.PARITY_NAMES:
                raise ValueError(f"parity must be one of N, E, O, M, S, not {value!r}")
            settings[key] = value.upper()
        elif key == "stopbits":
            if value not in ("1", "1.5", "2"):
                raise ValueError(f"stopbits must be 1, 1.5 or 2, not {value!r}")
            settings[key] = float(value) if value == "1.5" else int(value)
        elif key in ("rtscts", "xonxoff", "dsrdtr", "exclusive"):
            if value.lower() not in _BOOL:
                raise ValueError(f"{key} must be true or false, not {value!r}")
            settings[key] = _BOOL[value.lower()]
        else:
            raise ValueError(f"unknown serial option {key!r}")
    return settings


class SerialTransport(Transport):
    def __init__(self, url: SplitResult, options: dict[str, str]):
        super().__init__(url, options)
        if url.scheme == "serial":
            if url.netloc or not url.path:
                raise ValueError("a serial URL names a device path: serial:///dev/ttyUSB0")
            self.port_name = url.path
            self.settings = _serial_settings(options)
        elif url.scheme == "hwgrep":
            # pyserial's own options (n=N, skip_busy) go with the pattern after "&"; the
            # port's settings (baudrate, ...) stand in the query, as for serial://.
            ours = {k: v for k, v in options.items() if k not in ("n", "skip_busy")}
            self.settings = _serial_settings(ours)
            extra = "".join(f"&{k}={v}" if v else f"&{k}" for k, v in options.items() if k not in ours)
            self.port_name = f"hwgrep://{url.netloc}{url.path}{extra}"
        else:
            # pyserial parses and checks its own query when the port opens.
            query = "&".join(f"{k}={v}" for k, v in options.items())
            self.port_name = f"{url.scheme}://{url.netloc}{url.path}" + (f"?{query}" if query else "")
            self.settings = {}
        # A real port gets a write deadline; pyserial's loop:// turns one into a refusal
        # of any write longer than the deadline at its emulated baud rate.
        self.write_timeout = WRITE_TIMEOUT if url.scheme in ("serial", "hwgrep") else None
        self.pollable = url.scheme in ("serial", "hwgrep")
        self.signals = url.scheme in ("serial", "hwgrep", "rfc2217")  # DTR, RTS, BREAK
        self.signals_block = url.scheme == "rfc2217"  # asks the server: not on the loop
        self.port: serial.SerialBase | None = None
        self.fd: int | None = None

    def open(self) -> None:
        try:
            port = serial.serial_for_url(self.port_name, timeout=READ_TIMEOUT,
                                         write_timeout=self.write_timeout, **self.settings)
        except (serial.SerialException, OSError, ValueError) as exc:
            raise TransportError(str(exc)) from None
        try:
            self.fd = port.fileno()
        except (AttributeError, NotImplementedError, OSError, ValueError):
            self.fd = None
        if self.fd is not None:
            # We wait for data with poll() and then take all that is there in one
            # read: pyserial's read(n) waits for n bytes or the timeout, and socket://'s
            # in_waiting says only 0 or 1.
            port.timeout = 0
        elif self.pollable:
            port.close()
            raise TransportError(f"{self.port_name} has no descriptor to read")
        self.port = port

    open_nowait = open

    def fileno(self) -> int:
        if self.fd is None or self.port is None:
            raise TransportError("port is closed")
        return self.fd

    def read_nowait(self) -> bytes:
        """What the port holds now, from its descriptor; b"" when nothing is there."""
        fd = self.fd
        if fd is None or self.port is None:
            raise TransportError("port is closed")
        try:
            data = os.read(fd, RECV_SIZE)
        except (BlockingIOError, InterruptedError):
            return b""
        except OSError as exc:  # EIO: a pty whose far end closed; a USB adapter pulled out
            raise TransportError(f"read failed: {exc.strerror or exc}") from None
        if not data:
            raise TransportError("device reports readiness to read but returned no data (disconnected?)")
        return data

    def try_write(self, data: bytes) -> int:
        fd = self.fd
        if fd is None or self.port is None:
            raise TransportError("port is closed")
        try:
            return os.write(fd, data)
        except (BlockingIOError, InterruptedError):
            return 0
        except OSError as exc:
            if exc.errno == errno.EAGAIN:
                return 0
            raise TransportError(f"write failed: {exc.strerror or exc}") from None

    def read(self, timeout: float | None = READ_TIMEOUT) -> bytes:
        port = self.port
        if port is None:
            raise TransportError("port is closed")
        try:
            if self.fd is not None:
                poller = select.poll()
                poller.register(self.fd, select.POLLIN)
                if not poller.poll((READ_TIMEOUT if timeout is None else timeout) * 1000):
                    return b""
                return self.read_nowait()
            # loop://, rfc2217://: one byte (blocking up to the timeout), then the rest.
            data = port.read(1)
            if data:
                waiting = port.in_waiting
                if waiting:
                    data += port.read(waiting)
            return data
        except (serial.SerialException, OSError, ValueError) as exc:
            # ValueError: select() on a descriptor closed by close() from another thread.
            # A pty whose far end closed raises SerialException on read and a raw
            # OSError (EIO) from in_waiting; socket:// raises on peer close.
            raise TransportError(str(exc) or type(exc).__name__) from None

    def write(self, data: bytes) -> None:
        port = self.port
        if port is None:
            raise TransportError("port is closed")
        if self.fd is not None:
            self._write_fd(data)
            return
        try:
            port.write(data)
        except serial.SerialTimeoutException:
            raise WriteTimeout(f"device did not take the line within {WRITE_TIMEOUT:g} s") from None
        except (serial.SerialException, OSError) as exc:
            raise TransportError(str(exc) or type(exc).__name__) from None

    def _write_fd(self, data: bytes) -> None:
        """All of `data` through the descriptor, waiting with poll() at most WRITE_TIMEOUT
        for the port to take each part."""
        view = memoryview(data)
        poller = select.poll()
        poller.register(self.fd, select.POLLOUT)
        while view:
            sent = self.try_write(view)
            if sent:
                view = view[sent:]
            elif not poller.poll(WRITE_TIMEOUT * 1000):
                raise WriteTimeout(f"device did not take the line within {WRITE_TIMEOUT:g} s")

    def set_signals(self, dtr: bool | None, rts: bool | None) -> None:
        """Assert (True) or release (False) DTR and RTS; None leaves one as it is."""
        port = self.port
        if port is None:
            raise TransportError("port is closed")
        try:
            if dtr is not None:
                port.dtr = dtr
            if rts is not None:
                port.rts = rts
        except (serial.SerialException, OSError, ValueError) as exc:
            # A pty has no modem lines: ENOTTY / EINVAL.
            raise TransportError(f"{self.port_name} cannot set DTR/RTS: {getattr(exc, 'strerror', None) or exc}") from None

    def set_break(self, on: bool) -> None:
        """Start (True) or end (False) a BREAK; the caller times it."""
        port = self.port
        if port is None:
            raise TransportError("port is closed")
        try:
            port.break_condition = on
        except (serial.SerialException, OSError, ValueError) as exc:
            raise TransportError(f"{self.port_name} cannot send a BREAK: {getattr(exc, 'strerror', None) or exc}") from None

    # -- an RFC 2217 client's requests (gateway/rfc2217.py), on the I/O loop ---------------

    @property
    def baudrate(self) -> int | None:
        """The port's baud rate now (None while closed)."""
        port = self.port
        return port.baudrate if port is not None else None

    def set_baudrate(self, baud: int) -> None:
        """A new baud rate on the open port (tcsetattr); ValueError if the port refuses it."""
        self.configure(baudrate=baud)

    def configure(self, **settings) -> None:
        """Change pyserial settings of the open port: baudrate, bytesize, parity,
        stopbits, xonxoff, rtscts. ValueError names one the port does not take; a
        reopen puts the configured ones back."""
        port = self.port
        if port is None:
            raise TransportError("port is closed")
        for key, value in settings.items():
            if key not in ("baudrate", "bytesize", "parity", "stopbits", "xonxoff", "rtscts"):
                raise ValueError(f"unknown serial setting {key!r}")
            try:
                setattr(port, key, value)
            except (serial.SerialException, OSError) as exc:
                raise ValueError(f"{self.port_name} cannot set {key} = {value!r}: {getattr(exc, 'strerror', None) or exc}") from None

    def purge(self, input: bool, output: bool) -> None:
        """Drop what waits in the port's buffers: received and not read (`input`),
        written and not sent (`output`)."""
        port = self.port
        if port is None:
            raise TransportError("port is closed")
        try:
            if input:
                port.reset_input_buffer()
            if output:
                port.reset_output_buffer()
        except (serial.SerialException, OSError) as exc:
            raise TransportError(f"{self.port_name} cannot purge: {getattr(exc, 'strerror', None) or exc}") from None

    def wakeup(self) -> None:
        self.cancel()

    def cancel(self) -> None:
        port = self.port
        if port is not None and hasattr(port, "cancel_read"):
            try:
                port.cancel_read()
            except (serial.SerialException, OSError, AttributeError):
                pass

    def close(self) -> None:
        port, self.port = self.port, None
        if port is not None:
            try:
                port.close()
            except (serial.SerialException, OSError):
                pass

    def describe(self) -> str:
        return self.port_name
