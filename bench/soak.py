"""Soak: the simulator at 1,000 lines/s to 50 clients for 10 minutes, with one client that
never reads and clients that reconnect with since= every few seconds.

    python bench/soak.py                 # 600 s, 50 clients, 10 of them reconnecting
    python bench/soak.py --seconds 60    # a shorter run

Prints lost lines for healthy clients (must be 0), duplicates, whether the stalled
client was closed, and the gateway's RSS and thread count at start, middle and end.
Everything runs on 127.0.0.1 and stops by itself.
"""

from __future__ import annotations

import argparse
import json
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def rss_kib(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmRSS:\s+(\d+)", status).group(1))


def threads(pid: int) -> int:
    return len(list(Path(f"/proc/{pid}/task").iterdir()))


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / 100.0


def stalled_client(host: str, port: int) -> socket.socket:
    """Completes the handshake, then never reads, with a receive buffer too small for
    the kernel to hide the stall (Linux grows an unset one up to tcp_rmem's 32 MiB)."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect((host, port))
    sock.sendall(b"GET /ws/sim HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                 b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
    return sock


def closed_by_peer(sock: socket.socket) -> bool:
    """True when the gateway hung up (reads what is queued until EOF, without blocking)."""
    sock.setblocking(False)
    try:
        while True:
            data = sock.recv(1 << 20)
            if not data:
                return True
    except BlockingIOError:
        return False
    except OSError:
        return True


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=int, default=600)
    p.add_argument("--clients", type=int, default=50)
    p.add_argument("--reconnecting", type=int, default=10)
    p.add_argument("--rate", type=float, default=1000.0, help="device lines per second")
    args = p.parse_args()

    interval = 1.0 / args.rate
    gw = subprocess.Popen(
        [sys.executable, str(ROOT / "run_gateway.py"), "--port", "0", "--log-level", "warning",
         "--device", f"sim=sim://?interval={interval:.6f}&history=20000"],
        stdout=subprocess.PIPE, text=True)
    try:
        m = re.fullmatch(r"listening on http://([\d.]+):(\d+)\n", gw.stdout.readline())
        if not m:
            print("the gateway did not start", file=sys.stderr)
            return 1
        url = f"ws://{m.group(1)}:{m.group(2)}/ws/sim"
        time.sleep(1.0)  # let the device connect and the first lines flow
        samples = [("start", rss_kib(gw.pid), threads(gw.pid), cpu_seconds(gw.pid))]
        stalled = stalled_client(m.group(1), int(m.group(2)))
        load = subprocess.Popen(["node", str(ROOT / "bench" / "soak_clients.mjs"), url, str(args.clients),
                                 str(args.reconnecting), str(args.seconds)], stdout=subprocess.PIPE, text=True)
        started = time.monotonic()
        next_sample = started + max(10, args.seconds // 10)
        while load.poll() is None:
            time.sleep(1.0)
            if time.monotonic() >= next_sample:
                samples.append((f"{time.monotonic() - started:.0f}s", rss_kib(gw.pid), threads(gw.pid), cpu_seconds(gw.pid)))
                next_sample += max(10, args.seconds // 10)
        samples.append(("end", rss_kib(gw.pid), threads(gw.pid), cpu_seconds(gw.pid)))
        result = json.loads(load.stdout.read())
        result["stalled_client_closed_by_gateway"] = closed_by_peer(stalled)
        stalled.close()
    finally:
        gw.send_signal(signal.SIGTERM)
        code = gw.wait(timeout=30)
    lines_expected = int(args.rate * args.seconds)
    print(f"soak: {args.seconds} s, {args.rate:.0f} lines/s, {args.clients} clients "
          f"({args.reconnecting} reconnecting every 2-5 s) + 1 stalled")
    print(f"  lines per client: {result['lines_per_client_min']}..{result['lines_per_client_max']} "
          f"(device rate x duration: about {lines_expected})")
    print(f"  lost, steady clients: {result['lost_steady']}")
    print(f"  lost, reconnecting clients: {result['lost_reconnecting']} over {result['reconnects']} reconnects")
    print(f"  duplicated: {result['duplicated']}; gap notices: {result['gaps']}; client errors: {result['errors']}")
    print(f"  stalled client closed by the gateway: {result['stalled_client_closed_by_gateway']}")
    print(f"  load client CPU: {result['node_cpu_seconds']:.1f} s")
    print("  gateway:   when      RSS MiB  threads  CPU s")
    for name, rss, nthreads, cpu in samples:
        print(f"             {name:>8} {rss / 1024:8.1f} {nthreads:8d} {cpu:6.1f}")
    print(f"  gateway exit code after SIGTERM: {code}")
    ok = result["lost_steady"] == 0 and result["lost_reconnecting"] == 0 and code == 0
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
