"""One device link per device: lines in and out, on the I/O loop, reconnect with backoff.

Everything a link decides runs on the I/O loop thread (gateway/manager.py): decoding
what the device sent into lines and publishing them (hub.py), the queue of client lines
waiting to be written, requests waiting for their reply, flow control, the device's
state and the reconnect timers. Nothing there blocks.

How the bytes move depends on the transport:

- A transport with a descriptor (`pollable`: TCP, tcp-listen, UDP, serial ports and
  ptys) is read and written by the loop itself: it reads when epoll says the descriptor
  is readable and writes without blocking, keeping the unsent tail of a write and
  waiting for EPOLLOUT. No thread of its own. Opening (which may block: a name to
  resolve, a port to open) runs on a worker (gateway/workers.py); a TCP connect is
  started there and completed on the loop.
- A "push" transport (`mqtt://`: `pushes`) has neither: it calls the link from the
  thread of what it shares (the gateway's one broker connection), and the link hands
  each call to the loop (`_push_attach`, `_PushSide`). No thread of its own either.
- Any other transport without a descriptor (`sim://`, pyserial's `loop://`, `socket://`,
  `rfc2217://`) has one thread, "device:NAME" (`DeviceThread`), that opens it, blocks in
  its `read()` and makes the writes the loop hands it; what it reads is handed to the
  loop, at most HANDOFF_CHUNKS chunks ahead.

Writes: client lines wait in one bounded queue, in arrival order; the lines queued in
one loop round go out in one write (`flush`). A request (`reply: true`) holds the queue
until the device answered (its next line) or the request's timeout passed: a timer on
the loop, which shutdown cancels, failing the request.

Signals (DTR, RTS, BREAK; `signal()`), for a transport that carries them (`signals`:
serial ports, rfc2217://, sim://): a sequence of steps (gateway/signals.py: a reset, the
ESP bootloader sequence, a BREAK of N ms) is played one step at a time, its waits timed
with loop timers, never slept; a transport whose signal calls block (`signals_block`:
rfc2217:// asks its server) makes them on a worker. One sequence at a time per device.
`retry_now()` opens a waiting device at once (its port was just plugged in again).

Flow control, for a transport where not reading pauses the device (TCP): after a read,
if a client of this device has half its queue waiting, the loop stops reading the
device until that client drained, for ROOM_WAIT at most; a client that did not drain by
then is marked slow and not waited for again until it has.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from dataclasses import dataclass
from enum import Enum
from typing import Callable, Protocol

from .codec import LineDecoder
from .config import DeviceConfig
from .hub import Hub, State
from .manager import EPOLLERR, EPOLLHUP, EPOLLIN, EPOLLOUT, Manager, Timer
from .security import LineFilter
from .signals import BOOTLOADER, Step, parse_sequence
from .transports import Transport, TransportError
from .transports.base import OPEN_TIMEOUT, READ_TIMEOUT, NotConnectedYet, WriteTimeout
from .workers import Workers

log = logging.getLogger(__name__)

BACKOFF_FIRST = 0.2
BACKOFF_MAX = 5.0
WRITE_QUEUE = 10000  # lines waiting for the device, all clients together
BATCH_BYTES = 4096  # one write to a serial port: at 9600 baud, 4.3 s
NET_BATCH_BYTES = 65536  # one write to a socket
ROOM_WAIT = 0.5  # seconds the device is not read while a client's queue drains
HANDOFF_CHUNKS = 16  # chunks a device thread reads ahead of the loop
PUSH_AHEAD = 10000  # messages a push transport (mqtt://) hands over ahead of the loop
PUSH_WRITE_TIMEOUT = 5.0  # seconds a push transport's write may take (a broker's PUBACK)


class Phase(Enum):
    """Where a link is, as seen from the loop."""

    IDLE = "idle"  # not started, or waiting for the next attempt
    OPENING = "opening"  # open() on a worker or on the device thread
    CONNECTING = "connecting"  # a TCP connect in progress, waiting for EPOLLOUT
    LISTENING = "listening"  # tcp-listen: waiting for the device to dial in
    UP = "up"
    STOPPED = "stopped"


@dataclass(slots=True)
class WriteRequest:
    data: bytes
    client: "Writer | None" = None
    id: object = None
    reply: bool = False
    timeout: float = 2.0


class Writer(Protocol):
    """What the device link needs of a client to answer its writes."""

    def deliver(self, items: list[bytes]) -> None: ...

    def acked(self, request: WriteRequest) -> None: ...

    def failed(self, request: WriteRequest, error: str) -> None: ...

    def signalled(self, kind: str, request_id: object, error: str | None) -> None: ...


class _Sequence:
    """A signal sequence being played (loop)."""

    __slots__ = ("kind", "steps", "client", "id", "timer")

    def __init__(self, kind: str, steps: tuple[Step, ...], client: "Writer | None", request_id: object):
        self.kind = kind
        self.steps = deque(steps)
        self.client = client
        self.id = request_id
        self.timer: Timer | None = None


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
                 on_state: Callable[["DeviceLink", State], None] | None = None,
                 loop: Manager | None = None, workers: Workers | None = None):
        self.config = config
        self.name = config.name
        self.hub = hub
        self.transport = transport
        self.on_state = on_state
        self.loop = loop
        self.workers = workers
        self._own_workers = False  # made in start() when none was given (tests)
        self.counters = Counters()
        self.decoder = LineDecoder(config.encoding, config.max_line)
        self.allow = LineFilter(config.allow)
        self.phase = Phase.IDLE
        self.dirty = False  # queued for flush() at the end of the loop round
        self._connected = threading.Event()  # for wait_connected(), any thread
        self._stopped = False
        self._queue: deque[WriteRequest] = deque()
        self._inflight: list[WriteRequest] | None = None  # the batch being written
        self._tail = b""  # its unwritten bytes (pollable transports)
        self._awaiting: tuple[WriteRequest, Timer] | None = None  # a request's reply
        self._pace_timer: Timer | None = None
        self._timer: Timer | None = None  # the next open attempt, or the connect deadline
        self._backoff = BACKOFF_FIRST
        self._last_failure: str | None = None  # logged once per distinct cause
        self.failed_opens = 0
        self._fd: int | None = None  # registered with the loop
        self._listen_fd: int | None = None
        self._events = 0
        self.full_clients = 0  # clients of this device with half their queue waiting
        self._paused = False
        self._room_timer: Timer | None = None
        self._flow = getattr(transport, "flow_control", False)
        self._pollable = transport.pollable
        self._batch = NET_BATCH_BYTES if getattr(transport, "flow_control", False) else BATCH_BYTES
        self._datagrams = transport.message_oriented
        self._single = transport.message_oriented or bool(config.pace_ms)
        self._push = getattr(transport, "pushes", False)  # mqtt://: see _push_attach
        self._push_write_token: object | None = None
        self._push_timer: Timer | None = None
        self._thread = None if self._pollable or self._push else DeviceThread(self)
        self._sequence: _Sequence | None = None  # signals being played

    @property
    def state(self) -> State:
        return self.hub.state

    def wait_connected(self, timeout: float) -> bool:
        return self._connected.wait(timeout)

    # -- start and stop (any thread) --------------------------------------------------

    def start(self) -> None:
        assert self.loop is not None, "a DeviceLink runs on a loop: set link.loop first"
        if self.workers is None:
            self.workers = Workers(f"device-open:{self.name}", 1)
            self._own_workers = True
        self.loop.on_stop(self._stop_in_loop)
        if self._thread is not None:
            self._thread.start()
        elif self._push:
            self.loop.call(self._push_attach)
        else:
            self.loop.call(self._open)

    def stop(self, timeout: float = 5.0) -> None:
        """Stop and close the device: on the loop if it still runs, then here; joins
        this link's thread, if it has one."""
        self._stopped = True
        done = threading.Event()
        if self.loop is not None and self.loop.call(lambda: (self._stop_in_loop(), done.set())):
            done.wait(timeout)
        if self._thread is not None:
            self._thread.stop(timeout)
        if self._own_workers:
            self.workers.stop(timeout)
        self._release()

    def _stop_in_loop(self) -> None:
        self._stopped = True
        if self.phase is Phase.STOPPED:
            return
        self.phase = Phase.STOPPED
        for timer in (self._timer, self._pace_timer, self._room_timer):
            if timer is not None:
                timer.cancel()
        self._unwatch()
        if self._listen_fd is not None:
            self.loop.unregister(self._listen_fd)
            self._listen_fd = None
        self._fail_all("gateway is shutting down")
        if self._pollable or self._push:
            self._flush_partial()
            self._release()
        self._set_state(State.DISCONNECTED)

    def _release(self) -> None:
        if self._pollable or self._push:
            try:
                self.transport.release()
            except Exception:
                log.exception("device %s: closing failed", self.name)
        if self.hub.state is not State.DISCONNECTED and (self.loop is None or not self.loop.is_alive()):
            self._set_state(State.DISCONNECTED)

    # -- state --------------------------------------------------------------------------

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

    def _failed_to_open(self, exc: BaseException) -> None:
        """Log a failure to open once per distinct cause, so that a device that cannot
        come back says why, without a line per attempt."""
        self.failed_opens += 1
        text = str(exc) or type(exc).__name__
        if text != self._last_failure:
            self._last_failure = text
            if isinstance(exc, TransportError):
                log.warning("device %s: cannot open %s: %s (retrying with backoff)", self.name, self.transport.describe(), text)
            else:
                log.error("device %s: opening %s failed: %r (retrying with backoff)", self.name, self.transport.describe(), exc)
        self._set_state(State.RECONNECTING)

    def _up(self) -> None:
        """The device is there (loop): read it, write to it."""
        if self._last_failure is not None or self.counters.reconnects:
            log.info("device %s: connected to %s", self.name, self.transport.describe())
        self._last_failure = None
        self._backoff = BACKOFF_FIRST
        self.phase = Phase.UP
        self.decoder.reset()
        self._set_state(State.CONNECTED)
        if self._pollable:
            self._watch(self.transport.fileno())
        if self._queue:
            self.loop.mark_dirty(self)

    def _lost(self, exc: BaseException | None, state: State = State.RECONNECTING) -> None:
        """The device went away (loop): keep its partial line, fail what waits, and
        try again after BACKOFF_FIRST (tcp-listen: wait for the next dial-in). `state`:
        what it shows meanwhile (a push transport's owner may say disconnected)."""
        if self.phase is Phase.STOPPED:
            return
        if exc is not None:
            if isinstance(exc, TransportError):
                log.warning("device %s: lost: %s", self.name, exc)
            else:
                log.error("device %s: reading failed: %r; reconnecting", self.name, exc)
        self._flush_partial()
        self._fail_all(f"device {self.name} lost: {exc}" if exc else f"device {self.name} lost")
        self.counters.reconnects += 1
        self._set_state(state)
        if not self._pollable:
            self.phase = Phase.OPENING  # the device thread opens it again
            return
        self._unwatch()
        self.transport.close()
        if self._listen_fd is not None:
            self.phase = Phase.LISTENING
        else:
            self.phase = Phase.IDLE
            self._timer = self.loop.call_later(BACKOFF_FIRST, self._open)

    def _flush_partial(self) -> None:
        tail = self.decoder.flush()  # a device that vanished mid-line: keep the part
        if tail:
            self._publish(b"", tail)

    # -- opening a pollable transport (loop) -------------------------------------------

    def _open(self) -> None:
        if self._stopped:
            return
        self.phase = Phase.OPENING
        self.workers.submit(self.transport.open_nowait, lambda _, error: self.loop.call(self._opened, error))

    def _opened(self, error: BaseException | None) -> None:
        transport = self.transport
        if self.phase is Phase.STOPPED:
            transport.release()
            return
        if error is None and getattr(transport, "connecting", False):
            self.phase = Phase.CONNECTING
            self._watch(transport.fileno(), EPOLLOUT)
            self._timer = self.loop.call_later(OPEN_TIMEOUT, self._connect_timeout)
            return
        if error is None:
            listen_fd = getattr(transport, "listen_fileno", lambda: None)()
            if listen_fd is not None:
                self._listen_fd = listen_fd
                self.loop.register(listen_fd, _Listener(self), EPOLLIN)
                self.phase = Phase.LISTENING
                self._set_state(State.RECONNECTING)
                return
            self._up()
            return
        self._failed_to_open(error)
        self._retry()

    def _retry(self) -> None:
        self.phase = Phase.IDLE
        self._timer = self.loop.call_later(self._backoff, self._open)
        self._backoff = min(self._backoff * 2, BACKOFF_MAX)

    def _connect_timeout(self) -> None:
        if self.phase is Phase.CONNECTING:
            self._unwatch()
            self.transport.close()
            self._failed_to_open(TransportError(f"cannot connect to {self.transport.describe()}: timed out"))
            self._retry()

    def _connect_done(self) -> None:
        self._timer.cancel()
        self._unwatch()
        try:
            self.transport.finish_open()
        except TransportError as exc:
            self.transport.close()
            self._failed_to_open(exc)
            self._retry()
            return
        self._up()

    def _accept(self) -> None:
        """tcp-listen: the device dialled in (again). A new connection replaces the old
        one and starts a new line: the old partial line is delivered on its own."""
        try:
            replaced = self.transport.accept()
        except TransportError as exc:
            log.info("device %s: %s", self.name, exc)
            return
        if self.phase is Phase.UP:
            self._unwatch()
            self._flush_partial()
            if replaced:
                log.info("device %s: dialled in again; the new connection replaces the old", self.name)
        self._up()

    # -- descriptors (loop) ---------------------------------------------------------------

    def _watch(self, fd: int, events: int = EPOLLIN) -> None:
        if self._fd is not None and self._fd != fd:
            self.loop.unregister(self._fd)
        self._fd = fd
        self._events = events
        self.loop.register(fd, self, self._mask())

    def _mask(self) -> int:
        if self.phase is Phase.CONNECTING:
            return EPOLLOUT
        return (0 if self._paused else EPOLLIN) | (EPOLLOUT if self._tail else 0)

    def _update_events(self) -> None:
        if self._fd is not None:
            mask = self._mask()
            if mask != self._events:
                self._events = mask
                self.loop.modify(self._fd, mask)

    def _unwatch(self) -> None:
        if self._fd is not None:
            self.loop.unregister(self._fd)
            self._fd = None
        self._events = 0

    def on_io(self, events: int) -> None:
        if events == EPOLLIN and self.phase is Phase.UP and not self._paused:  # the usual case
            try:
                data = self.transport.read_nowait()
            except TransportError as exc:
                self._lost(exc)
                return
            if data:
                self._deliver(data)
            return
        if self.phase is Phase.CONNECTING:
            self._connect_done()
            return
        if self.phase is not Phase.UP:
            return
        if events & EPOLLOUT and self._tail:
            self._write_tail()
        if events & ~EPOLLOUT and self.phase is Phase.UP and (not self._paused or events & (EPOLLHUP | EPOLLERR)):
            try:
                data = self.transport.read_nowait()
            except TransportError as exc:
                self._lost(exc)
                return
            if data:
                self._deliver(data)

    # -- lines in (loop) -------------------------------------------------------------------

    def _deliver(self, data: bytes) -> None:
        self.counters.bytes_in += len(data)
        lines = self.decoder.feed(data)
        if self._datagrams:
            lines += self.decoder.flush()
        try:
            self._publish(data, lines)
        except Exception as exc:  # a sink's bug: costs a reconnect, not the device
            log.exception("device %s: publishing failed", self.name)
            if self._pollable:
                self._lost(exc)
            return
        if self._flow and self.full_clients and not self._paused:
            self._pause()

    def _publish(self, chunk: bytes, lines) -> None:
        c = self.counters
        c.lines_in += len(lines)
        c.cut_lines = self.decoder.cut_lines
        c.invalid_lines = self.decoder.invalid_lines
        self.hub.publish(chunk, lines, self.decoder.pending)

    # -- flow control (loop) ---------------------------------------------------------------

    def _pause(self) -> None:
        if not self.hub.full_outboxes():
            return
        self._paused = True
        self._update_events()
        self._room_timer = self.loop.call_later(ROOM_WAIT, self._room_timeout)

    def room(self) -> None:
        """A client of this device drained below half its queue (or left)."""
        if self._paused and not self.hub.full_outboxes():
            self._resume()

    def _room_timeout(self) -> None:
        for ob in self.hub.full_outboxes():
            ob.slow = True
            log.info("client %s: queue did not drain within %.1f s; not waiting for it", ob.label, ROOM_WAIT)
        self._resume()

    def _resume(self) -> None:
        self._paused = False
        if self._room_timer is not None:
            self._room_timer.cancel()
            self._room_timer = None
        self._update_events()

    # -- lines out (loop) -------------------------------------------------------------------

    def submit(self, request: WriteRequest) -> str | None:
        """Queue a write; an error message instead when it cannot be queued. From another
        thread (the MQTT sink's commands) it is handed to the loop; queue errors are then
        counted and logged there."""
        if self.hub.state is not State.CONNECTED:
            self.counters.errors += 1
            return f"device {self.name} is {self.hub.state.value}"
        if not self.loop.in_loop():
            self.loop.call(self._submit_later, request)
            return None
        if len(self._queue) >= WRITE_QUEUE:
            self.counters.write_queue_full += 1
            self.counters.errors += 1
            return f"device {self.name} write queue is full ({WRITE_QUEUE} lines)"
        self._queue.append(request)
        if not self.dirty:
            self.loop.mark_dirty(self)
        return None

    def write_now(self, data: bytes) -> bool:
        """Loop: write one plain line at once when nothing waits before it (a client's
        only line in its read: the ping-pong case), skipping the queue; False: submit()
        it instead."""
        if self._queue or self._inflight is not None or self._awaiting is not None \
                or self._pace_timer is not None or self.phase is not Phase.UP or not self._pollable:
            return False
        try:
            sent = self.transport.try_write(data)
        except TransportError as exc:
            self._lost(exc)
            return False  # submit() now finds the device reconnecting and says so
        self.counters.bytes_out += sent
        if sent < len(data):
            self._inflight = [WriteRequest(data)]
            self._tail = data[sent:]
            self._update_events()
            return True
        self.counters.lines_out += 1
        return True

    def _submit_later(self, request: WriteRequest) -> None:
        error = self.submit(request)
        if error is not None:
            if request.client is not None:
                request.client.failed(request, error)
            else:
                log.info("device %s: not written: %s", self.name, error)

    def flush(self) -> None:
        """Write what is queued (end of a loop round): everything up to the next
        request, in as few writes as the transport allows."""
        queue = self._queue
        while queue and self.phase is Phase.UP and self._inflight is None \
                and self._awaiting is None and self._pace_timer is None:
            batch = self._take()
            request = batch[0]
            if request.reply and request.client is not None:
                timer = self.loop.call_later(request.timeout, self._reply_timeout, request)
                self._awaiting = (request, timer)
                self.hub.expect_reply(request.client, request.id, self._replied)
            data = request.data if len(batch) == 1 else b"".join(r.data for r in batch)
            self._inflight = batch
            if self._push:
                self._push_write(data)
                return
            if not self._pollable:
                self._thread.hand(data)
                return
            try:
                sent = self.transport.try_write(data)
            except TransportError as exc:
                self._lost(exc)
                return
            self.counters.bytes_out += sent
            if sent < len(data):
                self._tail = data[sent:]
                self._update_events()
                return
            self._write_done(None)

    def _write_tail(self) -> None:
        try:
            sent = self.transport.try_write(self._tail)
        except TransportError as exc:
            self._lost(exc)
            return
        self.counters.bytes_out += sent
        self._tail = self._tail[sent:]
        if self._tail:
            return
        self._update_events()
        self._write_done(None)

    def _write_done(self, error: BaseException | None) -> None:
        """The inflight batch is written (or failed to be), on the loop."""
        batch, self._inflight = self._inflight, None
        if batch is None:
            return
        if error is not None:
            self._fail(batch, str(error) if isinstance(error, WriteTimeout) else f"device {self.name} lost: {error}")
            self._cancel_reply()
        else:
            if not self._pollable:
                self.counters.bytes_out += sum(len(r.data) for r in batch)
            for req in batch:
                self.counters.lines_out += 1
                if req.client is not None:
                    req.client.acked(req)
        pace = self.config.pace_ms
        if pace and self.phase is Phase.UP:
            self._pace_timer = self.loop.call_later(pace / 1000.0, self._paced)
        if self._queue:
            self.loop.mark_dirty(self)

    def _paced(self) -> None:
        self._pace_timer = None
        if self._queue:
            self.loop.mark_dirty(self)

    def _take(self) -> list[WriteRequest]:
        """Requests to write in one go: one request with a reply, or plain lines."""
        queue = self._queue
        first = queue.popleft()
        batch = [first]
        if first.reply or self._single:
            return batch
        size, limit = len(first.data), self._batch
        while queue and size < limit and not queue[0].reply:
            req = queue.popleft()
            size += len(req.data)
            batch.append(req)
        return batch

    # -- requests (loop) -----------------------------------------------------------------------

    def _replied(self) -> None:
        """The hub routed the device's line to the asker (or the asker left)."""
        if self._awaiting is not None:
            self._awaiting[1].cancel()
            self._awaiting = None
            if self._queue:
                self.loop.mark_dirty(self)

    def _reply_timeout(self, request: WriteRequest) -> None:
        if self._awaiting is None or self._awaiting[0] is not request:
            return
        self._awaiting = None
        if self.hub.cancel_reply():
            self.counters.errors += 1
            request.client.failed(request, f"no reply within {request.timeout:g} s")
        if self._queue:
            self.loop.mark_dirty(self)

    def _cancel_reply(self) -> None:
        if self._awaiting is not None:
            request, timer = self._awaiting
            self._awaiting = None
            timer.cancel()
            self.hub.cancel_reply()

    def _fail_all(self, error: str) -> None:
        if self._sequence is not None:
            self._end_sequence(error)
        if self._inflight is not None:
            batch, self._inflight, self._tail = self._inflight, None, b""
            self._fail(batch, error)
        if self._awaiting is not None:
            request = self._awaiting[0]
            self._cancel_reply()
            if request.client is not None:
                self.counters.errors += 1
                request.client.failed(request, error)
        left, self._queue = list(self._queue), deque()
        self._fail(left, error)
        if self._pace_timer is not None:
            self._pace_timer.cancel()
            self._pace_timer = None

    def _fail(self, batch: list[WriteRequest], error: str) -> None:
        for req in batch:
            self.counters.errors += 1
            if req.client is not None:
                req.client.failed(req, error)


    # -- signals (loop) ------------------------------------------------------------------------

    def signal(self, kind: str, client: "Writer | None", request_id: object = None,
               steps: tuple[Step, ...] | None = None) -> str | None:
        """Play `steps` (for "reset": the device's `reset` sequence; for "bootloader": the
        ESP download-mode one); `client.signalled(kind, id, error)` once done. An error
        message instead when it cannot start."""
        transport = self.transport
        if not getattr(transport, "signals", False):
            return (f"device {self.name} cannot carry signals (DTR, RTS, BREAK): a {self.config.kind}:// link has "
                    f"none; serial://, rfc2217:// and sim:// do")
        if steps is None:
            text = BOOTLOADER if kind == "bootloader" else self.config.reset_sequence
            steps = parse_sequence(text)
            if not steps:
                return f"device {self.name} has reset = {self.config.reset_sequence!r}: nothing to do"
        if self.phase is not Phase.UP:
            return f"device {self.name} is {self.hub.state.value}"
        if self._sequence is not None:
            return f"device {self.name} is busy with a {self._sequence.kind} sequence"
        self._sequence = _Sequence(kind, steps, client, request_id)
        self._next_step(None)
        return None

    def _next_step(self, error: BaseException | None) -> None:
        seq = self._sequence
        if seq is None:
            return
        seq.timer = None
        if error is None and self.phase is not Phase.UP:
            error = TransportError(f"device {self.name} is {self.hub.state.value}")
        if error is not None:
            self._end_sequence(str(error) or type(error).__name__)
            return
        if not seq.steps:
            self._end_sequence(None)
            return
        step = seq.steps.popleft()
        transport = self.transport
        if step.kind == "wait":
            seq.timer = self.loop.call_later(step.ms / 1000.0, self._next_step, None)
        elif step.kind == "break":
            def started(error: BaseException | None) -> None:
                if error is not None or self._sequence is not seq:
                    self._next_step(error)
                    return
                seq.timer = self.loop.call_later(step.ms / 1000.0, self._signal_call,
                                                 lambda: transport.set_break(False), self._next_step)
            self._signal_call(lambda: transport.set_break(True), started)
        else:
            self._signal_call(lambda: transport.set_signals(step.dtr, step.rts), self._next_step)

    def _signal_call(self, fn: Callable[[], None], then: Callable[[BaseException | None], None]) -> None:
        """`fn()` here (an ioctl), or on a worker when the transport's calls block; then
        `then(error)` on the loop."""
        if getattr(self.transport, "signals_block", False):
            seq = self._sequence

            def done(error: BaseException | None) -> None:
                if self._sequence is seq:  # not ended (device lost, gateway stopping) meanwhile
                    then(error)

            self.workers.submit(fn, lambda _, error: self.loop.call(done, error))
            return
        try:
            fn()
        except Exception as exc:  # TransportError, or a port that does not have the line
            then(exc)
            return
        then(None)

    def _end_sequence(self, error: str | None) -> None:
        seq, self._sequence = self._sequence, None
        if seq is None:
            return
        if seq.timer is not None:
            seq.timer.cancel()
        if error is not None:
            self.counters.errors += 1
            log.info("device %s: %s failed: %s", self.name, seq.kind, error)
        if seq.client is not None:
            seq.client.signalled(seq.kind, seq.id, error)

    # -- hot-plug (loop) -------------------------------------------------------------------------

    def retry_now(self) -> bool:
        """Open the device now instead of at the end of its backoff (its port was just
        plugged in). False when it is not waiting for a retry."""
        if self._stopped or not self._pollable or self.phase is not Phase.IDLE or self._timer is None:
            return False
        self._timer.cancel()
        self._backoff = BACKOFF_FIRST
        self._open()
        return True

    # -- push transports (loop) ------------------------------------------------------------
    #
    # A transport with `pushes` (mqtt://) has neither a descriptor nor a thread: it is
    # attached once and then tells the link, from its own thread (paho's), that the device
    # is up, down or sent something (`_PushSide`, which hands each to the loop); writes
    # are started here and finish when the transport calls back.

    def _push_attach(self) -> None:
        if self._stopped:
            return
        self.phase = Phase.OPENING
        self._set_state(State.RECONNECTING)
        try:
            self.transport.attach(_PushSide(self))
        except Exception as exc:
            self._failed_to_open(exc)

    def _push_up(self) -> None:
        if self.phase is Phase.OPENING:
            self._up()

    def _push_down(self, state: str, reason: str) -> None:
        """The device went away (reconnecting) or its owner says it is disconnected."""
        if self.phase is Phase.STOPPED:
            return
        shown = State(state)
        if self.phase is Phase.UP:
            self._lost(TransportError(reason), shown)
        else:
            self._failed_to_open(TransportError(reason))
            self._set_state(shown)

    def _push_write(self, data: bytes) -> None:
        token = self._push_write_token = object()
        if self._push_timer is not None:
            self._push_timer.cancel()
        self._push_timer = self.loop.call_later(
            PUSH_WRITE_TIMEOUT, self._push_written, token,
            WriteTimeout(f"{self.transport.describe()}: no acknowledgement within {PUSH_WRITE_TIMEOUT:g} s"))
        self.transport.write_async(data, lambda error: self.loop.call(self._push_written, token, error))

    def _push_written(self, token: object, error: BaseException | None) -> None:
        if token is not self._push_write_token:
            return  # a write the link gave up on (device lost, timed out)
        self._push_write_token = None
        if self._push_timer is not None:
            self._push_timer.cancel()
            self._push_timer = None
        self._write_done(error)


class _PushSide:
    """What a push transport calls, from its own thread: each call is handed to the loop.
    At most PUSH_AHEAD messages wait for the loop; `data()` says False beyond (the
    transport counts the drop)."""

    __slots__ = ("link", "_ahead", "_lock")

    def __init__(self, link: DeviceLink):
        self.link = link
        self._ahead = 0
        self._lock = threading.Lock()

    def up(self) -> None:
        self.link.loop.call(self.link._push_up)

    def down(self, state: str, reason: str) -> None:
        self.link.loop.call(self.link._push_down, state, reason)

    def data(self, payload: bytes) -> bool:
        with self._lock:
            if self._ahead >= PUSH_AHEAD:
                return False
            self._ahead += 1
        self.link.loop.call(self._deliver, payload)
        return True

    def _deliver(self, payload: bytes) -> None:
        with self._lock:
            self._ahead -= 1
        if self.link.phase is Phase.UP:
            self.link._deliver(payload)


class _Listener:
    """tcp-listen's listening socket, on the loop."""

    __slots__ = ("link",)

    def __init__(self, link: DeviceLink):
        self.link = link

    def on_io(self, events: int) -> None:
        if self.link.phase is not Phase.STOPPED:
            self.link._accept()


class DeviceThread:
    """The one thread of a device whose transport has no descriptor ("device:NAME"):
    it opens the transport (with backoff), blocks in `read()`, hands what it read to
    the loop, and makes the writes the loop hands it (`hand`), waking from `read()` for
    them. `sim://` waits in `read()` until there is something to do, so an
    idle device wakes this thread only for its own timers."""

    def __init__(self, link: DeviceLink):
        self.link = link
        self.transport = link.transport
        self.thread = threading.Thread(target=self._run, name=f"device:{link.name}")
        self._stop = threading.Event()
        self._cond = threading.Condition()
        self._write: bytes | None = None  # guarded by _cond
        self._ahead = 0  # chunks handed to the loop, not delivered yet (guarded by _cond)
        self._wait = None if getattr(self.transport, "wakes_up", False) else READ_TIMEOUT

    @property
    def alive(self) -> bool:
        return self.thread.is_alive()

    def start(self) -> None:
        self.thread.start()

    def stop(self, timeout: float) -> None:
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        self.transport.cancel()
        if self.thread.ident is not None:
            self.thread.join(timeout)
            if self.thread.is_alive():
                log.warning("device %s: thread %s did not stop within %.1f s", self.link.name, self.thread.name, timeout)

    def hand(self, data: bytes) -> None:
        """Loop: write `data` next (one write at a time: the loop waits for _write_done)."""
        with self._cond:
            self._write = data
        self.transport.wakeup()

    def _run(self) -> None:
        link, loop, transport, stop = self.link, self.link.loop, self.transport, self._stop
        backoff = BACKOFF_FIRST
        while not stop.is_set():
            try:
                transport.open()
            except NotConnectedYet:
                loop.call(link._set_state, State.RECONNECTING)
                continue
            except Exception as exc:  # TransportError, or a bug: retry either way
                loop.call(link._failed_to_open, exc)
                stop.wait(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX)
                continue
            backoff = BACKOFF_FIRST
            loop.call(link._up)
            lost: BaseException | None = None
            try:
                self._serve()
            except TransportError as exc:
                lost = exc
            except Exception as exc:
                log.exception("device %s: reader failed; reconnecting", link.name)
                lost = exc
            with self._cond:
                self._write = None  # the loop fails it with the others (_lost)
            transport.close()
            if stop.is_set():
                break
            loop.call(link._lost, lost)
            stop.wait(BACKOFF_FIRST)
        transport.release()

    def _serve(self) -> None:
        transport, loop, link, stop = self.transport, self.link.loop, self.link, self._stop
        while not stop.is_set():
            with self._cond:
                write, self._write = self._write, None
            if write is not None:
                try:
                    transport.write(write)
                except WriteTimeout as exc:
                    loop.call(link._write_done, exc)
                else:
                    loop.call(link._write_done, None)
            data = transport.read(self._wait)
            if data:
                with self._cond:
                    while self._ahead >= HANDOFF_CHUNKS and not stop.is_set():
                        self._cond.wait()
                    self._ahead += 1
                loop.call(self._deliver, data)

    def _deliver(self, data: bytes) -> None:
        """Loop: one chunk the thread read."""
        try:
            if self.link.phase is Phase.UP:
                self.link._deliver(data)
        finally:
            with self._cond:
                self._ahead -= 1
                self._cond.notify()
