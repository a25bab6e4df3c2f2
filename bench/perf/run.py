#!/usr/bin/env python3
"""The gateway against websockify and websocketd, side by side, on the same device work.

    python bench/perf/run.py              # every workload, every target, 3 repetitions
    python bench/perf/run.py --quick      # small counts, 1 repetition, well under a minute
    python bench/perf/run.py --reps 5 --workloads w1,w2 --targets gateway,websockify

Targets, each in front of its own copy of the same C device (device.c, on 127.0.0.1):
  raw         the load client on the device's TCP socket itself: the ceiling
  gateway     python run_gateway.py --port P --device dev=tcp://127.0.0.1:DEVPORT
  websockify  websockify 127.0.0.1:P 127.0.0.1:DEVPORT (Debian's package: a process per client)
  websocketd  websocketd --port P lineproxy 127.0.0.1 DEVPORT (Debian's package; lineproxy.c is
              a 40-line stdin/stdout <-> TCP copier, one process per client)
  gateway-nowsaccel  the gateway with wsaccel hidden even when it is installed (opt-in)

Workloads (the load client is client.mjs: Node's ws with bufferutil):
  w1      ping-pong: one client, a 20-byte line, send and wait; round trips/s, p50, p99
  w2      pipelined: one client, 50,000 lines, at most 1,000 unanswered; lines/s
  w3-10, w3-100   fan-out: 10 / 100 clients and one "GO 20000"; lines delivered per second
          summed over clients, lost/duplicated/reordered. websockify and websocketd have no
          fan-out: there (and for raw) each client drives its own device stream.
  w4      1,000 connections held idle 5 s (PSS of all server processes, smaps_rollup), then
          one line each, which must come back (through the gateway every client hears
          every echo: 1,000,000 frames)
  w4-10k  the gateway only: 10,000 connections held 5 s, then 100 of them send a line and
          all 10,000 must hear those echoes
  w5      the gateway only: 1,000 TCP devices (devices.py: one asyncio process, a port each)
          in one generated config file. Once all are connected, 20 s idle: the gateway's
          threads, CPU seconds in the window (utime+stime of /proc/PID/stat), RSS and PSS;
          then one json client per device while every device sends a line a second for 30 s:
          the gateway's CPU % and lost/duplicated/reordered lines (--w5-devices, --w5-idle,
          --w5-active; --quick: 100 devices, 5 s, 5 s)
  (W6, fleets of devices and gateways: bench/perf/fleet.py, built on this file's pieces)

Both Python servers run on the same interpreter: the gateway on the Python websockify's
script names (/usr/bin/python3 on Debian), in a virtualenv made for it in the temporary
directory with requirements.txt, unless --python says otherwise. (A pyenv-built Python
without PGO/LTO, as on the development machine, runs pure Python about 25 % slower.)

It builds the C programs with gcc into a temporary directory, runs `npm ci` in bench/perf
when node_modules is missing, installs websockify and websocketd with apt-get when they
are missing, and raises its open-file limit. Every server gets a fresh start for every
measurement; all traffic stays on 127.0.0.1; every wait has a deadline.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import threading
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
HOST = "127.0.0.1"


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# -- set-up ---------------------------------------------------------------------------

def build(tmp: Path) -> dict[str, Path]:
    out = {}
    for name in ("device", "lineproxy"):
        exe = tmp / name
        subprocess.run(["gcc", "-O2", "-Wall", "-o", str(exe), str(HERE / f"{name}.c")], check=True)
        out[name] = exe
    return out


def ensure_node() -> None:
    if not (HERE / "node_modules" / "ws").is_dir():
        log("npm ci (bench/perf/node_modules is missing)")
        subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=HERE, check=True,
                       stdout=subprocess.DEVNULL)


def ensure_apt(targets: list[str]) -> list[str]:
    """Install websockify / websocketd when missing; return the targets that can run."""
    want = [t for t in ("websockify", "websocketd") if t in targets and shutil.which(t) is None]
    if want:
        log(f"apt-get install {' '.join(want)}")
        r = subprocess.run(["apt-get", "install", "-y", "-q", *want], env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if r.returncode:
            log(f"apt-get failed ({r.stderr.strip().splitlines()[-1:]}); skipping {', '.join(want)}")
    return [t for t in targets if t not in ("websockify", "websocketd") or shutil.which(t)]


def websockify_python() -> str | None:
    """The interpreter websockify's script runs on (its #! line)."""
    path = shutil.which("websockify")
    if path is None:
        return None
    try:
        with open(path, "rb") as f:
            first = f.readline().decode(errors="replace")
    except OSError:
        return None
    if not first.startswith("#!"):
        return None
    words = first[2:].split()
    if words and words[0].endswith("/env"):
        words = words[1:]
    return shutil.which(words[0]) if words else None


def gateway_python(wanted: str | None, tmp: Path) -> str:
    """The interpreter to run the gateway on: `wanted`, else websockify's, with the
    gateway's requirements in a virtualenv made for it; sys.executable when that fails."""
    python = wanted or websockify_python()
    if python is None or Path(python).resolve() == Path(sys.executable).resolve():
        return sys.executable
    probe = "import ws4py, serial, prometheus_client, paho"
    if subprocess.run([python, "-c", probe], capture_output=True).returncode == 0:
        return python  # its own site-packages have them (or it is a virtualenv already)
    venv = tmp / "gateway-venv"
    log(f"virtualenv for the gateway on {python} (requirements.txt)")
    try:
        subprocess.run([python, "-m", "venv", str(venv)], check=True, capture_output=True)
        subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check",
                        "-r", str(ROOT / "requirements.txt")], check=True, capture_output=True)
    except (OSError, subprocess.CalledProcessError) as exc:
        log(f"could not make it ({exc}); the gateway runs on {sys.executable}")
        return sys.executable
    return str(venv / "bin" / "python")


def raise_fd_limit(need: int) -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < need:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (need, need))
            return need
        except (ValueError, OSError):
            pass
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


# -- processes --------------------------------------------------------------------------

def children_map() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry.name}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        kids.setdefault(ppid, []).append(int(entry.name))
    return kids


def tree(pid: int) -> list[int]:
    kids = children_map()
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(kids.get(p, ()))
    return out


def pss_kib(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1])
                    break
        except OSError:
            pass
    return total


def cpu_seconds(pids: list[int]) -> float:
    """CPU time of every thread of `pids`, from schedstat (nanoseconds: /proc/PID/stat's
    10 ms ticks read 0 for a websockify or websocketd child that did 9 ms of work)."""
    total = 0
    for pid in pids:
        try:
            tids = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for tid in tids:
            try:
                total += int(Path(f"/proc/{pid}/task/{tid}/schedstat").read_text().split()[0])
            except (OSError, ValueError, IndexError):
                pass
    return total / 1e9


def wait_port(port: int, deadline: float) -> bool:
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((HOST, port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.05)
    return False


def stop(proc: subprocess.Popen | None, timeout: float = 10.0) -> None:
    """SIGTERM the process group we started (the server and its per-client children)."""
    if proc is None or proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)
    try:  # per-client children that outlived their parent
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


@dataclass
class Running:
    name: str
    kind: str  # how the client talks to it: raw, gateway, websockify, websocketd
    port: int
    path: str
    device: subprocess.Popen
    server: subprocess.Popen | None
    extra: dict = field(default_factory=dict)

    def server_pids(self) -> list[int]:
        return tree(self.server.pid) if self.server is not None else [self.device.pid]

    def stop(self) -> None:
        stop(self.server)
        stop(self.device)


def start_device(exe: Path) -> tuple[subprocess.Popen, int]:
    proc = subprocess.Popen([str(exe), "0"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                            start_new_session=True)
    line = proc.stdout.readline()
    if not line.startswith("PORT "):
        raise RuntimeError(f"device did not start: {line!r}")
    return proc, int(line.split()[1])


GATEWAY_ROOT = ROOT  # --gateway-root: another checkout's gateway, for before/after runs
GATEWAY_PYTHON = sys.executable  # set by main(): see gateway_python()


def start_target(name: str, bins: dict[str, Path], logs: Path) -> Running:
    device, dev_port = start_device(bins["device"])
    if name == "raw":
        return Running(name, "raw", dev_port, "", device, None)
    port = free_port()
    logfile = open(logs / f"{name.split('@')[0]}.log", "a")
    env = dict(os.environ)
    deadline = time.monotonic() + 20
    if name.startswith("gateway"):
        root = Path(name.split("@", 1)[1]) if "@" in name else GATEWAY_ROOT
        cmd = [GATEWAY_PYTHON, str(root / "run_gateway.py"), "--port", str(port),
               "--device", f"dev=tcp://{HOST}:{dev_port}"]
        if name == "gateway-nowsaccel":  # hide an installed wsaccel from the gateway
            cmd = [GATEWAY_PYTHON, "-c", "import runpy, sys; sys.modules['wsaccel'] = None; "
                   "sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')", *cmd[1:]]
        server = subprocess.Popen(cmd, cwd=root, stdout=logfile, stderr=subprocess.STDOUT, env=env,
                                  start_new_session=True)
        run = Running(name, "gateway", port, "/ws/dev", device, server)
        while time.monotonic() < deadline:  # up, and its device connected
            try:
                with urllib.request.urlopen(f"http://{HOST}:{port}/healthz", timeout=1) as r:
                    if json.load(r)["devices"].get("dev") == "connected":
                        return run
            except OSError:
                pass
            if server.poll() is not None:
                break
            time.sleep(0.05)
    else:
        if name == "websockify":
            cmd = ["websockify", f"{HOST}:{port}", f"{HOST}:{dev_port}"]
        else:
            cmd = ["websocketd", f"--address={HOST}", f"--port={port}", "--loglevel=error",
                   str(bins["lineproxy"]), HOST, str(dev_port)]
        server = subprocess.Popen(cmd, stdout=logfile, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                  start_new_session=True)
        run = Running(name, name, port, "/", device, server)
        if wait_port(port, deadline):
            return run
    run.stop()
    raise RuntimeError(f"{name} did not start (see {logs / (name + '.log')})")


# -- one measurement ----------------------------------------------------------------------

def run_client(run: Running, spec: dict) -> dict:
    spec = {"kind": run.kind, "host": HOST, "port": run.port, "path": run.path, **spec}
    proc = subprocess.Popen(["node", str(HERE / "client.mjs"), json.dumps(spec)], cwd=HERE,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    result: dict = {}
    marks: dict[str, tuple] = {}
    deadline = time.monotonic() + spec["limit"] + 15
    try:
        for line in proc.stdout:
            ev = json.loads(line)
            kind = ev.pop("event")
            if kind == "mark":
                pids = run.server_pids()
                marks[ev["name"]] = (time.monotonic(), cpu_seconds(pids), cpu_seconds([run.device.pid]),
                                     ev["cpu"], ev["t"])
                result[f"processes_{ev['name']}"] = len(pids)
                proc.stdin.write("\n")
                proc.stdin.flush()
            elif kind == "pause":
                pids = run.server_pids()
                result[f"pss_{ev['name']}_kib"] = pss_kib(pids)
                result[f"processes_{ev['name']}"] = len(pids)
                proc.stdin.write("\n")
                proc.stdin.flush()
                proc.stdin.write("\n")
                proc.stdin.flush()
            elif kind == "result":
                result.update(ev)
            elif kind == "error":
                result["error"] = ev["error"]
            if time.monotonic() > deadline:
                result["error"] = "client did not finish in time"
                break
    finally:
        if proc.poll() is None:
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    if "start" in marks and "stop" in marks:
        (w0, s0, d0, c0, t0), (w1, s1, d1, c1, t1) = marks["start"], marks["stop"]
        wall = max(1e-6, (t1 - t0) / 1000)
        result["server_cpu"] = (s1 - s0) / wall  # cores: 1.0 is one core busy
        result["device_cpu"] = (d1 - d0) / wall
        result["client_cpu"] = ((c1["user"] + c1["system"]) - (c0["user"] + c0["system"])) / 1e6 / wall
    return result


# -- workloads --------------------------------------------------------------------------

WORKERS = os.cpu_count() or 2  # W3 load client threads: the client must not be the limit


def workloads(quick: bool) -> dict[str, dict]:
    q = quick
    return {
        "w1": {"workload": "w1", "count": 3000 if q else 20000, "warmup": 200 if q else 1000, "seconds": 10, "limit": 60},
        "w2": {"workload": "w2", "count": 10000 if q else 50000, "window": 1000, "seconds": 30 if q else 60, "limit": 90},
        "w3-10": {"workload": "w3", "clients": 10, "lines": 5000 if q else 20000, "seconds": 30 if q else 60,
                  "workers": WORKERS, "limit": 120},
        "w3-100": {"workload": "w3", "clients": 100, "lines": 2000 if q else 20000, "seconds": 30 if q else 90,
                   "workers": WORKERS, "limit": 150},
        "w4": {"workload": "w4", "clients": 200 if q else 1000, "senders": 200 if q else 1000, "hold": 1 if q else 5,
               "connect_seconds": 60, "parallel": 100, "seconds": 60, "limit": 200},
        "w4-10k": {"workload": "w4", "clients": 2000 if q else 10000, "senders": 100, "hold": 1 if q else 5,
                   "connect_seconds": 120, "parallel": 200, "seconds": 120, "limit": 300},
        # devices: also --w5-devices, --w5-idle, --w5-active; fds: the open files it needs per process
        "w5": {"workload": "w5", "devices": 100 if q else 1000, "idle": 5 if q else 20, "active": 5 if q else 30,
               "connect_seconds": 120, "parallel": 100, "drain": 10, "limit": 300, "fds": (100 if q else 1000) * 2},
    }


ONLY = {"w4-10k": ("gateway",),  # 10,000 processes per target is not a test of anything
        "w5": ("gateway",)}  # devices in a config file: only the gateway has them


def measure(name: str, target: str, spec: dict, bins, logs) -> dict:
    if spec["workload"] == "w5":
        return measure_w5(target, spec, logs)
    run = start_target(target, bins, logs)
    try:
        res = run_client(run, spec)
    finally:
        run.stop()
    return res


# -- W5: many devices, idle then active --------------------------------------------------

CLK_TCK = os.sysconf("SC_CLK_TCK")


class Lines:
    """A child's stdout lines through a queue, so that every read has a deadline."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.proc = proc
        self.q: queue.Queue = queue.Queue()
        threading.Thread(target=self._pump, name=f"lines-{proc.pid}", daemon=True).start()

    def _pump(self) -> None:
        for line in self.proc.stdout:  # ends at EOF: when the child exits
            self.q.put(line)
        self.q.put(None)

    def get(self, timeout: float) -> str | None:
        try:
            return self.q.get(timeout=max(0.01, timeout))
        except queue.Empty:
            return None

    def json(self, timeout: float) -> dict:
        line = self.get(timeout)
        if line is None:
            raise RuntimeError(f"no answer from pid {self.proc.pid} within {timeout:.0f} s")
        return json.loads(line)


def proc_status(pid: int) -> dict[str, str]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, val = line.partition(":")
        out[key] = val.strip()
    return out


def stat_cpu_seconds(pid: int) -> float:
    """utime + stime of /proc/PID/stat: every thread of the process, live or ended (10 ms ticks)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def gateway_sample(pid: int) -> dict:
    st = proc_status(pid)
    return {"threads": int(st["Threads"]), "tasks": len(os.listdir(f"/proc/{pid}/task")),
            "cpu": stat_cpu_seconds(pid), "cpu_sched": cpu_seconds([pid]), "t": time.monotonic(),
            "rss_kib": int(st["VmRSS"].split()[0]), "pss_kib": pss_kib([pid])}


def w5_config(path: Path, port: int, dev_ports: list[int]) -> None:
    parts = [f'# W5: {len(dev_ports)} TCP devices (bench/perf/devices.py), made by bench/perf/run.py\n'
             f'[server]\nhost = "{HOST}"\nport = {port}\n']
    parts += [f'[[device]]\nname = "dev{i}"\nurl = "tcp://{HOST}:{p}"\n' for i, p in enumerate(dev_ports)]
    path.write_text("\n".join(parts))


def start_devices(n: int, limit: float, python: str | None = None, *options: str) -> tuple[subprocess.Popen, Lines, list]:
    """devices.py with `n` devices (`options`: its other flags); its ports once all listen."""
    devices = subprocess.Popen([python or sys.executable, str(HERE / "devices.py"), "--count", str(n),
                                "--limit", str(limit), *options], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               text=True, start_new_session=True)
    out = Lines(devices)
    try:
        return devices, out, out.json(60)["ports"]
    except Exception:
        stop(devices)
        raise


def tell(devices: subprocess.Popen, out: Lines, command: str, timeout: float) -> dict:
    """One command to devices.py, and its answer."""
    devices.stdin.write(command + "\n")
    devices.stdin.flush()
    return out.json(timeout)


def start_gateway_config(target: str, config: Path, port: int, logs: Path, tag: str) -> subprocess.Popen:
    """The gateway of `target` (gateway, gateway@DIR, gateway-nowsaccel) on a config file."""
    root = Path(target.split("@", 1)[1]) if "@" in target else GATEWAY_ROOT
    cmd = [GATEWAY_PYTHON, str(root / "run_gateway.py"), "--config", str(config), "--port", str(port)]
    if target == "gateway-nowsaccel":
        cmd = [GATEWAY_PYTHON, "-c", "import runpy, sys; sys.modules['wsaccel'] = None; "
               "sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')", *cmd[1:]]
    logfile = open(logs / f"{target.split('@')[0]}-{tag}.log", "a")
    return subprocess.Popen(cmd, cwd=root, stdout=logfile, stderr=subprocess.STDOUT, start_new_session=True)


def wait_connected(port: int, n: int, seconds: float, server: subprocess.Popen) -> int:
    """Poll /healthz until `n` devices are connected or `seconds` pass; how many are."""
    deadline = time.monotonic() + seconds
    connected = 0
    while time.monotonic() < deadline and server.poll() is None:
        try:
            with urllib.request.urlopen(f"http://{HOST}:{port}/healthz", timeout=5) as r:
                states = json.load(r)["devices"]
            connected = sum(v == "connected" for v in states.values())
            if connected >= n:
                break
        except OSError:
            pass
        time.sleep(0.25)
    return connected


def finish(proc: subprocess.Popen | None) -> None:
    """A load client: close its stdin and let it end, else kill it."""
    if proc is None:
        return
    try:
        proc.stdin.close()
        proc.wait(10)
    except (OSError, subprocess.TimeoutExpired):
        proc.kill()
        proc.wait()


def active_window(res: dict, pid: int, devices: subprocess.Popen, dev_out: Lines, cspec: dict, active: int,
                  limit: float, started: list, stamp: bool = False) -> None:
    """client.mjs's W5 clients on the gateway `pid` (spec `cspec`; the client is appended
    to `started` for the caller to finish): once they are all open, every device sends a
    line a second for `active` s; the gateway's CPU, RSS, and what the clients got go into `res`."""
    client = subprocess.Popen(["node", str(HERE / "client.mjs"), json.dumps(cspec)], cwd=HERE,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    started.append(client)
    out = Lines(client)
    deadline = time.monotonic() + limit
    for _ in range(100):  # a few events: pause, result or error
        ev = out.json(deadline - time.monotonic())
        kind = ev.pop("event")
        if kind == "pause":
            res["clients_opened"], res["hellos"] = ev.get("opened"), ev.get("hellos")
            a, c0 = gateway_sample(pid), cpu_seconds([client.pid])
            done = tell(devices, dev_out, f"START {active}{' stamp' if stamp else ''}", active + 60)
            b, c1 = gateway_sample(pid), cpu_seconds([client.pid])
            wall = b["t"] - a["t"]
            res.update(active_cpu_s=b["cpu"] - a["cpu"], active_wall=wall,
                       active_cpu_pct=(b["cpu"] - a["cpu"]) / wall * 100,
                       server_cpu=(b["cpu_sched"] - a["cpu_sched"]) / wall, client_cpu=(c1 - c0) / wall,
                       sent=sum(done["sent"]), unsent=done["unsent"], device_late_ms=done["late_ms"],
                       threads_active=b["threads"], rss_active_kib=b["rss_kib"], pss_active_kib=b["pss_kib"])
            client.stdin.write(json.dumps({"sent": done["sent"]}) + "\n")
            client.stdin.flush()
        elif kind == "result":
            ev.pop("devices", None)
            res.update(ev)
            return
        elif kind == "error":
            res["error"] = ev["error"]
            return
    res["error"] = "client: too many events"


def measure_w5(target: str, spec: dict, logs: Path) -> dict:
    n, idle, active = spec["devices"], spec["idle"], spec["active"]
    res: dict = {"devices": n, "idle_seconds": idle, "active_seconds": active}
    devices = server = None
    started: list = []
    try:
        devices, dev_out, dev_ports = start_devices(n, spec["limit"])
        port = free_port()
        config = logs / f"w5-{n}.toml"
        w5_config(config, port, dev_ports)
        t0 = time.monotonic()
        server = start_gateway_config(target, config, port, logs, "w5")
        pid = server.pid
        # 1. every device connected, within the deadline
        connected = wait_connected(port, n, spec["connect_seconds"], server)
        res["devices_connected"] = connected
        res["start_seconds"] = time.monotonic() - t0
        if connected != n:
            raise RuntimeError(f"{connected} of {n} devices connected after {spec['connect_seconds']} s "
                               f"(gateway {'exited' if server.poll() is not None else 'running'})")
        # 2. idle: nothing is sent to or by anyone
        a = gateway_sample(pid)
        time.sleep(idle)
        b = gateway_sample(pid)
        wall = b["t"] - a["t"]
        res.update(threads=b["threads"], tasks=b["tasks"], threads_start=a["threads"],
                   idle_cpu_s=b["cpu"] - a["cpu"], idle_cpu_sched_s=b["cpu_sched"] - a["cpu_sched"],
                   idle_wall=wall, rss_kib=b["rss_kib"], pss_kib=b["pss_kib"])
        # 3. active: a json client per device, a line a second from every device
        cspec = {"workload": "w5", "kind": "gateway", "host": HOST, "port": port, "path_prefix": "/ws/dev",
                 "devices": n, "max_lines": active + 5, "parallel": spec["parallel"],
                 "connect_seconds": spec["connect_seconds"], "seconds": spec["drain"], "limit": spec["limit"]}
        active_window(res, pid, devices, dev_out, cspec, active, spec["limit"], started)
    except Exception as exc:  # reported in the table, not fatal
        res["error"] = str(exc)
    finally:
        for client in started:
            finish(client)
        stop(server, 30)
        stop(devices)
    return res


# -- the table ----------------------------------------------------------------------------

def med(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def fmt(v, unit=""):
    if v is None:
        return "-"
    if isinstance(v, str):
        return v
    if abs(v) >= 1000:
        return f"{v:,.0f}{unit}"
    if abs(v) >= 10:
        return f"{v:.1f}{unit}"
    return f"{v:.3g}{unit}"


ROWS = [  # (workload, label, key, higher is better)
    ("w1", "W1 ping-pong round trips/s", "rate", True),
    ("w1", "W1 p50 latency ms", "p50_ms", False),
    ("w1", "W1 p99 latency ms", "p99_ms", False),
    ("w2", "W2 pipelined messages/s", "rate", True),
    ("w3-10", "W3 10 clients lines/s", "rate", True),
    ("w3-10", "W3 10 lost/dup/reordered (sum)", "errors", None),
    ("w3-100", "W3 100 clients lines/s", "rate", True),
    ("w3-100", "W3 100 lost/dup/reordered (sum)", "errors", None),
    ("w1", "W1 server CPU us per round trip", "us_per", False),
    ("w2", "W2 server CPU us per message", "us_per", False),
    ("w3-10", "W3 10 server CPU us per line delivered", "us_per", False),
    ("w3-100", "W3 100 server CPU us per line delivered", "us_per", False),
    ("w4", "W4 idle PSS MiB", "pss_idle", False),
    ("w4", "W4 PSS after echo MiB", "pss_echoed", False),
    ("w4", "W4 processes", "procs", None),
    ("w4", "W4 held idle / echoed (of clients)", "held4", None),
    ("w4-10k", "W4 10k idle PSS MiB", "pss_idle", False),
    ("w4-10k", "W4 10k held/alive/answered", "held", None),
    # W5 labels: {n} is the number of devices, {idle} the idle window's seconds
    ("w5", "W5 {n} idle devices: threads", "threads", False),
    ("w5", "W5 idle CPU s in {idle} s", "idle_cpu_s", False),
    ("w5", "W5 RSS MiB (idle)", "rss_mib", False),
    ("w5", "W5 PSS MiB (idle)", "pss_mib", False),
    ("w5", "W5 active gateway CPU %", "active_cpu_pct", False),
    ("w5", "W5 active lost/dup/reordered (sum)", "errors", None),
]


def value(res: dict, key: str):
    if "error" in res and key not in ("errors",):
        return None
    if key == "errors":
        return (res.get("lost"), res.get("duplicated"), res.get("reordered"))
    if key == "us_per":  # server CPU per unit of work: a round trip, a message, a line delivered
        n = res.get("round_trips") or res.get("messages") or res.get("delivered")
        cpu = res.get("server_cpu")
        return cpu * res["seconds"] / n * 1e6 if n and cpu is not None and res.get("seconds") else None
    if key == "pss_idle":
        return res.get("pss_idle_kib", 0) / 1024 or None
    if key == "pss_echoed":
        return res.get("pss_echoed_kib", 0) / 1024 or None
    if key == "procs":
        return res.get("processes_idle")
    if key == "held4":
        return f"{res.get('opened', 0) - res.get('closed_while_idle', 0)}/{res.get('answered')} of {res.get('clients')}"
    if key in ("rss_mib", "pss_mib"):
        return res.get(key[:3] + "_kib", 0) / 1024 or None
    if key == "held":
        return f"{res.get('opened')}/{res.get('alive')}/{res.get('answered')}of{res.get('senders')}"
    return res.get(key)


def table(results: dict, targets: list[str], names: list[str]) -> list[str]:
    cols = targets
    ratio_cols = [(t, b) for t in ("gateway",) if t in cols for b in ("websockify", "websocketd", "raw") if b in cols]
    head = ["metric (median)"] + cols + [f"{a}/{b}" for a, b in ratio_cols]
    rows = [head]
    for wl, label, key, higher in ROWS:
        if wl not in names:
            continue
        if "{" in label:  # W5: the sizes it ran with
            first = next((r for t in cols for r in results.get((wl, t), [])), {})
            label = label.format(n=f"{first.get('devices', '?'):,}", idle=first.get("idle_seconds", "?"))
        row = [label]
        meds = {}
        for t in cols:
            runs = results.get((wl, t), [])
            vals = [value(r, key) for r in runs]
            if not runs:
                row.append("n/a")
                continue
            if key == "errors":  # summed over the repetitions
                if any(v[0] is None for v in vals):
                    row.append("error")
                else:
                    row.append("/".join(str(sum(v[i] for v in vals)) for i in range(3)))
                continue
            if any(isinstance(v, str) for v in vals):
                row.append(" ".join(sorted(set(v for v in vals if isinstance(v, str)))) or "-")
                continue
            m = med(vals)
            meds[t] = m
            row.append(fmt(m))
        for a, b in ratio_cols:
            if higher is None or meds.get(a) is None or not meds.get(b):
                row.append("")
            else:
                row.append(f"{meds[a] / meds[b]:.2f}x")
        rows.append(row)
    # CPU shares: where the time went, and whether the load client was the limit.
    for wl in names:
        for who in ("server_cpu", "client_cpu"):
            row = [f"{wl} {'server' if who == 'server_cpu' else 'load client'} CPU (cores)"]
            for t in cols:
                m = med([r.get(who) for r in results.get((wl, t), [])])
                row.append(fmt(m))
            row += [""] * len(ratio_cols)
            rows.append(row)
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    out = []
    for k, r in enumerate(rows):
        out.append("  ".join(c.ljust(widths[i]) if i == 0 else c.rjust(widths[i]) for i, c in enumerate(r)))
        if k == 0:
            out.append("  ".join("-" * w for w in widths))
    return out


def verdicts(results: dict) -> list[str]:
    def m(wl, t, key):
        return med([value(r, key) for r in results.get((wl, t), [])])

    out = []

    def check(label, ok, detail):
        out.append(f"  [{'PASS' if ok else 'FAIL' if ok is not None else 'n/a '}] {label}: {detail}")

    a, b = m("w1", "gateway", "rate"), m("w1", "websockify", "rate")
    if a and b:
        check("W1 round trips/s >= 1.1x websockify", a >= 1.1 * b, f"{a / b:.2f}x")
    a, b = m("w1", "gateway", "p99_ms"), m("w1", "websockify", "p99_ms")
    if a and b:
        check("W1 p99 no worse than websockify", a <= b, f"{a:.3f} ms vs {b:.3f} ms")
    a, b = m("w2", "gateway", "rate"), m("w2", "websocketd", "rate")
    if a and b:
        check("W2 messages/s >= 1.2x websocketd", a >= 1.2 * b, f"{a / b:.2f}x")
    a, b = m("w3-100", "gateway", "rate"), m("w3-100", "websocketd", "rate")
    if a and b:
        lost = sum(r.get("lost", 1) for r in results.get(("w3-100", "gateway"), []))
        check("W3 100 clients lines/s >= 2x websocketd, 0 lost", a >= 2 * b and lost == 0,
              f"{a / b:.2f}x, {lost} lost over all repetitions")
    a = m("w4", "gateway", "pss_idle")
    if a:
        n = results[("w4", "gateway")][0].get("clients")
        check(f"W4 {n} idle connections in <= 30 MiB PSS", a <= 30, f"{a:.1f} MiB")
    runs = results.get(("w4-10k", "gateway"), [])
    if runs:
        ok = all(r.get("opened") == r.get("clients") and r.get("alive") == r.get("clients") and r.get("echoed")
                 for r in runs)
        check(f"W4 {runs[0].get('clients')} connections held and echoing", ok,
              "; ".join(f"{r.get('opened')} opened, {r.get('alive')} alive, {r.get('answered')}/{r.get('senders')} echoed, "
                        f"{value(r, 'pss_idle') or 0:.1f} MiB" for r in runs))
    for t in sorted({k[1] for k in results if k[0] == "w5"}):
        runs = results[("w5", t)]
        who = "" if t == "gateway" else f" ({t})"
        n, idle = runs[0].get("devices"), runs[0].get("idle_seconds") or 20
        if any("error" in r for r in runs):
            check(f"W5{who} {n} devices", False, "; ".join(r["error"] for r in runs if "error" in r))
        a = m("w5", t, "threads")
        if a is not None:
            check(f"W5{who} {n} idle devices in <= 40 threads", a <= 40, f"{a:.0f} threads")
        a = m("w5", t, "idle_cpu_s")
        if a is not None:
            check(f"W5{who} idle CPU <= 0.2 s per 20 s", a * 20 / idle <= 0.2,
                  f"{a:.2f} s in {idle} s ({a * 20 / idle:.2f} s per 20 s)")
        a = m("w5", t, "rss_mib")
        if a is not None:
            check(f"W5{who} {n} idle devices in <= 150 MiB RSS", a <= 150,
                  f"{a:.1f} MiB RSS, {m('w5', t, 'pss_mib') or 0:.1f} MiB PSS")
        ok = [r for r in runs if r.get("lost") is not None]
        if ok:
            lost = sum(r["lost"] for r in ok)
            check(f"W5{who} active: 0 lost", lost == 0 and all(r.get("sent") for r in ok),
                  f"{lost} lost, {sum(r['duplicated'] for r in ok)} duplicated, {sum(r['reordered'] for r in ok)} "
                  f"reordered of {sum(r['sent'] for r in ok):,} lines sent ({sum(r.get('unsent', 0) for r in ok)} "
                  f"not sent: device not connected), over all repetitions")
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="small counts and one repetition (well under a minute)")
    p.add_argument("--reps", type=int, help="repetitions (default 3, 1 with --quick)")
    p.add_argument("--targets", default="raw,gateway,websockify,websocketd",
                   help="comma-separated: raw, gateway, websockify, websocketd, gateway-nowsaccel, "
                   "gateway@DIR (the gateway of another checkout, for before/after comparisons)")
    p.add_argument("--workloads", help="comma-separated: w1, w2, w3-10, w3-100, w4, w4-10k, w5 "
                   "(default: all; --quick leaves out w4-10k)")
    p.add_argument("--json", metavar="FILE", help="also write every measurement to FILE")
    p.add_argument("--python", metavar="PATH", help="the interpreter to run the gateway on (default: the one "
                   "websockify runs on, so both Python servers are measured on the same Python)")
    p.add_argument("--w5-devices", type=int, metavar="N", help="W5's devices (default 1,000; --quick: 100)")
    p.add_argument("--w5-idle", type=int, metavar="S", help="W5's idle window in seconds (default 20; --quick: 5)")
    p.add_argument("--w5-active", type=int, metavar="S", help="W5's active window in seconds (default 30; --quick: 5)")
    p.add_argument("--gateway-root", metavar="DIR", type=Path, default=ROOT,
                   help="run the gateway of another checkout (before/after comparisons)")
    args = p.parse_args()
    global GATEWAY_ROOT, GATEWAY_PYTHON
    GATEWAY_ROOT = args.gateway_root.resolve()

    specs = workloads(args.quick)
    for key, val in (("devices", args.w5_devices), ("idle", args.w5_idle), ("active", args.w5_active)):
        if val is not None:
            specs["w5"][key] = val
    specs["w5"]["fds"] = specs["w5"]["devices"] * 2
    names = args.workloads.split(",") if args.workloads else [n for n in specs if not (args.quick and n == "w4-10k")]
    for n in names:
        if n not in specs:
            p.error(f"unknown workload {n!r}")
    reps = args.reps or (1 if args.quick else 3)
    targets = ensure_apt(args.targets.split(","))
    ensure_node()
    limit = raise_fd_limit(max(s.get("fds", s.get("clients", 0) * 2) for n, s in specs.items() if n in names) + 1000)
    tmp = Path(tempfile.mkdtemp(prefix="gateway-bench-"))
    bins = build(tmp)
    if any(t.startswith("gateway") for t in targets):
        GATEWAY_PYTHON = gateway_python(args.python, tmp)
    log(f"built {', '.join(str(b) for b in bins.values())}; open-file limit {limit}; logs in {tmp}")
    started = time.monotonic()
    results: dict[tuple[str, str], list[dict]] = {}
    try:
        for rep in range(reps):
            for wl in names:
                order = targets[rep % len(targets):] + targets[:rep % len(targets)]  # vary who goes first
                for t in order:
                    if wl in ONLY and not t.startswith(ONLY[wl]):
                        continue
                    t0 = time.monotonic()
                    try:
                        res = measure(wl, t, specs[wl], bins, tmp)
                    except Exception as exc:  # a target that fails to start is reported, not fatal
                        res = {"error": str(exc)}
                    results.setdefault((wl, t), []).append(res)
                    brief = {k: (round(v, 3) if isinstance(v, float) else v) for k, v in res.items()
                             if k in ("rate", "p50_ms", "p99_ms", "lost", "duplicated", "reordered", "complete",
                                      "pss_idle_kib", "answered", "opened", "alive", "error", "server_cpu", "client_cpu",
                                      "threads", "idle_cpu_s", "rss_kib", "pss_kib", "active_cpu_pct", "sent")}
                    log(f"rep {rep + 1}/{reps} {wl:7} {t:18} {time.monotonic() - t0:5.1f} s  {json.dumps(brief)}")
    finally:
        if args.json:
            Path(args.json).write_text(json.dumps({f"{k[0]} {k[1]}": v for k, v in results.items()}, indent=1))
    shown = [t for t in targets if any(k[1] == t for k in results)]
    node = subprocess.run(["node", "--version"], capture_output=True, text=True).stdout.strip()
    gw_py = subprocess.run([GATEWAY_PYTHON, "-c", "import sys; print(sys.version.split()[0], sys.base_prefix)"],
                           capture_output=True, text=True).stdout.strip()
    print(f"\nbench/perf: {reps} repetition(s){' (quick)' if args.quick else ''}, {os.cpu_count()} cores, "
          f"Node {node}, {time.monotonic() - started:.0f} s")
    print(f"Python: the gateway on {gw_py or GATEWAY_PYTHON} ({GATEWAY_PYTHON}); websockify on "
          f"{websockify_python() or 'n/a'}")
    print("W3: the gateway fans ONE device stream out to every client; websockify, websocketd and raw have no "
          "fan-out, so there each client drives its own device connection with its own GO.")
    if any(k[1] == "websockify" for k in results if k[0] == "w4"):
        print("W4: websockify forks a process per client and select()s in it: past about 500 clients its children "
              "fail ('filedescriptor out of range in select()'), so it holds fewer than asked.")
    print("CPU rows: cores busy during the measured window (1.0 = one core); the load client is Node's ws"
          f" (bufferutil: {any(r.get('bufferutil') for v in results.values() for r in v)}).\n")
    for line in table(results, shown, names):
        print(line)
    print("\ntargets:")
    for line in verdicts(results):
        print(line)
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
