"""The serial ports present now, and a watcher for ports plugged in or pulled out.

`scan(globs)` lists ports from pyserial's `serial.tools.list_ports` plus the paths that
match `[serial] scan` globs (default /dev/serial/by-id/*, /dev/ttyUSB*, /dev/ttyACM*). A
glob match that is a symbolic link (a /dev/serial/by-id/ name) is the `by_id` of the
port it points to; a link to nothing is skipped. Each port, as GET /api/ports and the
events stream show it:

    {"path": "/dev/ttyUSB0", "by_id": "/dev/serial/by-id/usb-1a86_USB_Serial-if00-port0",
     "vid": "1a86", "pid": "7523", "serial_number": null, "manufacturer": "QinHeng",
     "description": "USB Serial", "device": "esp"}

(`vid` and `pid` as 4 lower-case hex digits, as in hwgrep://VID:PID; `device` is the name
of the configured device using the port, or null: `describe_port`.)

`PortWatcher` rescans every `[serial] rescan` seconds (1) on a thread of its own,
"port-scan" (list_ports reads sysfs for every tty: a few milliseconds, not for the I/O
loop), and hands the differences to the loop with `loop.call(on_change, added, removed)`.
"""

from __future__ import annotations

import glob
import logging
import os
import re
import stat
import threading
from dataclasses import asdict, dataclass
from typing import Callable, Iterable
from urllib.parse import urlsplit

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Port:
    path: str
    by_id: str | None = None
    vid: str | None = None
    pid: str | None = None
    serial_number: str | None = None
    manufacturer: str | None = None
    description: str | None = None

    @property
    def key(self) -> tuple[str, str | None]:
        return self.path, self.by_id


def _text(value) -> str | None:
    return None if value in (None, "", "n/a") else str(value)


def _hex(value) -> str | None:
    return None if value is None else f"{value:04x}"


def _is_char_device(path: str) -> bool:
    try:
        return stat.S_ISCHR(os.stat(path).st_mode)
    except OSError:
        return False


def _info(path: str):
    """pyserial's sysfs description of a tty (vid, pid, ...); None where there is none."""
    try:
        from serial.tools.list_ports_linux import SysFS
    except ImportError:  # not Linux
        return None
    try:
        return SysFS(path)
    except (OSError, ValueError):
        return None


def scan(globs: Iterable[str]) -> dict[str, Port]:
    """The ports present now, by real path."""
    from serial.tools import list_ports

    infos = {}
    try:
        for info in list_ports.comports():
            infos[os.path.realpath(info.device)] = info
    except OSError as exc:
        log.info("listing serial ports failed: %s", exc)
    by_id: dict[str, str] = {}
    for pattern in globs:
        for match in sorted(glob.glob(pattern)):
            real = os.path.realpath(match)
            if not _is_char_device(real):
                continue  # a link left behind by a port that is gone, or not a tty at all
            if os.path.islink(match):
                by_id.setdefault(real, match)
            if real not in infos:
                infos[real] = _info(real)
    ports = {}
    for path, info in sorted(infos.items()):
        ports[path] = Port(
            path=path,
            by_id=by_id.get(path),
            vid=_hex(getattr(info, "vid", None)),
            pid=_hex(getattr(info, "pid", None)),
            serial_number=_text(getattr(info, "serial_number", None)),
            manufacturer=_text(getattr(info, "manufacturer", None)),
            description=_text(getattr(info, "description", None)),
        )
    return ports


def uses_port(url: str, port: Port) -> bool:
    """Whether a device URL names `port`: serial://PATH (the path, its by-id link, or a
    link to the same tty) or hwgrep://VID:PID (pyserial's pattern over vid:pid)."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme == "serial":
        path = parts.path
        return path in (port.path, port.by_id) or os.path.realpath(path) == port.path
    if scheme == "hwgrep" and port.vid is not None:
        pattern = (parts.netloc + parts.path).split("&", 1)[0]
        try:
            return re.search(pattern, f"{port.vid}:{port.pid}", re.I) is not None
        except re.error:
            return False
    return False


def describe_port(port: Port, devices: dict[str, str]) -> dict:
    """The port as the API shows it; `devices`: device name -> URL."""
    out = asdict(port)
    out["device"] = next((name for name, url in devices.items() if uses_port(url, port)), None)
    return out


def follows_ports(url: str) -> bool:
    """A device URL that finds its port again after a re-plug: a path (a by-id link, or
    any path a port comes back under) or hwgrep://."""
    return urlsplit(url).scheme.lower() in ("serial", "hwgrep")


class PortWatcher:
    """Thread "port-scan": rescan every `interval` seconds, hand what changed to the loop
    as `on_change(added, removed)` (lists of Port). Owned by the Gateway: start(), stop()."""

    def __init__(self, globs: Iterable[str], interval: float, call: Callable[..., bool],
                 on_change: Callable[[list[Port], list[Port]], None]):
        self.globs = tuple(globs)
        self.interval = interval
        self.call = call  # the loop's call(fn, *args)
        self.on_change = on_change
        self.scan_seconds = 0.0  # the last scan's duration, for the curious
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="port-scan")

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread.ident is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.warning("thread port-scan did not stop within %.1f s", timeout)

    def _scan(self) -> dict[tuple, Port]:
        import time

        t0 = time.perf_counter()
        try:
            ports = scan(self.globs)
        except Exception:  # a bug here must not end the watcher
            log.exception("scanning serial ports failed")
            return {}
        self.scan_seconds = time.perf_counter() - t0
        return {p.key: p for p in ports.values()}

    def _run(self) -> None:
        known = self._scan()
        while not self._stop.wait(self.interval):
            now = self._scan()
            added = [p for k, p in now.items() if k not in known]
            removed = [p for k, p in known.items() if k not in now]
            known = now
            if added or removed:
                self.call(self.on_change, added, removed)


def print_ports(config, out=None) -> None:
    """`run_gateway.py --list-ports`: the ports as a table, as GET /api/ports has them."""
    import sys

    out = out or sys.stdout
    devices = {d.name: d.url for d in config.devices}
    rows = [describe_port(p, devices) for p in scan(config.serial.scan).values()]
    head = ("PATH", "BY-ID", "VID:PID", "SERIAL", "MANUFACTURER", "DESCRIPTION", "DEVICE")
    table = [head] + [(r["path"], r["by_id"] or "-", f"{r['vid']}:{r['pid']}" if r["vid"] else "-",
                       r["serial_number"] or "-", r["manufacturer"] or "-", r["description"] or "-",
                       r["device"] or "-") for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(head))]
    for row in table:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip(), file=out)
    if not rows:
        print(f"(no serial ports: looked in pyserial's list and {', '.join(config.serial.scan)})", file=out)
