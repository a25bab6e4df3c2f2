"""A JSON-lines recording per device (`record = "path"` on the device).

The device's reader thread only appends its records to a bounded list; the "recorder"
thread writes them (format: gateway/recording.py) and flushes after each batch, so a
crash loses at most the last batch. Files are opened for appending; devices that name
the same path share one file handle, their lines told apart by `device`. A file that
cannot be opened or written is logged, its lines counted as errors, and opened again on
a later batch (at most every RETRY seconds).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

from .. import recording
from ..hub import Record
from .base import Sink

log = logging.getLogger(__name__)

PENDING = 100_000  # lines waiting for the disk, all devices together; beyond, counted drops
RETRY = 5.0  # seconds between attempts to open a file that failed


@dataclass
class RecordingStats:
    lines: int = 0  # lines written
    dropped: int = 0  # lines dropped because the writer fell PENDING lines behind
    errors: int = 0  # lines lost to a file that could not be opened or written


class _File:
    def __init__(self, path: str):
        self.path = path
        self.fh = None
        self.failed_at: float | None = None

    def handle(self):
        if self.fh is None:
            now = time.monotonic()
            if self.failed_at is not None and now - self.failed_at < RETRY:
                return None
            try:
                self.fh = open(self.path, "a", encoding="utf-8", newline="\n")
            except OSError as exc:
                if self.failed_at is None:
                    log.error("recording: cannot open %s: %s (lines are counted as errors until it opens)",
                              self.path, exc.strerror or exc)
                self.failed_at = now
                return None
            if self.failed_at is not None:
                log.info("recording: %s is open again", self.path)
            self.failed_at = None
        return self.fh

    def write(self, text: str) -> bool:
        fh = self.handle()
        if fh is None:
            return False
        try:
            fh.write(text)
            fh.flush()
        except OSError as exc:
            log.error("recording: cannot write %s: %s", self.path, exc.strerror or exc)
            self.close()
            self.failed_at = time.monotonic()
            return False
        return True

    def close(self) -> None:
        fh, self.fh = self.fh, None
        if fh is not None:
            try:
                fh.close()
            except OSError:
                pass


class Recorder(Sink):
    thread_name = "recorder"

    def __init__(self, paths: dict[str, str], pending: int = PENDING):
        """`paths`: {device name: recording path}; other devices are not recorded."""
        self.pending_limit = pending
        files: dict[str, _File] = {}
        self._files = {device: files.setdefault(path, _File(path)) for device, path in paths.items()}
        self.stats = {device: RecordingStats() for device in paths}
        self._cond = threading.Condition()
        self._pending: list[tuple[str, list[Record]]] = []  # guarded by _cond
        self._pending_lines = 0
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name=self.thread_name)

    def on_records(self, device: str, records: list[Record]) -> None:
        stats = self.stats.get(device)
        if stats is None:
            return
        with self._cond:
            if self._pending_lines + len(records) > self.pending_limit:
                stats.dropped += len(records)
                return
            self._pending.append((device, records))
            self._pending_lines += len(records)
            self._cond.notify()

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify()
        if self._thread.ident is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.warning("recording: thread %s did not stop within %.1f s", self._thread.name, timeout)

    def _run(self) -> None:
        try:
            while True:
                with self._cond:
                    while not self._pending and not self._stopping:
                        self._cond.wait()
                    batch, self._pending, self._pending_lines = self._pending, [], 0
                    stopping = self._stopping
                if batch:
                    self._write(batch)
                if stopping and not batch:
                    break
        finally:
            for f in set(self._files.values()):
                f.close()

    def _write(self, batch: list[tuple[str, list[Record]]]) -> None:
        texts: dict[_File, list[str]] = {}
        counts: dict[_File, dict[str, int]] = {}
        for device, records in batch:
            f = self._files[device]
            texts.setdefault(f, []).extend(recording.encode(device, r.seq, r.ts, r.line) for r in records)
            per_device = counts.setdefault(f, {})
            per_device[device] = per_device.get(device, 0) + len(records)
        for f, lines in texts.items():
            ok = f.write("".join(lines))
            for device, n in counts[f].items():
                if ok:
                    self.stats[device].lines += n
                else:
                    self.stats[device].errors += n
