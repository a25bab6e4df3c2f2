"""`python run_gateway.py [--config FILE] [--host H] [--port P] [--device NAME=URL ...]`."""

from __future__ import annotations

import argparse
import ipaddress
import logging
import re
import signal
import socket
import ssl
import sys
import threading
from urllib.parse import quote

from . import __version__
from .config import Config, ConfigError, apply_flags, load_file
from .counts import parse_count

log = logging.getLogger("gateway")


class ArgParser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2
        self.exit(2, f"{self.prog}: error: {message}\n")


def port_number(text: str) -> int:
    try:
        return parse_count(text)  # the range is checked with the config (server.port)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid port {text!r}: expected a number from 0 to 65535") from None


def build_parser() -> argparse.ArgumentParser:
    p = ArgParser(
        prog="run_gateway.py",
        description="Bridge WebSocket clients to devices on serial ports, TCP and UDP. "
        "With no device configured, serves one simulated device named 'sim'.",
    )
    p.add_argument("--config", metavar="FILE", help="TOML file with [server], [limits] and [[device]] tables")
    p.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=port_number, help="port for HTTP and WebSockets (default 8765; 0 picks a free one)")
    p.add_argument("--device", action="append", default=[], metavar="NAME=URL",
                   help="add a device, e.g. esp=serial:///dev/ttyUSB0?baudrate=115200 (repeatable)")
    p.add_argument("--list-ports", action="store_true",
                   help="print the serial ports present now (pyserial and [serial] scan) and exit")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return p


def load_config(args) -> Config:
    config = load_file(args.config) if args.config else Config()
    return apply_flags(config, args.host, args.port, args.device)


def masked(url: str) -> str:
    """A URL fit to print: a password in it becomes ***."""
    return re.sub(r"^([a-z0-9+.-]+://[^:/@]*):[^@/]*@", r"\1:***@", url)


def _is_wildcard(host: str) -> bool:
    return host in ("", "0.0.0.0", "::", "[::]")


def machine_hosts(bind_host: str) -> list[str]:
    """Names a browser can use to reach a server bound to `bind_host`: that address
    itself, or for a wildcard bind the machine's host name and its non-loopback
    addresses (IPv6 ones only when bound to "::")."""
    if not _is_wildcard(bind_host):
        return [f"[{bind_host.strip('[]')}]" if ":" in bind_host else bind_host]
    want_v6 = ":" in bind_host
    name = socket.gethostname()
    hosts = [name] if name else []
    found: list[str] = []
    try:
        found += [info[4][0] for info in socket.getaddrinfo(name, None, proto=socket.IPPROTO_TCP)]
    except OSError:
        pass
    probes = [(socket.AF_INET, "192.0.2.1")] + ([(socket.AF_INET6, "2001:db8::1")] if want_v6 else [])
    for family, probe in probes:  # the address of the default route: a UDP connect sends nothing
        try:
            with socket.socket(family, socket.SOCK_DGRAM) as s:
                s.connect((probe, 9))
                found.append(s.getsockname()[0])
        except OSError:
            pass
    for address in found:
        try:
            ip = ipaddress.ip_address(address.split("%", 1)[0])
        except ValueError:
            continue
        if ip.is_loopback or ip.is_link_local or ip.is_unspecified or (ip.version == 6 and not want_v6):
            continue
        text = f"[{ip.compressed}]" if ip.version == 6 else ip.compressed
        if text not in hosts:
            hosts.append(text)
    return hosts


def base_urls(gw) -> list[str]:
    """scheme://host:port for each name a browser can use to reach the gateway."""
    host, port = gw.address
    scheme = "https" if gw.config.server.certfile else "http"
    return [f"{scheme}://{h}:{port}" for h in machine_hosts(host)]


def token_query(gw) -> str:
    """"?token=..." with the control token the gateway made at start; "" if it made none."""
    token = gw.access.generated_token
    return f"?token={quote(token, safe='')}" if token else ""


def page_urls(gw) -> list[str]:
    """The control page's URLs to print, with the token the gateway made, if any."""
    return [f"{base}/{token_query(gw)}" for base in base_urls(gw)]


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        config = load_config(args)
    except ConfigError as exc:
        print(f"{parser.prog}: {exc}", file=sys.stderr)
        return 2
    if args.list_ports:
        from .ports import print_ports

        print_ports(config)
        return 0
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
    urls = page_urls(gw)
    for url in urls:
        print(f"control page: {url}", flush=True)
    if gw.access.generated_token:
        log.warning("bound to %s with no [auth] tokens: made a control token for this run (in the page URLs "
                    "above); set [auth] tokens, or anonymous = true to serve without one", config.server.host)
    ws_base = (base_urls(gw) or [gw.url])[0].replace("http", "ws", 1)
    for name, link in gw.links.items():
        print(f"device {name}: {masked(link.config.url)} -> {ws_base}/ws/{name}{token_query(gw)}", flush=True)
    try:
        stop.wait()  # a signal wakes it: the handler runs on this thread, between waits
    finally:
        log.info("shutting down")
        gw.shutdown()
    return 0
