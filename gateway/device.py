"""One device link per device: a reader thread, a writer thread, reconnect with backoff.

The reader ("device-rx:NAME") opens the transport, feeds what it reads through the line
codec into the hub (for a transport with `flow_control`, TCP, it reads on only once its
clients' queues have room: Hub.wait_for_room), and when the device is lost flushes the
partial line (nothing read is lost), closes, and opens again after 0.2 s, doubling to
5 s. The writer
("device-tx:NAME") writes client lines to the device: they wait in one bounded queue, in
arrival order; a request (`reply: true`) holds the queue until the device answered or the
request timed out.

For a `pollable` transport (TCP) the reader hands the reading itself to the gateway's
loop thread (gateway/manager.py, the thread that reads the clients) while the device is
up, and waits: the loop reads, decodes and publishes each reply on the thread that wrote
the request, with no second thread to wake. The device comes back to the reader when it
is lost, for flow control, and if the loop ends first (`_read_in_loop`).

One writer at a time: whoever writes to the transport holds `_write_lock` while it takes
lines from the queue and writes them, so the order stays the queue's. Besides the writer
thread, that may be ws4py's manager thread: for a transport with `try_write` (TCP), the
lines of one client read are written straight from there when the lock is free, without
blocking (`hold_writes` / `release_writes`, or `write_now` for a lone line), which
saves a thread hand-off per line; what
the socket does not take at once, a request that waits for a reply, or a busy writer
leaves the rest to the writer thread.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from dataclasses import dataclass
from threading import get_ident
from typing import Callable, Protocol

from .codec import LineDecoder
from .config import DeviceConfig
from .hub import Hub, State
from .security import LineFilter
from .transports import Transport, TransportError
from .transports.base import READ_TIMEOUT, NotConnectedYet, WriteTimeout

log = logging.getLogger(__name__)

BACKOFF_FIRST = 0.2
BACKOFF_MAX = 5.0
WRITE_QUEUE = 10000  # lines waiting for the device, all clients together
BATCH_BYTES = 4096  # one write: at 9600 baud, 4.3 s, within a serial port's 5 s write timeout
DIRECT_BYTES = 65536  # one non-blocking write from the manager thread (TCP only)


@dataclass(slots=True)
class WriteRequest:
    data: bytes
    client: "Writer | None" = None
    id: object = None
    reply: bool = False
    timeout: float = 2.0
    # The unwritten tail of a direct write carries the requests it completes.
    then: list["WriteRequest"] | None = None


class Writer(Protocol):
    """What the device link needs of a client to answer its writes."""

    def deliver(self, items: list[bytes]) -> None: ...

    def acked(self, request: WriteRequest) -> None: ...

    def failed(self, request: WriteRequest, error: str) -> None: ...


@dataclass
class Counters:
    lines_in: int = 0
    lines_out: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    errors: int = 0
    reconnects: int = 0
    cut_lines: int = 0
    invalid_lines: int = 0
    write_queue_full: int = 0

    def as_dict(self) -> dict:
        return dict(self.__dict__)


class DeviceLink:
    def __init__(self, config: DeviceConfig, hub: Hub, transport: Transport,
                 on_state: Callable[["DeviceLink", State], None] | None = None):
        self.config = config
        self.name = config.name
        self.hub = hub
        self.transport = transport
        self.on_state = on_state
        self.counters = Counters()
        self.decoder = LineDecoder(config.encoding, config.max_line)
        self.allow = LineFilter(config.allow)
        self._stop = threading.Event()
        # `with self._qlock` (a C lock) where the queue is only touched; the Condition on
        # the same lock where the writer thread waits or is woken.
        self._qlock = threading.Lock()
        self._cond = threading.Condition(self._qlock)
        self._queue: deque[WriteRequest] = deque()  # guarded by _qlock
        self._reader = threading.Thread(target=self._read_loop, name=f"device-rx:{self.name}")
        self._writer = threading.Thread(target=self._write_loop, name=f"device-tx:{self.name}")
        self._connected = threading.Event()
        self._write_lock = threading.Lock()  # held by whoever writes to the transport
        self._holder = 0  # the thread holding its lines back for one direct write (hold_writes)
        # Set by the gateway before start(): its loop thread (gateway/manager.py) then
        # reads a `pollable` transport instead of the reader thread (_read_in_loop).
        self.loop = None
        self._rx_lock = threading.Lock()
        self._handback = threading.Event()
        self._in_loop = False  # the loop thread may read (changed under _rx_lock while it may)
        self._lost: Exception | None = None
        self._flow = getattr(transport, "flow_control", False)
        self._try_write = getattr(transport, "try_write", None)
        if transport.message_oriented or config.pace_ms:
            self._try_write = None

    @property
    def state(self) -> State:
        return self.hub.state

    def start(self) -> None:
        self._reader.start()
        self._writer.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self.transport.cancel()
        with self._cond:
            self._cond.notify_all()
        for thread in (self._writer, self._reader):
            if thread.ident is not None:
                thread.join(timeout)
                if thread.is_alive():
                    log.warning("device %s: thread %s did not stop within %.1f s", self.name, thread.name, timeout)

    def wait_connected(self, timeout: float) -> bool:
        return self._connected.wait(timeout)

    # -- state ------------------------------------------------------------------------

    def _set_state(self, state: State) -> None:
        if state is self.hub.state:
            return
        if state is State.CONNECTED:
            self._connected.set()
        else:
            self._connected.clear()
        self.hub.publish_status(state)
        if self.on_state is not None:
            try:
                self.on_state(self, state)
            except Exception:  # a sink's bug must not stop the device
                log.exception("device %s: state callback failed", self.name)

    # -- reading ----------------------------------------------------------------------

    def _read_loop(self) -> None:
        backoff = BACKOFF_FIRST
        transport = self.transport
        failed_before = False
        while not self._stop.is_set():
            try:
                transport.open()
            except NotConnectedYet:
                self._set_state(State.RECONNECTING)
                continue
            except Exception as exc:  # TransportError, or a bug: retry either way
                if not failed_before:
                    if isinstance(exc, TransportError):
                        log.warning("device %s: cannot open %s: %s (retrying with backoff)", self.name, transport.describe(), exc)
                    else:
                        log.exception("device %s: opening %s failed (retrying with backoff)", self.name, transport.describe())
                    failed_before = True
                self._set_state(State.RECONNECTING)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX)
                continue
            if failed_before or self.counters.reconnects:
                log.info("device %s: connected to %s", self.name, transport.describe())
            failed_before = False
            backoff = BACKOFF_FIRST
            self.decoder.reset()
            self._set_state(State.CONNECTED)
            try:
                if not (self.loop is not None and transport.pollable and self._read_in_loop()):
                    self._read_here()
            except TransportError as exc:
                if not self._stop.is_set():
                    log.warning("device %s: lost: %s", self.name, exc)
            except Exception:
                log.exception("device %s: reader failed; reconnecting", self.name)
            finally:
                tail = self.decoder.flush()  # a device that vanished mid-line: keep the part
                if tail:
                    self._publish(b"", tail)
                transport.close()
            if not self._stop.is_set():
                self.counters.reconnects += 1
                self._set_state(State.RECONNECTING)
                self._stop.wait(BACKOFF_FIRST)
        transport.release()
        self._set_state(State.DISCONNECTED)

    def _read_here(self) -> None:
        transport = self.transport
        flow = getattr(transport, "flow_control", False)
        while not self._stop.is_set():
            data = transport.read()
            if data:
                self._deliver(data)
                if flow:
                    self.hub.wait_for_room(self._stop)  # the device waits meanwhile

    def _read_in_loop(self) -> bool:
        """Let the loop thread read the device (gateway/manager.py) while this thread
        waits: until the device is lost (TransportError), the link stops (True) or the
        loop does (False: read here instead). The loop hands the device back for flow
        control too: this thread waits for room, then hands it over again.

        The socket has one reader at a time: the loop thread between `watch()` and the
        hand-back, this thread outside; `_rx_lock` makes the hand-back wait for a read
        in progress. The decoder and the counters follow the same hand-overs."""
        loop, fd = self.loop, self.transport.fileno()
        handback = self._handback
        while not self._stop.is_set():
            handback.clear()
            self._lost = None
            self._in_loop = True
            if not loop.watch(fd, self._on_readable):
                self._in_loop = False
                return False
            while not handback.wait(READ_TIMEOUT):
                if self._stop.is_set() or not loop.running:
                    break
            loop.unwatch(fd)
            with self._rx_lock:
                self._in_loop = False
            if self._lost is not None:
                raise self._lost
            if not handback.is_set():  # stopping, or the loop ended
                return self._stop.is_set()
            self.hub.wait_for_room(self._stop)  # the device waits meanwhile
        return True

    def _on_readable(self) -> bool:
        """On the loop thread: read what the device sent and publish it. False hands the
        device back to the reader thread (lost, or some client's queue is full)."""
        with self._rx_lock:
            if not self._in_loop:
                return False
            try:
                data = self.transport.read_nowait()
                if not data:
                    return True
                self._deliver(data)
                if not self._flow or not self.hub.full_outboxes():
                    return True
            except Exception as exc:  # the reader thread raises it: reconnect, as in _read_here
                self._lost = exc
            self._in_loop = False
            self._handback.set()
            return False

    def _deliver(self, data: bytes) -> None:
        self.counters.bytes_in += len(data)
        lines = self.decoder.feed(data)
        if self.transport.message_oriented:
            lines += self.decoder.flush()
        self._publish(data, lines)

    def _publish(self, chunk: bytes, lines) -> None:
        c = self.counters
        c.lines_in += len(lines)
        c.cut_lines = self.decoder.cut_lines
        c.invalid_lines = self.decoder.invalid_lines
        self.hub.publish(chunk, lines, self.decoder.pending)

    # -- writing ----------------------------------------------------------------------

    def submit(self, request: WriteRequest) -> str | None:
        """Queue a write; an error message instead when it cannot be queued."""
        if self.hub.state is not State.CONNECTED:
            self.counters.errors += 1
            return f"device {self.name} is {self.hub.state.value}"
        with self._qlock:
            if len(self._queue) >= WRITE_QUEUE:
                self.counters.write_queue_full += 1
                self.counters.errors += 1
                return f"device {self.name} write queue is full ({WRITE_QUEUE} lines)"
            self._queue.append(request)
            if self._holder != get_ident():  # a holder writes at release_writes()
                self._cond.notify()
        return None

    def write_now(self, data: bytes) -> bool:
        """Write one line from this thread at once, when that keeps the order: nothing
        queued, no one else writing, a transport with `try_write` (TCP). No request, no
        queue, no hand-off: the ping-pong path. False: submit() it instead."""
        if self._try_write is None or self._queue or not self._write_lock.acquire(blocking=False):
            return False
        try:
            if self._queue or self.hub.state is not State.CONNECTED:
                return False
            try:
                sent = self._try_write(data)
            except TransportError:
                return False  # submit() then meets the same error and reports it
            c = self.counters
            c.bytes_out += sent
            if sent < len(data):
                # The socket is full: the writer thread writes the rest, first; the line
                # counts as written then.
                with self._qlock:
                    self._queue.appendleft(WriteRequest(data[sent:], then=[WriteRequest(b"")]))
                    self._cond.notify()
            else:
                c.lines_out += 1
        finally:
            self._write_lock.release()
        return True

    def hold_writes(self) -> None:
        """The calling thread is about to submit several lines: write them together at
        `release_writes()`. Only one thread (ws4py's manager) holds at a time."""
        if self._try_write is not None:
            self._holder = get_ident()

    def release_writes(self) -> None:
        if not self._holder:
            return
        self._holder = 0
        if self._queue:
            self._write_direct()

    def _write_direct(self) -> None:
        """Write queued lines from this thread without blocking, if no one else writes."""
        if not self._write_lock.acquire(blocking=False):
            with self._cond:
                self._cond.notify()  # the writer thread is at work: it takes them next
            return
        try:
            with self._qlock:
                if not self._queue or self._queue[0].reply or self.hub.state is not State.CONNECTED:
                    self._cond.notify()  # a request waits for its reply: the writer's job
                    return
                batch = self._take(DIRECT_BYTES)
            data = batch[0].data if len(batch) == 1 else b"".join(r.data for r in batch)
            try:
                sent = self._try_write(data)
            except TransportError as exc:
                self._fail(batch, f"device {self.name} lost: {exc}")
                return
            if sent < len(data):
                # The socket is full: the writer thread writes the rest, first, then acks.
                rest = WriteRequest(data[sent:], then=batch)
                with self._qlock:
                    self._queue.appendleft(rest)
                    self._cond.notify()
                self.counters.bytes_out += sent
                return
            self.counters.bytes_out += len(data)
        finally:
            self._write_lock.release()
        self._written(batch)

    def _written(self, batch: list[WriteRequest]) -> None:
        for req in batch:
            if req.then is not None:
                self._written(req.then)
                continue
            self.counters.lines_out += 1
            if req.client is not None:
                req.client.acked(req)

    def _take(self, limit: int) -> list[WriteRequest]:
        """Requests to write in one go (under _qlock): one request with a reply, or plain lines."""
        first = self._queue.popleft()
        batch = [first]
        if first.reply or self.transport.message_oriented or self.config.pace_ms:
            return batch
        size = len(first.data)
        while self._queue and size < limit and not self._queue[0].reply:
            req = self._queue.popleft()
            size += len(req.data)
            batch.append(req)
        return batch

    def _write_loop(self) -> None:
        pace = self.config.pace_ms / 1000.0
        while not self._stop.is_set():
            with self._cond:
                while not self._queue and not self._stop.is_set():
                    self._cond.wait(0.5)
            if self._stop.is_set():
                break
            with self._write_lock:
                with self._qlock:
                    if not self._queue:
                        continue  # a direct write took them
                    batch = self._take(BATCH_BYTES)
                self._write_batch(batch)
                if pace:
                    self._stop.wait(pace)
        with self._cond:
            left, self._queue = list(self._queue), deque()
        self._fail(left, "gateway is shutting down")

    def _write_batch(self, batch: list[WriteRequest]) -> None:
        if self.hub.state is not State.CONNECTED:
            self._fail(batch, f"device {self.name} is {self.hub.state.value}")
            return
        request = batch[0]
        event = None
        if request.reply and request.client is not None:
            event = self.hub.expect_reply(request.client, request.id)
        data = request.data if len(batch) == 1 else b"".join(r.data for r in batch)
        try:
            self.transport.write(data)
        except WriteTimeout as exc:
            self._fail(batch, str(exc))
            if event is not None:
                self.hub.cancel_reply(event)
            return
        except TransportError as exc:
            self._fail(batch, f"device {self.name} lost: {exc}")
            if event is not None:
                self.hub.cancel_reply(event)
            return
        self.counters.bytes_out += len(data)
        self._written(batch)
        if event is not None and not event.wait(request.timeout) and self.hub.cancel_reply(event):
            self.counters.errors += 1
            request.client.failed(request, f"no reply within {request.timeout:g} s")

    def _fail(self, batch: list[WriteRequest], error: str) -> None:
        for req in batch:
            if req.then is not None:
                self._fail(req.then, error)
                continue
            self.counters.errors += 1
            if req.client is not None:
                req.client.failed(req, error)
