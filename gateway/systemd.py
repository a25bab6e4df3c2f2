"""systemd's side of a `Type=notify` service (config/gateway.service), in a few lines of
sd_notify: a datagram to $NOTIFY_SOCKET.

    notify("READY=1")            # once the server accepts connections
    Watchdog(gw.manager).start() # WATCHDOG=1 every $WATCHDOG_USEC / 2, from the I/O loop
    notify("STOPPING=1")         # at shutdown

Nothing happens when $NOTIFY_SOCKET is unset (not run by systemd). The watchdog's ping is
a timer on the I/O loop, so a loop that hangs stops the pings and systemd restarts the
service (WatchdogSec, Restart=on-failure).
"""

from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger(__name__)


def notify(message: str) -> bool:
    """Send `message` ("READY=1", "STATUS=...") to systemd; False when not under systemd
    or the socket is gone (logged once per failure, never raised)."""
    address = os.environ.get("NOTIFY_SOCKET", "")
    if not address:
        return False
    if address.startswith("@"):  # an abstract socket
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto(message.encode(), address)
        return True
    except OSError as exc:
        log.warning("sd_notify %s to %s failed: %s", message.split("=", 1)[0], address.lstrip("\0"), exc)
        return False


def watchdog_interval() -> float | None:
    """Seconds between WATCHDOG=1 pings (half of $WATCHDOG_USEC), or None when systemd
    set no watchdog for this process ($WATCHDOG_PID names another one)."""
    usec = os.environ.get("WATCHDOG_USEC", "")
    pid = os.environ.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0 or (pid.isdigit() and int(pid) != os.getpid()):
        return None
    return int(usec) / 2e6


class Watchdog:
    """WATCHDOG=1 every `interval` seconds from a timer on the loop (gateway/manager.py):
    no thread of its own; it ends with the loop."""

    def __init__(self, loop, interval: float | None = None):
        self.loop = loop
        self.interval = watchdog_interval() if interval is None else interval

    def start(self) -> bool:
        if not self.interval:
            return False
        return self.loop.call(self._tick)

    def _tick(self) -> None:
        notify("WATCHDOG=1")
        self.loop.call_later(self.interval, self._tick)


def journal_is_stderr() -> bool:
    """True when stderr goes to journald ($JOURNAL_STREAM names its device and inode),
    which stamps each line itself."""
    value = os.environ.get("JOURNAL_STREAM", "")
    dev, _, ino = value.partition(":")
    if not (dev.isdigit() and ino.isdigit()):
        return False
    try:
        st = os.fstat(2)
    except OSError:
        return False
    return (st.st_dev, st.st_ino) == (int(dev), int(ino))
