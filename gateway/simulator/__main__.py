"""`python -m gateway.simulator --listen tcp://127.0.0.1:2323 | udp://127.0.0.1:2324 | pty`

A standalone simulated device speaking SPEC section 7, for a gateway (or anything else)
to connect to as if it were an ESP8266. `pty` prints the path to open as a serial port.
"""

from __future__ import annotations

import argparse
import signal
import sys

from .serve import SimulatorServer


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m gateway.simulator", description=__doc__.split("\n\n")[1])
    p.add_argument("--listen", required=True, metavar="URL", help="tcp://HOST:PORT, udp://HOST:PORT or pty")
    p.add_argument("--interval", type=float, default=1.0, help="seconds between telemetry lines (0: none)")
    args = p.parse_args(argv)
    if args.interval < 0:
        p.error("--interval must be >= 0")
    try:
        server = SimulatorServer(args.listen, args.interval)
    except ValueError as exc:
        p.error(str(exc))
    except OSError as exc:
        print(f"{p.prog}: cannot listen on {args.listen}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    signal.signal(signal.SIGTERM, lambda *_: server.stop())
    signal.signal(signal.SIGINT, lambda *_: server.stop())
    if server.kind == "pty":
        print(f"simulator pty: {server.url}  (gateway: --device sim=serial://{server.url})", flush=True)
    else:
        print(f"simulator listening on {server.url}", flush=True)
    server.serve()
    return 0


if __name__ == "__main__":
    sys.exit(main())
