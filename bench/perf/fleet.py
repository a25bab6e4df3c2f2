#!/usr/bin/env python3
"""W6, the fleet benchmark: many devices, several gateways, one broker.

    python bench/perf/fleet.py                     # every scenario, once: about 5 minutes
    python bench/perf/fleet.py --quick             # small counts: well under a minute
    python bench/perf/fleet.py --scenarios one,memory --devices 1000 --seconds 30
    python bench/perf/fleet.py --scenarios one --targets gateway,gateway@/tmp/before

Scenarios (each on fresh processes; everything on 127.0.0.1, every wait with a deadline):
  one     one gateway, N TCP devices (devices.py, default 1,000) each printing a telemetry
          line a second for S s (default 30), stamped with the device's CLOCK_MONOTONIC as it
          writes it; one json client per device (client.mjs: Node's ws, one process) takes
          the delay on arrival; one more client on /ws/_events. The gateway's CPU % of a core
          and RSS over the window, p50/p99/max latency, lines lost (sent by a device and not
          received by its client). Goals: < 15 % of a core, < 250 MiB, p99 < 50 ms, 0 lost.
  memory  the gateway's RSS with 0, N/4, N/2 and N TCP devices (a fresh gateway each, plus
          one quiet sim:// device so that 0 is a valid config), idle, then with every
          device's history full (each device sends `history` lines at once; --history sets
          the devices' bound, default the gateway's 1,000): KiB per device, bytes per line held.
  three   three gateways (ids A, B, C) and one mosquitto, M TCP devices each (default 300),
          `[mqtt] discover = true`: the time until every gateway lists all 3M devices (and
          until all are connected), a line with "reply": true sent from a client of C (as
          the page sends it) to a device of A that echoes it, and its reply (round trips),
          the broker's connections (goal: 3), each gateway's threads, RSS and idle CPU.
  mqtt    one gateway with N `mqtt://` devices (default 1,000; devices.py --mqtt plays them
          on one connection: a retained status each, a stamped line a second each), one json
          client per device: the gateway's broker connections (goal: 1), threads, RSS, CPU,
          latency and lost lines as in `one`.

Targets (`--targets`, scenario `one` only; the others run `gateway`): gateway (this
checkout), gateway@DIR (another checkout's, for before/after). The gateway runs on the
interpreter run.py chooses (--python). Broker connections are counted from the kernel's
socket table (/proc/net/tcp): ESTABLISHED sockets whose local port is the broker's (its
side) and, per gateway, those of the gateway's descriptors whose peer is the broker.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import run as perf  # noqa: E402  (W1-W5: processes, devices, gateways, the load client)

HOST = perf.HOST
log = perf.log


# -- processes and sockets ------------------------------------------------------------

def start_mosquitto(tmp: Path) -> tuple[subprocess.Popen, int]:
    """A mosquitto of our own on 127.0.0.1 and a free port (nothing persisted)."""
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    port = perf.free_port()
    conf = tmp / f"mosquitto-{port}.conf"
    # set_tcp_nodelay: else a request across gateways waits 40 ms for a delayed ACK (README, W6)
    conf.write_text(f"listener {port} {HOST}\nallow_anonymous true\npersistence false\n"
                    "max_queued_messages 100000\nset_tcp_nodelay true\n"
                    "log_dest stderr\nlog_type error\nlog_type warning\n")
    logfile = open(tmp / f"mosquitto-{port}.log", "a")
    proc = subprocess.Popen([binary, "-c", str(conf)], stdout=logfile, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, start_new_session=True)
    if not perf.wait_port(port, time.monotonic() + 10):
        perf.stop(proc)
        raise RuntimeError(f"mosquitto did not listen on {port} (see {logfile.name})")
    return proc, port


def tcp_established() -> list[tuple[int, int, int]]:
    """(local port, remote port, inode) of every ESTABLISHED IPv4 TCP socket."""
    out = []
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        f = line.split()
        if f[3] == "01":
            out.append((int(f[1].split(":")[1], 16), int(f[2].split(":")[1], 16), int(f[9])))
    return out


def socket_inodes(pid: int) -> set[int]:
    inodes = set()
    try:
        for fd in os.scandir(f"/proc/{pid}/fd"):
            try:
                target = os.readlink(fd.path)
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(int(target[8:-1]))
    except OSError:
        pass
    return inodes


def broker_connections(broker_port: int, pids: list[int]) -> tuple[int, list[int]]:
    """Connections the broker holds, and how many of them each of `pids` opened."""
    table = tcp_established()
    held = sum(1 for local, _, _ in table if local == broker_port)
    per = []
    for pid in pids:
        mine = socket_inodes(pid)
        per.append(sum(1 for _, remote, inode in table if remote == broker_port and inode in mine))
    return held, per


def log_tail(path: Path) -> str:
    try:
        return " | ".join(path.read_text(errors="replace").strip().splitlines()[-2:])
    except OSError:
        return f"(no {path})"


def api_devices(port: int) -> list[dict]:
    with urllib.request.urlopen(f"http://{HOST}:{port}/api/devices", timeout=10) as r:
        return json.load(r)


def lines_in(port: int) -> int | None:
    """Lines the gateway's devices have read, or None when it does not answer in time (busy)."""
    try:
        return sum(d["counters"]["lines_in"] for d in api_devices(port))
    except OSError:
        return None


def tcp_config(path: Path, port: int, devices: list[tuple[str, str]], extra: str = "",
               history: int | None = None) -> None:
    """A gateway config with `devices` (name, url) and `extra` TOML after [server]."""
    parts = [f"# W6: {len(devices)} devices, made by bench/perf/fleet.py\n"
             f'[server]\nhost = "{HOST}"\nport = {port}\n{extra}']
    hist = f"history = {history}\n" if history is not None else ""
    parts += [f'[[device]]\nname = "{name}"\nurl = "{url}"\n{hist}' for name, url in devices]
    path.write_text("\n".join(parts))


class Stack:
    """What a scenario started, stopped in reverse order whatever happens."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen] = []
        self.clients: list[subprocess.Popen] = []

    def add(self, proc: subprocess.Popen) -> subprocess.Popen:
        self.procs.append(proc)
        return proc

    def close(self) -> None:
        for client in self.clients:
            perf.finish(client)
        for proc in reversed(self.procs):
            perf.stop(proc, 30)


def client_run(spec: dict, limit: float) -> dict:
    """client.mjs on one spec with no pauses (the request workload): its result."""
    proc = subprocess.Popen(["node", str(HERE / "client.mjs"), json.dumps({"limit": limit, **spec})], cwd=HERE,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        out = perf.Lines(proc)
        ev = out.json(limit + 10)
        kind = ev.pop("event")
        return ev if kind == "result" else {"error": ev.get("error", kind)}
    finally:
        perf.finish(proc)


def clients_spec(port: int, n: int, seconds: int, parallel: int, limit: float, events: bool = True) -> dict:
    """client.mjs's W5 clients with W6's latency (and an /ws/_events listener)."""
    spec = {"workload": "w5", "kind": "gateway", "host": HOST, "port": port, "path_prefix": "/ws/dev",
            "devices": n, "max_lines": seconds + 5, "parallel": parallel, "connect_seconds": 120,
            "seconds": 10, "limit": limit, "latency": True}
    if events:
        spec["events_path"] = "/ws/_events"
    return spec


# -- scenario one: one gateway, N TCP devices, a json client each ---------------------

def scenario_one(target: str, opts, logs: Path) -> dict:
    n, seconds = opts.devices, opts.seconds
    res: dict = {"devices": n, "seconds": seconds}
    stack = Stack()
    try:
        devices, dev_out, ports = perf.start_devices(n, opts.limit)
        stack.add(devices)
        port = perf.free_port()
        config = logs / f"one-{n}.toml"
        perf.w5_config(config, port, ports)
        t0 = time.monotonic()
        server = stack.add(perf.start_gateway_config(target, config, port, logs, "one"))
        connected = perf.wait_connected(port, n, opts.connect_seconds, server)
        res.update(devices_connected=connected, start_seconds=time.monotonic() - t0)
        if connected < n:
            raise RuntimeError(f"{connected} of {n} devices connected after {opts.connect_seconds} s")
        cspec = clients_spec(port, n, seconds, 100, opts.limit)
        perf.active_window(res, server.pid, devices, dev_out, cspec, seconds, opts.limit, stack.clients, stamp=True)
    except Exception as exc:  # reported in the table, not fatal
        res["error"] = str(exc)
    finally:
        stack.close()
    return res


# -- scenario memory: RSS against the number of devices, idle and with full histories ----

QUIET_SIM = ("quiet", "sim://?interval=0")  # in every config, so that 0 TCP devices is a valid one


def hold_clients(port: int, n: int, lines: int, limit: float, started: list) -> tuple[subprocess.Popen, "perf.Lines"]:
    """A json client on each of dev0..dev<n-1>, held open (client.mjs W5 at its pause),
    ready to check up to `lines` lines from each device."""
    spec = clients_spec(port, n, lines, 100, limit, events=False)
    spec.update(latency=False, seconds=120)  # seconds: how long the clients wait for the last lines
    client = subprocess.Popen(["node", str(HERE / "client.mjs"), json.dumps(spec)], cwd=HERE,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    started.append(client)
    out = perf.Lines(client)
    ev = out.json(150)
    if ev.get("event") != "pause" or ev.get("opened") != n:
        raise RuntimeError(f"json clients: {ev}")
    return client, out


def memory_point(target: str, n: int, history: int, logs: Path, limit: float, clients: bool = False) -> dict:
    """The gateway's RSS with `n` TCP devices, idle, then with every history full (with
    `clients`: while a json client of each device hears every line)."""
    point: dict = {"devices": n}
    stack = Stack()
    try:
        ports: list[int] = []
        if n:
            devices, dev_out, ports = perf.start_devices(n, limit)
            stack.add(devices)
        port = perf.free_port()
        config = logs / f"memory-{n}.toml"
        tcp_config(config, port, [QUIET_SIM] + [(f"dev{i}", f"tcp://{HOST}:{p}") for i, p in enumerate(ports)],
                   history=history)
        server = stack.add(perf.start_gateway_config(target, config, port, logs, "memory"))
        if perf.wait_connected(port, n + 1, 120, server) < n + 1:
            raise RuntimeError(f"not all of {n} devices connected after 120 s")
        point["idle"] = perf.gateway_sample(server.pid)
        if n and clients:
            client, out = hold_clients(port, n, history, limit, stack.clients)
        if n:
            before = lines_in(port)
            if before is None:
                raise RuntimeError("the gateway did not answer /api/devices")
            done = perf.tell(devices, dev_out, f"FILL {history}", 150)
            deadline = time.monotonic() + 300
            while (now := lines_in(port)) is None or now - before < done["filled"]:  # read them all
                if time.monotonic() > deadline or server.poll() is not None:
                    raise RuntimeError(f"the gateway did not read {done['filled']} lines within 300 s")
                time.sleep(0.5)
            if clients:  # and every client has them all (nothing left in the gateway's queues)
                client.stdin.write(json.dumps({"sent": [history] * n}) + "\n")
                client.stdin.flush()
                ev = out.json(120)
                if ev.get("event") != "result" or ev.get("lost") or ev.get("delivered") != n * history:
                    raise RuntimeError(f"json clients did not hear every line: {ev}")
            point["full"] = perf.gateway_sample(server.pid)
            point["fill_seconds"] = point["full"]["t"] - point["idle"]["t"]
    finally:
        stack.close()
    return point


def slope(xs: list[float], ys: list[float]) -> float | None:
    """Least-squares slope of ys against xs."""
    if len(xs) < 2 or len(set(xs)) < 2:
        return None
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)


def scenario_memory(target: str, opts, logs: Path) -> dict:
    counts = sorted({0, opts.devices // 4, opts.devices // 2, opts.devices})
    res: dict = {"counts": counts, "history": opts.history}
    try:
        points = [memory_point(target, n, opts.history, logs, opts.limit) for n in counts]
    except Exception as exc:
        return {**res, "error": str(exc)}
    res["rss_idle_kib"] = [p["idle"]["rss_kib"] for p in points]
    res["rss_full_kib"] = [p["full"]["rss_kib"] if "full" in p else p["idle"]["rss_kib"] for p in points]
    res["threads"] = [p["idle"]["threads"] for p in points]
    if counts[-1]:  # the largest count again, a json client per device hearing every line
        try:
            heard = memory_point(target, counts[-1], opts.history, logs, opts.limit, clients=True)
            res["rss_clients_kib"] = [heard["idle"]["rss_kib"], heard["full"]["rss_kib"]]
            res["bytes_per_line_clients"] = ((heard["full"]["rss_kib"] - heard["idle"]["rss_kib"]) * 1024
                                             / (counts[-1] * opts.history))
        except Exception as exc:
            res["error"] = f"with clients: {exc}"
    res["kib_per_device_idle"] = slope(counts, res["rss_idle_kib"])
    res["kib_per_device_full"] = slope(counts, res["rss_full_kib"])
    top = points[-1]
    if "full" in top and counts[-1]:
        grown = top["full"]["rss_kib"] - top["idle"]["rss_kib"]
        res["bytes_per_line"] = grown * 1024 / (counts[-1] * opts.history)
        res["fill_lines_per_s"] = counts[-1] * opts.history / top["fill_seconds"]
    return res


# -- scenario three: three gateways, one broker, discovery ------------------------------

GATEWAY_IDS = ("A", "B", "C")


def scenario_three(target: str, opts, logs: Path) -> dict:
    m = opts.per_gateway
    total = m * len(GATEWAY_IDS)
    res: dict = {"per_gateway": m, "gateways": len(GATEWAY_IDS)}
    stack = Stack()
    try:
        broker, broker_port = start_mosquitto(logs)
        stack.add(broker)
        devices, dev_out, ports = perf.start_devices(total, opts.limit)
        stack.add(devices)
        gw_ports, servers = [], []
        mqtt = f'[mqtt]\nurl = "mqtt://{HOST}:{broker_port}"\nprefix = "w6"\ndiscover = true\n'
        names = {gid: [f"{gid.lower()}{i}" for i in range(m)] for gid in GATEWAY_IDS}
        for k, gid in enumerate(GATEWAY_IDS):
            port = perf.free_port()
            config = logs / f"three-{gid}.toml"
            mine = [(name, f"tcp://{HOST}:{p}") for name, p in zip(names[gid], ports[k * m:(k + 1) * m])]
            tcp_config(config, port, mine, extra=f'gateway_id = "{gid}"\n{mqtt}')
            gw_ports.append(port)
        t0 = time.monotonic()
        for gid, port in zip(GATEWAY_IDS, gw_ports):
            servers.append(stack.add(perf.start_gateway_config(target, logs / f"three-{gid}.toml", port, logs,
                                                               f"three-{gid}")))
        # every gateway lists all 3M devices; then all of them connected
        want = {name for group in names.values() for name in group}
        listed: dict[str, float] = {}
        connected: dict[str, float] = {}
        deadline = t0 + opts.discover_seconds
        while len(connected) < len(GATEWAY_IDS) and time.monotonic() < deadline:
            for gid, port, server in zip(GATEWAY_IDS, gw_ports, servers):
                if gid in connected:
                    continue
                if server.poll() is not None:
                    raise RuntimeError(f"gateway {gid} exited with {server.returncode}: "
                                       f"{log_tail(logs / f'gateway-three-{gid}.log')}")
                try:
                    items = api_devices(port)
                except OSError:
                    continue
                seen = {d["name"] for d in items}
                if want <= seen:
                    listed.setdefault(gid, time.monotonic() - t0)
                    if all(d["state"] == "connected" for d in items if d["name"] in want):
                        connected[gid] = time.monotonic() - t0
            time.sleep(0.25)
        res["listed_s"] = {gid: round(v, 2) for gid, v in listed.items()}
        res["connected_s"] = {gid: round(v, 2) for gid, v in connected.items()}
        if len(listed) < len(GATEWAY_IDS):
            counts = {}
            for gid, port in zip(GATEWAY_IDS, gw_ports):
                try:
                    counts[gid] = len(api_devices(port))
                except OSError:
                    counts[gid] = None
            raise RuntimeError(f"not every gateway lists all {total} devices after {opts.discover_seconds} s "
                               f"(listed: {counts})")
        res["listed_max_s"] = max(listed.values())
        res["connected_max_s"] = max(connected.values()) if len(connected) == len(GATEWAY_IDS) else None
        res["remote_owner_ok"] = all(d.get("owner") == "A" for d in api_devices(gw_ports[2]) if d["name"] in names["A"])
        # a line from a client of C (the page's json stream) to a device of A, and its reply
        rq = client_run({"workload": "request", "kind": "gateway", "host": HOST, "port": gw_ports[2],
                         "path": f"/ws/{names['A'][0]}", "count": opts.requests, "seconds": 60, "timeout": 5,
                         "tag": "from-C"}, 90)
        res.update({f"request_{k}": v for k, v in rq.items()})
        # the broker's connections, and each gateway at rest
        pids = [s.pid for s in servers]
        a = [perf.gateway_sample(pid) for pid in pids]
        time.sleep(opts.idle)
        b = [perf.gateway_sample(pid) for pid in pids]
        held, per = broker_connections(broker_port, pids)
        res.update(broker_connections=held, broker_connections_per_gateway=per,
                   threads=[x["threads"] for x in b], rss_kib=[x["rss_kib"] for x in b],
                   idle_cpu_pct=[(y["cpu"] - x["cpu"]) / (y["t"] - x["t"]) * 100 for x, y in zip(a, b)])
    except Exception as exc:
        res["error"] = str(exc)
    finally:
        stack.close()
    return res


# -- scenario mqtt: one gateway, N mqtt:// devices ---------------------------------------

def scenario_mqtt(target: str, opts, logs: Path) -> dict:
    n, seconds = opts.devices, opts.seconds
    res: dict = {"devices": n, "seconds": seconds}
    stack = Stack()
    try:
        broker, broker_port = start_mosquitto(logs)
        stack.add(broker)
        base = f"mqtt://{HOST}:{broker_port}/w6m"
        devices, dev_out, _ = perf.start_devices(n, opts.limit, perf.GATEWAY_PYTHON, "--mqtt", base)
        stack.add(devices)
        port = perf.free_port()
        config = logs / f"mqtt-{n}.toml"
        tcp_config(config, port, [(f"dev{i}", f"{base}/dev{i}") for i in range(n)])
        t0 = time.monotonic()
        server = stack.add(perf.start_gateway_config(target, config, port, logs, "mqtt"))
        connected = perf.wait_connected(port, n, opts.connect_seconds, server)
        res.update(devices_connected=connected, start_seconds=time.monotonic() - t0)
        if connected < n:
            raise RuntimeError(f"{connected} of {n} mqtt:// devices connected after {opts.connect_seconds} s")
        a = perf.gateway_sample(server.pid)
        time.sleep(opts.idle)
        b = perf.gateway_sample(server.pid)
        held, per = broker_connections(broker_port, [server.pid])
        res.update(broker_connections=held, gateway_broker_connections=per[0], threads=b["threads"],
                   rss_kib=b["rss_kib"], idle_cpu_pct=(b["cpu"] - a["cpu"]) / (b["t"] - a["t"]) * 100)
        cspec = clients_spec(port, n, seconds, 100, opts.limit, events=False)
        perf.active_window(res, server.pid, devices, dev_out, cspec, seconds, opts.limit, stack.clients, stamp=True)
    except Exception as exc:
        res["error"] = str(exc)
    finally:
        stack.close()
    return res


SCENARIOS = {"one": scenario_one, "memory": scenario_memory, "three": scenario_three, "mqtt": scenario_mqtt}


# -- the table ---------------------------------------------------------------------------

def mib(kib) -> float | None:
    return kib / 1024 if kib else None


def num(v) -> str:
    return f"{v:,}" if isinstance(v, int) and not isinstance(v, bool) else perf.fmt(v)


def each(values, f=lambda v: v, sep=" / ") -> str:
    return sep.join(num(f(v)) for v in values) if values else "-"


def errors(r: dict) -> str | None:
    if r.get("lost") is None:
        return None
    return f"{r['lost']}/{r['duplicated']}/{r['reordered']} of {r.get('sent', 0):,}"


# (scenario, label, value of one result, goal: (text, test) or None)
ROWS = [
    ("one", "devices / json clients open / events client", lambda r: f"{r['devices']:,} / {r.get('clients_opened')} / "
     + ("none (no /ws/_events)" if "events_error" in r else
        f"{'alive' if r.get('events_alive') else 'closed'} ({r.get('events_messages')} events)"), None),
    ("one", "start: all devices connected, s", lambda r: r.get("start_seconds"), None),
    ("one", "gateway CPU % of a core, lines flowing", lambda r: r.get("active_cpu_pct"), ("< 15", lambda v: v < 15)),
    ("one", "gateway RSS MiB at the end", lambda r: mib(r.get("rss_active_kib")), ("< 250", lambda v: v < 250)),
    ("one", "gateway threads", lambda r: r.get("threads_active"), None),
    ("one", "latency device -> client p50 ms", lambda r: r.get("p50_ms"), None),
    ("one", "latency device -> client p99 ms", lambda r: r.get("p99_ms"), ("< 50", lambda v: v < 50)),
    ("one", "latency max ms", lambda r: r.get("max_ms"), None),
    ("one", "lost/dup/reordered of sent", errors, ("0 lost", lambda v: v.startswith("0/"))),
    ("one", "load client CPU % (Node, one process)", lambda r: r["client_cpu"] * 100 if "client_cpu" in r else None,
     None),
    ("memory", "devices", lambda r: each(r["counts"], lambda v: f"{v:,}"), None),
    ("memory", "RSS MiB idle", lambda r: each(r.get("rss_idle_kib"), mib), None),
    ("memory", "RSS MiB, histories full ({history} lines each)", lambda r: each(r.get("rss_full_kib"), mib), None),
    ("memory", "KiB per device, idle", lambda r: r.get("kib_per_device_idle"), None),
    ("memory", "KiB per device, history full", lambda r: r.get("kib_per_device_full"), None),
    ("memory", "bytes per history line held", lambda r: r.get("bytes_per_line"), None),
    ("memory", "largest, a json client each: RSS MiB idle / full",
     lambda r: each(r.get("rss_clients_kib"), mib), None),
    ("memory", "... bytes per history line held", lambda r: r.get("bytes_per_line_clients"), None),
    ("three", "gateways x devices each", lambda r: f"{r['gateways']} x {r['per_gateway']:,}", None),
    ("three", "every gateway lists all: s from start (A/B/C)",
     lambda r: f"{perf.fmt(r.get('listed_max_s'))} ({each(r.get('listed_s', {}).values())})", None),
    ("three", "... and all connected: s", lambda r: r.get("connected_max_s"), None),
    ("three", "remote devices of A on C have owner A", lambda r: r.get("remote_owner_ok"), None),
    ("three", "C -> device of A, replies / sent",
     lambda r: f"{r.get('request_replies')} / {r.get('request_sent')}" if "request_sent" in r else None,
     ("all", lambda v: v.split(" / ")[0] == v.split(" / ")[1])),
    ("three", "C -> A -> C round trip p50 / p99 ms",
     lambda r: f"{perf.fmt(r.get('request_p50_ms'))} / {perf.fmt(r.get('request_p99_ms'))}", None),
    ("three", "broker connections (of A/B/C)",
     lambda r: f"{r['broker_connections']} ({each(r['broker_connections_per_gateway'])})"
     if "broker_connections" in r else None, ("3", lambda v: v.split()[0] == "3")),
    ("three", "threads (A/B/C)", lambda r: each(r.get("threads")), None),
    ("three", "RSS MiB (A/B/C)", lambda r: each(r.get("rss_kib"), mib), None),
    ("three", "idle CPU % (A/B/C)", lambda r: each(r.get("idle_cpu_pct")), None),
    ("mqtt", "mqtt:// devices", lambda r: f"{r['devices']:,}", None),
    ("mqtt", "start: all devices connected, s", lambda r: r.get("start_seconds"), None),
    ("mqtt", "gateway's broker connections", lambda r: r.get("gateway_broker_connections"), ("1", lambda v: v == 1)),
    ("mqtt", "gateway threads", lambda r: r.get("threads"), None),
    ("mqtt", "gateway RSS MiB idle", lambda r: mib(r.get("rss_kib")), None),
    ("mqtt", "gateway idle CPU %", lambda r: r.get("idle_cpu_pct"), None),
    ("mqtt", "gateway CPU % of a core, lines flowing", lambda r: r.get("active_cpu_pct"), None),
    ("mqtt", "gateway RSS MiB at the end", lambda r: mib(r.get("rss_active_kib")), None),
    ("mqtt", "latency device -> broker -> client p50 / p99 ms",
     lambda r: f"{perf.fmt(r.get('p50_ms'))} / {perf.fmt(r.get('p99_ms'))}", None),
    ("mqtt", "lost/dup/reordered of sent", errors, ("0 lost", lambda v: v.startswith("0/"))),
]


def cell(r: dict, get) -> tuple[str, object]:
    try:
        v = get(r)
    except (KeyError, TypeError, ValueError, ZeroDivisionError):
        v = None
    if isinstance(v, bool):
        return ("yes" if v else "NO"), v
    return num(v), v


def table(results: dict, scenarios: list[str], targets: list[str], opts) -> list[str]:
    head = ["scenario", "metric"] + targets + ["goal"]
    rows = [head]
    verdicts = []
    for sc in scenarios:
        cols = targets if sc == "one" else ["gateway"]
        for name, label, get, goal in ROWS:
            if name != sc:
                continue
            row = [sc, label.format(history=opts.history)]
            for t in targets:
                r = results.get((sc, t))
                if t not in cols or r is None:
                    row.append("")
                    continue
                text, v = cell(r, get)
                row.append(text)
                if goal is not None:
                    ok = None if v is None else bool(goal[1](v))
                    verdicts.append(f"  [{'n/a ' if ok is None else 'PASS' if ok else 'FAIL'}] {sc} {t}: {label} "
                                    f"{goal[0]}: {text}")
            row.append(goal[0] if goal else "")
            rows.append(row)
        for t in cols:
            r = results.get((sc, t))
            if r is not None and "error" in r:
                verdicts.append(f"  [ERR ] {sc} {t}: {r['error']}")
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    out = []
    for k, r in enumerate(rows):
        out.append("  ".join(c.ljust(widths[i]) if i < 2 else c.rjust(widths[i]) for i, c in enumerate(r)))
        if k == 0:
            out.append("  ".join("-" * w for w in widths))
    return out + ["", "goals:"] + verdicts


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--scenarios", default="one,memory,three,mqtt", help="comma-separated: " + ", ".join(SCENARIOS))
    p.add_argument("--targets", default="gateway", help="scenario one: gateway, gateway@DIR (comma-separated)")
    p.add_argument("--quick", action="store_true", help="20 devices (10 per gateway in three), 5 s windows")
    p.add_argument("--devices", type=int, help="devices in one, memory's largest count and mqtt (default 1,000)")
    p.add_argument("--per-gateway", type=int, help="three: devices per gateway (default 300)")
    p.add_argument("--seconds", type=int, help="lines flowing, seconds (default 30)")
    p.add_argument("--idle", type=float, help="idle windows, seconds (default 10)")
    p.add_argument("--history", type=int, default=1000, help="memory: each device's history bound (default 1,000)")
    p.add_argument("--requests", type=int, default=20, help="three: round trips from C to a device of A")
    p.add_argument("--discover-seconds", type=float, default=180, help="three: deadline for discovery")
    p.add_argument("--connect-seconds", type=float, default=120, help="one, mqtt: deadline for all devices connected")
    p.add_argument("--python", metavar="PATH", help="the gateway's interpreter (as run.py's --python)")
    p.add_argument("--gateway-root", metavar="DIR", type=Path, default=perf.ROOT,
                   help="the checkout whose gateway is `gateway` (default: this one)")
    p.add_argument("--json", metavar="FILE", help="also write every result to FILE")
    opts = p.parse_args(argv)
    q = opts.quick
    opts.devices = opts.devices or (20 if q else 1000)
    opts.per_gateway = opts.per_gateway or (10 if q else 300)
    opts.seconds = opts.seconds or (5 if q else 30)
    opts.idle = opts.idle if opts.idle is not None else (2 if q else 10)
    opts.limit = 600
    scenarios = opts.scenarios.split(",")
    targets = opts.targets.split(",")
    for s in scenarios:
        if s not in SCENARIOS:
            p.error(f"unknown scenario {s!r} (known: {', '.join(SCENARIOS)})")
    if "gateway" not in targets and any(s != "one" for s in scenarios):
        targets.insert(0, "gateway")
    perf.GATEWAY_ROOT = opts.gateway_root.resolve()
    perf.ensure_node()
    fds = perf.raise_fd_limit(max(opts.devices, opts.per_gateway * 3) * 4 + 1000)
    tmp = Path(tempfile.mkdtemp(prefix="gateway-fleet-"))
    perf.GATEWAY_PYTHON = perf.gateway_python(opts.python, tmp)
    log(f"open-file limit {fds}; logs in {tmp}; load average {loadavg()}")
    started = time.monotonic()
    results: dict[tuple[str, str], dict] = {}
    loads = []
    try:
        for sc in scenarios:
            for t in (targets if sc == "one" else ["gateway"]):
                t0 = time.monotonic()
                res = SCENARIOS[sc](t, opts, tmp)
                results[(sc, t)] = res
                loads.append(loadavg())
                log(f"{sc:6} {t:18} {time.monotonic() - t0:6.1f} s  load {loads[-1]}  "
                    f"{json.dumps({k: v for k, v in res.items() if not isinstance(v, (list, dict))})[:600]}")
    finally:
        if opts.json:
            Path(opts.json).write_text(json.dumps({f"{k[0]} {k[1]}": v for k, v in results.items()}, indent=1))
    py = subprocess.run([perf.GATEWAY_PYTHON, "-c", "import sys; print(sys.version.split()[0])"],
                        capture_output=True, text=True).stdout.strip()
    print(f"\nbench/perf/fleet.py (W6): {os.cpu_count()} cores, the gateway on Python {py} ({perf.GATEWAY_PYTHON}), "
          f"{time.monotonic() - started:.0f} s; load average after each scenario: {', '.join(loads)}\n")
    for line in table(results, scenarios, targets, opts):
        print(line)
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
