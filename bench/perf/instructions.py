"""Instructions per W1 round trip in the gateway, counted by callgrind: repeatable on a
busy machine, where round trips per second are not.

    python bench/perf/instructions.py                     # this checkout
    python bench/perf/instructions.py . /tmp/before       # side by side with another checkout

For each checkout: build bench/perf/device.c (the C line echo), run the gateway under
`valgrind --tool=callgrind` in front of it, make N1 and then (in a fresh run) N2 round
trips of a 20-byte line with websocket-client, and print (total(N2) - total(N1)) / (N2 - N1):
the start-up and shutdown cancel out. Needs valgrind (Debian's package; installed with
apt-get when missing) and gcc. Everything on 127.0.0.1; each run has a deadline.
"""

from __future__ import annotations

import argparse
import glob
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
LINE = "0123456789abcdefghi"


def total_instructions(prefix: str) -> int:
    total = 0
    for name in glob.glob(prefix + "*"):
        with open(name) as f:
            for line in f:
                if line.startswith(("summary:", "totals:")):
                    total += int(line.split()[1])
                    break
    return total


def run(root: Path, python: str, device: str, n: int, out: str) -> int:
    import websocket

    dev = subprocess.Popen([device, "0"], stdout=subprocess.PIPE, text=True)
    gw = None
    try:
        port = int(dev.stdout.readline().split()[1])
        gw = subprocess.Popen(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", python,
                               str(root / "run_gateway.py"), "--port", "0", "--device", f"dev=tcp://127.0.0.1:{port}"],
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=root)
        url = gw.stdout.readline().split()[-1].replace("http", "ws", 1) + "/ws/dev"
        deadline = time.monotonic() + 120
        while True:
            try:
                ws = websocket.create_connection(url, timeout=60)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)  # the gateway is still starting under valgrind
        ws.send("warm")
        ws.recv()
        for _ in range(n):
            ws.send(LINE)
            if ws.recv() != LINE:
                raise RuntimeError("the echo did not come back")
        ws.close()
        gw.send_signal(signal.SIGINT)
        gw.wait(120)
    finally:
        if gw is not None and gw.poll() is None:
            gw.kill()
        dev.kill()
    return total_instructions(out)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("roots", nargs="*", default=["."], help="checkouts to measure (default: this one)")
    p.add_argument("--n1", type=int, default=500)
    p.add_argument("--n2", type=int, default=2500)
    p.add_argument("--python", default=sys.executable, help="the gateway's interpreter")
    args = p.parse_args()
    if shutil.which("valgrind") is None:
        subprocess.run(["apt-get", "install", "-y", "-qq", "valgrind"], check=True)
    with tempfile.TemporaryDirectory(prefix="gateway-instr-") as tmp:
        device = os.path.join(tmp, "device")
        subprocess.run(["gcc", "-O2", "-o", device, str(HERE / "device.c")], check=True)
        for root in args.roots:
            root = Path(root).resolve()
            a = run(root, args.python, device, args.n1, os.path.join(tmp, f"a-{root.name}"))
            b = run(root, args.python, device, args.n2, os.path.join(tmp, f"b-{root.name}"))
            print(f"{root}: {(b - a) / (args.n2 - args.n1):,.0f} instructions per W1 round trip "
                  f"(callgrind, {args.n2 - args.n1} round trips)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
