"""firmware_notes/micropython/gateway_device.py on MicroPython's unix port built with
single-precision floats, as on the ESP8266 (tests/firmware_build.py): each `run_*` link
function through a real gateway with websocket-client, MQTT through umqtt.simple and a real
mosquitto, and the clock and number handling where MicroPython differs from CPython.
Stand-ins for `network` and `machine` are in tests/firmware_stubs/."""

from __future__ import annotations

import json
import subprocess

import pytest
from conftest import wait_for
from firmware_build import MICROPYTHON_SCRIPT, firmware_hosts, micropython_binary
from firmware_run import Board, Client, through_the_gateway
from mqtt_broker import Mosquitto

HOSTS = firmware_hosts()
pytestmark = pytest.mark.skipif(HOSTS is None, reason="no ../shared/firmware-hosts: MicroPython is not built here")


@pytest.fixture
def broker(tmp_path):
    mosquitto = Mosquitto(tmp_path / "mosquitto").start()
    yield mosquitto
    mosquitto.stop()


@pytest.fixture
def board(tmp_path):
    started = []

    def start(mode: str, broker=None, **settings) -> Board:
        b = Board.micropython(HOSTS, mode, tmp_path, broker, **settings)
        started.append(b)
        return b.start()

    yield start
    for b in started:
        b.stop()


@pytest.mark.parametrize("mode", ["serial", "tcp-server", "tcp-client", "udp", "mqtt"])
def test_script_through_the_gateway(mode, board, start_gateway, broker):
    through_the_gateway(board(mode, broker), start_gateway, mode, "script")


def test_mqtt_broker_that_refuses_then_restarts(board, start_gateway, tmp_path):
    """umqtt raises MQTTException (not OSError) when the broker refuses: the script retries."""
    broker = Mosquitto(tmp_path / "refusing")
    broker.config.write_text(broker.config.read_text().replace("allow_anonymous true", "allow_anonymous false"))
    broker.start()
    try:
        esp = board("mqtt", broker)
        wait_for(lambda: esp.output().count("# mqtt link lost: MQTTException") >= 2, 15,
                 what="two refused connections")
        assert esp.alive(), esp.output()[-2000:]
        broker.config.write_text(broker.config.read_text().replace("allow_anonymous false", "allow_anonymous true"))
        broker.restart()
        gw = start_gateway(devices=[f"esp={esp.url}"], wait_connected=False)
        with Client(gw) as client:
            wait_for(client.pongs, 15, what="a PONG once the broker lets it in")
        broker.restart()  # the broker restarts under both: both come back
        with Client(gw) as client:
            wait_for(client.pongs, 15, what="a PONG after the broker restarted")
        assert esp.alive()
    finally:
        broker.stop()


def run_micropython(code: str) -> list:
    """Run `code` on the f32 build with gateway_device importable; its last line is JSON."""
    binary = micropython_binary(HOSTS)
    prelude = f"import sys\nsys.path.append({str(MICROPYTHON_SCRIPT.parent)!r})\nimport gateway_device as gd\n"
    proc = subprocess.run([str(binary), "-c", prelude + code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.splitlines()[-1])


def test_telemetry_schedule_after_195_days_on_single_precision_floats():
    """A float of seconds since boot steps by 2 s after 2**24 s (194 days): the schedule,
    kept in whole milliseconds, sends one line a second at 195 days too."""
    lines, uptime = run_micropython(
        "now = [0]\n"
        "d = gd.Device(clock=lambda: now[0])\n"
        "now[0] = 195 * 86400 * 1000\n"
        "d.telemetry_due()\n"
        "n = 0\n"
        "for ms in range(10000):\n"
        "    now[0] += 1\n"
        "    if d.telemetry_due() is not None: n += 1\n"
        "print('[%d, %s]' % (n, d.uptime()))\n")
    assert lines == 10
    assert uptime == 195 * 86400 + 10


def test_a_poll_exactly_one_interval_late_sends_one_line():
    got = run_micropython(
        "now = [0]\n"
        "d = gd.Device(clock=lambda: now[0])\n"
        "now[0] = 2000\n"  # due at 1000, polled at 2000: exactly one interval late
        "a = d.telemetry_due() is not None\n"
        "b = d.telemetry_due() is not None\n"
        "now[0] = 2999\n"
        "c = d.telemetry_due() is not None\n"
        "now[0] = 3000\n"
        "e = d.telemetry_due() is not None\n"
        "print('[%d, %d, %d, %d]' % (a, b, c, e))\n")
    assert got == [1, 0, 0, 1]


def test_numbers_and_text_as_the_simulator_reads_them():
    """float(".") and float("e3") are 0.0 on MicroPython; its decoder lets surrogates and
    overlong forms through; "%.1f" rounds 51.25 up (CPython: 51.2)."""
    got = run_micropython(
        "d = gd.Device(clock=lambda: 0)\n"
        "out = [d.handle(x)[0] for x in ('SET interval .', 'SET interval e3', 'SET interval 1_0',"
        " 'GO 1_0', 'GO \\u0663', 'SET interval 2.5')]\n"
        "out += [gd.decode(b'\\xed\\xa0\\x80'), gd.decode(b'\\xc0\\x80'), gd.decode(b'\\xf4\\x90\\x80\\x80'),"
        " gd.decode(b'ok \\xc3\\xa9'), '%.1f' % 51.25]\n"
        "import json\nprint(json.dumps(out))\n")
    assert got == ["ERR bad interval: .", "ERR bad interval: e3", "ERR bad interval: 1_0", "ERR bad count: 1_0",
                   "ERR bad count: \u0663", "OK interval 2.5", "\ufffd" * 3, "\ufffd" * 2, "\ufffd" * 4, "ok é",
                   "51.3"]
    assert b"\xed\xa0\x80".decode("utf-8", "replace") == "\ufffd" * 3  # as CPython replaces them
    assert b"\xf4\x90\x80\x80".decode("utf-8", "replace") == "\ufffd" * 4
