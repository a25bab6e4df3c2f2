"""Flashing firmware in process: esptool as a library, through the device's own RFC 2217
server, one flash per device at a time (SPEC section 9, issue 14).

    POST /api/devices/NAME/flash   (server.py)  -> parse_request() -> Flashing.start()
    DELETE /api/devices/NAME/flash               -> Flashing.cancel()
    GET /api/devices/NAME/flash                  -> Flashing.status()

A `FlashJob` runs in a thread of its own, "flash:NAME":

1. an ephemeral `Rfc2217Server` for the device on 127.0.0.1:0 (gateway/rfc2217.py): it
   holds the device while esptool works, so WebSocket clients see the state `external`
   and cannot write, exactly as with a remote esptool;
2. esptool 5 as a library on `rfc2217://127.0.0.1:PORT` (pyserial's client, `open_port`:
   its read-timeout changes stay local): `detect_chip` (the classic
   DTR/RTS reset into the ROM loader), `run_stub`, `change_baud`, `attach_flash`,
   `write_flash` with the images as bytes (no file, no command line built from the
   request); esptool then lets go of the port, the chip still in its stub;
3. the server is stopped: the device is released and reopened by its link, and its
   clients see `connected`; then the gateway plays the device's own `reset` sequence on
   the loop, so every client sees the boot lines of the new firmware (a device whose
   reset is `none` is reset by esptool before the release instead).

Why through RFC 2217 and not a pyserial-like object over the transport, which
`ESPLoader` would also take: the RFC 2217 server already is the one way the device is
lent out (the device thread or the I/O loop stays its only owner; "external" mode,
refusing writes, reopening with the configured settings on release); pyserial's RFC 2217
client gives esptool a real port with its timeouts, `in_waiting`, DTR/RTS and baud rate
changes, which an adapter would have to reimplement; and the path is the one a remote
`esptool --port rfc2217://...` takes, so it is tested once for both. The price is a
loopback TCP hop and pyserial's reader thread, small against the UART's pace (see
bench/perf/flash.py).

Progress reaches the device's json clients as `{"type": "flash", "event": ...}` messages
(start, phase, log, progress, end; the job's fields are `FlashJob.describe`'s). A flash
ends `done`, `failed` (esptool's error, one line), or `cancelled` (DELETE, shutdown, or
the device removed or reopened anew under it). esptool's logger is one object for
the whole process (`esp_pylib.logger.EspLog.instance`): `_Router` is installed once and
hands each call to the job of the calling thread, so two devices can be flashed at once;
calls from any other thread go to Python's logging.

Cancelling sets a flag; the job's next esptool log call or progress update (at most one
flash block later: 16 KiB, 1.4 s at 115200 baud) raises `Cancelled`, and the job resets
the chip and releases the device as after a flash. If it has not ended within
CANCEL_GRACE seconds (esptool blocked in a read), the server is stopped under it: its
reads then fail and it ends.
"""

from __future__ import annotations

import base64
import binascii
import itertools
import logging
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from . import frames
from .device import Phase
from .rfc2217 import Rfc2217Server

if TYPE_CHECKING:
    from .app import Gateway

log = logging.getLogger(__name__)
esptool_log = logging.getLogger("gateway.flashing.esptool")  # esptool's output outside a job

MAX_IMAGE = 4 * 1024 * 1024  # bytes of image per request, all files together
MAX_FILES = 16
MAX_FLASH = 16 * 1024 * 1024  # the largest ESP8266 flash: no offset + size beyond it
SECTOR = 0x1000  # offsets are whole flash sectors (an unaligned one erases its sector's head)
MAX_BODY = (MAX_IMAGE + 2) // 3 * 4 + 65536  # the request: base64 images plus JSON around them
MAX_NAME = 100
BAUDS = (9600, 19200, 38400, 57600, 74880, 115200, 230400, 460800, 921600, 1500000, 2000000)
DEFAULT_BAUD = 460800
ROM_BAUD = 115200  # esptool syncs with the ROM at this rate, then changes it
CANCEL_GRACE = 3.0  # seconds a cancelled job has to end by itself
PROGRESS_EVERY = 0.1  # seconds between progress messages (the last one is always sent)
LINK_BACK = 10.0  # seconds to wait for the device to be reopened after the flash
LOG_LINE = 500  # characters of one esptool line passed on
# esptool's note that an rfc2217:// port has no USB ids, about the job's own port: not passed on.
NO_USB_NOTE = "Note: Failed to get VID/PID of a device on rfc2217://"


class FlashRequestError(ValueError):
    """The request is wrong (400): the message names the field and value."""


class FlashBusy(RuntimeError):
    """The device cannot be flashed now (409): one flash at a time, or it is lent out."""


class Cancelled(BaseException):
    """Raised in the job's thread from esptool's log calls once cancelled. A BaseException,
    like asyncio's CancelledError, so no `except Exception` in esptool swallows it."""


@dataclass(frozen=True)
class Image:
    offset: int
    name: str
    data: bytes


@dataclass(frozen=True)
class FlashRequest:
    images: tuple[Image, ...]  # sorted by offset, not overlapping
    baud: int

    @property
    def size(self) -> int:
        return sum(len(i.data) for i in self.images)


# -- the request --------------------------------------------------------------------------


def parse_offset(value: Any, where: str) -> int:
    """`"0x10000"`, `"65536"` or 65536: a flash offset, whole sectors."""
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise FlashRequestError(f"{where}: offset = {value!r}: give a number such as \"0x10000\"")
    if isinstance(value, int):
        offset = value
    else:
        text = value.strip()
        try:
            if not text.isascii() or "_" in text:
                raise ValueError
            offset = int(text, 16) if text[:2].lower() == "0x" else int(text, 10)
        except ValueError:
            raise FlashRequestError(f"{where}: offset = {value!r}: not a number (hex with 0x, or decimal)") from None
    if not 0 <= offset < MAX_FLASH:
        raise FlashRequestError(f"{where}: offset = {value!r}: must be from 0x0 to {MAX_FLASH - 1:#x}")
    if offset % SECTOR:
        raise FlashRequestError(f"{where}: offset = {value!r}: must be a multiple of {SECTOR:#x} (a flash sector)")
    return offset


def parse_request(body: dict, where: str = "POST /api/devices/NAME/flash") -> FlashRequest:
    """The JSON body of POST /api/devices/NAME/flash, checked:

        {"files": [{"offset": "0x0", "name": "app.bin", "data": BASE64}, ...], "baud": 460800}

    FlashRequestError naming the field and value at fault (after `where`)."""
    unknown = sorted(set(body) - {"files", "baud"})
    if unknown:
        raise FlashRequestError(f"{where}: unknown key {unknown[0]!r} (known: baud, files)")
    baud = body.get("baud", DEFAULT_BAUD)
    if isinstance(baud, bool) or not isinstance(baud, int) or baud not in BAUDS:
        raise FlashRequestError(f"{where}: baud = {baud!r}: one of {', '.join(map(str, BAUDS))}")
    files = body.get("files")
    if not isinstance(files, list) or not files:
        raise FlashRequestError(f'{where}: files: a list of {{"offset": "0x0", "name": "app.bin", "data": BASE64}}')
    if len(files) > MAX_FILES:
        raise FlashRequestError(f"{where}: files: {len(files)} files; at most {MAX_FILES}")
    images = []
    total = 0
    for n, item in enumerate(files):
        at = f"{where}: files[{n}]"
        if not isinstance(item, dict):
            raise FlashRequestError(f'{at}: an object {{"offset": "0x0", "name": "app.bin", "data": BASE64}}')
        unknown = sorted(set(item) - {"offset", "name", "data"})
        if unknown:
            raise FlashRequestError(f"{at}: unknown key {unknown[0]!r} (known: data, name, offset)")
        offset = parse_offset(item.get("offset", "0x0"), at)
        name = item.get("name", f"file{n}.bin")
        if not isinstance(name, str) or not name or len(name) > MAX_NAME or not name.isprintable():
            raise FlashRequestError(f"{at}: name = {name!r}: 1 to {MAX_NAME} printable characters")
        data = item.get("data")
        if not isinstance(data, str):
            raise FlashRequestError(f"{at} ({name}): data: the image as a base64 string")
        if len(data) > MAX_BODY:
            raise FlashRequestError(f"{at} ({name}): larger than {MAX_IMAGE} bytes")
        try:
            raw = base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise FlashRequestError(f"{at} ({name}): data is not valid base64 ({exc})") from None
        if not raw:
            raise FlashRequestError(f"{at} ({name}): data is empty")
        total += len(raw)
        if total > MAX_IMAGE:
            raise FlashRequestError(f"{where}: {total} bytes of image or more; at most {MAX_IMAGE} ({MAX_IMAGE // 1048576} MiB)")
        if offset + len(raw) > MAX_FLASH:
            raise FlashRequestError(f"{at} ({name}): {len(raw)} bytes at {offset:#x} end beyond {MAX_FLASH:#x}")
        images.append(Image(offset, name, raw))
    images.sort(key=lambda i: i.offset)
    for a, b in itertools.pairwise(images):
        if a.offset + len(a.data) > b.offset:
            raise FlashRequestError(f"{where}: {a.name} ({len(a.data)} bytes at {a.offset:#x}) overlaps "
                                    f"{b.name} at {b.offset:#x}")
    return FlashRequest(tuple(images), baud)


# -- esptool's logger ---------------------------------------------------------------------


_current = threading.local()  # .job: the FlashJob of this thread


def _plain(args: tuple) -> str:
    """esptool's message as plain text: Rich markup such as [bold] taken out."""
    text = " ".join(str(a) for a in args)
    if "[" in text:
        try:
            from rich.text import Text

            text = Text.from_markup(text).plain
        except Exception:  # not markup after all
            pass
    return text


def _router_class():
    from esp_pylib.logger import EspLogBase

    class _Router(EspLogBase):
        """esptool's logger for the whole process: each call goes to the job of the
        calling thread, or to Python's logging."""

        @staticmethod
        def _job() -> "FlashJob | None":
            return getattr(_current, "job", None)

        def print(self, *args, **kwargs) -> None:
            job = self._job()
            text = _plain(args) + str(kwargs.get("end", "\n"))
            if job is None:
                if text.strip():
                    esptool_log.info("%s", text.strip())
                return
            job.esptool_output(text)

        def _message(self, prefix: str, args: tuple, level: int) -> None:
            job = self._job()
            text = prefix + _plain(args)
            if job is None:
                esptool_log.log(level, "%s", text)
                return
            job.esptool_output(text + "\n", line=True)

        def note(self, *args) -> None:
            self._message("Note: ", args, logging.INFO)

        def hint(self, *args) -> None:
            self._message("Hint: ", args, logging.INFO)

        def warn(self, *args, suggestion: str | None = None) -> None:
            self._message("Warning: ", args, logging.WARNING)

        def err(self, *args, suggestion: str | None = None) -> None:
            self._message("Error: ", args, logging.ERROR)

        warning = warn
        error = err

        def debug(self, *args) -> None:
            pass

        def stage(self, finish: bool = False) -> None:
            job = self._job()
            if job is not None:
                job.check_cancelled()

        def set_verbosity(self, mode) -> None:
            pass

        def progress_bar(self, cur_iter: int, total_iters: int, prefix: str = "", suffix: str = "",
                         bar_length: int = 30) -> None:
            job = self._job()
            if job is not None:
                job.esptool_progress(cur_iter, total_iters)

        def progress(self, total: int, *args, **kwargs):
            job = self._job()
            if job is not None:
                job.esptool_bar(total)
            return super().progress(total, *args, **kwargs)

    return _Router


_install_lock = threading.Lock()
_router = None


def install_logger() -> None:
    """Make esptool's process-wide logger the router (once)."""
    global _router
    with _install_lock:
        from esp_pylib.logger import EspLog

        if _router is None:
            _router = _router_class()()
        if EspLog.instance is not _router:
            EspLog.instance = _router  # what esptool.logger.log.set_logger() does


# -- esptool's port -------------------------------------------------------------------------


def open_port(url: str):
    """pyserial's RFC 2217 client for esptool, made so that a change of its read timeout
    stays local. esptool sets a timeout around every command, and pyserial's client
    answers each change by negotiating every line setting with the server again (baud
    rate, data bits, parity, stop bits, then flow control), polling for the answers every
    50 ms: about 0.2 s per command, 20 s of a 256 KiB flash spent on ~100 small commands.
    RFC 2217 has no timeout (the client's reads wait on its own queue), so only a change
    of a line setting is negotiated here."""
    from serial import rfc2217

    class Port(rfc2217.Serial):
        _negotiated = None

        def _reconfigure_port(self):
            settings = (self._baudrate, self._bytesize, self._parity, self._stopbits, self._rtscts, self._xonxoff)
            if settings == self._negotiated and self._write_timeout is None:
                return  # (a write timeout it cannot do: super() says so, and esptool copes)
            super()._reconfigure_port()
            self._negotiated = settings

    port = Port()
    port.port = url
    port.open()
    return port


# -- one flash ------------------------------------------------------------------------------


class FlashJob:
    """One flash of one device, in a thread "flash:NAME". States: running, then done,
    failed or cancelled."""

    def __init__(self, gateway: "Gateway", name: str, request: FlashRequest, job_id: int, by: str,
                 send: Callable[[dict], None]):
        self.gateway = gateway
        self.device = name
        self.request: FlashRequest | None = request  # dropped once ended: the images are big
        self.baud = request.baud
        self.files = [{"name": i.name, "offset": f"{i.offset:#x}", "size": len(i.data)} for i in request.images]
        self._sizes = [len(i.data) for i in request.images]
        self.id = job_id
        self.by = by
        self._send = send  # a message to the device's json clients (from any thread)
        self.state = "running"
        self.phase = "starting"  # then connecting, writing (and verifying), resetting, releasing, ended
        self.error: str | None = None
        self.chip: str | None = None
        self.started = time.time()
        self.ended: float | None = None
        self.total = request.size
        self.bytes = 0
        self._file = -1  # the image esptool is writing (its progress bars, in order)
        self._write_started: float | None = None
        self._write_seconds = 0.0
        self._last_progress = 0.0
        self._sent = -1  # bytes in the last progress message
        self._partial = ""  # esptool output without its line end yet
        self._cancel = threading.Event()
        self._reason = "cancelled"  # the end's error when cancelled
        self._armed = False  # esptool calls raise Cancelled once cancelled (not while cleaning up)
        self.reset_after = True  # reset the device once it is back (not at shutdown)
        self._lock = threading.Lock()
        self.server = None  # the Rfc2217Server lending the device to esptool
        self._port = None  # esptool's end of it (pyserial's client, with its reader thread)
        self._esp = None  # esptool's loader object, once the chip answered
        self.link = gateway.links.get(name)  # the device's link when the flash began
        self.thread = threading.Thread(target=self._run, name=f"flash:{name}")

    # -- any thread ----------------------------------------------------------------------

    def start(self) -> None:
        self.thread.start()

    @property
    def running(self) -> bool:
        return self.state == "running"

    def cancel(self, reason: str = "cancelled") -> None:
        if not self._cancel.is_set():
            self._reason = reason
            self._cancel.set()

    def join(self, timeout: float) -> bool:
        if self.thread.ident is not None:
            self.thread.join(timeout)
        return not self.thread.is_alive()

    def force_stop(self, timeout: float) -> None:
        """The job did not end by itself after a cancel: take the device from esptool."""
        server = self.server
        if server is not None:
            log.warning("flash of %s: esptool did not stop within %.0f s; closing its connection", self.device, CANCEL_GRACE)
            try:
                server.stop(timeout)
            except Exception:
                log.exception("flash of %s: stopping its RFC 2217 server failed", self.device)

    def describe(self) -> dict:
        """The job as GET /api/devices/NAME/flash and the start/end messages show it."""
        with self._lock:
            end = self.ended or time.time()
            out = {
                "device": self.device, "id": self.id, "state": self.state, "phase": self.phase,
                "files": self.files, "baud": self.baud, "by": self.by, "chip": self.chip,
                "bytes": self.bytes, "total": self.total, "percent": self._percent(),
                "speed": self._speed(), "write_seconds": round(self._writing(), 3),
                "seconds": round(end - self.started, 3), "error": self.error,
            }
        return out

    def busy_message(self) -> str:
        return f"device {self.device} is being flashed (by {self.by}, {self.phase}, {self._percent():g} %); cancel it first"

    def _percent(self) -> float:
        return round(100.0 * self.bytes / self.total, 1) if self.total else 100.0

    def _writing(self) -> float:
        if self._write_started is None:
            return self._write_seconds
        return self._write_seconds + (time.monotonic() - self._write_started)

    def _speed(self) -> float:
        """Bytes of image written per second of writing (connecting and verifying not counted)."""
        seconds = self._writing()
        return round(self.bytes / seconds, 1) if seconds > 0 else 0.0

    # -- esptool's calls, on the job's thread ----------------------------------------------

    def check_cancelled(self) -> None:
        if self._armed and self._cancel.is_set():
            self._armed = False
            raise Cancelled()

    def esptool_output(self, text: str, line: bool = False) -> None:
        """esptool's printed text, passed on a line at a time; `line`: a message of its own
        (a note, a warning), which ends a line left open ("Connecting...")."""
        self.check_cancelled()
        if line and self._partial:
            text = "\n" + text
        text = self._partial + text
        *lines, self._partial = text.split("\n")
        for line in lines:
            line = line.rstrip()
            if line and not line.startswith(NO_USB_NOTE):
                self._event("log", line=line[:LOG_LINE])

    def esptool_bar(self, total: int) -> None:
        """A progress bar begins: in the writing phase, that of the next image."""
        self.check_cancelled()
        if self.phase == "writing":
            with self._lock:
                self._file += 1
                self._write_started = time.monotonic()

    def esptool_progress(self, current: int, total: int) -> None:
        self.check_cancelled()
        sizes = self._sizes
        if self.phase != "writing" or not 0 <= self._file < len(sizes) or total <= 0:
            return
        done_before = sum(sizes[:self._file])
        size = sizes[self._file]
        finished = current >= total
        with self._lock:
            # esptool counts the bytes it sends (compressed, padded): scaled to the image.
            self.bytes = done_before + min(size, size * current // total)
            if finished and self._write_started is not None:
                self._write_seconds += time.monotonic() - self._write_started
                self._write_started = None
        now = time.monotonic()
        if (finished and self.bytes != self._sent) or now - self._last_progress >= PROGRESS_EVERY:
            self._last_progress, self._sent = now, self.bytes
            with self._lock:
                msg = {"bytes": self.bytes, "total": self.total, "percent": self._percent(),
                       "speed": self._speed(), "file": self._file}
            self._event("progress", **msg)

    # -- the thread ----------------------------------------------------------------------

    def _event(self, event: str, **fields) -> None:
        self._send({"type": "flash", "event": event, "device": self.device, "id": self.id, **fields})

    def _set_phase(self, phase: str) -> None:
        with self._lock:
            self.phase = phase
        self._event("phase", phase=phase)

    def _run(self) -> None:
        _current.job = self
        self._event("start", **self.describe())
        log.info("flash of %s started by %s: %s at %d baud", self.device, self.by,
                 ", ".join(f"{f['name']} ({f['size']} bytes) at {f['offset']}" for f in self.files), self.baud)
        state, error = "done", None
        try:
            self._armed = True
            self._flash()
        except Cancelled:
            state, error = "cancelled", self._reason
        except Exception as exc:
            gone = self._gone()
            if gone and not self._cancel.is_set():
                self._reason = f"device {self.device} was removed or changed during the flash"
            if gone or self._cancel.is_set():
                state, error = "cancelled", self._reason  # the device went from under esptool
            else:
                state, error = "failed", _describe_error(exc)
                if not _expected(exc):
                    log.exception("flash of %s failed", self.device)
        finally:
            self._armed = False
        if self._partial.strip():
            self.esptool_output("\n")
        self._finish()
        with self._lock:
            self.request = self._esp = None  # the images; the latest job of each device is kept
            self.state, self.error = state, error
            self.ended = time.time()
            self.phase = "ended"
            if self._write_started is not None:
                self._write_seconds += time.monotonic() - self._write_started
                self._write_started = None
        log.info("flash of %s %s%s after %.1f s", self.device, state, f": {error}" if error and state == "failed" else "",
                 self.ended - self.started)
        self._event("end", **self.describe())
        _current.job = None

    def _flash(self):
        from esptool.cmds import attach_flash, detect_chip, run_stub, write_flash  # imported when first used

        install_logger()
        link = self.link
        if link is None or self.gateway.links.get(self.device) is not link:
            raise FlashBusy(f"device {self.device} was removed or changed")
        self._set_phase("connecting")
        self.server = Rfc2217Server(self.gateway, link, "127.0.0.1", 0, label=f"flash ({self.by})")
        self.server.start()
        host, port = self.server.address[:2]
        self.check_cancelled()
        self._port = open_port(f"rfc2217://{host}:{port}")
        esp = self._esp = detect_chip(self._port, ROM_BAUD, "default-reset")
        self.chip = esp.CHIP_NAME
        esp = self._esp = run_stub(esp)
        if self.baud != ROM_BAUD:
            esp.change_baud(self.baud)
        attach_flash(esp)
        self._set_phase("writing")
        write_flash(esp, [(i.offset, i.data) for i in self.request.images])

    def _gone(self) -> bool:
        """The device was removed, or reopened anew (PATCH): its link is not the flash's."""
        link = self.link
        return link is None or link.phase is Phase.STOPPED or self.gateway.links.get(self.device) is not link

    def _finish(self) -> None:
        """Give the device back: esptool's port closed, the server stopped (the link
        reopens the device), then the device's reset sequence played by the gateway."""
        self._set_phase("resetting")
        link = self.link
        gone = self._gone()
        own_reset = link is not None and link.config.reset_sequence not in ("", "none")
        if self._esp is not None and not own_reset and not gone:
            try:
                self._esp.hard_reset()
            except Exception as exc:
                log.info("flash of %s: reset by esptool failed: %s", self.device, exc)
        if self._port is not None:
            try:
                self._port.close()  # joins pyserial's reader thread
            except Exception as exc:
                log.info("flash of %s: closing esptool's port: %s", self.device, exc)
        if self.server is not None:
            self._set_phase("releasing")
            try:
                self.server.stop(5.0)
            except Exception:
                log.exception("flash of %s: stopping its RFC 2217 server failed", self.device)
        if gone or not own_reset or self.server is None or not self.reset_after:
            return
        if not link.wait_connected(LINK_BACK):
            log.warning("flash of %s: the device was not reopened within %.0f s; not reset", self.device, LINK_BACK)
            return
        self.gateway.manager.call(_reset, link, self.device)


def _reset(link, name: str) -> None:
    """Loop: the device's own reset sequence, so its clients see the firmware boot."""
    error = link.signal("reset", None)
    if error is not None:
        log.info("flash of %s: no reset after it: %s", name, error)


def _expected(exc: BaseException) -> bool:
    """A failure worth one line (esptool's own errors, a lost port), not a traceback."""
    from esptool.util import FatalError
    from serial import SerialException

    return isinstance(exc, (FatalError, SerialException, OSError, FlashBusy))


def _describe_error(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    first = text.splitlines()[0]
    return first if len(first) <= LOG_LINE else first[:LOG_LINE] + "…"


# -- the gateway's flashes ------------------------------------------------------------------


class Flashing:
    """Every flash of a gateway: at most one running per device. Owned by the Gateway,
    which stops it (cancel, join) at shutdown."""

    def __init__(self, gateway: "Gateway"):
        self.gateway = gateway
        self._lock = threading.Lock()
        self._jobs: dict[str, FlashJob] = {}  # the latest job of each device
        self._ids = itertools.count(1)
        self._closed = False
        gateway.device_watchers.append(self._device_event)

    def start(self, name: str, request: FlashRequest, by: str) -> FlashJob:
        """Start flashing device `name`. KeyError: no such device; FlashBusy: a flash
        runs on it, it is lent out, or it cannot be put into its bootloader."""
        gw = self.gateway
        link = gw.links.get(name)
        if link is None:
            raise KeyError(name)
        if not getattr(link.transport, "signals", False):
            raise FlashBusy(f"device {name} cannot carry signals (DTR, RTS): esptool could not reset it into "
                            f"its bootloader over a {link.config.kind}:// link")
        with self._lock:
            if self._closed:
                raise FlashBusy("the gateway is shutting down")
            old = self._jobs.get(name)
            if old is not None and old.running:
                raise FlashBusy(old.busy_message())
            if link.external is not None or link.state.value == "external":
                raise FlashBusy(f"device {name} is held by {link.external or 'an RFC 2217 client'}; "
                                "flash it once it is released")
            if link.state.value != "connected":
                raise FlashBusy(f"device {name} is {link.state.value}")
            hub = link.hub
            job = FlashJob(gw, name, request, next(self._ids), by, lambda msg: self._send(hub, msg))
            self._jobs[name] = job
        job.start()
        return job

    def status(self, name: str) -> dict:
        with self._lock:
            job = self._jobs.get(name)
        if job is None:
            return {"device": name, "state": "idle"}
        return job.describe()

    def cancel(self, name: str, timeout: float = CANCEL_GRACE + 5.0) -> dict:
        """Cancel the running flash of `name` and wait for it to end (at most `timeout`);
        FlashBusy when none runs."""
        with self._lock:
            job = self._jobs.get(name)
        if job is None or not job.running:
            raise FlashBusy(f"no flash is running on device {name}")
        self._stop(job, timeout)
        return job.describe()

    def stop(self, timeout: float) -> None:
        """Cancel every flash and join its thread (Gateway.shutdown)."""
        deadline = time.monotonic() + timeout
        with self._lock:
            self._closed = True
            jobs = list(self._jobs.values())
        for job in jobs:
            job.reset_after = False
            job.cancel()
        for job in jobs:
            self._stop(job, max(0.1, deadline - time.monotonic()))

    @staticmethod
    def _stop(job: FlashJob, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        job.cancel()
        if job.join(min(CANCEL_GRACE, timeout)):
            return
        job.force_stop(max(0.1, deadline - time.monotonic()))
        if not job.join(max(0.1, deadline - time.monotonic())):
            log.warning("flash of %s: thread %s did not stop within %.1f s", job.device, job.thread.name, timeout)

    def busy(self, name: str) -> str | None:
        """Why device `name` cannot be flashed now, before a request is read (or None)."""
        with self._lock:
            job = self._jobs.get(name)
        return job.busy_message() if job is not None and job.running else None

    def _device_event(self, event: dict) -> None:
        """Loop: a device being flashed was removed or reopened with new settings (its
        link replaced): cancel the flash (not waited for here)."""
        name = event.get("device")
        with self._lock:
            job = self._jobs.get(name)
        if job is not None and job.running and job.link is not None and self.gateway.links.get(name) is not job.link:
            job.cancel(f"device {name} was removed or changed during the flash")
            if job.server is not None:
                job.server.stop()  # on the loop it only closes: esptool's next read fails at once

    def _send(self, hub, msg: dict) -> None:
        """Any thread: `msg` to the device's json clients, on the loop."""
        loop = self.gateway.manager
        if loop.in_loop():
            _deliver(hub, msg)
        else:
            loop.call(_deliver, hub, msg)


def _deliver(hub, msg: dict) -> None:
    import json

    frame = [frames.text(json.dumps(msg, separators=(",", ":")))]
    for sub in hub.subscribers():
        if sub.fmt == "json":
            sub.deliver(frame)
