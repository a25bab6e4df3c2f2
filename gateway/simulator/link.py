"""The simulated device's end of a link, with no I/O: answers, telemetry, faults, a baud
rate, a replay.

`SimulatedDevice` (device.py) knows the line protocol; a `Link` wraps it with what a
real link does to the bytes: `FAULT ...` commands and a fault schedule, pacing at
`baud / 10` bytes per second, and a recorded session replayed alongside the answers.
Each driver (the `sim://` transport, and serve.py's TCP, UDP and pty loop) does only the
I/O: it passes what the gateway sent to `receive()`, writes what `send()` returns, sleeps
at most `wait()` seconds, and checks `dropped`. Time comes from `clock`, so the tests
move it by hand.

Output is one queue, in order: answer lines (a `GO` burst is an iterator, drawn as it
is sent), raw byte chunks (noise, replayed lines) and fault actions, which act when they
reach the front. Telemetry is sent when the queue is empty, as the firmware does.

Faults (`FAULT` commands answer `OK FAULT ...` first; a schedule acts unannounced):

- `DROP [SECONDS]`: half a telemetry line, then the link goes down. A driver that can
  drop a link (`can_drop`: `sim://`, TCP) sees `dropped` and `down_for`; for one that
  cannot (a pty, UDP) the link stays up but goes silent for SECONDS (default 0). Either
  way what was queued is lost, as with a device that reset.
- `STALL [SECONDS]`: send nothing for SECONDS (default 1); lines received meanwhile are
  answered afterwards.
- `NOISE`: the ESP8266's 74880-baud boot noise as read at 115200, then CR LF.
- `PARTIAL`: half a telemetry line, then nothing until the next line arrives; then the
  rest of that line, then the answers.

The auto-reset circuit of a NodeMCU / Wemos board (`set_signals(dtr, rts)`, True =
asserted): EN is held low while RTS is asserted and DTR is not; GPIO0 is held low while
DTR is asserted and RTS is not. While EN is low the board is in reset: silent, deaf.
When EN goes high again the board boots (it reads GPIO0 GPIO0_SAMPLE_DELAY later, so DTR
and RTS set one after the other, as esptool's classic reset does, still count as set
together): the ROM's 74880-baud boot noise (raw bytes, as
`FAULT NOISE`), then, with GPIO0 high, the `ready` line and a fresh start (uptime 0,
LED off, the default interval) and, when the flash holds an image, `boot fw=<id>`;
with GPIO0 low, the ROM loader (`in_bootloader`), which answers no line of the protocol
until the next reset. `set_break` has no effect.

The ROM loader (romloader.py): while `in_bootloader`, what the gateway sends goes to a
`RomLoader`, which answers esptool's SLIP frames and keeps the board's `flash`
(flash.py). Its answers go out in the same queue as lines. With a baud rate the input
is paced too: an answer is not sent before the request's last byte would have arrived
at the current rate. CHANGE_BAUDRATE changes the rate once its answer is through (with
no pacing it stays unpaced); a reset returns it to the configured `baud`. When the
loader is left (esptool's RUN_USER_CODE, the ROM's FLASH_END) the board boots its
firmware, as after a reset. `save_flash(flash)` is called when the flash has changed,
at each boot and at `close()`: the driver keeps it in a file if it was given one.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from ..codec import LineDecoder
from .device import SimulatedDevice
from .flash import FlashImage
from .replay import Replay
from .romloader import RomLoader, RunFirmware, SetBaud

FILL = 65536  # bytes drawn from the queue at a time
QUANTUM = 0.01  # seconds of output per send() when pacing at a baud rate
MAX_QUEUED = 1000  # replayed lines waiting to be sent, at most
MAX_FAULT_SECONDS = 3600.0
MAX_BAUD = 100_000_000
DEFAULT_SECONDS = {"DROP": 0.0, "STALL": 1.0}
KINDS = ("DROP", "STALL", "NOISE", "PARTIAL")

# EN rises through an RC on the board; the ROM reads GPIO0 this long after EN is released.
GPIO0_SAMPLE_DELAY = 0.01

# What an ESP8266's ROM prints at 74880 baud on reset, read at 115200: not valid UTF-8,
# no line end inside. The gateway must pass it on, never drop it or choke on it.
BOOT_NOISE = bytes.fromhex("f01c87008ce09c9e82fe1c0cf0f88c60e26c8c04e0f862f08c0c7c8e9c63f8") + b"\r\n"


@dataclass(frozen=True)
class Fault:
    kind: str  # one of KINDS
    seconds: float = 0.0
    announce: bool = True  # answer `OK FAULT ...` (a command), or act silently (a schedule)

    def describe(self) -> str:
        return self.kind + (f" {self.seconds:g}" if self.kind in DEFAULT_SECONDS else "")


@dataclass(frozen=True)
class _LinkDown:
    seconds: float


@dataclass(frozen=True)
class _Due:
    """Loader output, sent no earlier than `at` (when the request would have arrived)."""
    at: float
    data: bytes


@dataclass(frozen=True)
class _SetRate:
    baud: int


@dataclass(frozen=True)
class _RunFirmware:
    pass


@dataclass(frozen=True)
class ScheduledFault:
    fault: Fault
    every: float


def parse_seconds(text: str, what: str) -> float:
    try:
        seconds = float(text)
    except ValueError:
        raise ValueError(f"{what}: {text!r} is not a number of seconds") from None
    if not 0 <= seconds <= MAX_FAULT_SECONDS:
        raise ValueError(f"{what}: {text!r} is not between 0 and {MAX_FAULT_SECONDS:g} seconds")
    return seconds


def parse_fault(words: list[str], announce: bool = True) -> Fault:
    """`["STALL", "2"]` -> Fault("STALL", 2.0). ValueError says what is wrong."""
    if not words:
        raise ValueError(f"missing fault ({', '.join(KINDS)})")
    kind = words[0].upper()
    if kind not in KINDS:
        raise ValueError(f"unknown fault: {words[0]}")
    if kind in DEFAULT_SECONDS:
        if len(words) > 2:
            raise ValueError(f"{kind} takes one number of seconds")
        seconds = parse_seconds(words[1], kind) if len(words) == 2 else DEFAULT_SECONDS[kind]
        return Fault(kind, seconds, announce)
    if len(words) > 1:
        raise ValueError(f"{kind} takes no argument")
    return Fault(kind, 0.0, announce)


def parse_schedule(spec: str) -> tuple[ScheduledFault, ...]:
    """`"drop@30,stall:2@20,noise@10"`: a fault every so many seconds.

    Each entry is `KIND[:SECONDS]@EVERY`, the same as the command `FAULT KIND SECONDS`
    run every EVERY seconds from when the link came up.
    """
    schedule = []
    for item in filter(None, (s.strip() for s in spec.split(","))):
        what, at, every = item.partition("@")
        if not at:
            raise ValueError(f"fault {item!r}: expected KIND[:SECONDS]@EVERY, e.g. drop@30 or stall:2@20")
        period = parse_seconds(every, f"fault {item!r}")
        if period < 0.05:
            raise ValueError(f"fault {item!r}: every must be at least 0.05 s")
        try:
            fault = parse_fault(what.split(":"), announce=False)
        except ValueError as exc:
            raise ValueError(f"fault {item!r}: {exc}") from None
        schedule.append(ScheduledFault(fault, period))
    return tuple(schedule)


def check_baud(value: str | float) -> float:
    try:
        baud = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"baud must be a number of bits per second (0: no pacing), not {value!r}") from None
    if not (math.isfinite(baud) and (baud == 0 or 10 <= baud <= MAX_BAUD)):
        raise ValueError(f"baud must be 0 (no pacing) or between 10 and {MAX_BAUD}, not {value!r}")
    return baud


def split_line(line: str) -> tuple[bytes, bytes]:
    """A line cut in two, inside its second word's key when it has one:
    `temp=21.53 hu` + `m=40.2 ...`, so the first half does not read as telemetry."""
    space = line.find(" ")
    cut = space + 3 if 0 <= space < len(line) - 3 else max(1, len(line) // 2)
    data = line.encode() + b"\n"
    return data[:cut], data[cut:]


class Link:
    def __init__(
        self,
        device: SimulatedDevice,
        *,
        baud: float = 0,
        schedule: tuple[ScheduledFault, ...] = (),
        replay: Replay | None = None,
        can_drop: bool = True,
        message_oriented: bool = False,
        flash: FlashImage | None = None,
        save_flash: Callable[[FlashImage], None] | None = None,
        bootloader: bool = False,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.device = device
        self.clock = clock
        self.baud = check_baud(baud)  # as configured; 0: no pacing
        self._set_rate(self.baud)
        self.host_baud = int(self.baud) or 115200  # the host's UART, as the ROM autobauds to it
        self.replay = replay
        self.can_drop = can_drop
        self.message_oriented = message_oriented  # UDP: send() returns at most one line
        self.dropped = False
        self.down_for = 0.0  # after a drop: seconds the device stays away
        self._decoder = LineDecoder()
        self._queue: deque[Iterator[str] | bytes | Fault | _LinkDown] = deque()
        self._buf = bytearray()  # drawn from the queue, not yet sent
        self._free_at = 0.0  # pacing: when the bytes sent so far are through the wire
        self._stall_until = 0.0
        self._held: bytes | None = None  # PARTIAL: the rest of the line, sent on input
        self.dtr = False  # the modem lines as the gateway last set them (True: asserted)
        self.rts = False
        self.in_reset = False  # EN held low
        self.in_bootloader = False  # booted with GPIO0 low: deaf to the line protocol
        self.boots = 0
        self._sample_gpio0_until = 0.0  # after EN is released, GPIO0 low still means the loader
        self.flash = flash if flash is not None else FlashImage()
        self.save_flash = save_flash
        self.loader: RomLoader | None = None  # while in_bootloader
        self._rx_free_at = 0.0  # loader input pacing: when the bytes received so far are in
        self.device.firmware = self.flash.image_id()
        if bootloader:
            self._enter_loader()
        now = clock()
        self._schedule = [[entry, now + entry.every] for entry in schedule]

    # -- input --------------------------------------------------------------------------

    def receive(self, data: bytes, message_end: bool = False) -> None:
        """Bytes from the gateway; `message_end` for a datagram (a line without a line end)."""
        if self.in_bootloader and not (self.dropped or self.in_reset):
            self._receive_loader(data)
            return
        lines = self._decoder.feed(data)
        if message_end:
            lines += self._decoder.flush()
        for line in lines:
            if self.dropped or self.in_reset or self.in_bootloader:
                return
            if self._held is not None:
                self._queue.appendleft(self._held)
                self._held = None
            self._queue.extend(self._answer(line.text))

    def _settle_rate(self) -> None:
        """A baud change whose answer is all handed out takes effect now, not at the
        next send(): the host's next request already comes at the new rate."""
        while not self._buf and self._queue and isinstance(self._queue[0], _SetRate):
            if self.baud:  # an unpaced link stays unpaced
                self._set_rate(self._queue.popleft().baud)
            else:
                self._queue.popleft()

    def _receive_loader(self, data: bytes) -> None:
        self._settle_rate()
        due = 0.0
        if self.rate:
            self._rx_free_at = max(self.clock(), self._rx_free_at) + len(data) / self.rate
            due = self._rx_free_at
        for item in self.loader.feed(data):
            if isinstance(item, bytes):
                self._queue.append(_Due(due, item) if due else item)
            elif isinstance(item, SetBaud):
                self._queue.append(_SetRate(item.baud))
            elif isinstance(item, RunFirmware):
                self._queue.append(_RunFirmware())

    def set_host_baud(self, baud: int) -> None:
        """The host side's UART rate (a serial port's `baudrate`): the ROM autobauds to it."""
        self.host_baud = baud
        if self.loader is not None and not self.loader.stub:
            self.loader.uart_baud = baud

    def _answer(self, text: str) -> list:
        words = text.split()
        if not words or words[0].upper() != "FAULT":
            return [iter(self.device.handle(text))]
        try:
            fault = parse_fault(words[1:])
        except ValueError as exc:
            return [iter([f"ERR {exc}"])]
        return [iter([f"OK FAULT {fault.describe()}"]), fault]

    # -- output -------------------------------------------------------------------------

    def send(self, limit: int = FILL) -> bytes:
        """The bytes to send now (b"" when nothing is due); at most `limit`."""
        if self.dropped:
            return b""
        now = self.clock()
        self._pump(now)
        if self.rate and now < self._free_at:
            return b""
        if not self._buf:
            self._fill(now)
            if not self._buf:
                return b""
        n = min(limit, len(self._buf))
        if self.message_oriented:
            end = self._buf.find(b"\n", 0, n)
            n = end + 1 if end >= 0 else n
        elif self.rate:
            n = min(n, self.quantum)
        data = bytes(self._buf[:n])
        del self._buf[:n]
        if not self._buf:
            self._settle_rate()
        if self.rate:
            # A driver that wakes a little late does not slow the line down; after an
            # idle spell the line starts afresh, with no burst to make up for it.
            late = now - self._free_at
            start = self._free_at if late < self.quantum / self.rate else now
            self._free_at = start + n / self.rate
        return data

    def wait(self) -> float | None:
        """Seconds until `send()` may have bytes (0: now); None: not before `receive()`."""
        if self.dropped:
            return None
        now = self.clock()
        times = [at for _, at in self._schedule]
        if self.replay is not None and self.replay.next_at is not None:
            times.append(self.replay.next_at)
        paced = self._free_at if self.rate else 0.0
        if self._buf:
            times.append(paced)
        elif self._held is None:
            ready = max(paced, self._stall_until)
            if self._queue:
                head = self._queue[0]
                times.append(max(ready, head.at) if isinstance(head, _Due) else ready)
            elif self._telemetry_allowed():
                due = self.device.seconds_to_telemetry()
                if due is not None:
                    times.append(max(ready, now + due))
        if not times:
            return None
        return max(0.0, min(times) - now)

    @property
    def idle(self) -> bool:
        """Nothing queued or half sent (telemetry and a replay may still come)."""
        return not self._buf and not self._queue

    def _pump(self, now: float) -> None:
        """Queue the replayed lines and scheduled faults that are due."""
        for entry in self._schedule:
            if now >= entry[1]:
                self._queue.append(entry[0].fault)
                entry[1] += entry[0].every
                if entry[1] <= now:  # we were not asked for a while: do not catch up
                    entry[1] = now + entry[0].every
        replay = self.replay
        if replay is not None:
            queued = len(self._queue)
            while queued < MAX_QUEUED and (data := replay.pop_due(now)) is not None:
                self._queue.append(data)
                queued += 1

    def _fill(self, now: float) -> None:
        """Draw from the queue into the send buffer, acting on faults at its front."""
        queue, buf = self._queue, self._buf
        for _ in range(len(queue) + 2):  # each turn takes an item off, or fills the buffer
            if buf or self.dropped or self._held is not None or now < self._stall_until:
                return
            if not queue:
                if not self._telemetry_allowed():
                    return
                line = self.device.telemetry_due()
                if line is not None:
                    buf += line.encode() + b"\n"
                return
            head = queue[0]
            if isinstance(head, bytes):
                buf += queue.popleft()
            elif isinstance(head, Fault):
                self._act(queue.popleft(), now)
            elif isinstance(head, _LinkDown):
                self._go_down(queue.popleft().seconds, now)
            elif isinstance(head, _Due):
                if now < head.at:
                    return
                buf += queue.popleft().data
            elif isinstance(head, _SetRate):
                self._settle_rate()
            elif isinstance(head, _RunFirmware):
                queue.popleft()
                self._boot(bootloader=False)
            else:
                for line in head:
                    buf += line.encode() + b"\n"
                    if len(buf) >= FILL:
                        break
                else:
                    queue.popleft()

    def _act(self, fault: Fault, now: float) -> None:
        if fault.kind == "STALL":
            self._stall_until = now + fault.seconds
        elif fault.kind == "NOISE":
            self._buf += BOOT_NOISE
        elif fault.kind == "PARTIAL":
            first, self._held = split_line(self.device.telemetry_line())
            self._buf += first
        elif fault.kind == "DROP":
            first, _ = split_line(self.device.telemetry_line())
            self._buf += first
            self._queue.appendleft(_LinkDown(fault.seconds))

    def _go_down(self, seconds: float, now: float) -> None:
        self._queue.clear()
        self._decoder.reset()
        self._held = None
        if self.can_drop:
            self.dropped = True
            self.down_for = seconds
        else:
            self._stall_until = now + seconds

    # -- the auto-reset circuit ----------------------------------------------------------

    def set_signals(self, dtr: bool | None = None, rts: bool | None = None) -> None:
        """DTR and RTS as the gateway sets them (None: unchanged), both at once."""
        if dtr is not None:
            self.dtr = dtr
        if rts is not None:
            self.rts = rts
        en_low = self.rts and not self.dtr
        if en_low and not self.in_reset:
            self.in_reset = True
            self._queue.clear()  # what the board was saying is cut off
            self._buf.clear()
            self._held = None
            self._decoder.reset()
        elif not en_low and self.in_reset:
            self.in_reset = False
            self._boot(bootloader=self.dtr and not self.rts)
            self._sample_gpio0_until = self.clock() + GPIO0_SAMPLE_DELAY
        elif (self.dtr and not self.rts and not self.in_reset and not self.in_bootloader
              and self.clock() < self._sample_gpio0_until):
            # GPIO0 pulled low while EN is still rising (esptool's classic reset sets DTR
            # and RTS one after the other): the ROM reads it low and starts its loader.
            self._queue.clear()
            self._enter_loader()

    def set_break(self, on: bool) -> None:
        """A BREAK: the simulated board ignores it."""

    def _boot(self, bootloader: bool) -> None:
        self.boots += 1
        self._queue.clear()  # what was left of the loader's output is cut off
        self._set_rate(self.baud)
        self._store_flash()
        self.device.reboot()
        self.device.firmware = self.flash.image_id()
        self._stall_until = 0.0
        self._buf += BOOT_NOISE
        if bootloader:
            self._enter_loader()
        else:
            self.in_bootloader = False
            self.loader = None
            lines = ["ready"]
            if self.device.firmware is not None:
                lines.append(f"boot fw={self.device.firmware}")
            self._queue.append(iter(lines))

    def _enter_loader(self) -> None:
        self.in_bootloader = True
        self.loader = RomLoader(self.flash, uart_baud=self.host_baud)
        self._rx_free_at = 0.0

    def _set_rate(self, baud: float) -> None:
        self.rate = baud / 10  # bytes per second, 8N1; 0: as fast as possible
        self.quantum = max(1, int(self.rate * QUANTUM))

    def _store_flash(self) -> None:
        if self.flash.dirty and self.save_flash is not None:
            self.save_flash(self.flash)

    def _telemetry_allowed(self) -> bool:
        return not (self.in_reset or self.in_bootloader)

    def discard_output(self) -> None:
        """Drop what the device sent that was not read yet (a host's input purge): queued
        lines and bytes, and loader answers already due. What acts on the board (a baud
        change, a boot, a fault) stays, and so do answers to requests still arriving."""
        now = self.clock()
        self._buf.clear()
        self._held = None
        self._queue = deque(item for item in self._queue
                            if isinstance(item, (Fault, _LinkDown, _SetRate, _RunFirmware))
                            or (isinstance(item, _Due) and item.at > now))

    def reset(self) -> None:
        """A new connection: forget what was queued for, or half read from, the old one."""
        self._queue.clear()
        self._buf.clear()
        self._decoder.reset()
        if self.loader is not None:
            self.loader.reset_input()
        self._held = None
        self._stall_until = 0.0
        self.dropped = False
        self.down_for = 0.0
        now = self.clock()
        for entry in self._schedule:
            entry[1] = now + entry[0].every

    def close(self) -> None:
        if self.replay is not None:
            self.replay.close()
        self._store_flash()
