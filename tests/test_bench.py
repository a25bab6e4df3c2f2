"""The benchmarks still run: W6 (bench/perf/fleet.py) at tiny counts, each scenario once.

Real processes as in the full run: gateways from this checkout, bench/perf/devices.py's
TCP and MQTT devices, a real mosquitto, Node's `ws` clients (bench/perf/client.mjs; the
bench runs `npm ci` in bench/perf when its node_modules is missing). The figures are not
judged here (the machine may be busy), only that every scenario completes and counts
right: every line delivered, replies across gateways, broker connections.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FLEET = ROOT / "bench" / "perf" / "fleet.py"


def fleet(tmp_path: Path, scenario: str, *extra: str) -> dict:
    """fleet.py --quick on one scenario; its result (from --json), after checking the table."""
    out = tmp_path / f"{scenario}.json"
    proc = subprocess.run([sys.executable, str(FLEET), "--quick", "--scenarios", scenario, "--seconds", "3",
                           "--idle", "1", "--python", sys.executable, "--json", str(out), *extra],
                          cwd=ROOT, capture_output=True, text=True, timeout=100)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "goals:" in proc.stdout and "[ERR ]" not in proc.stdout, proc.stdout + proc.stderr[-3000:]
    res = json.loads(out.read_text())[f"{scenario} gateway"]
    assert "error" not in res, res
    return res


def assert_every_line(res: dict, devices: int, seconds: int) -> None:
    assert res["devices_connected"] == devices and res["opened"] == devices
    assert res["sent"] == devices * seconds and res["unsent"] == 0
    assert (res["lost"], res["duplicated"], res["reordered"]) == (0, 0, 0), res.get("lost_at")
    assert res["delivered"] == res["sent"] and res["stamped"] == res["sent"]  # a latency for every line
    assert 0 <= res["p50_ms"] <= res["p99_ms"] <= res["max_ms"]


def test_one_gateway_tcp_devices_latency_and_events(tmp_path):
    res = fleet(tmp_path, "one")
    assert_every_line(res, 20, 3)
    assert res["events_alive"] and res["events_types"].get("hello") == 1
    assert res["rss_active_kib"] > 0 and res["active_cpu_pct"] >= 0


def test_memory_per_device(tmp_path):
    res = fleet(tmp_path, "memory", "--history", "200")
    assert res["counts"] == [0, 5, 10, 20]
    assert all(full >= idle for idle, full in zip(res["rss_idle_kib"], res["rss_full_kib"]))
    assert res["bytes_per_line"] > 0 and res["bytes_per_line_clients"] > 0
    assert res["kib_per_device_full"] > res["kib_per_device_idle"]


def test_three_gateways_one_broker_discovery(tmp_path):
    res = fleet(tmp_path, "three")
    assert set(res["listed_s"]) == {"A", "B", "C"} and res["remote_owner_ok"] is True
    assert res["request_replies"] == res["request_sent"] == 20, res.get("request_errors")
    assert res["request_p50_ms"] < 20  # no 40 ms delayed ACK on either side of the broker (TCP_NODELAY)
    assert res["broker_connections"] == 3 and res["broker_connections_per_gateway"] == [1, 1, 1]


def test_a_thousand_mqtt_devices_share_one_connection(tmp_path):
    # 1,000: devices attaching while the connection comes up were never subscribed (a race
    # in gateway/broker.py that 20 devices do not hit); each sends one line
    res = fleet(tmp_path, "mqtt", "--devices", "1000", "--seconds", "1", "--connect-seconds", "30")
    assert_every_line(res, 1000, 1)
    assert res["gateway_broker_connections"] == 1 and res["broker_connections"] == 2  # + devices.py's
