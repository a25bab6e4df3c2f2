"""firmware_notes/esp8266_gateway/esp8266_gateway.ino, built on the ESP8266 core's host
emulation (tests/firmware_build.py) in every LINK_MODE, driven through a real gateway with
websocket-client; MQTT through a real mosquitto (tests/mqtt_broker.py)."""

from __future__ import annotations

import pytest
from firmware_build import firmware_hosts
from firmware_run import Board, Client, through_the_gateway
from mqtt_broker import Mosquitto

HOSTS = firmware_hosts()
pytestmark = pytest.mark.skipif(HOSTS is None, reason="no ../shared/firmware-hosts: the firmware is not built here")


@pytest.fixture
def broker(tmp_path):
    mosquitto = Mosquitto(tmp_path / "mosquitto").start()
    yield mosquitto
    mosquitto.stop()


@pytest.fixture
def board(tmp_path):
    started = []

    def start(mode: str, broker=None) -> Board:
        b = Board.sketch(HOSTS, mode, tmp_path, broker)
        started.append(b)
        return b.start()

    yield start
    for b in started:
        b.stop()


@pytest.mark.parametrize("mode", ["serial", "tcp-server", "tcp-client", "udp", "mqtt"])
def test_sketch_through_the_gateway(mode, board, start_gateway, broker):
    through_the_gateway(board(mode, broker), start_gateway, mode, "sketch")


def test_udp_sketch_does_not_talk_to_itself(board, start_gateway):
    """Its first peer is the gateway's port, not its own: no answers to its own telemetry."""
    esp = board("udp")
    gw = start_gateway(devices=[f"esp={esp.url}"], wait_connected=False)
    with Client(gw) as client:
        client.next_telemetry()  # telemetry reaches the gateway before it said anything
        assert client.ask("PING") == ["PONG"]
        assert client.ask("GET led") == ["led=0"]
