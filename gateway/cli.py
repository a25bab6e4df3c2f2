"""`gateway [--config FILE] [--host H] [--port P] [--device NAME=URL ...]`: the `gateway` command,
`python -m gateway` and `python3 run_gateway.py` (see README.md)."""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import re
import signal
import socket
import ssl
import sys
from urllib.parse import quote

from . import __version__, reload, systemd
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


def build_parser(prog: str = "gateway") -> argparse.ArgumentParser:
    p = ArgParser(
        prog=prog,
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


def program_name() -> str:
    """How the user ran it: "gateway" (the installed command) or "run_gateway.py"."""
    name = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    return name if name and name not in ("__main__.py", "-c") else "gateway"


def setup_logging(level: str) -> None:
    # journald stamps each line itself (and keeps the level): no timestamps of ours there.
    fmt = "%(levelname)s %(name)s: %(message)s" if systemd.journal_is_stderr() else \
        "%(asctime)s %(levelname)s %(name)s: %(message)s"
    logging.basicConfig(level=level.upper(), format=fmt)
    logging.getLogger("ws4py").setLevel(logging.WARNING)


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    parser = build_parser(prog or program_name())
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
    setup_logging(args.log_level)

    # The signals are taken with sigwait() on this thread, blocked on every other: the
    # threads started from here on inherit the mask. (A Python handler runs only on the
    # main thread between bytecodes, so a signal the kernel gave another thread would
    # not wake a main thread blocked in Event.wait(): seen here as a lost SIGHUP.) They
    # stay blocked to the end: a second Ctrl-C during the shutdown changes nothing.
    signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)
    return serve(parser, args, config)


SIGNALS = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}


def serve(parser, args, config) -> int:
    from .app import Gateway  # after the config is known good: imports ws4py

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
    except ConfigError as exc:  # a device's rfc2217 port cannot be served
        print(f"{parser.prog}: {config.source}: {exc}", file=sys.stderr)
        return 1
    advertiser = None
    try:
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
        if config.mdns.enabled:
            from .mdns import Advertiser

            advertiser = Advertiser(gw, config.mdns.name)
            if not advertiser.start():
                advertiser = None
        systemd.Watchdog(gw.manager).start()
        systemd.notify(f"READY=1\nSTATUS=listening on {gw.url}")  # /healthz answers from here on
        while signal.sigwait(SIGNALS) == signal.SIGHUP:
            reload_config(gw, args, advertiser)
        return 0
    finally:
        log.info("shutting down")
        systemd.notify("STOPPING=1")
        if advertiser is not None:
            advertiser.stop()
        gw.shutdown()


def reload_config(gw, args, advertiser) -> None:
    """SIGHUP: the config file again, its devices applied (gateway/reload.py)."""
    if not args.config:
        log.warning("SIGHUP: no config file to reload (started without --config)")
        return
    systemd.notify("RELOADING=1")
    try:
        if reload.apply(gw, lambda: load_config(args)) and advertiser is not None:
            advertiser.update_devices()
    except Exception:  # a bug, not a bad file: keep serving what runs
        log.exception("reload of %s failed", args.config)
    finally:
        systemd.notify("READY=1")
