"""`sim://`: the simulated device, in process, behind the same interface as a real one.

No thread of its own: `read()` waits for answers to lines written, or for the next
periodic telemetry line, whichever comes first; with `timeout=None` it waits for
nothing else (an idle simulator wakes its device thread only for its telemetry). `GO N` bursts are produced lazily, a
chunk per read, so a large N costs no memory. The device's end of the link (faults,
pacing, replay) is gateway/simulator/link.py; this module only waits and hands bytes over.

Options: `interval` (seconds between telemetry lines, default 1, or 0 with `replay`),
`baud` (pace output at baud/10 bytes per second), `faults` (a schedule such as
`drop@30,stall:2@20`), `replay` (a recording's path) and `speed` (of the replay; 0: as
fast as possible). A dropped link (`FAULT DROP [SECONDS]`) makes the next `read()` raise
TransportError, so the gateway sees the device vanish mid-line; `open()` fails for
SECONDS, then opens a fresh device (uptime 0, LED off, the replay from its start).

Signals (`set_signals`, `set_break`) go to the link's model of the board's auto-reset
circuit (gateway/simulator/link.py): a reset reboots it, the bootloader sequence leaves
it in its ROM loader, which speaks esptool's protocol (gateway/simulator/romloader.py)
over the same `write()` and `read()`, raw bytes both ways. `set_baudrate(baud)` records
the host side's UART rate (`baudrate`; the ROM autobauds to it) and `purge(input,
output)` drops what the device sent and was not read yet (input; output has nothing to
drop: `write()` hands bytes to the device at once). Called on the I/O loop; they all
take the lock only briefly.

`flash=PATH` keeps the board's 4 MiB flash in a file (gateway/simulator/flash.py: read
at the first open, written when it changed, at each boot and at close); without it the
flash is in memory, for as long as the transport lives (a reopen keeps it, as a
board's flash survives a reset).
"""

from __future__ import annotations

import logging
import threading
import time
from urllib.parse import SplitResult

from ..simulator import flash as flash_file
from ..simulator.device import SimulatedDevice
from ..simulator.link import Link, check_baud, parse_schedule
from ..simulator.replay import Replay, check_recording, check_speed, read_recording
from .base import READ_TIMEOUT, Transport, TransportError

log = logging.getLogger(__name__)

CHUNK = 65536
OPTIONS = ("interval", "baud", "faults", "replay", "speed", "flash")
DEFAULT_BAUDRATE = 115200


class SimTransport(Transport):
    wakes_up = True
    signals = True  # DTR, RTS, BREAK: the simulated auto-reset circuit

    def __init__(self, url: SplitResult, options: dict[str, str]):
        super().__init__(url, options)
        if url.netloc or url.path not in ("", "/"):
            raise ValueError("sim:// takes no host or path, only options such as ?interval=0.5")
        for key in options:
            if key not in OPTIONS:
                raise ValueError(f"unknown sim option {key!r} (known: {', '.join(OPTIONS)})")
        self.replay_path = options.get("replay") or None
        self.interval = 0.0 if self.replay_path else 1.0
        if "interval" in options:
            value = options["interval"]
            try:
                self.interval = float(value)
            except ValueError:
                raise ValueError(f"interval must be a number of seconds, not {value!r}") from None
            if not 0 <= self.interval < 1e6:
                raise ValueError(f"interval must be between 0 and 1e6 seconds, not {value!r}")
        self.baud = check_baud(options.get("baud", 0))
        self.baudrate = int(self.baud) or DEFAULT_BAUDRATE  # the host side's UART, as last set
        self.schedule = parse_schedule(options.get("faults", ""))
        if "speed" in options and not self.replay_path:
            raise ValueError("speed is the replay's: give replay=PATH too")
        self.speed = check_speed(options.get("speed", 1.0))
        if self.replay_path:
            # The one piece of I/O before open(): a bad recording fails the config
            # (naming the file and line) instead of making a device that never connects.
            check_recording(self.replay_path)
        self.flash_path = options.get("flash") or None
        if self.flash_path:
            flash_file.check_path(self.flash_path)  # a bad path fails the config, too
        self.flash: flash_file.FlashImage | None = None  # loaded at the first open
        self._cond = threading.Condition()
        self.link: Link | None = None
        self._down_until = 0.0  # after FAULT DROP SECONDS: open() fails until then
        self._woken = False  # wakeup() or cancel() since the last read (under _cond)

    @property
    def device(self) -> SimulatedDevice | None:
        return self.link.device if self.link is not None else None

    def open(self) -> None:
        with self._cond:
            left = self._down_until - time.monotonic()
            if left > 0:
                raise TransportError(f"simulated device is down for {left:.1f} s more (FAULT DROP)")
            if self.link is not None:
                self.link.close()
            replay = None
            if self.replay_path:
                replay = Replay(read_recording(self.replay_path), self.speed, time.monotonic())
                if replay.error:
                    raise TransportError(f"cannot replay: {replay.error}")
            self.baudrate = int(self.baud) or DEFAULT_BAUDRATE  # a port opens at its configured rate
            if self.flash is None:
                self.flash = flash_file.load(self.flash_path) if self.flash_path else flash_file.FlashImage()
            self.link = Link(SimulatedDevice(self.interval), baud=self.baud, schedule=self.schedule, replay=replay,
                             flash=self.flash, save_flash=self._save_flash)
            self.link.set_host_baud(self.baudrate)

    def _save_flash(self, image: flash_file.FlashImage) -> None:
        if self.flash_path:
            try:
                flash_file.save(image, self.flash_path)
            except OSError as exc:
                log.warning("sim: cannot save the flash to %s: %s", self.flash_path, exc)

    def read(self, timeout: float | None = READ_TIMEOUT) -> bytes:
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while True:
                link = self.link
                if link is None:
                    raise TransportError("simulator is closed")
                data = link.send(CHUNK)
                if data:
                    return data
                if link.replay is not None and link.replay.error:
                    log.warning("sim: replay of %s ended early: %s", self.replay_path, link.replay.error)
                    link.replay.error = None
                if link.dropped:
                    self._down_until = time.monotonic() + link.down_for
                    raise TransportError("the simulated link dropped (FAULT DROP)")
                if self._woken:
                    self._woken = False
                    return b""
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return b""
                wait = link.wait()
                if wait is None:
                    self._cond.wait(remaining)
                else:
                    self._cond.wait(wait if remaining is None else min(remaining, wait))

    def write(self, data: bytes) -> None:
        with self._cond:
            link = self.link
            if link is None:
                raise TransportError("simulator is closed")
            if link.dropped:
                raise TransportError("the simulated link dropped (FAULT DROP)")
            link.receive(data)
            self._cond.notify()

    def set_signals(self, dtr: bool | None, rts: bool | None) -> None:
        with self._cond:
            if self.link is None:
                raise TransportError("simulator is closed")
            self.link.set_signals(dtr, rts)
            self._cond.notify()

    def set_baudrate(self, baud: int) -> None:
        """The host side's UART rate (an RFC 2217 client's, for one)."""
        with self._cond:
            self.baudrate = int(baud)
            if self.link is not None:
                self.link.set_host_baud(self.baudrate)

    def purge(self, input: bool = True, output: bool = True) -> None:
        """Drop the bytes the device sent that were not read yet (`input`); `output`
        has nothing waiting: written bytes reach the device at once."""
        with self._cond:
            if input and self.link is not None:
                self.link.discard_output()

    def set_break(self, on: bool) -> None:
        with self._cond:
            if self.link is None:
                raise TransportError("simulator is closed")
            self.link.set_break(on)

    def cancel(self) -> None:
        with self._cond:
            self._woken = True
            self._cond.notify_all()

    def close(self) -> None:
        with self._cond:
            if self.link is not None:
                self.link.close()
            self.link = None
            self._cond.notify_all()
