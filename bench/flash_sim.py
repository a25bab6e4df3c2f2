"""esptool write-flash against the simulated ESP8266 with no gateway: the speed baseline.

    .venv/bin/python bench/flash_sim.py [--size KIB] [--link-baud 115200] [--baud 115200 460800]

Starts `python -m gateway.simulator --listen tcp://127.0.0.1:0 --bootloader --baud
LINK_BAUD` (paced like a UART, starting at LINK_BAUD as a board's ROM does), then runs
`python -m esptool --port socket://... --before no-reset --baud B write-flash 0x0
app.bin` of SIZE KiB of random bytes (which do not compress), with and without
`--no-compress`, for each B, and prints what esptool prints ("Wrote ... kbit/s") as KiB/s
and the whole run's seconds. A flash through the gateway's RFC 2217 port on
`sim://?baud=LINK_BAUD` compares with these. Not a test: timings depend on the machine.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")


def start_simulator(link_baud: int) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, "-m", "gateway.simulator", "--listen", "tcp://127.0.0.1:0",
                             "--bootloader", "--interval", "0", "--baud", str(link_baud)],
                            cwd=ROOT, stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    m = re.fullmatch(r"simulator listening on tcp://(\S+)\n", line)
    if not m:
        proc.kill()
        raise SystemExit(f"the simulator did not start: {line!r}")
    return proc, m.group(1)


def flash(address: str, path: str, baud: int, no_compress: bool) -> tuple[float, float]:
    """(KiB/s as esptool measured the write, seconds of the whole esptool run)."""
    cmd = [sys.executable, "-m", "esptool", "--chip", "esp8266", "--port", f"socket://{address}",
           "--before", "no-reset", "--after", "no-reset-stub", "--baud", str(baud), "write-flash"]
    cmd += ["--no-compress"] if no_compress else []
    started = time.monotonic()
    done = subprocess.run(cmd + ["0x0", path], capture_output=True, text=True, timeout=600)
    elapsed = time.monotonic() - started
    out = done.stdout + done.stderr
    m = re.search(r"Wrote (\d+) bytes .* in ([\d.]+) seconds \(([\d.]+) kbit/s\)", out)
    if done.returncode != 0 or not m or "Hash of data verified." not in out:
        raise SystemExit(f"esptool failed:\n{out}")
    return int(m[1]) / float(m[2]) / 1024, elapsed


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, default=256, help="KiB of random bytes to flash (default 256)")
    p.add_argument("--link-baud", type=int, default=115200, help="the simulator's baud (default 115200)")
    p.add_argument("--baud", type=int, nargs="+", default=[115200, 460800], help="esptool's --baud values")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "app.bin")
        with open(path, "wb") as f:
            f.write(os.urandom(args.size * 1024))
        print(f"write-flash of {args.size} KiB random, simulator at {args.link_baud} baud (--listen tcp)")
        for baud in args.baud:
            for no_compress in (False, True):
                proc, address = start_simulator(args.link_baud)  # a fresh board: its ROM, at link baud
                try:
                    kib_s, elapsed = flash(address, path, baud, no_compress)
                finally:
                    proc.terminate()
                    proc.wait(10)
                mode = " --no-compress" if no_compress else ""
                print(f"  esptool --baud {baud}{mode}: {kib_s:.1f} KiB/s, the whole run {elapsed:.1f} s")


if __name__ == "__main__":
    main()
