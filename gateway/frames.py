"""Server-to-client WebSocket frames as bytes (RFC 6455 section 5.2). No I/O.

A device line's frame is built once here and the same bytes are queued for every
client, so fan-out to many clients costs one encode, not one per client.
"""

from __future__ import annotations

import struct

TEXT, BINARY, CLOSE, PING, PONG = 0x1, 0x2, 0x8, 0x9, 0xA


def frame(opcode: int, payload: bytes) -> bytes:
    """One unmasked, unfragmented frame (servers never mask)."""
    n = len(payload)
    if n < 126:
        return bytes((0x80 | opcode, n)) + payload
    if n < 65536:
        return struct.pack("!BBH", 0x80 | opcode, 126, n) + payload
    return struct.pack("!BBQ", 0x80 | opcode, 127, n) + payload


def text(s: str) -> bytes:
    return frame(TEXT, s.encode("utf-8"))


def binary(b: bytes) -> bytes:
    return frame(BINARY, b)


def close(code: int | None = None, reason: str = "") -> bytes:
    """A close frame; `code=None` sends none (the answer to a close that had none)."""
    if code is None:
        return frame(CLOSE, b"")
    return frame(CLOSE, struct.pack("!H", code) + reason.encode("utf-8")[:123])


def ping(payload: bytes = b"") -> bytes:
    return frame(PING, payload)


def pong(payload: bytes = b"") -> bytes:
    return frame(PONG, payload)
