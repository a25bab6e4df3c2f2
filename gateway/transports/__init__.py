"""Transports, chosen by the device URL's scheme.

`create(url)` splits the URL, takes off the options every device has (eol, encoding,
max_line, pace_ms, history), and builds the transport for the scheme, which checks the
rest and rejects what it does not know. Nothing is opened.
"""

from __future__ import annotations

import importlib
from urllib.parse import parse_qsl, urlsplit

from .base import Transport, TransportError

# scheme -> (module, class); a module is imported only when a device uses it
SCHEMES: dict[str, tuple[str, str]] = {
    "sim": ("sim", "SimTransport"),
    "serial": ("serialport", "SerialTransport"),
    "socket": ("serialport", "SerialTransport"),
    "rfc2217": ("serialport", "SerialTransport"),
    "loop": ("serialport", "SerialTransport"),
    "spy": ("serialport", "SerialTransport"),
    "hwgrep": ("serialport", "SerialTransport"),
    "tcp": ("net", "TcpTransport"),
    "tcp-listen": ("net", "TcpListenTransport"),
    "udp": ("net", "UdpTransport"),
    "mqtt": ("mqtt", "MqttTransport"),
}

#: Options every device takes, in its URL query or as config keys.
DEVICE_OPTIONS = ("eol", "encoding", "max_line", "pace_ms", "history")


def split_url(url: str) -> tuple[str, object, dict[str, str], dict[str, str]]:
    """(scheme, split URL, transport options, device options); ValueError if malformed."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if not scheme or "://" not in url:
        raise ValueError("expected SCHEME://..., e.g. sim://, serial:///dev/ttyUSB0, tcp://HOST:PORT")
    if scheme not in SCHEMES:
        raise ValueError(f"unknown scheme {scheme!r} (known: {', '.join(SCHEMES)})")
    options: dict[str, str] = {}
    device_options: dict[str, str] = {}
    for key, value in parse_qsl(parts.query, keep_blank_values=True, strict_parsing=False):
        (device_options if key in DEVICE_OPTIONS else options)[key] = value
    return scheme, parts._replace(query="", fragment=""), options, device_options


def create(url: str) -> Transport:
    scheme, parts, options, _ = split_url(url)
    module, cls = SCHEMES[scheme]
    klass = getattr(importlib.import_module(f"{__name__}.{module}"), cls)
    return klass(parts, options)


__all__ = ["SCHEMES", "DEVICE_OPTIONS", "Transport", "TransportError", "create", "split_url"]
