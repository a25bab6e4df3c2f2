"""The last value of each numeric telemetry key per device, for /metrics.

No thread: `on_records` only appends the records to a bounded per-device deque (a
`GO 100000` burst costs the device's reader no parsing); `snapshot()`, called at scrape
time, parses what came since the last scrape and returns the values. When more than
`pending` lines came between two scrapes, the oldest are skipped: their keys almost
always come again in the newer lines, and the gauges show last values anyway.
"""

from __future__ import annotations

import threading
from collections import deque

from .. import telemetry
from ..hub import Record
from .base import Sink

PENDING = 4096  # lines held per device between two scrapes
MAX_KEYS = 1000  # telemetry keys per device; more are refused (counted), not exported


class TelemetryCache(Sink):
    def __init__(self, pending: int = PENDING, max_keys: int = MAX_KEYS):
        self.pending_limit = pending
        self.max_keys = max_keys
        self._lock = threading.Lock()  # guards _pending and last_line_ts; held only to swap
        self._pending: dict[str, deque[Record]] = {}
        self._apply_lock = threading.Lock()  # one scrape applies at a time, in order
        self._values: dict[str, dict[str, float]] = {}
        self.last_line_ts: dict[str, float] = {}
        self.keys_refused: dict[str, int] = {}  # distinct keys beyond max_keys, per device
        self.lines_skipped: dict[str, int] = {}  # lines not parsed: over `pending` between scrapes
        self._refused_keys: dict[str, set[str]] = {}

    def on_records(self, device: str, records: list[Record]) -> None:
        with self._lock:
            queue = self._pending.get(device)
            if queue is None:
                queue = self._pending[device] = deque(maxlen=self.pending_limit)
            over = len(queue) + len(records) - self.pending_limit
            queue.extend(records)  # a full deque drops its oldest
            if over > 0:
                self.lines_skipped[device] = self.lines_skipped.get(device, 0) + over
            self.last_line_ts[device] = records[-1].ts

    def snapshot(self) -> dict[str, dict[str, float]]:
        """{device: {key: last value}}, up to the newest line read."""
        with self._apply_lock:
            with self._lock:
                pending, self._pending = self._pending, {}
            for device, records in pending.items():
                values = self._values.setdefault(device, {})
                for record in records:
                    data = record.data
                    if data is not None:
                        self._apply(device, values, telemetry.metrics(data))
            return {device: dict(values) for device, values in self._values.items()}

    def _apply(self, device: str, values: dict[str, float], numbers: dict[str, float]) -> None:
        for key, value in numbers.items():
            if key in values or len(values) < self.max_keys:
                values[key] = value
                continue
            refused = self._refused_keys.setdefault(device, set())
            if key not in refused and len(refused) < 100_000:
                refused.add(key)
                self.keys_refused[device] = self.keys_refused.get(device, 0) + 1
