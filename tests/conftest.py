"""Shared fixtures: a real gateway on 127.0.0.1 and a free port, and waiting helpers."""

from __future__ import annotations

import signal
import socket
import threading
import time
from dataclasses import replace
from urllib.parse import urlencode

import pytest

from gateway.config import Config, LimitsConfig, ServerConfig, apply_flags

GATEWAY_THREAD_PREFIXES = ("device:", "device-open", "WebSocketManager", "http:", "sim-",
                           "mqtt-sink", "recorder", "paho-mqtt-client-gateway-", "port-scan", "flash:", "discovery-")


def gateway_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith(GATEWAY_THREAD_PREFIXES)]


def wait_for(predicate, timeout: float = 5.0, interval: float = 0.01, what: str = "condition"):
    """Poll `predicate` until it returns something true, or fail after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def start_process(cmd: list[str], cwd, env: dict | None = None):
    """(process, base URL) of a gateway started as a process, once it printed
    "listening on http://127.0.0.1:PORT"."""
    import re
    import subprocess

    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    m = re.fullmatch(r"listening on (http://127\.0\.0\.1:\d+)\n", line)
    if not m:
        proc.kill()
        raise AssertionError(f"unexpected first line {line!r}; stderr: {proc.stderr.read()}")
    return proc, m.group(1)


def stop_process(proc) -> str | None:
    """SIGTERM a gateway started as a process; it must exit 0 within 10 s (killed if
    not). Its standard error, when that was piped."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    return proc.communicate()[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def metric(gw, name: str, **labels) -> float | None:
    """One sample from the gateway's /metrics, read with prometheus_client's parser."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    body = urllib.request.urlopen(gw.url + "/metrics", timeout=5).read().decode()
    for family in text_string_to_metric_families(body):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return None


def ws_url(gw, device: str = "sim", **params) -> str:
    host, port = gw.address
    query = f"?{urlencode(params)}" if params else ""
    return f"ws://{host}:{port}/ws/{device}{query}"


@pytest.fixture
def start_gateway():
    """start_gateway(devices=[...], limits={...}, server={...}) -> a started Gateway.

    Devices are `NAME=URL` strings as for `--device`; the default is one simulator
    with its periodic telemetry off, so tests see only the lines they asked for.
    """
    from gateway.app import Gateway

    started = []

    def start(devices=("sim=sim://?interval=0",), limits=None, server=None, wait_connected=True):
        config = Config(server=replace(ServerConfig(), **(server or {})), limits=replace(LimitsConfig(), **(limits or {})))
        config = apply_flags(config, "127.0.0.1", (server or {}).get("port", 0), list(devices))
        gw = Gateway(config).start()
        started.append(gw)
        if wait_connected:
            for link in gw.links.values():
                if link.config.kind in ("sim", "loop"):
                    assert link.wait_connected(5), f"device {link.name} did not connect"
        return gw

    yield start
    for gw in started:
        gw.shutdown()
    assert_no_gateway_threads()


def assert_no_gateway_threads(timeout: float = 5.0) -> None:
    try:
        wait_for(lambda: not gateway_threads(), timeout, what="gateway threads to end")
    except AssertionError:
        raise AssertionError(f"threads left after shutdown: {gateway_threads()}") from None


@pytest.fixture
def simulator():
    """simulator(listen, interval=0, **options) -> a standalone SimulatorServer
    (tcp://, udp:// or pty) serving in a thread "sim-serve", stopped and joined after."""
    from gateway.simulator.serve import SimulatorServer

    started = []

    def start(listen: str, interval: float = 0.0, **options):
        server = SimulatorServer(listen, interval, **options)
        thread = threading.Thread(target=server.serve, name="sim-serve")
        thread.start()
        started.append((server, thread))
        return server

    yield start
    for server, thread in started:
        server.stop()
        thread.join(5)
        assert not thread.is_alive(), "sim-serve did not stop"
