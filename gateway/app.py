"""The gateway: devices, hubs, the HTTP/WebSocket server and the threads, started and
stopped together.

    with Gateway(config) as gw:      # start() ... shutdown()
        print(gw.url)

Threads it owns, all named and joined with a deadline on shutdown: the I/O loop
("WebSocketManager", gateway/manager.py: ws4py's manager thread, which owns every client
socket, every device descriptor and the listening socket), one per HTTP request in
progress ("http:ADDR", ending once it is answered or upgraded), the workers that open
devices ("device-open-N", started when first needed), one per device without a
descriptor ("device:NAME": sim://, pyserial's socket://, rfc2217://, loop://; mqtt://
devices have none), one per MQTT broker ("paho-mqtt-client-gateway-ID-RUN", paho's network
thread, shared by the sink, every mqtt:// device and discovery: gateway/broker.py), the
discovery worker ("discovery-1"), the sinks' ("mqtt-sink", "recorder"),
and the serial port watcher ("port-scan", gateway/ports.py: rescans every `[serial]
rescan` seconds and hands what changed to the loop, which tells /ws/_events and reopens a
device whose port came back).
"""

from __future__ import annotations

import itertools
import logging
import secrets
import socket
import threading
import time
from dataclasses import dataclass
from typing import Callable
from urllib.parse import urlsplit


from . import ports, transports
from .broker import BrokerPool
from .client import Client, Options
from .config import Config, ConfigError, DeviceConfig, baudrate_of, default_gateway_id, rfc2217_address, rfc2217_exposure
from .events import EventClient, EventHub
from .flashing import Flashing
from .device import DeviceLink
from .hub import Hub
from .manager import Manager
from .rfc2217 import Rfc2217Server
from .security import Access, server_context
from .server import GatewayApp, HTTPServer
from .sinks import build_sinks
from .workers import Workers
from .wsadapter import ClientSocket, Keepalive

log = logging.getLogger(__name__)

try:  # optional: C unmasking and UTF-8 validation for ws4py
    import wsaccel

    wsaccel.patch_ws4py()
    WSACCEL = True
except ImportError:
    WSACCEL = False


@dataclass
class GatewayStats:
    """Gateway-wide counters (per-device ones live in DeviceLink.counters); /metrics
    exports each field as gateway_<field>_total."""

    handshakes_refused_full: int = 0  # 503: max_clients reached
    handshakes_refused_auth: int = 0  # 401
    handshakes_refused_origin: int = 0  # 403
    handshakes_bad: int = 0  # 400
    messages_oversize: int = 0  # closed with 1009
    lines_refused: int = 0  # json errors for lines not written (role, allowlist, rate, format)
    rate_limited: int = 0  # lines over lines_per_second
    clients_total: int = 0  # clients ever connected
    requests_refused_host: int = 0  # 403: Host header not allowed (DNS rebinding)
    requests_dropped_pending: int = 0  # unfinished requests dropped beyond limits.max_pending


class Gateway:
    socket_class = ClientSocket

    def __init__(self, config: Config):
        self.config = config
        self.run_id = secrets.token_hex(6)
        self.gateway_id = config.server.gateway_id or default_gateway_id()
        self.manager = Manager()
        self.workers = Workers("device-open", 4)
        self.links: dict[str, DeviceLink] = {}
        self.rfc2217: dict[str, Rfc2217Server] = {}  # devices' RFC 2217 ports (their `rfc2217` key)
        # Watchers of devices added, removed or changing state, called on the loop with
        # {"type": "device", "event": ..., "device": NAME, "state": ...}: they only queue.
        self.device_watchers: list[Callable[[dict], None]] = []
        self._devices_lock = threading.Lock()  # serialises add/remove/update_device
        self.events = EventHub(self.gateway_id, self.device_list)  # WS /ws/_events (gateway/events.py), on the loop
        self.device_watchers.append(self.events.publish)
        self.port_watcher: ports.PortWatcher | None = None
        if config.serial.rescan > 0:
            self.port_watcher = ports.PortWatcher(config.serial.scan, config.serial.rescan,
                                                  self.manager.call, self._ports_changed)
        mqtt = config.mqtt
        home = None
        if mqtt.url:
            from .transports.mqtt import parse_broker

            home = parse_broker(urlsplit(mqtt.url))
        # One connection per broker, made when first asked for (gateway/broker.py).
        self.brokers = BrokerPool(self.gateway_id, self.run_id, mqtt.client_id, mqtt.keepalive, home, mqtt.prefix)
        self.discovery = None
        self.sinks = []
        for dev in config.devices:
            self.links[dev.name] = self._new_link(dev)
        self.sinks = build_sinks(self)
        for link in self.links.values():
            link.hub.listeners.extend(self.sinks)
        if mqtt.discover:
            from .discovery import Discovery

            self.discovery = Discovery(self, self.brokers.get(home))
        self.server: HTTPServer | None = None
        self._ids = itertools.count(1)
        self._sockets_lock = threading.Lock()
        self._sockets: set[ClientSocket] = set()
        self.stats = GatewayStats()
        self.started_at = 0.0
        # Who may connect: the Host policy and the auth rules, with a control token made
        # here when bound beyond loopback without tokens (security.Access).
        self.access = Access(config)
        self.flashing = Flashing(self)  # POST /api/devices/NAME/flash (gateway/flashing.py)

    # -- lifecycle --------------------------------------------------------------------

    def start(self) -> "Gateway":
        srv = self.config.server
        context = server_context(srv.certfile, srv.keyfile) if srv.certfile else None
        self.server = HTTPServer((srv.host, srv.port), GatewayApp(self), srv.handshake_timeout, context)
        self.server.manager = self.manager  # ws4py's handler adds sockets through it
        try:
            for link in self.links.values():
                self._start_rfc2217(link)
        except ConfigError:
            self._stop_rfc2217_all(1.0)
            del self.server.manager  # not started: ws4py's server_close() would join it
            self.server.server_close()
            self.server = None
            raise
        self.manager.start()
        Keepalive(self.manager, srv.ping_interval).start()
        for sink in self.sinks:
            sink.start()
        self.brokers.start()
        for link in self.links.values():
            link.start()
        if self.discovery is not None:
            self.discovery.start()
        if self.port_watcher is not None:
            self.port_watcher.start()
        # The listening socket is the loop's too: it accepts, and an HTTP thread takes the
        # request (no thread polling for connections).
        self.server.socket.setblocking(False)
        self.manager.call(self.manager.register, self.server.socket.fileno(), _Acceptor(self.server))
        self.started_at = time.time()
        return self

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.server.server_address[:2]
        return host, port

    @property
    def url(self) -> str:
        host, port = self.address
        if ":" in host:
            host = f"[{host}]"
        scheme = "https" if self.config.server.certfile else "http"
        return f"{scheme}://{host}:{port}"

    def shutdown(self, timeout: float = 5.0) -> None:
        """Close clients with 1001, stop accepting, close devices, join every thread."""
        if self.server is None:
            return
        deadline = time.monotonic() + timeout

        def left() -> float:
            return max(0.1, deadline - time.monotonic())

        stopped = threading.Event()  # no new connections from here
        if self.manager.call(lambda: (self.manager.unregister(self.server.socket.fileno()), stopped.set())):
            stopped.wait(left())
        self._stop_rfc2217_all(left())
        if self.port_watcher is not None:
            self.port_watcher.stop(left())
        if self.discovery is not None:
            self.discovery.stop(left())
        self.server.close_requests(left())
        self.flashing.stop(left())  # cancels flashes: their RFC 2217 servers release the devices
        # The loop fails what waits for the devices, closes them, sends every client
        # 1001 and ends once they answered, within a second or what is left.
        self.manager.stop(min(1.0, left()))
        self.manager.join(left())
        if self.manager.is_alive():
            log.warning("the I/O loop did not stop within %.1f s", timeout)
        for link in self.links.values():
            link.stop(left())
        self.workers.stop(left())
        for sink in self.sinks:
            sink.stop(left())
        self.brokers.stop()  # the gateway's "offline", then a clean disconnect
        if hasattr(self.server, "manager"):
            del self.server.manager  # ws4py's server_close() would close_all() and join it again
        self.server.server_close()
        self.server = None

    def __enter__(self) -> "Gateway":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.shutdown()

    # -- devices at run time (any thread) ----------------------------------------------
    #
    # `links` is replaced, never changed in place, so a thread that reads it (a request,
    # /metrics) sees one whole version.

    def _new_link(self, dev: DeviceConfig, hub: Hub | None = None) -> DeviceLink:
        if hub is None:
            hub = Hub(dev.name, self.run_id, dev.history, dev.encoding)
            hub.listeners.extend(self.sinks)
        transport = transports.create(dev.url)
        if transport.pushes:  # mqtt://: on the gateway's connection to its broker
            transport.use_brokers(self.brokers)
        return DeviceLink(dev, hub, transport, on_state=self._link_state, loop=self.manager, workers=self.workers)

    def add_device(self, dev: DeviceConfig) -> DeviceLink:
        """Add a device and start opening it; ValueError when the name is taken (or the
        URL is bad: transports.create checks it). A remote device (discovered) in the way
        of one of this gateway's own moves to NAME@OWNER (discovery.make_room)."""
        if self.discovery is not None and not dev.owner:
            self.discovery.make_room(dev.name)
        with self._devices_lock:
            if dev.name in self.links:
                raise ValueError(f"device {dev.name!r} exists")
            link = self._new_link(dev)
            self._start_rfc2217(link)  # ConfigError: its port cannot be served
            self.links = {**self.links, dev.name: link}
        # "added" before its first state event: both reach the loop in this order.
        self._emit(self._device_event("added", link, link.state))
        link.start()
        return link

    def remove_device(self, name: str, timeout: float = 5.0) -> None:
        """Close a device and forget it; its clients get a "removed" status (json) and
        close code 1001. KeyError when there is no such device."""
        with self._devices_lock:
            link = self.links[name]
            self.links = {k: v for k, v in self.links.items() if k != name}
            self._stop_rfc2217(name, timeout)
        link.stop(timeout)
        done = threading.Event()
        removed = {"type": "device", "event": "removed", "device": name}
        # On the loop, before this returns: watchers hear of it in order, and at once.
        if self.manager.call(lambda: (self._drop_clients(link), self._emit(removed), done.set())):
            done.wait(timeout)

    def update_device(self, name: str, dev: DeviceConfig, timeout: float = 5.0) -> DeviceLink:
        """Close the device and open it again with `dev` (the same name: a baud rate
        changed, say). Its clients stay connected and see the state change; its history
        and line numbers go on. KeyError when there is no such device."""
        if dev.name != name:
            raise ValueError(f"a device keeps its name: {name!r}, not {dev.name!r}")
        with self._devices_lock:
            old = self.links[name]
            if dev.rfc2217:
                rfc2217_exposure(dev, self.config.auth, f"device {name}")  # before anything changes
            self._stop_rfc2217(name, timeout)
            old.stop(timeout)
            link = self._new_link(dev, old.hub)
            self.links = {**self.links, name: link}
            try:
                self._start_rfc2217(link)
            except ConfigError as exc:
                log.error("%s; the device runs without it", exc)
            done = threading.Event()
            if self.manager.call(lambda: (self._relink_clients(old, link), done.set())):
                done.wait(timeout)
        link.start()
        return link

    # -- RFC 2217 ports (gateway/rfc2217.py) -----------------------------------------------

    def _start_rfc2217(self, link: DeviceLink) -> None:
        """Bind the device's RFC 2217 port, if it has one; ConfigError when that address
        may not (the beyond-loopback rule) or cannot (taken, not ours) be served."""
        dev = link.config
        if not dev.rfc2217:
            return
        rfc2217_exposure(dev, self.config.auth, f"device {dev.name}")
        host, port = rfc2217_address(dev.rfc2217)
        server = Rfc2217Server(self, link, host, port, allow=dev.rfc2217_allow)
        try:
            server.start()
        except OSError as exc:
            raise ConfigError(f"device {dev.name}: rfc2217 = {dev.rfc2217!r}: cannot listen: "
                              f"{exc.strerror or exc}") from None
        self.rfc2217 = {**self.rfc2217, dev.name: server}

    def _stop_rfc2217(self, name: str, timeout: float) -> None:
        server = self.rfc2217.get(name)
        if server is not None:
            self.rfc2217 = {k: v for k, v in self.rfc2217.items() if k != name}
            server.stop(timeout)

    def _stop_rfc2217_all(self, timeout: float) -> None:
        for name in list(self.rfc2217):
            self._stop_rfc2217(name, timeout)

    def _drop_clients(self, link: DeviceLink) -> None:
        """Loop: the device is gone; so are its clients."""
        for sub in link.hub.subscribers():
            if sub.fmt == "json":
                sub.send_json({"type": "status", "device": link.name, "state": "removed"})
            if sub.outbox is not None:
                sub.outbox.close(1001, "device removed")

    def _relink_clients(self, old: DeviceLink, link: DeviceLink) -> None:
        """Loop: the clients of `old` write to `link` from now on."""
        for sub in old.hub.subscribers():
            sub.relink(link)
        if old.full_clients:
            link.full_clients = old.full_clients

    def _link_state(self, link: DeviceLink, state) -> None:
        event = self._device_event("state", link, state)
        if link.external is not None:
            event["by"] = link.external  # who holds it (RFC 2217)
        self._emit(event)

    def _device_event(self, event: str, link: DeviceLink, state) -> dict:
        """{"type": "device", "event": EVENT, "device": NAME, "state": ..., "kind": ...,
        "owner": ..., "remote": ...}: what a device list needs (gateway/events.py)."""
        fields = self.device_summary(link, state)
        return {"type": "device", "event": event, "device": fields.pop("name"), **fields}

    def device_summary(self, link: DeviceLink, state=None) -> dict:
        """A device as a list of many shows it: name, state, kind, owner (the gateway id
        of the gateway it is on) and remote (whether that is another gateway)."""
        owner = link.config.owner
        return {"name": link.name, "state": (state or link.state).value, "kind": link.config.kind,
                "owner": owner or self.gateway_id, "remote": bool(owner)}

    def device_list(self) -> list[dict]:
        """Every device's summary: /ws/_events' answer to {"type": "devices"} (any thread)."""
        return [self.device_summary(link) for link in self.links.values()]

    def _emit(self, event: dict) -> None:
        if not self.device_watchers:
            return
        if not self.manager.in_loop():
            self.manager.call(self._emit, event)
            return
        for watch in self.device_watchers:
            try:
                watch(event)
            except Exception:
                log.exception("device watcher failed")

    # -- serial ports -----------------------------------------------------------------

    def list_ports(self) -> list[dict]:
        """The serial ports present now (any thread: it scans), as GET /api/ports shows them."""
        devices = {name: link.config.url for name, link in self.links.items()}
        return [ports.describe_port(p, devices) for p in ports.scan(self.config.serial.scan).values()]

    def _ports_changed(self, added: list, removed: list) -> None:
        """Loop: the port watcher saw ports come and go. Tell /ws/_events, and open at
        once a device waiting for its port (a by-id path, hwgrep://) instead of at the end
        of its backoff."""
        devices = {name: link.config.url for name, link in self.links.items()}
        for event, items in (("removed", removed), ("added", added)):
            for port in items:
                self.events.publish({"type": "port", "event": event, "port": ports.describe_port(port, devices)})
        if added:
            for link in self.links.values():
                if ports.follows_ports(link.config.url) and link.retry_now():
                    log.info("device %s: a port was plugged in: opening %s now", link.name, link.transport.describe())

    # -- clients ----------------------------------------------------------------------

    def new_event_client(self, role: str, peer: str) -> EventClient:
        self.stats.clients_total += 1
        return EventClient(next(self._ids), self.events, role, peer)

    def new_client(self, link: DeviceLink, options: Options, peer: str) -> Client:
        self.stats.clients_total += 1
        return Client(next(self._ids), link, options, peer, self.stats, self.config.limits.lines_per_second)

    def socket_environ(self, client: Client) -> dict:
        limits = self.config.limits
        return {
            "gateway.client": client,
            "gateway.max_message": limits.max_message,
            "gateway.queue": limits.queue,
            "gateway.registry": self,
        }

    def adopt(self, ws: ClientSocket) -> None:
        with self._sockets_lock:
            self._sockets.add(ws)

    def forget(self, ws: ClientSocket) -> None:
        with self._sockets_lock:
            self._sockets.discard(ws)

    def client_sockets(self) -> list[ClientSocket]:
        with self._sockets_lock:
            return list(self._sockets)

    def client_count(self) -> int:
        with self._sockets_lock:
            return len(self._sockets)

    # -- reports ----------------------------------------------------------------------

    def describe_devices(self, only: str | None = None) -> list[dict]:
        out = []
        for name, link in self.links.items():
            if only is not None and name != only:
                continue
            c = link.counters
            owner = link.config.owner
            item = {
                "name": name,
                "owner": owner or self.gateway_id,
                "remote": bool(owner),
                "kind": link.config.kind,
                "state": link.state.value,
                "buttons": [{"label": b.label, "line": b.line} for b in link.config.buttons],
                "counters": {"lines_in": c.lines_in, "lines_out": c.lines_out, "errors": c.errors,
                             "clients": link.hub.clients, "reconnects": c.reconnects},
                "seq": link.hub.seq,
                "run": self.run_id,
                "url": _masked(link.config.url),
                "baudrate": baudrate_of(link.config.url),
                "reset": link.config.reset_sequence,
                "signals": bool(getattr(link.transport, "signals", False)),
                "rfc2217": _address(self.rfc2217.get(name)),
                "by": link.external,
            }
            if owner:  # the owner gateway's status topic: online, offline, or unknown yet
                item["owner_state"] = getattr(link.transport, "owner_state", None) or "unknown"
            out.append(item)
        return out


class _Acceptor:
    """The HTTP server's listening socket, on the loop: accept, and hand the request to
    a thread of its own (HTTPServer.process_request), as socketserver's loop would."""

    __slots__ = ("server",)

    def __init__(self, server: HTTPServer):
        self.server = server

    def on_io(self, events: int) -> None:
        server = self.server
        try:
            request, address = server.get_request()
        except OSError:  # nothing to accept after all, or the client gave up
            return
        if not server.verify_request(request, address):
            server.shutdown_request(request)
            return
        _no_delay(request)
        try:
            server.process_request(request, address)
        except Exception:
            server.handle_error(request, address)
            server.shutdown_request(request)


def _address(server: Rfc2217Server | None) -> str | None:
    """"HOST:PORT" an RFC 2217 server is bound to, or None."""
    if server is None or server.address is None:
        return None
    host, port = server.address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _no_delay(sock) -> None:
    """Frames go out as they are sent: without TCP_NODELAY a json client's reply (or any
    frame after one the client has not acknowledged yet) waits for its delayed ACK, 40 ms."""
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except (OSError, AttributeError):  # not TCP (a test's socketpair), or TLS wrapped oddly
        pass


def _masked(url: str) -> str:
    """A device URL fit to show: a password in it becomes ***."""
    from .cli import masked

    return masked(url)
