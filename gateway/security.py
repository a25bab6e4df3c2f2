"""Who may connect and what they may send (SPEC section 6). No I/O.

- a Host allowlist on every request (DNS rebinding: a page on evil.example whose name
  is rebound to 127.0.0.1 sends Host: evil.example): loopback names, the bound address,
  the address the connection arrived on, and `[server] allowed_hosts`;
- bound beyond loopback with no tokens, an admin token made at start (`Access`);
- tokens with a role each: `view` (receive only), `control` (receive, send lines and
  signals) or `admin` (also the device API: POST/PATCH/DELETE /api/devices), from
  `?token=` or `Authorization: Bearer`; with no tokens (loopback) everyone is admin;
- an Origin allowlist against cross-site WebSocket hijacking: a page on another origin
  opening ws://gateway/ in a victim's browser. The gateway's own origin, in any scheme,
  and clients that send no Origin (scripts, not browsers) are allowed by default;
- a per-client rate limit (token bucket), and a per-device allowlist of line patterns,
  each matching the whole line (`re.fullmatch`);
- the TLS context for `certfile` / `keyfile`.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import re
import secrets
import socket
import ssl
import time
from collections.abc import Callable, Iterable
from dataclasses import replace
from urllib.parse import parse_qs, urlsplit

from .config import AuthConfig, Config, Token
from .counts import parse_count

log = logging.getLogger(__name__)

LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "[::1]"})


def split_host(value: str) -> tuple[str, int | None] | None:
    """A Host header (or an Origin's netloc) as (lower-case name, port or None); IPv6
    addresses in brackets, compressed. None if it is not a host[:port]."""
    value = value.strip().lower()
    if not value:
        return None
    if value.startswith("["):
        end = value.find("]")
        if end < 0:
            return None
        try:
            name = f"[{ipaddress.IPv6Address(value[1:end]).compressed}]"
        except ValueError:
            return None
        rest = value[end + 1:]
    else:
        name, sep, port = value.partition(":")
        rest = sep + port
        if not name or any(c in name for c in "/@[]\\ ") or ":" in port:
            return None
    if not rest:
        return name, None
    if not rest.startswith(":"):
        return None
    try:
        return name, parse_count(rest[1:], 0, 65535)
    except ValueError:
        return None


def address_name(address: str) -> str:
    """An IP address as it stands in a Host header: IPv6 in brackets, compressed."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return address.lower()
    if ip.version == 6 and ip.ipv4_mapped:
        ip = ip.ipv4_mapped  # an IPv4 client of a dual-stack socket
    return f"[{ip.compressed}]" if ip.version == 6 else ip.compressed


def is_loopback_bind(host: str) -> bool:
    """True when `host` (the address the server binds) reaches this machine only."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        pass
    if not host:
        return False  # every address
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except OSError:
        return False
    return bool(infos) and all(ipaddress.ip_address(i[4][0].split("%", 1)[0]).is_loopback for i in infos)


class HostPolicy:
    """Which Host header values a request may carry. The port is not checked (a reverse
    proxy may forward its own); the name must be a loopback name, the bound address, the
    address the connection arrived on, the machine's own name when bound beyond
    loopback, or match `allowed_hosts` (exact, ".domain" for it and its subdomains, "*")."""

    def __init__(self, allowed: Iterable[str] = (), own_names: Iterable[str] = ()):
        self.any = "*" in allowed
        self.exact = frozenset(LOOPBACK_NAMES | {n.lower() for n in own_names if n}
                               | {a for a in allowed if not a.startswith(".")})
        self.domains = tuple(a for a in allowed if a.startswith("."))

    def allows(self, host: str | None, local_address: str | None = None) -> bool:
        if self.any:
            return True
        parts = split_host(host or "")
        if parts is None:
            return False
        name = parts[0]
        if name in self.exact:
            return True
        if local_address and name == address_name(local_address):
            return True  # the address the client connected to: an IP literal, not a name to rebind
        return any(name == d[1:] or name.endswith(d) for d in self.domains)


class Access:
    """The gateway's effective access rules, fixed at start: the auth config (with a
    control token made here when the gateway is bound beyond loopback without tokens,
    unless `[auth] anonymous = true`) and the Host policy. The token made here is an
    admin token: whoever started the gateway may also add and remove devices."""

    def __init__(self, config: Config, token_factory: Callable[[], str] = lambda: secrets.token_urlsafe(18)):
        server, auth = config.server, config.auth
        self.loopback = is_loopback_bind(server.host)
        self.generated_token: str | None = None
        if not self.loopback and not auth.tokens:
            if auth.anonymous:
                log.warning("bound to %s with [auth] anonymous = true and no tokens: anyone who can reach this "
                            "address may read and drive every device", server.host or "every address")
            else:
                self.generated_token = token_factory()
                auth = replace(auth, tokens=(Token(self.generated_token, "admin"),))
        self.auth = auth
        # Without tokens: everyone is admin on loopback; bound beyond it with anonymous =
        # true, everyone may drive the devices (control) but not add or remove them.
        self.open_role = "admin" if self.loopback else "control"
        own = [server.host.strip("[]") and address_name(server.host.strip("[]"))]
        if not self.loopback:
            own.append(socket.gethostname())
        self.hosts = HostPolicy(server.allowed_hosts, own)

    def role(self, environ: dict) -> str | None:
        """The request's role (its token's), or None when it must be refused (401)."""
        return role_for(self.auth, token_from(environ), self.open_role)


def token_from(environ: dict) -> str | None:
    header = environ.get("HTTP_AUTHORIZATION", "")
    if header[:7].lower() == "bearer ":
        return header[7:].strip()
    values = parse_qs(environ.get("QUERY_STRING", "")).get("token")
    return values[-1] if values else None


def role_for(auth: AuthConfig, token: str | None, open_role: str = "admin") -> str | None:
    """The token's role; `open_role` when no token is configured (Access.open_role:
    admin on loopback, control when anonymous beyond it); None when refused."""
    if not auth.tokens:
        return open_role
    if not token:
        return None
    role = None
    for t in auth.tokens:
        # Compare with every token, in constant time, so timing tells nothing.
        if hmac.compare_digest(t.token.encode(), token.encode()):
            role = t.role
    return role


SENDING_ROLES = frozenset({"control", "admin"})


def may_send(role: str | None) -> bool:
    """Lines and signals to a device: control and admin."""
    return role in SENDING_ROLES


def origin_allowed(auth: AuthConfig, origin: str | None, host: str | None,
                   host_allowed: Callable[[str], bool] = lambda h: True) -> bool:
    """An Origin listed in allowed_origins, or the request's own origin (any scheme, the
    same host[:port] as the Host header) provided that host is allowed (`host_allowed`:
    the Host policy, so a rebound name is refused even when Origin and Host agree)."""
    if not origin:
        return True  # not a browser: browsers always send Origin on a WebSocket handshake
    origin = origin.rstrip("/")
    if origin in auth.allowed_origins or "*" in auth.allowed_origins:
        return True
    parts = urlsplit(origin)
    return (bool(host) and parts.scheme in ("http", "https", "ws", "wss") and parts.netloc.lower() == host.lower()
            and host_allowed(parts.netloc))


class RateLimit:
    """A token bucket: `rate` lines per second, bursts of up to one second's worth."""

    def __init__(self, rate: float, clock: Callable[[], float] = time.monotonic):
        self.rate = rate
        self.clock = clock
        self.tokens = max(rate, 1.0)
        self.stamp = clock()
        self.refused_in_a_row = 0

    def allow(self) -> bool:
        now = self.clock()
        self.tokens = min(max(self.rate, 1.0), self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            self.refused_in_a_row = 0
            return True
        self.refused_in_a_row += 1
        return False

    @property
    def persistent(self) -> bool:
        """Refused more than a second's worth of lines in a row: time to hang up."""
        return self.refused_in_a_row > max(self.rate, 1.0)


class LineFilter:
    """A device's allowlist of line patterns; an empty list allows every line. A pattern
    must match the whole line (`re.fullmatch`): "LED (ON|OFF)" lets "LED ON" through, not
    "XLED ON" nor "LED ON; REBOOT"."""

    def __init__(self, patterns: tuple[str, ...]):
        self.patterns = [re.compile(p) for p in patterns]

    def __bool__(self) -> bool:
        return bool(self.patterns)

    def allows(self, line: str) -> bool:
        return not self.patterns or any(p.fullmatch(line) for p in self.patterns)


def server_context(certfile: str, keyfile: str) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(certfile, keyfile)
    return ctx
