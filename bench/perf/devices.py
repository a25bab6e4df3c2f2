#!/usr/bin/env python3
"""W5's and W6's devices: N TCP line servers on 127.0.0.1 in one process (asyncio, one thread).

    python devices.py --count 1000 --limit 600
    python devices.py --count 1000 --mqtt mqtt://127.0.0.1:1883/bench    # W6's mqtt:// devices

Each device is a listening port the gateway dials (tcp://127.0.0.1:PORT); a new
connection to a device replaces its old one. Each line the gateway writes is sent back
as it came (a line echo, for W6's request and reply across gateways). Talks to
bench/perf/run.py and fleet.py through stdin and stdout, one line each way:

  out  {"ports": [P0, P1, ...]}                once every device listens
  in   STATUS                                  -> {"connected": K, "accepted": A}
  in   START S [stamp]                         every device sends one line a second for S
                                               seconds, device i at offset i/N of each second:
                                               "t=<k> v=<i>.<k mod 100>", k = 1..S per device;
                                               with "stamp", plus " ns=<time.monotonic_ns()>"
                                               taken as it is written (W6's latency)
  out  {"sent": [...], "unsent": U, "late_ms": L, "seconds": W}   when the S seconds are over
                                               (sent: lines written per device; unsent: lines
                                               due while that device had no connection; late_ms:
                                               the worst lateness against the schedule)
  in   FILL K                                  every device sends K lines at once, as START's
                                               stamped ones: "t=<j> v=<i>.<j mod 100> ns=<n>", j = 1..K
  out  {"filled": L, "seconds": W}             once they are all written (L lines in all)
  EOF on stdin, or --limit seconds: it exits.
With --mqtt URL/PREFIX the devices are topics on a broker instead (W6: mqtt:// devices,
`mqtt://HOST:PORT/PREFIX/dev<i>`), all on ONE paho connection: device i publishes its
lines on PREFIX/dev<i>/rx (QoS 0) and a retained {"state": "connected"} on
PREFIX/dev<i>/status, and echoes each line published on PREFIX/dev<i>/tx; the first line
out is {"ports": []}, once the statuses are out. Same commands (STATUS answers
"connected": all of them while the broker link is up); needs paho-mqtt.
Every loop is bounded by a count and a deadline.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import sys
import threading
import time

HOST = "127.0.0.1"
MAX_LINE = 8192  # an unended run longer than this is cut (only its tail kept)


class Device(asyncio.Protocol):
    def __init__(self, index: int, devices: "Devices") -> None:
        self.index = index
        self.devices = devices
        self.transport: asyncio.Transport | None = None
        self.rest = b""  # the start of a line not ended yet

    def connection_made(self, transport) -> None:
        old = self.devices.conns[self.index]
        if old is not None and not old.is_closing():
            old.close()  # a new connection replaces the old one, as a board would
        self.devices.conns[self.index] = transport
        self.devices.accepted += 1
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        """Echo every complete line (W5 writes nothing; W6 sends a line across gateways)."""
        data = self.rest + data
        end = data.rfind(b"\n") + 1
        self.rest = data[end:][-MAX_LINE:]
        if end:
            self.transport.write(data[:end])

    def connection_lost(self, exc) -> None:
        pass


class Devices:
    def __init__(self, count: int) -> None:
        self.count = count
        self.conns: list[asyncio.Transport | None] = [None] * count
        self.accepted = 0

    def live(self, i: int):
        t = self.conns[i]
        return t if t is not None and not t.is_closing() else None

    async def send_for(self, seconds: int, stamp: bool = False) -> dict:
        """One line a second from every device for `seconds` seconds (count: seconds * N lines)."""
        n = self.count
        sent = [0] * n
        unsent = 0
        late = 0.0
        t0 = time.monotonic()
        deadline = t0 + seconds + 30
        for k in range(1, seconds + 1):
            for i in range(n):
                due = t0 + (k - 1) + i / n
                now = time.monotonic()
                if due - now > 0.002:
                    await asyncio.sleep(due - now)
                else:
                    late = max(late, now - due)
                if time.monotonic() > deadline:
                    break
                t = self.live(i)
                if t is None:
                    unsent += 1
                    continue
                if stamp:
                    t.write(f"t={k} v={i}.{k % 100:02d} ns={time.monotonic_ns()}\n".encode())
                else:
                    t.write(f"t={k} v={i}.{k % 100:02d}\n".encode())
                sent[i] += 1
        # the window is the schedule's span: the last device's last line is due at t0 + seconds - 1/n
        rest = t0 + seconds - time.monotonic()
        if rest > 0:
            await asyncio.sleep(rest)
        return {"sent": sent, "unsent": unsent, "late_ms": round(late * 1000, 2),
                "seconds": round(time.monotonic() - t0, 4)}


    async def fill(self, lines: int) -> dict:
        """`lines` lines from every connected device at once (W6: each device's history filled)."""
        t0 = time.monotonic()
        filled = 0
        for i in range(self.count):
            t = self.live(i)
            if t is not None:
                ns = time.monotonic_ns()
                t.write("".join(f"t={j} v={i}.{j % 100:02d} ns={ns + j}\n" for j in range(1, lines + 1)).encode())
                filled += lines
        deadline = t0 + 120
        while time.monotonic() < deadline and any(
                (t := self.live(i)) is not None and t.get_write_buffer_size() for i in range(self.count)):
            await asyncio.sleep(0.05)
        return {"filled": filled, "seconds": round(time.monotonic() - t0, 4)}


class Topic:
    """An MQTT device's side of the broker, written to as a TCP device is."""

    __slots__ = ("client", "rx")

    def __init__(self, client, rx: str) -> None:
        self.client, self.rx = client, rx

    def write(self, data: bytes) -> None:
        for line in data.decode().splitlines():
            self.client.publish(self.rx, line, qos=0)

    def get_write_buffer_size(self) -> int:
        return 0  # paho holds what it has not sent yet


class MqttDevices(Devices):
    """`count` devices as topics under mqtt://HOST:PORT/PREFIX, on one paho connection
    (its network thread is paho's own, ended by close())."""

    def __init__(self, count: int, url: str) -> None:
        super().__init__(count)
        import paho.mqtt.client as mqtt
        from urllib.parse import urlsplit
        u = urlsplit(url)
        self.prefix = u.path.strip("/")
        self.up = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"bench-devices-{os.getpid()}")
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = lambda *a: self.up.clear()
        self.client.on_message = self._on_message
        self.topics = [Topic(self.client, f"{self.prefix}/dev{i}/rx") for i in range(count)]
        self.client.connect(u.hostname, u.port or 1883, keepalive=30)
        self.client.loop_start()

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        client.subscribe(f"{self.prefix}/+/tx", qos=1)
        for i in range(self.count):
            client.publish(f"{self.prefix}/dev{i}/status", json.dumps({"state": "connected"}), qos=1, retain=True)
        self.accepted += 1
        self.up.set()

    def _on_message(self, client, userdata, msg) -> None:  # paho's thread: a tx line, echoed
        name = msg.topic[len(self.prefix) + 1:-3]
        client.publish(f"{self.prefix}/{name}/rx", msg.payload, qos=0)

    def live(self, i: int):
        return self.topics[i] if self.up.is_set() else None

    def close(self) -> None:
        for i in range(self.count):  # no retained status left behind
            self.client.publish(f"{self.prefix}/dev{i}/status", b"", qos=1, retain=True)
        self.client.disconnect()
        self.client.loop_stop()


def say(obj) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


async def main_async(count: int, limit: float, mqtt_url: str | None = None) -> None:
    loop = asyncio.get_running_loop()
    servers = []
    if mqtt_url:
        devices = MqttDevices(count, mqtt_url)
        if not await loop.run_in_executor(None, devices.up.wait, 30):
            raise SystemExit(f"devices.py: no broker at {mqtt_url} within 30 s")
        say({"ports": []})
    else:
        devices = Devices(count)
        for i in range(count):
            servers.append(await loop.create_server(lambda i=i: Device(i, devices), HOST, 0, backlog=16))
        say({"ports": [s.sockets[0].getsockname()[1] for s in servers]})
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    end = time.monotonic() + limit
    for _ in range(1000):  # commands: a handful per run
        try:
            line = await asyncio.wait_for(reader.readline(), max(0.1, end - time.monotonic()))
        except asyncio.TimeoutError:
            break
        if not line:
            break  # run.py went away
        cmd = line.decode().split()
        if cmd[:1] == ["STATUS"]:
            say({"connected": sum(devices.live(i) is not None for i in range(count)), "accepted": devices.accepted})
        elif cmd[:1] == ["START"] and len(cmd) in (2, 3):
            say(await devices.send_for(int(cmd[1]), stamp=cmd[2:] == ["stamp"]))
        elif cmd[:1] == ["FILL"] and len(cmd) == 2:
            say(await devices.fill(int(cmd[1])))
        else:
            say({"error": f"unknown command {line!r}"})
        if time.monotonic() > end:
            break
    for s in servers:
        s.close()
    for t in devices.conns:
        if t is not None:
            t.abort()
    if mqtt_url:
        devices.close()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--count", type=int, default=1000)
    p.add_argument("--limit", type=float, default=600, help="exit after this many seconds whatever happens")
    p.add_argument("--mqtt", metavar="URL", help="mqtt://HOST:PORT/PREFIX: devices as topics on a broker")
    args = p.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 2 * args.count + 100:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    asyncio.run(main_async(args.count, args.limit, args.mqtt))
    return 0


if __name__ == "__main__":
    sys.exit(main())
