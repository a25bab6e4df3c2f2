"""GET /metrics: parsed with prometheus_client's own parser, and scraped by a real
Prometheus server (Debian's `prometheus`, installed by tests/run.sh) whose HTTP API must
then return the gateway_telemetry series."""

from __future__ import annotations

import json
import subprocess
import time
import urllib.parse
import urllib.request

import pytest
import websocket
from prometheus_client.parser import text_string_to_metric_families

from conftest import wait_for, ws_url
from gateway.codec import Line
from gateway.hub import Record
from gateway.sinks import TelemetryCache
from mqtt_broker import find_binary, free_port, stop_process, wait_port


def scrape(gw) -> tuple[str, str]:
    with urllib.request.urlopen(gw.url + "/metrics", timeout=5) as resp:
        return resp.read().decode(), resp.headers["Content-Type"]


def samples(gw) -> dict[tuple, float]:
    """{(sample name, (label, value), ...): value} of one scrape."""
    out = {}
    for family in text_string_to_metric_families(scrape(gw)[0]):
        for s in family.samples:
            out[(s.name, *sorted(s.labels.items()))] = s.value
    return out


def value(gw, name: str, **labels) -> float | None:
    return samples(gw).get((name, *sorted(labels.items())))


def ws_json(gw, device="sim"):
    ws = websocket.create_connection(ws_url(gw, device, format="json"), timeout=5)
    assert json.loads(ws.recv())["type"] == "hello"
    return ws


def request(ws, line: str) -> str:
    ws.send(json.dumps({"line": line, "id": 1, "reply": True}))
    while (msg := json.loads(ws.recv()))["type"] != "reply":
        pass
    return msg["line"]


def test_exposition_has_telemetry_and_the_gateways_own_numbers(start_gateway):
    gw = start_gateway()
    ws = ws_json(gw)
    temp = request(ws, "GET temp")
    assert request(ws, "LED ON") == "OK LED ON"
    body, ctype = scrape(gw)
    assert ctype.startswith("text/plain; version=0.0.4")
    got = samples(gw)
    assert got[("gateway_telemetry", ("device", "sim"), ("key", "temp"))] == float(temp.split("=")[1])
    assert got[("gateway_device_connected", ("device", "sim"))] == 1
    assert got[("gateway_device_state", ("device", "sim"), ("state", "connected"))] == 1
    assert got[("gateway_device_state", ("device", "sim"), ("state", "reconnecting"))] == 0
    assert got[("gateway_device_lines_out_total", ("device", "sim"))] == 2
    assert got[("gateway_device_lines_in_total", ("device", "sim"))] >= 2
    assert got[("gateway_device_clients", ("device", "sim"))] == 1
    assert got[("gateway_clients_connected",)] == 1
    assert got[("gateway_clients_total",)] == 1
    assert got[("gateway_frames_sent_total",)] >= 3
    for name in ("gateway_client_queue_overflows_total", "gateway_client_keepalive_drops_total",
                 "gateway_handshakes_refused_full_total", "gateway_device_reconnects_total"):
        assert any(key[0] == name for key in got), name
    assert got[("gateway_info", ("gateway_id", gw.gateway_id), ("run", gw.run_id))] == 1
    assert gw.gateway_id  # [server] gateway_id, or the host name
    assert ("process_resident_memory_bytes",) in got
    ws.close()
    wait_for(lambda: value(gw, "gateway_clients_connected") == 0, what="client count to drop")


def test_json_telemetry_flattens_booleans_count_strings_do_not(start_gateway):
    gw = start_gateway(["dev=loop://"])  # what a client writes comes back as a device line
    ws = websocket.create_connection(ws_url(gw, "dev"), timeout=5)
    ws.send('{"env": {"t": 20.5}, "on": true, "name": "kitchen"}')
    ws.recv()
    ws.send("rssi:-67, up=1")
    ws.recv()
    ws.close()
    got = samples(gw)
    telemetry = {dict(k[1:])["key"]: v for k, v in got.items() if k[0] == "gateway_telemetry"}
    assert telemetry == {"env.t": 20.5, "on": 1.0, "rssi": -67.0, "up": 1.0}


def test_a_lost_device_shows_reconnecting(start_gateway):
    gw = start_gateway([f"esp=tcp://127.0.0.1:{free_port()}"], wait_connected=False)  # nothing listens
    wait_for(lambda: value(gw, "gateway_device_state", device="esp", state="reconnecting") == 1,
             what="state reconnecting")
    assert value(gw, "gateway_device_connected", device="esp") == 0
    assert value(gw, "gateway_device_info", device="esp", kind="tcp") == 1


def record(device: str, seq: int, text: str) -> Record:
    return Record(device, seq, 1000.0 + seq, Line(text.encode(), b"\n", text, True))


def test_telemetry_cache_keeps_the_last_value_and_bounds_keys_and_lines():
    cache = TelemetryCache(pending=3, max_keys=2)
    cache.on_records("d", [record("d", 1, "a=1 b=2"), record("d", 2, "a=5"), record("d", 3, "hello")])
    assert cache.snapshot() == {"d": {"a": 5.0, "b": 2.0}}
    cache.on_records("d", [record("d", 4, "c=9 a=6")])  # a third key: refused, counted once
    cache.on_records("d", [record("d", 5, "c=10")])
    assert cache.snapshot() == {"d": {"a": 6.0, "b": 2.0}}
    assert cache.keys_refused == {"d": 1}
    # More lines between two scrapes than `pending`: the oldest are skipped, counted.
    cache.on_records("d", [record("d", i, f"a={i}") for i in range(6, 11)])
    assert cache.snapshot()["d"]["a"] == 10.0
    assert cache.lines_skipped == {"d": 2}
    assert cache.last_line_ts == {"d": 1010.0}


# -- a real Prometheus --------------------------------------------------------------------------


@pytest.fixture
def prometheus(tmp_path):
    """prometheus(target "host:port") -> the base URL of a Prometheus scraping it every 1 s."""
    binary = find_binary("prometheus", "/usr/bin/prometheus")
    procs = []

    def start(target: str) -> str:
        port = free_port()
        config = tmp_path / "prometheus.yml"
        config.write_text(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n"
            f"scrape_configs:\n  - job_name: gateway\n    static_configs:\n      - targets: ['{target}']\n"
        )
        log = tmp_path / "prometheus.log"
        with open(log, "ab") as out:
            proc = subprocess.Popen([binary, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                                     f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
                                    stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=tmp_path)
        procs.append(proc)
        wait_port("127.0.0.1", port, proc, log, timeout=20)
        return f"http://127.0.0.1:{port}"

    yield start
    for proc in procs:
        stop_process(proc)


def prom_query(base: str, query: str) -> list[dict]:
    url = f"{base}/api/v1/query?{urllib.parse.urlencode({'query': query})}"
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            answer = json.load(resp)
    except OSError:  # not ready yet (503 while starting)
        return []
    assert answer["status"] == "success", answer
    return answer["data"]["result"]


def test_prometheus_scrapes_the_gateway(start_gateway, prometheus):
    gw = start_gateway(["sim=sim://?interval=0.2"])
    host, port = gw.address
    base = prometheus(f"{host}:{port}")
    started = time.monotonic()
    result = wait_for(lambda: prom_query(base, 'gateway_telemetry{device="sim",key="temp"}'), 30,
                      interval=0.2, what="Prometheus to return gateway_telemetry")
    print(f"first gateway_telemetry sample in Prometheus after {time.monotonic() - started:.2f} s")
    (series,) = result
    assert series["metric"]["job"] == "gateway"
    assert 0 < float(series["value"][1]) < 100
    keys = {s["metric"]["key"] for s in prom_query(base, 'gateway_telemetry{device="sim"}')}
    assert keys == {"temp", "hum", "led", "uptime"}
    (up,) = prom_query(base, 'up{job="gateway"}')
    assert up["value"][1] == "1"
    assert prom_query(base, 'gateway_device_lines_in_total{device="sim"} > 0')
