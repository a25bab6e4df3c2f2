"""HTTP and WebSocket on one port: ws4py's wsgiref server with a thread per request.

The stock ws4py `WSGIServer` serves one request at a time (one idle connection blocks
every handshake); here `ThreadingMixIn` gives each request a named thread, which ends
once the request is answered or the handshake is done: a WebSocket then belongs to
the I/O loop (ws4py's manager thread, gateway/manager.py), which reads, writes and
closes it, not to a thread of its own. A handler timeout bounds how long a slow client may take over its request, and
`max_pending` how many requests may be unfinished at once: beyond it the oldest is
dropped (its socket shut down, so its thread ends), so a flood of connections that never
finish their request holds a bounded number of threads.

Every request, HTTP and WebSocket, passes the Host check (DNS rebinding) before any route.

The device API (SPEC section 8), admin role: `POST /api/devices` (a device table as JSON:
201, 400 naming the key and value, 409 when the name is taken), `PATCH /api/devices/NAME`
(changes keys and reopens it), `DELETE /api/devices/NAME`. A browser may only call it
from an allowed origin and with `Content-Type: application/json` (which a cross-site form
cannot send, and a cross-site fetch may not without a CORS preflight this server never
answers). `GET /api/ports` lists the serial ports (gateway/ports.py); `WS /ws/_events`
streams port and device events (gateway/events.py).
"""

from __future__ import annotations

import json
import logging
import socket
import socketserver
import ssl
import threading
import time
from http import HTTPStatus
from importlib import resources
from pathlib import Path
from urllib.parse import parse_qs

from ws4py.exc import HandshakeError
from ws4py.server.wsgirefserver import WebSocketWSGIHandler, WebSocketWSGIRequestHandler, WSGIServer
from ws4py.server.wsgiutils import WebSocketWSGIApplication

from .client import Options
from .config import ConfigError, device_from, device_table
from .counts import parse_count
from .events import NAME as EVENTS
from .hub import FORMATS
from .security import origin_allowed

log = logging.getLogger(__name__)

EXAMPLES = Path(__file__).resolve().parent / "examples"  # the served example pages: package data
MAX_BODY = 65536  # bytes of a device API request
STATIC_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
                ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml", ".png": "image/png",
                ".ico": "image/x-icon", ".txt": "text/plain; charset=utf-8"}


class HttpError(Exception):
    def __init__(self, status: HTTPStatus, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


class QuietHandler(WebSocketWSGIHandler):
    def log_exception(self, exc_info):
        log.warning("request failed: %s", exc_info[1])


class RequestHandler(WebSocketWSGIRequestHandler):
    WebSocketWSGIHandler = QuietHandler
    timeout = 10.0  # set from the config by HTTPServer

    def setup(self):
        self.timeout = self.server.handshake_timeout
        super().setup()

    def parse_request(self):
        # The request line and headers are read (or found bad): no longer pending.
        try:
            return super().parse_request()
        finally:
            self.server.request_read(self.connection)

    def log_message(self, format, *args):
        log.debug("%s %s", self.address_string(), format % args)

    def handle(self):
        try:
            if isinstance(self.connection, ssl.SSLSocket):
                # In this request's thread, under the handler timeout: a slow or broken
                # TLS client never holds up the accept loop.
                self.connection.do_handshake()
            super().handle()
        except (TimeoutError, socket.timeout):
            log.info("%s: request not complete within %.0f s, dropped", self.address_string(), self.timeout)
        except (ConnectionError, OSError) as exc:
            log.info("%s: connection error during request: %s", self.address_string(), exc)


class HTTPServer(socketserver.ThreadingMixIn, WSGIServer):
    """A thread per request, each named and joined (with a deadline) on close.

    At most `app.max_pending` requests are pending (accepted, request line and headers
    not yet read); a new one beyond that drops the oldest pending one, and the server
    calls `app.request_dropped()` for each.
    """

    daemon_threads = False
    block_on_close = False  # we join our own threads, with a timeout
    allow_reuse_address = True
    request_queue_size = 1024  # the listen backlog: a flood waits in the kernel, not in threads

    def __init__(self, address, app, handshake_timeout: float, ssl_context: ssl.SSLContext | None = None):
        self.handshake_timeout = handshake_timeout
        self.ssl_context = ssl_context
        self._threads_lock = threading.Lock()
        self._request_threads: set[threading.Thread] = set()
        self._requests: set[socket.socket] = set()
        self._pending: dict[socket.socket, None] = {}  # unfinished requests, oldest first
        self._upgraded: set[socket.socket] = set()
        self._dropped_unlogged = 0
        self._drop_logged_at = 0.0
        super().__init__(address, RequestHandler)
        if ssl_context is not None:
            self.socket = ssl_context.wrap_socket(self.socket, server_side=True, do_handshake_on_connect=False)
        self.set_app(app)
        self.max_pending = getattr(app, "max_pending", 256)

    def process_request(self, request, client_address):
        name = f"http:{client_address[0]}:{client_address[1]}"
        t = threading.Thread(target=self.process_request_thread, args=(request, client_address), name=name)
        with self._threads_lock:
            self._request_threads.add(t)
            self._requests.add(request)
            self._pending[request] = None
            dropped = []
            while len(self._pending) > self.max_pending:
                oldest = next(iter(self._pending))
                del self._pending[oldest]
                dropped.append(oldest)
        for old in dropped:
            self._drop(old)
        t.start()

    def _drop(self, request) -> None:
        """Shut a pending request's socket down: its thread's read ends, and so does it."""
        try:
            request.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass  # it finished meanwhile
        note = getattr(self.get_app(), "request_dropped", None)
        if note is not None:
            note()
        self._dropped_unlogged += 1
        now = time.monotonic()
        if now - self._drop_logged_at >= 10.0:  # one line per 10 s of a flood, not one per socket
            log.warning("more than %d requests unfinished: dropped the oldest (%d since the last report)",
                        self.max_pending, self._dropped_unlogged)
            self._drop_logged_at, self._dropped_unlogged = now, 0

    def request_read(self, request) -> None:
        with self._threads_lock:
            self._pending.pop(request, None)

    def process_request_thread(self, request, client_address):
        try:
            super().process_request_thread(request, client_address)
        finally:
            with self._threads_lock:
                self._request_threads.discard(threading.current_thread())
                self._requests.discard(request)
                self._pending.pop(request, None)

    def handle_error(self, request, client_address):
        log.exception("request from %s:%s failed", *client_address[:2])

    def mark_upgraded(self, sock: socket.socket) -> None:
        with self._threads_lock:
            self._upgraded.add(sock)

    def shutdown_request(self, request):
        # ws4py's WSGIServer never closes a request's socket (a WebSocket lives on);
        # close it unless it was handed over to a WebSocket.
        with self._threads_lock:
            if request in self._upgraded:
                self._upgraded.discard(request)
                return
        socketserver.TCPServer.shutdown_request(self, request)

    def close_requests(self, timeout: float) -> None:
        """Wake requests still in progress (a slow handshake) and join their threads."""
        with self._threads_lock:
            requests = list(self._requests)
            threads = list(self._request_threads)
        for request in requests:
            try:
                request.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for t in threads:
            t.join(timeout)
            if t.is_alive():
                log.warning("thread %s did not stop within %.1f s", t.name, timeout)


def json_body(obj, status: HTTPStatus = HTTPStatus.OK):
    body = json.dumps(obj, indent=1).encode()
    return status, [("Content-Type", "application/json"), ("Cache-Control", "no-store")], body


def parse_ws_options(query: str, offered: list[str], role: str = "control") -> tuple[Options, str | None]:
    """The client's options from the handshake URL and the subprotocol to answer."""
    params = parse_qs(query, keep_blank_values=True)
    known = {"format", "history", "since", "run", "token"}
    for key in params:
        if key not in known:
            raise HttpError(HTTPStatus.BAD_REQUEST, f"unknown parameter {key!r} (known: {', '.join(sorted(known))})")

    def one(key):
        values = params.get(key)
        return values[-1] if values else None

    def count(key):
        value = one(key)
        if value is None:
            return None
        try:
            return parse_count(value)
        except ValueError:
            raise HttpError(HTTPStatus.BAD_REQUEST, f"{key} must be a whole number >= 0, not {value!r}") from None

    fmt = one("format")
    chosen = None
    ours = [p for p in offered if p in FORMATS]
    if fmt is None and ours:
        fmt = ours[0]
    if offered:
        # Answer a subprotocol whenever one is offered: a browser fails the connection
        # if none is echoed. Prefer the one that names our format.
        chosen = fmt if fmt in offered else offered[0]
    fmt = fmt or "text"
    if fmt not in FORMATS:
        raise HttpError(HTTPStatus.BAD_REQUEST, f"format must be one of {', '.join(FORMATS)}, not {fmt!r}")
    return Options(fmt=fmt, history=count("history"), since=count("since"), run=one("run"), role=role), chosen


def parse_events_options(query: str, offered: list[str]) -> str | None:
    """/ws/_events: json only; the subprotocol to answer."""
    params = parse_qs(query, keep_blank_values=True)
    for key, values in params.items():
        if key not in ("format", "token"):
            raise HttpError(HTTPStatus.BAD_REQUEST, f"unknown parameter {key!r} (known: format, token)")
        if key == "format" and values[-1] != "json":
            raise HttpError(HTTPStatus.BAD_REQUEST, f"/ws/_events is json only, not {values[-1]!r}")
    if not offered:
        return None
    return "json" if "json" in offered else offered[0]


def local_address_of(environ) -> str | None:
    """The address the client connected to (with a wildcard bind, one of this machine's)."""
    sock = environ.get("ws4py.socket")
    try:
        return sock.getsockname()[0]
    except (OSError, AttributeError, IndexError):
        return None


def peer_of(environ) -> str:
    sock = environ.get("ws4py.socket")
    try:
        host, port = sock.getpeername()[:2]
        return f"{host}:{port}"
    except (OSError, AttributeError):
        return environ.get("REMOTE_ADDR", "?")


class GatewayApp:
    """The WSGI application: routes, and the WebSocket handshake for /ws/NAME."""

    def __init__(self, gateway):
        self.gateway = gateway

    @property
    def access(self):
        return self.gateway.access

    @property
    def max_pending(self) -> int:
        return self.gateway.config.limits.max_pending

    def request_dropped(self) -> None:
        self.gateway.stats.requests_dropped_pending += 1

    def __call__(self, environ, start_response):
        path = environ.get("PATH_INFO", "/")
        try:
            self.check_host(environ)
            if path.startswith("/ws/"):
                return self.websocket(environ, start_response, path[4:])
            method = environ.get("REQUEST_METHOD")
            if path.startswith("/api/devices/") and path.endswith("/flash"):
                status, headers, body = self.flash_api(method, path[len("/api/devices/"):-len("/flash")], environ)
            elif method in ("POST", "PATCH", "DELETE") and (path == "/api/devices" or path.startswith("/api/devices/")):
                status, headers, body = self.device_api(method, path[len("/api/devices/"):], environ)
            elif method not in ("GET", "HEAD"):
                raise HttpError(HTTPStatus.METHOD_NOT_ALLOWED, "only GET here")
            else:
                status, headers, body = self.route(path, environ)
        except HttpError as exc:
            status, headers, body = exc.status, [("Content-Type", "text/plain; charset=utf-8")], (exc.message + "\n").encode()
            if exc.status == HTTPStatus.UNAUTHORIZED:
                headers.append(("WWW-Authenticate", 'Bearer realm="gateway"'))
        headers.append(("Content-Length", str(len(body))))
        start_response(f"{status.value} {status.phrase}", headers)
        return [b""] if environ.get("REQUEST_METHOD") == "HEAD" else [body]

    def check_host(self, environ) -> None:
        """DNS rebinding: refuse a Host this gateway does not answer to, on every request.
        HTTP/1.0 without Host is let through: browsers always send one."""
        host = environ.get("HTTP_HOST")
        if host is None and environ.get("SERVER_PROTOCOL", "HTTP/1.0") == "HTTP/1.0":
            return
        if not self.access.hosts.allows(host, local_address_of(environ)):
            self.gateway.stats.requests_refused_host += 1
            log.warning("%s: request for host %r refused (not in [server] allowed_hosts)", peer_of(environ), host)
            reason = "no Host header" if host is None else f"host {host!r} not allowed: add it to [server] allowed_hosts"
            raise HttpError(HTTPStatus.FORBIDDEN, reason)

    def route(self, path: str, environ):
        gw = self.gateway
        if path in ("/api/devices", "/api/ports", "/metrics") and self.access.role(environ) is None:
            raise HttpError(HTTPStatus.UNAUTHORIZED, "a valid token is needed: ?token= or Authorization: Bearer")
        if path == "/healthz":
            return json_body({"status": "ok", "devices": {name: link.state.value for name, link in gw.links.items()}})
        if path == "/api/devices":
            return json_body(gw.describe_devices())
        if path.startswith("/api/devices/"):
            return self.one_device(path[len("/api/devices/"):], environ)
        if path == "/api/ports":
            return json_body(gw.list_ports())
        if path == "/metrics":
            from . import metrics  # prometheus_client is imported only when scraped

            body, ctype = metrics.render(gw)
            return HTTPStatus.OK, [("Content-Type", ctype)], body
        if path in ("/", "/index.html"):
            return self.static("index.html")
        if path.startswith("/static/"):
            return self.static(path[len("/static/"):])
        if path == "/examples/arrows.html":
            # The four-arrow example page, same-origin with the gateway (opened as a file,
            # a page sends Origin: null, which the Origin check refuses).
            try:
                body = (EXAMPLES / "arrows.html").read_bytes()
            except OSError:
                raise HttpError(HTTPStatus.NOT_FOUND, "examples/arrows.html is not here") from None
            return HTTPStatus.OK, [("Content-Type", STATIC_TYPES[".html"]), ("Cache-Control", "no-cache")], body
        raise HttpError(HTTPStatus.NOT_FOUND, f"no such route: {path}")

    # -- the device API (admin) --------------------------------------------------------

    def device_api(self, method: str, name: str, environ):
        gw = self.gateway
        self.require_admin(environ, f"{method} /api/devices", "add, change or remove devices: the device API wants an admin token")
        where = f"{method} /api/devices" + (f"/{name}" if name else "")
        if method == "POST":
            if name:
                raise HttpError(HTTPStatus.METHOD_NOT_ALLOWED, "POST /api/devices adds a device: no name in the path")
            try:
                dev = device_from(self.json_request(environ), where, "")
            except ConfigError as exc:
                raise HttpError(HTTPStatus.BAD_REQUEST, str(exc)) from None
            try:
                gw.add_device(dev)
            except ConfigError as exc:  # its rfc2217 port cannot be served
                raise HttpError(HTTPStatus.BAD_REQUEST, f"{where}: {exc}") from None
            except ValueError:
                raise HttpError(HTTPStatus.CONFLICT, f"{where}: name = {dev.name!r}: a device has this name") from None
            log.info("device %s added (%s) by %s", dev.name, gw.links[dev.name].transport.describe(), peer_of(environ))
            return json_body(gw.describe_devices(dev.name)[0], HTTPStatus.CREATED)
        if not name or "/" in name:
            raise HttpError(HTTPStatus.METHOD_NOT_ALLOWED, f"{method} wants a device: /api/devices/NAME")
        link = gw.links.get(name)
        if link is None:
            raise HttpError(HTTPStatus.NOT_FOUND, f"no such device: {name!r}")
        if method == "DELETE":
            try:
                gw.remove_device(name)
            except KeyError:
                raise HttpError(HTTPStatus.NOT_FOUND, f"no such device: {name!r}") from None
            log.info("device %s removed by %s", name, peer_of(environ))
            return json_body({"name": name, "removed": True})
        changes = self.json_request(environ)
        if "name" in changes and changes["name"] != name:
            raise HttpError(HTTPStatus.BAD_REQUEST, f"{where}: name = {changes['name']!r}: a device keeps its name")
        # A key set to null goes back to its default.
        table = {k: v for k, v in {**device_table(link.config), **changes}.items() if v is not None}
        try:
            dev = device_from(table, where, "")
        except ConfigError as exc:
            raise HttpError(HTTPStatus.BAD_REQUEST, str(exc)) from None
        try:
            gw.update_device(name, dev)
        except ConfigError as exc:  # its rfc2217 port cannot be served
            raise HttpError(HTTPStatus.BAD_REQUEST, f"{where}: {exc}") from None
        except KeyError:
            raise HttpError(HTTPStatus.NOT_FOUND, f"no such device: {name!r}") from None
        log.info("device %s changed (%s) by %s", name, ", ".join(sorted(changes)), peer_of(environ))
        return json_body(gw.describe_devices(name)[0])

    # -- flashing (admin; gateway/flashing.py) ----------------------------------------------

    def flash_api(self, method: str, name: str, environ):
        """POST /api/devices/NAME/flash starts a flash (202 and the job), DELETE cancels the
        running one (200 and the job once it ended), GET shows the latest (any role)."""
        from . import flashing

        gw = self.gateway
        where = f"{method} /api/devices/{name}/flash"
        if method in ("GET", "HEAD"):
            if self.access.role(environ) is None:
                raise HttpError(HTTPStatus.UNAUTHORIZED, "a valid token is needed: ?token= or Authorization: Bearer")
        elif method in ("POST", "DELETE"):
            self.require_admin(environ, where, "flash devices: flashing wants an admin token")
        else:
            raise HttpError(HTTPStatus.METHOD_NOT_ALLOWED, f"{method} /api/devices/NAME/flash: only GET, POST, DELETE")
        if not name or "/" in name or name not in gw.links:
            raise HttpError(HTTPStatus.NOT_FOUND, f"no such device: {name!r}")
        if method in ("GET", "HEAD"):
            return json_body(gw.flashing.status(name))
        try:
            if method == "DELETE":
                job = gw.flashing.cancel(name)
                log.info("flash of %s cancelled by %s", name, peer_of(environ))
                return json_body(job)
            busy = gw.flashing.busy(name)  # before 5 MB of request are read for nothing
            if busy is not None:
                raise flashing.FlashBusy(busy)
            request = flashing.parse_request(self.json_request(environ, flashing.MAX_BODY), where)
            job = gw.flashing.start(name, request, peer_of(environ))
        except flashing.FlashRequestError as exc:
            raise HttpError(HTTPStatus.BAD_REQUEST, str(exc)) from None
        except flashing.FlashBusy as exc:
            raise HttpError(HTTPStatus.CONFLICT, f"{where}: {exc}") from None
        except KeyError:
            raise HttpError(HTTPStatus.NOT_FOUND, f"no such device: {name!r}") from None
        return json_body(job.describe(), HTTPStatus.ACCEPTED)

    def require_admin(self, environ, what: str, refused: str) -> None:
        """401 without a valid token, 403 for a role below admin (`refused` says what it may
        not do) or a browser page from an origin not allowed (CSRF)."""
        role = self.access.role(environ)
        if role is None:
            raise HttpError(HTTPStatus.UNAUTHORIZED, "a valid token is needed: ?token= or Authorization: Bearer")
        if role != "admin":
            raise HttpError(HTTPStatus.FORBIDDEN, f"role {role} may not {refused}")
        origin = environ.get("HTTP_ORIGIN")
        if not origin_allowed(self.access.auth, origin, environ.get("HTTP_HOST"),
                              lambda h: self.access.hosts.allows(h, local_address_of(environ))):
            log.warning("%s: %s from origin %r refused", peer_of(environ), what, origin)
            raise HttpError(HTTPStatus.FORBIDDEN, "origin not allowed")

    def one_device(self, name: str, environ):
        """GET /api/devices/NAME: one device as GET /api/devices lists it (404 if none)."""
        if self.access.role(environ) is None:
            raise HttpError(HTTPStatus.UNAUTHORIZED, "a valid token is needed: ?token= or Authorization: Bearer")
        found = self.gateway.describe_devices(name) if name else []
        if not found:
            raise HttpError(HTTPStatus.NOT_FOUND, f"no such device: {name!r}")
        return json_body(found[0])

    @staticmethod
    def json_request(environ, limit: int = MAX_BODY) -> dict:
        """The request's JSON object; 400/413/415 with one line when it is not one."""
        ctype = environ.get("CONTENT_TYPE", "").split(";", 1)[0].strip().lower()
        if ctype != "application/json":
            raise HttpError(HTTPStatus.UNSUPPORTED_MEDIA_TYPE,
                            f"send the device as JSON with Content-Type: application/json, not {ctype or 'none'!r}")
        try:
            length = parse_count(environ.get("CONTENT_LENGTH") or "0")
        except ValueError:
            raise HttpError(HTTPStatus.BAD_REQUEST, "Content-Length must be a whole number") from None
        if length > limit:
            raise HttpError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"at most {limit} bytes of JSON")
        raw = environ["wsgi.input"].read(length) if length else b""
        try:
            body = json.loads(raw)
        except ValueError as exc:
            raise HttpError(HTTPStatus.BAD_REQUEST, f"not JSON: {exc}") from None
        if not isinstance(body, dict):
            raise HttpError(HTTPStatus.BAD_REQUEST, 'expected an object such as {"name": "esp", "url": "serial:///dev/ttyUSB0"}')
        return body

    def static(self, name: str):
        if not name or "/" in name.replace("vendor/", "", 1) or name.startswith(".") or ".." in name:
            raise HttpError(HTTPStatus.NOT_FOUND, "no such file")
        ext = name[name.rfind("."):] if "." in name else ""
        ctype = STATIC_TYPES.get(ext)
        try:
            body = resources.files("gateway").joinpath("static", *name.split("/")).read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise HttpError(HTTPStatus.NOT_FOUND, f"no such file: {name}") from None
        if ctype is None:
            raise HttpError(HTTPStatus.NOT_FOUND, "no such file")
        return HTTPStatus.OK, [("Content-Type", ctype), ("Cache-Control", "no-cache")], body

    def websocket(self, environ, start_response, name: str):
        gw = self.gateway
        auth = self.access.auth
        if not origin_allowed(auth, environ.get("HTTP_ORIGIN"), environ.get("HTTP_HOST"),
                              lambda h: self.access.hosts.allows(h, local_address_of(environ))):
            gw.stats.handshakes_refused_origin += 1
            log.warning("%s: WebSocket from origin %r refused", peer_of(environ), environ.get("HTTP_ORIGIN"))
            raise HttpError(HTTPStatus.FORBIDDEN, "origin not allowed")
        role = self.access.role(environ)
        if role is None:
            gw.stats.handshakes_refused_auth += 1
            log.warning("%s: WebSocket without a valid token refused", peer_of(environ))
            raise HttpError(HTTPStatus.UNAUTHORIZED, "a valid token is needed: ?token= or Authorization: Bearer")
        link = gw.links.get(name)
        if link is None and name != EVENTS:
            raise HttpError(HTTPStatus.NOT_FOUND, f"no such device: {name!r} (devices: {', '.join(gw.links)})")
        if environ.get("HTTP_UPGRADE", "").lower() != "websocket":
            raise HttpError(HTTPStatus.BAD_REQUEST, "this is a WebSocket endpoint: connect with a WebSocket client")
        offered = [p.strip() for p in environ.get("HTTP_SEC_WEBSOCKET_PROTOCOL", "").split(",") if p.strip()]
        try:
            if link is None:
                options, chosen = None, parse_events_options(environ.get("QUERY_STRING", ""), offered)
            else:
                options, chosen = parse_ws_options(environ.get("QUERY_STRING", ""), offered, role)
        except HttpError:
            gw.stats.handshakes_bad += 1
            raise
        if gw.client_count() >= gw.config.limits.max_clients:
            gw.stats.handshakes_refused_full += 1
            raise HttpError(HTTPStatus.SERVICE_UNAVAILABLE, "too many clients")
        if link is None:
            client = gw.new_event_client(role, peer_of(environ))
        else:
            client = gw.new_client(link, options, peer_of(environ))
        environ.update(gw.socket_environ(client))
        ws_app = WebSocketWSGIApplication(protocols=[chosen] if chosen else None, handler_cls=gw.socket_class)
        try:
            result = ws_app(environ, start_response)
        except HandshakeError as exc:
            gw.stats.handshakes_bad += 1
            raise HttpError(HTTPStatus.BAD_REQUEST, f"bad WebSocket handshake: {exc}") from None
        self_sock = environ.get("ws4py.socket")
        if self_sock is not None:
            gw.server.mark_upgraded(self_sock)
        return result
