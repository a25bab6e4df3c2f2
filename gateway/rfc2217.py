"""An RFC 2217 server for one device: a remote (or in-process) esptool, miniterm or any
pyserial `rfc2217://` client gets the port to itself, while the gateway's WebSocket
clients keep watching what the device prints.

    server = Rfc2217Server(gateway, link, "127.0.0.1", 4001)   # port 0: any free port
    server.start()              # binds now (OSError if it cannot), then serves on the loop
    server.address              # ("127.0.0.1", 4001): what was bound
    server.holder               # "127.0.0.1:50312" (or the label) while a client holds it
    server.stop(timeout)

Everything runs on the I/O loop (gateway/manager.py): the listening socket and the one
connection are registered with it, and nothing here blocks. pyserial's
`serial.rfc2217.PortManager` does the Telnet and RFC 2217 work: its `filter()` takes
the bytes the client sent apart into data for the device and requests, which it
applies to a small serial-like object (`PortAdapter`) whose setters hand them to the
device link's transport (baud rate, data bits, parity, stop bits, flow control, DTR,
RTS, BREAK, purge), and answers them through `Session.write`. The device's bytes go
back escaped (an IAC doubled, as PortManager's `escape()` does).

One client at a time: a second is told why in plain text, one line, and closed. While a
client holds the port the device link is in its external mode (gateway/device.py):
WebSocket clients see `{"type": "status", "state": "external", "by": LABEL}`, cannot
write, and still get every line; when the client goes (or vanishes), the link reopens
the port with its configured settings and they see `connected`.

The reset sequences esptool sends (esptool resets a board into its ROM loader, and out
again, with DTR and RTS) arrive over a network late and jittery, which breaks their
timing: between esptool's "DTR asserted" and "RTS released" the board sees both lines
asserted, which lets it out of reset with GPIO0 high, so it boots its firmware instead
of the loader. `SignalShaper` recognises the sequences and performs them locally with
the right timing, as Espressif's `esp_rfc2217_server` does, and passes every other
change through as it comes (a plain client's DTR and RTS reach the port unchanged):

- the chip is held in reset (RTS asserted, DTR released) for at least MIN_RESET before
  a change lets it out, however soon the change arrives;
- DTR asserted while the chip is held in reset is esptool's way into the ROM loader:
  RTS is released at the same moment (EN high with GPIO0 low), and that state is held
  for BOOT_HOLD before the client's next changes apply.

With these, esptool works through the gateway with its defaults; a client on a slow
network may add `?ign_set_control` to its URL (`rfc2217://HOST:PORT?ign_set_control`)
so that it does not wait for the answer to each DTR/RTS change.

Flow control: the client's bytes wait in the device link's write queue; above
IN_BACKLOG bytes waiting the connection is not read until they are written. Above
OUT_HIGH device bytes waiting for the client, a serial port is not read until half of
them went (its own buffer fills meanwhile, as with a slow reader on the port itself);
a device that cannot be paused (sim://) piles up to OUT_LIMIT, then the client is closed.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import threading
import time
from typing import TYPE_CHECKING

import serial
from serial import rfc2217 as telnet

from .manager import EPOLLERR, EPOLLHUP, EPOLLIN, EPOLLOUT, Manager, Timer

if TYPE_CHECKING:
    from .device import DeviceLink, WriteRequest

log = logging.getLogger(__name__)

RECV_SIZE = 16384
IN_BACKLOG = 65536  # client bytes waiting for the device before the client is not read
SEND_BUFFER = 256 * 1024  # the kernel's share of what waits for the client (not autotuned to MiBs)
OUT_HIGH = 256 * 1024  # device bytes waiting for the client before a serial port is not read
OUT_LIMIT = 4 << 20  # device bytes waiting for a client that does not read: it is closed
KEEPALIVE_IDLE = 30  # seconds of silence before the kernel asks a client whether it is there
MIN_RESET = 0.1  # seconds the chip is held in reset (EN low) at least
BOOT_HOLD = 0.05  # seconds GPIO0 is held low after EN goes high (esptool's reset_delay)
IAC = telnet.IAC


class SignalShaper:
    """DTR and RTS as the client asks for them, applied to the port as they come except
    for esptool's reset sequences, whose timing is kept here (the module docstring).
    `apply(dtr, rts)` sets the port's lines; True is asserted (pyserial's convention).
    Loop thread only."""

    def __init__(self, loop: Manager, apply, clock=time.monotonic):
        self.loop = loop
        self._apply = apply
        self._clock = clock
        self.wanted: tuple[bool, bool] | None = None  # (dtr, rts) the client asked for
        self.applied: tuple[bool, bool] | None = None  # what the port has
        self._reset_since = 0.0  # when the chip went into reset (applied == IN_RESET)
        self._timer: Timer | None = None  # a hold in progress: changes wait for it
        self._dtr_in_reset = False  # the client asserted DTR while the chip was held in reset
        self.bootloader_entries = 0  # recognised esptool entries into the ROM loader

    IN_RESET = (False, True)  # RTS asserted, DTR released: EN low, GPIO0 high

    def set(self, dtr: bool | None = None, rts: bool | None = None) -> None:
        base = self.wanted or self.applied or (False, False)
        self.wanted = (base[0] if dtr is None else dtr, base[1] if rts is None else rts)
        if self.wanted[0] and self.applied == self.IN_RESET:
            self._dtr_in_reset = True  # remembered: later changes may arrive before it is applied
        if self._timer is None:
            self._step()

    def cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _hold(self, seconds: float) -> None:
        self._timer = self.loop.call_later(seconds, self._held)

    def _held(self) -> None:
        self._timer = None
        self._step()

    def _step(self) -> None:
        target = self.wanted
        if target is None or target == self.applied:
            return
        hold = 0.0
        if self.applied == self.IN_RESET:  # the change lets the chip out of reset
            left = self._reset_since + MIN_RESET - self._clock()
            if left > 0:
                self._hold(left)
                return
            if self._dtr_in_reset:  # GPIO0 low as EN goes high: into the ROM loader, RTS released with it
                target = (True, False)
                hold = BOOT_HOLD
                self.bootloader_entries += 1
        self._apply(*target)
        self.applied = target
        self._dtr_in_reset = False
        if target == self.IN_RESET:
            self._reset_since = self._clock()
        if hold:
            self._hold(hold)


class PortAdapter:
    """The serial-like object PortManager drives: its setters hand each request to the
    device link's transport on the loop. What the transport cannot do is logged and
    left as it was (PortManager then answers with the value in effect)."""

    def __init__(self, session: "Session"):
        self._session = session
        self._link = session.link
        self._settings = {"bytesize": 8, "parity": serial.PARITY_NONE, "stopbits": serial.STOPBITS_ONE,
                          "xonxoff": False, "rtscts": False}
        self._baudrate = getattr(self._link.transport, "baudrate", None) or 115200
        self._break = False

    # modem lines the client may watch: not polled (an idle gateway wakes no thread)
    cts = dsr = ri = cd = False

    def _call(self, what: str, fn, *args, setting: bool = False) -> bool:
        """`fn(*args)`, after the client's bytes that came before the request; False when
        it failed (logged). A setting the port refuses raises ValueError, which
        PortManager answers with the value in effect."""
        self._session.flush_data()
        try:
            fn(*args)
            return True
        except ValueError:
            if setting:
                raise
            log.info("rfc2217 %s: %s refused", self._session.label, what)
            return False
        except Exception as exc:  # TransportError: the device went away; no method
            log.info("rfc2217 %s: %s: %s", self._session.label, what, exc)
            return False

    @property
    def baudrate(self) -> int:
        return self._baudrate

    @baudrate.setter
    def baudrate(self, baud: int) -> None:
        set_baudrate = getattr(self._link.transport, "set_baudrate", None)
        if set_baudrate is None:
            self._baudrate = baud  # a transport with no baud rate (sim:// before its loader): kept
            return
        if self._call(f"baud rate {baud}", set_baudrate, baud, setting=True):
            self._baudrate = baud

    def _configure(self, key: str, value) -> None:
        configure = getattr(self._link.transport, "configure", None)
        if configure is None or self._call(f"{key} {value!r}", lambda: configure(**{key: value}), setting=True):
            self._settings[key] = value

    def __getattr__(self, key: str):
        settings = self.__dict__.get("_settings", {})
        if key in settings:
            return settings[key]
        raise AttributeError(key)

    def __setattr__(self, key: str, value) -> None:
        if key in ("bytesize", "parity", "stopbits", "xonxoff", "rtscts"):
            self._configure(key, value)
        else:
            super().__setattr__(key, value)

    @property
    def dtr(self) -> bool:
        return bool((self._session.shaper.wanted or (False, False))[0])

    @dtr.setter
    def dtr(self, on: bool) -> None:
        self._session.flush_data()
        self._session.shaper.set(dtr=bool(on))

    @property
    def rts(self) -> bool:
        return bool((self._session.shaper.wanted or (False, False))[1])

    @rts.setter
    def rts(self, on: bool) -> None:
        self._session.flush_data()
        self._session.shaper.set(rts=bool(on))

    @property
    def break_condition(self) -> bool:
        return self._break

    @break_condition.setter
    def break_condition(self, on: bool) -> None:
        set_break = getattr(self._link.transport, "set_break", None)
        if set_break is not None and self._call("BREAK", set_break, bool(on)):
            self._break = bool(on)

    def reset_input_buffer(self) -> None:
        self._purge(True, False)

    def reset_output_buffer(self) -> None:
        self._purge(False, True)

    def _purge(self, input: bool, output: bool) -> None:
        purge = getattr(self._link.transport, "purge", None)
        if purge is not None:
            self._call("purge", purge, input, output)


class Session:
    """The one client connection holding the device, on the loop (its only owner)."""

    def __init__(self, server: "Rfc2217Server", sock: socket.socket, peer: str):
        self.server = server
        self.loop = server.loop
        self.link = server.link
        self.sock = sock
        self.fd = sock.fileno()
        self.peer = peer
        self.label = server.label or peer
        self._out = bytearray()  # bytes for the client not sent yet
        self._data = bytearray()  # the client's bytes for the device, from this read
        self._backlog = 0  # the client's bytes waiting in the link's queue
        self._reading = True
        self._events = EPOLLIN  # what the loop watches for
        self.closed = False
        self.bytes_in = self.bytes_out = 0
        self.shaper = SignalShaper(self.loop, self._set_signals)
        self.manager: telnet.PortManager | None = None

    def start(self) -> str | None:
        """Take the device; an error message (for the client) when it cannot."""
        error = self.link.take_external(self)
        if error is not None:
            return error
        self.loop.register(self.fd, self, EPOLLIN)
        # Its constructor asks the client for the Telnet options (through write()).
        self.manager = telnet.PortManager(PortAdapter(self), self)
        return None

    # -- PortManager's connection -----------------------------------------------------

    def write(self, data: bytes) -> None:
        """Telnet and RFC 2217 answers, and the device's escaped bytes."""
        if self.closed:
            return
        if self._out:
            self._out += data
        else:
            try:
                sent = self.sock.send(data)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError as exc:
                self.end(f"send failed: {exc.strerror or exc}")
                return
            if sent < len(data):
                self._out += data[sent:]
        if len(self._out) > OUT_HIGH:
            if len(self._out) > OUT_LIMIT:
                self.end(f"it read nothing while {OUT_LIMIT} bytes waited for it")
                return
            self.link.external_hold(self, True)
        self._update_events()

    # -- the device link's holder (gateway/device.py: ExternalHolder) ------------------

    def on_bytes(self, data: bytes) -> None:
        self.bytes_out += len(data)
        self.write(data.replace(IAC, IAC + IAC) if IAC in data else data)

    def acked(self, request: "WriteRequest") -> None:
        self._backlog -= len(request.data)
        if not self._reading and self._backlog <= IN_BACKLOG // 2 and not self.closed:
            self._reading = True
            self._update_events()

    def failed(self, request: "WriteRequest", error: str) -> None:
        self.acked(request)  # lost with the device; nothing to tell an RFC 2217 client

    def _set_signals(self, dtr: bool, rts: bool) -> None:
        transport = self.link.transport
        if not getattr(transport, "signals", False):
            return
        try:
            transport.set_signals(dtr, rts)
        except Exception as exc:  # TransportError: no modem lines (a pty), or the device went away
            log.info("rfc2217 %s: DTR/RTS: %s", self.label, exc)

    # -- the socket (loop) ----------------------------------------------------------------

    def _update_events(self) -> None:
        events = (EPOLLIN if self._reading else 0) | (EPOLLOUT if self._out else 0)
        if events != self._events and not self.closed:
            self._events = events
            self.loop.modify(self.fd, events)

    def on_io(self, events: int) -> None:
        if self.closed:
            return
        if events & EPOLLOUT and self._out:
            try:
                sent = self.sock.send(self._out)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError as exc:
                self.end(f"send failed: {exc.strerror or exc}")
                return
            del self._out[:sent]
            if len(self._out) <= OUT_HIGH // 2:
                self.link.external_hold(self, False)
            if not self._out:
                self._update_events()
        if events & (EPOLLHUP | EPOLLERR) and not self._reading:
            self.end("it vanished")  # not read meanwhile: its last bytes are lost with it
            return
        if events & (EPOLLIN | EPOLLHUP | EPOLLERR) and self._reading:
            try:
                data = self.sock.recv(RECV_SIZE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self.end(f"it vanished: {exc.strerror or exc}")
                return
            if not data:
                self.end("it closed the connection")
                return
            try:
                self._received(data)
            except Exception:  # a bug here must not leave the device held
                log.exception("rfc2217 %s: handling its bytes failed", self.label)
                self.end("the gateway failed on its request")

    def _received(self, data: bytes) -> None:
        self.bytes_in += len(data)
        manager = self.manager
        i, n = 0, len(data)
        while i < n:
            if manager.mode == telnet.M_NORMAL and manager.suboption is None:
                # Plain data up to the next IAC passes whole (PortManager.filter goes byte by byte).
                j = data.find(IAC, i)
                if j < 0:
                    self._data += data[i:]
                    break
                self._data += data[i:j]
                i = j
            # A Telnet command or an RFC 2217 request: PortManager, a byte at a time.
            self._data += b"".join(manager.filter(data[i:i + 1]))
            i += 1
            if self.closed:
                return
        self.flush_data()

    def flush_data(self) -> None:
        """Hand the client's bytes so far to the device (before a request, and after a read)."""
        if self._data and not self.closed:
            data = bytes(self._data)
            self._data.clear()
            self._backlog += len(data)
            self.link.external_write(self, data)
            if self._backlog > IN_BACKLOG and self._reading:
                self._reading = False
                self._update_events()

    def end(self, why: str) -> None:
        """Close the connection and give the device back (loop)."""
        if self.closed:
            return
        self.closed = True
        self.shaper.cancel()
        self.loop.unregister(self.fd)
        try:
            if self._out:
                self.sock.send(self._out)  # what fits; the rest is lost with the client
        except OSError:
            pass
        self.sock.close()
        log.info("rfc2217 %s: session on device %s ended: %s (%d bytes in, %d out)",
                 self.label, self.link.name, why, self.bytes_in, self.bytes_out)
        self.link.release_external(self)
        self.server._ended(self)


def _keepalive(sock: socket.socket) -> None:
    """Let the kernel find a client that vanished without a word (a cable pulled, a
    laptop asleep): probes after KEEPALIVE_IDLE s of silence, the session ends some 30 s
    later. No timer of ours."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for name, value in (("TCP_KEEPIDLE", KEEPALIVE_IDLE), ("TCP_KEEPINTVL", 10), ("TCP_KEEPCNT", 3)):
        if hasattr(socket, name):
            sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, name), value)


class _Listener:
    __slots__ = ("server",)

    def __init__(self, server: "Rfc2217Server"):
        self.server = server

    def on_io(self, events: int) -> None:
        self.server._accept()


class Rfc2217Server:
    """An RFC 2217 port for one device link (the module docstring). `label`, when given,
    names the holder in clients' `external` status instead of the peer's address.
    `allow`: networks a client may connect from (ipaddress networks or strings such as
    "192.168.1.0/24"); empty: any (the config allows that only on loopback, or with
    `[auth] anonymous = true`)."""

    def __init__(self, gateway, link: "DeviceLink", host: str = "127.0.0.1", port: int = 0, *,
                 label: str | None = None, allow=()):
        self.gateway = gateway
        self.link = link
        self.loop: Manager = link.loop if link.loop is not None else gateway.manager
        self.host = host
        self.port = port
        self.label = label
        self.allow = tuple(ipaddress.ip_network(a, strict=False) if isinstance(a, str) else a for a in allow)
        self.address: tuple[str, int] | None = None
        self.sessions = 0  # sessions served
        self.refused = 0  # clients turned away
        self._sock: socket.socket | None = None
        self._session: Session | None = None
        self._stopped = False

    @property
    def holder(self) -> str | None:
        session = self._session
        return session.label if session is not None else None

    def __repr__(self) -> str:
        return f"<Rfc2217Server {self.link.name} {self.address}>"

    # -- any thread ---------------------------------------------------------------------

    def start(self) -> "Rfc2217Server":
        """Bind and listen now (OSError when the address is taken or not ours), then
        accept on the loop."""
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self.host, self.port))
            sock.listen(4)
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        self._sock = sock
        self.address = sock.getsockname()[:2]
        self._on_loop(lambda: self.loop.register(sock.fileno(), _Listener(self), EPOLLIN))
        log.info("device %s: RFC 2217 on %s:%d", self.link.name, *self.address)
        return self

    def stop(self, timeout: float = 2.0) -> None:
        """Stop listening, end the session (the device goes back to the bridge); safe to
        call twice, and from the loop."""
        if self._stopped:
            return
        self._stopped = True
        self._on_loop(self._close, timeout)

    def _on_loop(self, fn, timeout: float = 2.0) -> None:
        if self.loop.in_loop():
            fn()
            return
        done = threading.Event()

        def run() -> None:
            try:
                fn()
            finally:
                done.set()

        if self.loop.call(run):
            done.wait(timeout)
        else:
            fn()  # the loop has ended: nothing else uses these sockets now

    # -- loop -----------------------------------------------------------------------------

    def _close(self) -> None:
        if self._session is not None:
            self._session.end("the RFC 2217 server stopped")
        if self._sock is not None:
            self.loop.unregister(self._sock.fileno())
            self._sock.close()
            self._sock = None

    def _accept(self) -> None:
        if self._sock is None:
            return
        try:
            sock, address = self._sock.accept()
        except OSError:  # gone before we took it
            return
        peer = f"[{address[0]}]:{address[1]}" if ":" in address[0] else f"{address[0]}:{address[1]}"
        error = None
        if self.allow and not any(ipaddress.ip_address(address[0].split("%")[0]) in net for net in self.allow):
            error = f"{peer} is not in rfc2217_allow of device {self.link.name}"
        elif self._session is not None:
            error = f"device {self.link.name} is held by {self._session.label}; one RFC 2217 client at a time"
        if error is None:
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER)
            _keepalive(sock)
            session = Session(self, sock, peer)
            error = session.start()
            if error is None:
                self._session = session
                self.sessions += 1
                log.info("rfc2217 %s: holds device %s", session.label, self.link.name)
                return
        self._refuse(sock, peer, error)

    def _refuse(self, sock: socket.socket, peer: str, error: str) -> None:
        """Say why in one line of plain text (a terminal shows it; pyserial's client
        fails its open), then close."""
        self.refused += 1
        log.info("rfc2217 %s: refused: %s", peer, error)
        try:
            sock.setblocking(False)
            sock.send(f"gateway: refused: {error}\r\n".encode("utf-8", "replace"))
        except OSError:
            pass
        sock.close()

    def _ended(self, session: Session) -> None:
        if self._session is session:
            self._session = None
