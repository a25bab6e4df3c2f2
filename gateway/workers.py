"""A few named threads for the blocking steps the I/O loop must not take itself.

Opening a device can block: resolving a host name, opening a serial port (hwgrep://
walks the USB devices). The loop hands such a step here and gets its outcome back with
`loop.call`. The threads start when first needed, block on their queue while idle (no
wake-ups), and are stopped and joined by their owner, the Gateway.
"""

from __future__ import annotations

import logging
import queue
import threading
from typing import Callable

log = logging.getLogger(__name__)


class Workers:
    def __init__(self, name: str = "device-open", size: int = 4):
        self.name = name
        self.size = size
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._idle = 0
        self._lock = threading.Lock()
        self._stopped = False

    def submit(self, fn: Callable[[], object], done: Callable[[object, BaseException | None], None]) -> None:
        """Run `fn()` on a worker; then `done(result, error)` on that worker."""
        with self._lock:
            if self._stopped:
                return
            self._queue.put((fn, done))
            if self._idle == 0 and len(self._threads) < self.size:
                t = threading.Thread(target=self._run, name=f"{self.name}-{len(self._threads) + 1}")
                self._threads.append(t)
                t.start()

    def _run(self) -> None:
        while True:
            with self._lock:
                self._idle += 1
            item = self._queue.get()
            with self._lock:
                self._idle -= 1
            if item is None:
                return
            fn, done = item
            try:
                result, error = fn(), None
            except BaseException as exc:  # handed to `done`, which decides
                result, error = None, exc
            try:
                done(result, error)
            except Exception:
                log.exception("%s: completion failed", self.name)

    def stop(self, timeout: float = 5.0) -> None:
        with self._lock:
            self._stopped = True
            threads = list(self._threads)
        for _ in threads:
            self._queue.put(None)
        for t in threads:
            t.join(timeout)
            if t.is_alive():
                log.warning("thread %s did not stop within %.1f s", t.name, timeout)
