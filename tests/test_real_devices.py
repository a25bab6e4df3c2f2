"""The standalone simulator on a real TCP and UDP socket, bridged by a gateway, both ways."""

from __future__ import annotations

import pytest
import websocket
from conftest import wait_for, ws_url


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


def test_udp_device_that_goes_silent_and_returns(start_gateway, simulator):
    sim = simulator("udp://127.0.0.1:0")
    port = int(sim.url.rsplit(":", 1)[1])
    gw = start_gateway(devices=[f"esp={sim.url}"])
    assert gw.links["esp"].wait_connected(5)
    ws = websocket.create_connection(ws_url(gw, "esp"), timeout=5)
    ws.send("PING")
    assert ws.recv() == "PONG"
    sim.stop()  # the device goes silent; its port closes
    wait_for(lambda: sim.sock is None, what="the simulator to stop")
    ws.send("PING")  # into the void: an ICMP port-unreachable comes back, counted
    ws.settimeout(0.5)
    with pytest.raises(websocket.WebSocketTimeoutException):
        ws.recv()
    assert gw.links["esp"].state.value == "connected"  # UDP has no link to lose
    simulator(f"udp://127.0.0.1:{port}")  # back, on the same port
    ws.settimeout(5)
    ws.send("PING")
    assert ws.recv() == "PONG"
    ws.close()
