"""`python run_gateway.py [--config FILE] [--host H] [--port P] [--device NAME=URL ...]`."""

from __future__ import annotations

import argparse
import logging
import re
import signal
import ssl
import sys
import threading

from . import __version__
from .config import Config, ConfigError, apply_flags, load_file

log = logging.getLogger("gateway")


class ArgParser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    p = ArgParser(
        prog="run_gateway.py",
        description="Bridge WebSocket clients to devices on serial ports, TCP and UDP. "
        "With no device configured, serves one simulated device named 'sim'.",
    )
    p.add_argument("--config", metavar="FILE", help="TOML file with [server], [limits] and [[device]] tables")
    p.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="port for HTTP and WebSockets (default 8765; 0 picks a free one)")
    p.add_argument("--device", action="append", default=[], metavar="NAME=URL",
                   help="add a device, e.g. esp=serial:///dev/ttyUSB0?baudrate=115200 (repeatable)")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return p


def load_config(args) -> Config:
    config = load_file(args.config) if args.config else Config()
    return apply_flags(config, args.host, args.port, args.device)


def masked(url: str) -> str:
    """A URL fit to print: a password in it becomes ***."""
    return re.sub(r"^([a-z0-9+.-]+://[^:/@]*):[^@/]*@", r"\1:***@", url)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        config = load_config(args)
    except ConfigError as exc:
        print(f"{parser.prog}: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("ws4py").setLevel(logging.WARNING)

    from .app import Gateway  # after the config is known good: imports ws4py

    stop = threading.Event()

    def on_signal(signum, frame):
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        gw = Gateway(config).start()
    except ssl.SSLError as exc:
        print(f"{parser.prog}: {config.source}: server.certfile = {config.server.certfile!r}: "
              f"cannot load it with server.keyfile: {exc.reason or exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"{parser.prog}: cannot listen on {config.server.host}:{config.server.port}: {exc.strerror or exc}",
              file=sys.stderr)
        return 1
    print(f"listening on {gw.url}", flush=True)
    print(f"control page: {gw.url}/", flush=True)
    for name, link in gw.links.items():
        print(f"device {name}: {masked(link.config.url)} -> {gw.url.replace('http', 'ws', 1)}/ws/{name}", flush=True)
    try:
        while not stop.wait(1.0):
            pass
    finally:
        log.info("shutting down")
        gw.shutdown()
    return 0
