"""Cost per frame of gateway/wsframes.FrameReader against today's wsadapter parsing path.

    .venv/bin/python bench/frames.py

No sockets: the same client bytes go through `FrameReader.feed()` and through
`ClientSocket.once()`'s shortcut / `ClientSocket._parse()` on a ClientSocket built
without a connection (its `_deliver` only collects). Prints us/frame, best of 5 runs.
Not a test: timings depend on the machine.
"""

from __future__ import annotations

import os
import struct
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from ws4py.streaming import Stream  # noqa: E402

from gateway import wsframes  # noqa: E402
from gateway.wsadapter import ClientSocket  # noqa: E402
from gateway.wsframes import FrameReader  # noqa: E402

KEY = os.urandom(4)


def client_frame(opcode: int, payload: bytes, fin: bool = True) -> bytes:
    n = len(payload)
    b0 = (0x80 if fin else 0) | opcode
    head = bytes((b0, 0x80 | n)) if n < 126 else struct.pack("!BBH", b0, 0x80 | 126, n) if n < 65536 \
        else struct.pack("!BBQ", b0, 0x80 | 127, n)
    return head + KEY + wsframes._unmask(KEY, payload)


def adapter() -> ClientSocket:
    """A ClientSocket with just what `_parse` reads: no socket, no client, no manager."""
    sock = ClientSocket.__new__(ClientSocket)
    sock.buf = b""
    sock._slow_left = 0
    sock.max_message = 65536
    sock.stream = Stream()
    sock.reading_buffer_size = 2  # what ws4py's WebSocket.__init__ sets (for ws4py's process())
    sock.server_terminated = sock.client_terminated = False
    sock.outbox = None  # process() answers pings through _write(): dropped here
    sock.delivered = []
    sock._deliver = lambda data, is_binary, alone=False: sock.delivered.append(data)
    return sock


def best_of(runs: int, fn) -> float:
    best = float("inf")
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def per_frame(label: str, reads: list[bytes], frames_per_read: int) -> None:
    total = len(reads) * frames_per_read

    def new():
        reader = FrameReader(65536)
        for data in reads:
            reader.feed(data)

    def old():  # what once() does after its shortcut
        sock = adapter()
        for data in reads:
            buf = sock.buf + data if sock.buf else data
            sock.buf = b""
            sock._parse(buf)

    def old_shortcut():  # the same test once() makes before _parse, then _parse
        sock = adapter()
        for data in reads:
            n = len(data) - 6
            if 0 <= n < 126 and data[1] == 0x80 | n and (data[0] == 0x81 or data[0] == 0x82) \
                    and not sock.buf and not sock._slow_left and n <= sock.max_message and sock.stream.message is None:
                payload = wsframes._unmask(data[2:6], data[6:])
                if data[0] == 0x82 or payload.isascii():
                    sock._deliver(payload, data[0] == 0x82, True)
                    continue
            buf = sock.buf + data if sock.buf else data
            sock.buf = b""
            sock._parse(buf)

    t_new = best_of(5, new) / total * 1e6
    t_old = best_of(5, old_shortcut if frames_per_read == 1 else old) / total * 1e6
    print(f"{label:<52} wsframes {t_new:6.2f} us/frame   wsadapter {t_old:6.2f} us/frame")


def main() -> None:
    line = b'{"cmd": "LED ON", "id": 12345}'
    print(f"wsaccel: {'yes' if wsframes._WsaccelMasker is not None else 'no'}")
    per_frame("one 31-byte text frame per read (shortcut)", [client_frame(0x1, line)] * 20000, 1)
    per_frame("one 31-byte binary frame per read (shortcut)", [client_frame(0x2, line)] * 20000, 1)
    per_frame("100 31-byte text frames per read", [client_frame(0x1, line) * 100] * 200, 100)
    per_frame("one 1000-byte text frame per read (16-bit length)", [client_frame(0x1, b"x" * 1000)] * 5000, 1)
    per_frame("one 60000-byte binary frame per read", [client_frame(0x2, os.urandom(60000))] * 200, 1)
    text = "température ✓ ".encode() * 2
    per_frame("one non-ASCII text frame per read", [client_frame(0x1, text)] * 20000, 1)
    split = client_frame(0x1, line) * 10
    per_frame("10 text frames per read, split in 2 reads", [split[:157], split[157:]] * 2000, 5)
    per_frame("ping + text per read (ws4py for the ping)", [client_frame(0x9, b"") + client_frame(0x1, line)] * 2000, 2)


if __name__ == "__main__":
    main()
