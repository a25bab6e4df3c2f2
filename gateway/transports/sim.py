"""`sim://`: the simulated device, in process, behind the same interface as a real one.

No thread of its own: `read()` waits for answers to lines written, or for the next
periodic telemetry line, whichever comes first. `GO N` bursts are produced lazily, a
chunk per read, so a large N costs no memory.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Iterator
from urllib.parse import SplitResult

from ..codec import LineDecoder
from ..simulator.device import SimulatedDevice
from .base import READ_TIMEOUT, Transport, TransportError

CHUNK = 65536


class SimTransport(Transport):
    def __init__(self, url: SplitResult, options: dict[str, str]):
        super().__init__(url, options)
        if url.netloc or url.path not in ("", "/"):
            raise ValueError("sim:// takes no host or path, only options such as ?interval=0.5")
        self.interval = 1.0
        for key, value in options.items():
            if key != "interval":
                raise ValueError(f"unknown sim option {key!r}")
            try:
                self.interval = float(value)
            except ValueError:
                raise ValueError(f"interval must be a number of seconds, not {value!r}") from None
            if not 0 <= self.interval < 1e6:
                raise ValueError(f"interval must be between 0 and 1e6 seconds, not {value!r}")
        self._cond = threading.Condition()
        self._out: deque[Iterator[str]] = deque()
        self._decoder = LineDecoder()
        self.device: SimulatedDevice | None = None

    def open(self) -> None:
        with self._cond:
            self.device = SimulatedDevice(self.interval)
            self._out.clear()
            self._decoder.reset()

    def read(self) -> bytes:
        deadline = time.monotonic() + READ_TIMEOUT
        with self._cond:
            while not self._out:
                device = self.device
                if device is None:
                    raise TransportError("simulator is closed")
                line = device.telemetry_due()
                if line is not None:
                    return line.encode() + b"\n"
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return b""
                due = device.seconds_to_telemetry()
                self._cond.wait(remaining if due is None else min(remaining, due))
            chunks: list[str] = []
            size = 0
            while self._out and size < CHUNK:
                for line in self._out[0]:
                    chunks.append(line)
                    size += len(line) + 1
                    if size >= CHUNK:
                        break
                else:
                    self._out.popleft()
        return ("\n".join(chunks) + "\n").encode() if chunks else b""

    def write(self, data: bytes) -> None:
        with self._cond:
            device = self.device
            if device is None:
                raise TransportError("simulator is closed")
            for line in self._decoder.feed(data):
                self._out.append(iter(device.handle(line.text)))
            self._cond.notify()

    def cancel(self) -> None:
        with self._cond:
            self._cond.notify_all()

    def close(self) -> None:
        with self._cond:
            self.device = None
            self._out.clear()
            self._cond.notify_all()
