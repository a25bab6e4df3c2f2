#!/usr/bin/env python3
"""Flashing speed through the gateway against esptool on the same simulated link without it.

    python bench/perf/flash.py             # 256 KiB, 115200 and 460800 baud, 3 repetitions
    python bench/perf/flash.py --quick     # 64 KiB, 1 repetition
    python bench/perf/flash.py --size 1024 --bauds 460800 --reps 5 --json out.json

The simulated ESP8266 (gateway/simulator) is a paced link: its ROM loader starts at 115200
baud (the rate the real ROM autobauds to) and paces every byte both ways like a UART at
8N1; esptool's CHANGE_BAUDRATE moves it to the `--baud` asked for. Every measurement gets a
fresh simulator (and gateway), the same random image (no 0xE9 first byte, incompressible,
so esptool sends it as it is), and writes it at 0x0. Targets:

  route          the gateway's own flash, esptool in process: `python run_gateway.py` with
                 `sim=sim://?interval=0&baud=115200`, POST /api/devices/sim/flash, the
                 progress read from the device's json stream (websocket-client)
  cli-rfc2217    the esptool CLI through the same gateway's RFC 2217 port for the device
                 (`rfc2217 = PORT`): `esptool --port rfc2217://127.0.0.1:PORT --baud N write-flash`
  cli-direct     the esptool CLI on the simulator itself, no gateway: `python -m
                 gateway.simulator --listen tcp://... --baud 115200 --bootloader` and
                 `esptool --chip esp8266 --port socket://... --before no-reset --baud N write-flash`

Figures per target and baud rate (medians): `write KiB/s`, the image over the time of
writing it (esptool's own "Wrote N bytes ... in T seconds", for the route the job's
`write_seconds`), and `total s`, from the request (or the command) to the image verified
and the device back: connecting, the stub's upload at 115200, the baud change, writing,
verifying. The ceiling: 8/10 of the baud rate in bytes (a UART at 8N1), 11.25 KiB/s at
115200 and 45 KiB/s at 460800, less the loader's request/answer turnarounds.

All traffic is on 127.0.0.1; every process is stopped at the end; every wait has a deadline.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

KIB = 1024
LINK_BAUD = 115200  # the simulated ROM loader's rate before esptool changes it
TARGETS = ("route", "cli-rfc2217", "cli-direct")
DEADLINE = 300.0  # seconds for one flash, at most
WROTE = re.compile(r"Wrote (\d+) bytes(?: \(\d+ compressed\))? at 0x[0-9a-f]+ in ([\d.]+) seconds")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def image(size: int) -> bytes:
    data = bytearray(os.urandom(size))
    data[0] = 0 if data[0] == 0xE9 else data[0]
    return bytes(data)


class Process:
    """A child process, stopped (SIGTERM, then SIGKILL) on exit."""

    def __init__(self, cmd: list[str], **kwargs):
        self.proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)

    def __enter__(self) -> "Process":
        return self

    def __exit__(self, *exc) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc.communicate()


def gateway(python: str, rfc2217_port: int | None, tmp: Path) -> tuple[Process, str]:
    """A gateway process with the paced simulator as `sim`; (process, base URL)."""
    config = tmp / "flash-bench.toml"
    device = f'[[device]]\nname = "sim"\nurl = "sim://?interval=0&baud={LINK_BAUD}"\n'
    if rfc2217_port:
        device += f'rfc2217 = "127.0.0.1:{rfc2217_port}"\n'
    config.write_text('[server]\nhost = "127.0.0.1"\nport = 0\n\n[serial]\nrescan = 0\n\n' + device)
    proc = Process([python, "run_gateway.py", "--config", str(config)])
    line = proc.proc.stdout.readline()
    m = re.fullmatch(r"listening on (http://127\.0\.0\.1:\d+)\n", line)
    if not m:
        proc.__exit__()
        raise RuntimeError(f"the gateway did not start: {line!r}")
    return proc, m.group(1)


def wait_connected(url: str) -> None:
    end = time.monotonic() + 10
    while time.monotonic() < end:
        health = json.load(urllib.request.urlopen(url + "/healthz", timeout=5))
        if health["devices"].get("sim") == "connected":
            return
        time.sleep(0.05)
    raise RuntimeError("the simulated device did not connect")


def esptool_cli(python: str, port: str, baud: int, path: Path, *extra: str) -> tuple[float, float, str]:
    """(write seconds, total seconds, output) of `esptool write-flash 0x0 PATH`."""
    cmd = [python, "-m", "esptool", "--port", port, "--baud", str(baud), *extra, "write-flash", "0x0", str(path)]
    started = time.monotonic()
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=DEADLINE)
    total = time.monotonic() - started
    out = done.stdout + done.stderr
    m = WROTE.search(out)
    if done.returncode != 0 or not m or "Hash of data verified." not in out:
        raise RuntimeError(f"esptool failed ({done.returncode}): {out[-800:]}")
    return float(m.group(2)), total, out


def run_route(python: str, baud: int, data: bytes, tmp: Path) -> tuple[float, float]:
    import websocket

    proc, url = gateway(python, None, tmp)
    with proc:
        wait_connected(url)
        ws = websocket.create_connection(url.replace("http://", "ws://") + "/ws/sim?format=json", timeout=DEADLINE)
        try:
            body = json.dumps({"baud": baud, "files": [{"offset": "0x0", "name": "app.bin",
                                                        "data": base64.b64encode(data).decode()}]}).encode()
            req = urllib.request.Request(url + "/api/devices/sim/flash", data=body, method="POST",
                                         headers={"Content-Type": "application/json"})
            started = time.monotonic()
            urllib.request.urlopen(req, timeout=30).read()
            end = time.monotonic() + DEADLINE
            while time.monotonic() < end:
                msg = json.loads(ws.recv())
                if msg.get("type") == "flash" and msg.get("event") == "end":
                    total = time.monotonic() - started
                    if msg["state"] != "done":
                        raise RuntimeError(f"the flash ended {msg['state']}: {msg.get('error')}")
                    return msg["write_seconds"], total
            raise RuntimeError("no end of the flash in time")
        finally:
            ws.close()


def run_cli_rfc2217(python: str, baud: int, data: bytes, tmp: Path) -> tuple[float, float]:
    path = tmp / "app.bin"
    path.write_bytes(data)
    port = free_port()
    proc, url = gateway(python, port, tmp)
    with proc:
        wait_connected(url)  # its RFC 2217 port was bound before it said "listening"
        write, total, _ = esptool_cli(python, f"rfc2217://127.0.0.1:{port}", baud, path)
        return write, total


def run_cli_direct(python: str, baud: int, data: bytes, tmp: Path) -> tuple[float, float]:
    path = tmp / "app.bin"
    path.write_bytes(data)
    port = free_port()
    cmd = [python, "-m", "gateway.simulator", "--listen", f"tcp://127.0.0.1:{port}", "--interval", "0",
           "--baud", str(LINK_BAUD), "--bootloader"]
    with Process(cmd) as sim:
        line = sim.proc.stdout.readline()
        if not line.startswith("simulator listening on"):
            raise RuntimeError(f"the simulator did not start: {line!r}")
        write, total, _ = esptool_cli(python, f"socket://127.0.0.1:{port}", baud, path,
                                      "--chip", "esp8266", "--before", "no-reset", "--after", "soft-reset")
        return write, total


RUNNERS = {"route": run_route, "cli-rfc2217": run_cli_rfc2217, "cli-direct": run_cli_direct}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, default=256, help="KiB of image (default 256)")
    ap.add_argument("--bauds", default="115200,460800", help="comma-separated (default 115200,460800)")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--targets", default=",".join(TARGETS))
    ap.add_argument("--quick", action="store_true", help="64 KiB, 1 repetition")
    ap.add_argument("--python", default=sys.executable, help="the interpreter of the gateway, esptool and the simulator")
    ap.add_argument("--json", help="write every measurement to this file")
    args = ap.parse_args()
    if args.quick:
        args.size, args.reps = 64, 1
    targets = [t for t in args.targets.split(",") if t]
    for t in targets:
        if t not in RUNNERS:
            ap.error(f"unknown target {t!r} (known: {', '.join(TARGETS)})")
    bauds = [int(b) for b in args.bauds.split(",")]
    data = image(args.size * KIB)
    results: dict[tuple[str, int], list[tuple[float, float]]] = {}
    with tempfile.TemporaryDirectory(prefix="flash-bench-") as tmp:
        for rep in range(args.reps):
            for baud in bauds:
                order = targets[rep % len(targets):] + targets[:rep % len(targets)]  # take turns first
                for target in order:
                    write, total = RUNNERS[target](args.python, baud, data, Path(tmp))
                    results.setdefault((target, baud), []).append((write, total))
                    print(f"rep {rep + 1} {target:12} {baud:7} baud: write {args.size / write:7.2f} KiB/s "
                          f"({write:.2f} s), total {total:6.2f} s", flush=True)
    print()
    print(f"{args.size} KiB image, link at {LINK_BAUD} until esptool's baud change; medians of {args.reps}")
    print(f"{'target':12} {'baud':>7} {'write KiB/s':>12} {'total s':>8} {'UART max KiB/s':>15}")
    rows = []
    for (target, baud), values in sorted(results.items(), key=lambda kv: (kv[0][1], TARGETS.index(kv[0][0]))):
        write = statistics.median(v[0] for v in values)
        total = statistics.median(v[1] for v in values)
        rows.append({"target": target, "baud": baud, "size_kib": args.size, "write_seconds": write,
                     "write_kib_s": args.size / write, "total_seconds": total, "runs": values})
        print(f"{target:12} {baud:7} {args.size / write:12.2f} {total:8.2f} {baud / 10 / KIB:15.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
