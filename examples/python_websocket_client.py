#!/usr/bin/env python3
"""A long-running client with websocket-client: json mode, pings, reconnects that resume.

    python examples/python_websocket_client.py                      # ws://127.0.0.1:8765/ws/sim
    python examples/python_websocket_client.py ws://127.0.0.1:8765/ws/esp --send "LED ON"
    GATEWAY_WS=ws://127.0.0.1:8765/ws/sim python examples/python_websocket_client.py --count 5

Prints each device line as `SEQ LINE`, and notices as `# ...`. When the connection drops
(the gateway restarts, the network goes away) it connects again, 0.5 s doubling to 5 s,
with `?since=SEQ&run=RUN`: the gateway first sends every line it still holds after SEQ,
so nothing is missed, or a `gap` notice saying what was. `--send` lines are sent again
after every connect. Needs `pip install websocket-client`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from urllib.parse import parse_qsl, urlencode, urlsplit

import websocket

DEFAULT_URL = "ws://127.0.0.1:8765/ws/sim"


def with_query(url: str, **params) -> str:
    """`url` with `params` added to (or replacing those in) its query."""
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))
    query.update({k: str(v) for k, v in params.items()})
    return parts._replace(query=urlencode(query)).geturl()


class Resuming:
    """One device's stream across reconnects: remembers the last line's seq and run."""

    def __init__(self, url: str, send: list[str], count: int):
        self.base_url = url
        self.send = send
        self.count = count  # stop after this many device lines (0: never)
        self.seq: int | None = None
        self.run: str | None = None
        self.received = 0
        self.done = False
        self.connected = False

    def url(self) -> str:
        if self.seq is None:
            return with_query(self.base_url, format="json")
        return with_query(self.base_url, format="json", since=self.seq, run=self.run)

    # websocket-client calls these on its own thread, one at a time.

    def on_open(self, ws) -> None:
        self.connected = True
        for i, line in enumerate(self.send, start=1):
            ws.send(json.dumps({"line": line, "id": i}))

    def on_message(self, ws, text: str) -> None:
        msg = json.loads(text)
        kind = msg.get("type")
        if kind == "hello":
            self.run = msg["run"]  # numbers from here on belong to this run
            print(f"# connected to {msg['device']}: run {msg['run']}, newest line {msg['seq']}", flush=True)
        elif kind == "line":
            self.seq = msg["seq"]
            print(f"{msg['seq']} {msg['line']}", flush=True)
            self.received += 1
            if self.count and self.received >= self.count:
                self.done = True
                ws.close()
        elif kind == "gap":
            gone = f": lines {msg['from']} to {msg['to']} are gone" if msg["to"] >= msg["from"] else ""
            print(f"# gap ({msg['reason']}){gone}", flush=True)
        elif kind == "status":
            print(f"# device {msg['state']}", flush=True)
        elif kind == "error":
            print(f"# line {msg.get('id')} not written: {msg['error']}", flush=True)
        # "ack" (the line was written) needs nothing here

    def on_error(self, ws, error) -> None:
        print(f"# {type(error).__name__}: {error}", file=sys.stderr, flush=True)


def follow(stream: Resuming, ping: float, retries: int) -> int:
    delay, failures = 0.5, 0
    while True:
        stream.connected = False
        app = websocket.WebSocketApp(stream.url(), on_open=stream.on_open, on_message=stream.on_message,
                                     on_error=stream.on_error)
        # ping_interval: a gateway that vanished without closing is noticed within `ping` s
        app.run_forever(ping_interval=ping, ping_timeout=ping / 2)
        if stream.done:
            return 0
        if stream.connected:
            delay, failures = 0.5, 0  # it worked for a while: start the backoff afresh
        else:
            failures += 1
            if 0 <= retries < failures:
                print(f"# giving up after {failures} failed connects", file=sys.stderr)
                return 1
        print(f"# disconnected; connecting again in {delay:g} s", flush=True)
        time.sleep(delay)
        delay = min(delay * 2, 5.0)



def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Follow a gateway device in json mode, reconnecting as needed.")
    p.add_argument("url", nargs="?", default=os.environ.get("GATEWAY_WS", DEFAULT_URL),
                   help=f"the device's WebSocket URL (default: $GATEWAY_WS or {DEFAULT_URL})")
    p.add_argument("--send", action="append", default=[], metavar="LINE", help="a line to send after each connect")
    p.add_argument("--count", type=int, default=0, help="exit after this many device lines (default: run forever)")
    p.add_argument("--ping", type=float, default=20, help="seconds between pings (default 20)")
    p.add_argument("--retries", type=int, default=-1, help="give up after this many failed connects (default: never)")
    args = p.parse_args(argv)

    try:
        return follow(Resuming(args.url, args.send, args.count), args.ping, args.retries)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
