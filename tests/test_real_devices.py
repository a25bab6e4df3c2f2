"""The standalone simulator on a real TCP and UDP socket, bridged by a gateway, both ways."""

from __future__ import annotations

import threading

import pytest
import websocket
from conftest import ws_url

from gateway.simulator.serve import SimulatorServer


@pytest.fixture
def simulator():
    servers = []

    def start(listen: str) -> SimulatorServer:
        server = SimulatorServer(listen, interval=0)
        thread = threading.Thread(target=server.serve, name="sim-serve")
        thread.start()
        servers.append((server, thread))
        return server

    yield start
    for server, thread in servers:
        server.stop()
        thread.join(5)
        assert not thread.is_alive()


@pytest.mark.parametrize("kind, burst", [("tcp", 5000), ("udp", 100)])
def test_device_bridged_both_ways(start_gateway, simulator, kind, burst):
    sim = simulator(f"{kind}://127.0.0.1:0")
    gw = start_gateway(devices=[f"esp={sim.url}"])
    assert gw.links["esp"].wait_connected(5)
    ws = websocket.create_connection(ws_url(gw, "esp"), timeout=5)
    ws.send("PING")
    assert ws.recv() == "PONG"
    ws.send("ECHO héllo wörld")
    assert ws.recv() == "héllo wörld"
    ws.send(f"GO {burst}")
    assert [ws.recv().split()[0] for _ in range(burst)] == [f"t={i}" for i in range(1, burst + 1)]
    ws.close()
