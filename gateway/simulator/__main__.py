"""`python -m gateway.simulator --listen tcp://127.0.0.1:2323 | udp://127.0.0.1:2324 | pty`

A standalone simulated device speaking SPEC section 7, for a gateway (or anything else)
to connect to as if it were an ESP8266. `pty` prints the path to open as a serial port.
"""

from __future__ import annotations

import argparse
import signal
import sys

from .serve import SimulatorServer

EPILOG = """\
faults: --faults takes KIND[:SECONDS]@EVERY entries separated by commas, e.g.
  drop@30,stall:2@20,noise@10 (drop the link every 30 s, stall 2 s every 20 s, boot noise
  every 10 s); the commands FAULT DROP [S], FAULT STALL [S], FAULT NOISE, FAULT PARTIAL
  do the same once. Over TCP a drop closes the connection; a pty and UDP send half a line
  and go silent for S seconds instead.
flashing: --bootloader starts the board in its ROM loader, for esptool over TCP (no DTR
  or RTS to reset it): esptool --chip esp8266 --port socket://HOST:PORT --before no-reset
  --after soft-reset write-flash 0x0 app.bin. The board then boots the image and prints
  "boot fw=<first 12 hex digits of its SHA-256>" after "ready"; GET fw answers the same.
  --flash PATH keeps the 4 MiB flash in a file (created when missing).
replay: --replay PATH sends the lines of a gateway recording (JSON lines) at their
  recorded pace divided by --speed (0: as fast as possible), and still answers commands.
"""


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m gateway.simulator", usage="%(prog)s --listen URL [options]",
                                description=__doc__.split("\n\n")[1],
                                epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--listen", required=True, metavar="URL", help="tcp://HOST:PORT, udp://HOST:PORT or pty")
    p.add_argument("--interval", type=float, default=None,
                   help="seconds between telemetry lines (0: none; default 1, or 0 with --replay)")
    p.add_argument("--baud", type=float, default=0,
                   help="send at most BAUD/10 bytes per second, like a UART at 8N1 (default 0: no pacing)")
    p.add_argument("--faults", default="", metavar="SPEC", help="faults on a schedule, e.g. drop@30,stall:2@20")
    p.add_argument("--replay", metavar="PATH", help="replay a recording made with the gateway's record option")
    p.add_argument("--speed", type=float, default=1.0, help="replay speed factor (default 1; 0: as fast as possible)")
    p.add_argument("--flash", metavar="PATH", help="keep the simulated 4 MiB flash in this file (default: in memory)")
    p.add_argument("--bootloader", action="store_true",
                   help="start in the ROM serial loader (esptool --before no-reset), not the firmware")
    args = p.parse_args(argv)
    if args.interval is not None and args.interval < 0:
        p.error("--interval must be >= 0")
    if args.speed != 1.0 and args.replay is None:
        p.error("--speed needs --replay")
    try:
        server = SimulatorServer(args.listen, args.interval, baud=args.baud, faults=args.faults,
                                 replay=args.replay, speed=args.speed, flash=args.flash,
                                 bootloader=args.bootloader)
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
