#!/usr/bin/env python3
"""A text-mode client with ws4py's threaded client: send lines, print what comes back.

    python examples/python_ws4py_client.py                          # ws://127.0.0.1:8765/ws/sim
    python examples/python_ws4py_client.py --send PING --send "GET temp" --count 2
    GATEWAY_WS=ws://127.0.0.1:8765/ws/esp python examples/python_ws4py_client.py

Text mode: each line sent is one text frame, each device line one text frame back. A
device line that is not valid text (boot noise) comes as a binary frame: printed here
as `# binary: HEX`. Needs `pip install ws4py` (the gateway's own requirement).
"""

from __future__ import annotations

import argparse
import os
import sys

from ws4py.client.threadedclient import WebSocketClient

DEFAULT_URL = "ws://127.0.0.1:8765/ws/sim"


class LineClient(WebSocketClient):
    """ws4py runs opened(), received_message() and closed() on the client's own thread."""

    def __init__(self, url: str, send: list[str], count: int):
        super().__init__(url)
        self.lines = send
        self.count = count  # close after this many messages (0: never)
        self.received = 0
        self.close_code: int | None = None

    def opened(self) -> None:
        for line in self.lines:
            self.send(line)  # a str goes as a text frame

    def received_message(self, message) -> None:
        if message.is_binary:
            print(f"# binary: {bytes(message.data).hex()}", flush=True)
        else:
            print(message.data.decode("utf-8"), flush=True)
        self.received += 1
        if self.count and self.received >= self.count:
            self.close(1000, "done")

    def closed(self, code, reason=None) -> None:
        self.close_code = code
        print(f"# closed: {code} {reason.decode() if isinstance(reason, bytes) else reason or ''}".rstrip(),
              flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Send lines to a gateway device and print its lines (text mode).")
    p.add_argument("url", nargs="?", default=os.environ.get("GATEWAY_WS", DEFAULT_URL),
                   help=f"the device's WebSocket URL (default: $GATEWAY_WS or {DEFAULT_URL})")
    p.add_argument("--send", action="append", default=[], metavar="LINE", help="a line to send once connected")
    p.add_argument("--count", type=int, default=0, help="close after this many messages (default: run until closed)")
    args = p.parse_args(argv)

    client = LineClient(args.url, args.send, args.count)
    try:
        client.connect()  # the handshake; raises if the gateway is not there
        client.run_forever()  # returns once the connection is closed
    except KeyboardInterrupt:
        client.close(1000, "bye")
        return 130
    except OSError as exc:  # refused, unreachable; ws4py's HandshakeError is not an OSError
        print(f"# cannot connect to {args.url}: {exc}", file=sys.stderr)
        return 1
    return 0 if client.close_code in (1000, 1001) else 1


if __name__ == "__main__":
    sys.exit(main())
