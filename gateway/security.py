"""Who may connect and what they may send (SPEC section 6). No I/O.

- tokens with a role each: `view` (receive only) or `control` (receive and send), from
  `?token=` or `Authorization: Bearer`;
- an Origin allowlist against cross-site WebSocket hijacking: a page on another origin
  opening ws://gateway/ in a victim's browser. The gateway's own origin, in any scheme,
  and clients that send no Origin (scripts, not browsers) are allowed by default;
- a per-client rate limit (token bucket), and a per-device allowlist of line patterns;
- the TLS context for `certfile` / `keyfile`.
"""

from __future__ import annotations

import hmac
import re
import ssl
import time
from collections.abc import Callable
from urllib.parse import parse_qs, urlsplit

from .config import AuthConfig


def token_from(environ: dict) -> str | None:
    header = environ.get("HTTP_AUTHORIZATION", "")
    if header[:7].lower() == "bearer ":
        return header[7:].strip()
    values = parse_qs(environ.get("QUERY_STRING", "")).get("token")
    return values[-1] if values else None


def role_for(auth: AuthConfig, token: str | None) -> str | None:
    """The token's role; "control" when no token is configured; None when refused."""
    if not auth.tokens:
        return "control"
    if not token:
        return None
    role = None
    for t in auth.tokens:
        # Compare with every token, in constant time, so timing tells nothing.
        if hmac.compare_digest(t.token.encode(), token.encode()):
            role = t.role
    return role


def origin_allowed(auth: AuthConfig, origin: str | None, host: str | None) -> bool:
    if not origin:
        return True  # not a browser: browsers always send Origin on a WebSocket handshake
    origin = origin.rstrip("/")
    if origin in auth.allowed_origins or "*" in auth.allowed_origins:
        return True
    parts = urlsplit(origin)
    return bool(host) and parts.scheme in ("http", "https", "ws", "wss") and parts.netloc.lower() == host.lower()


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
    """A device's allowlist of line patterns; an empty list allows every line."""

    def __init__(self, patterns: tuple[str, ...]):
        self.patterns = [re.compile(p) for p in patterns]

    def __bool__(self) -> bool:
        return bool(self.patterns)

    def allows(self, line: str) -> bool:
        return not self.patterns or any(p.search(line) for p in self.patterns)


def server_context(certfile: str, keyfile: str) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(certfile, keyfile)
    return ctx
