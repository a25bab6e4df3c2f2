"""Telemetry sinks: where device lines go besides WebSocket clients.

A sink implements `hub.Listener` (`on_records`, `on_state`: queue only, never block)
plus `start()` and `stop(timeout)`; it owns its thread. `build_sinks(gateway)` makes the
sinks the config asks for; the Gateway adds each to every device's hub, starts them
before the devices and stops them after.

- `TelemetryCache` (always): the last value of each numeric telemetry key, for /metrics.
- `MqttSink` (when `[mqtt] url` is set): rx, telemetry and status topics, tx commands,
  on the gateway's one connection to that broker (gateway/broker.py).
- `Recorder` (when a device has `record = "path"`): a JSON-lines recording per device.
"""

from __future__ import annotations

from .base import Sink
from .telemetry import TelemetryCache


def build_sinks(gateway) -> list[Sink]:
    sinks: list[Sink] = [TelemetryCache()]
    config = gateway.config
    if config.mqtt.url:
        from .mqtt import MqttSink  # paho-mqtt is imported only when MQTT is configured
        from ..transports.mqtt import parse_broker
        from urllib.parse import urlsplit

        conn = gateway.brokers.get(parse_broker(urlsplit(config.mqtt.url)))
        sinks.append(MqttSink(config.mqtt, gateway, conn))
    recorded = {name: link.config.record for name, link in gateway.links.items() if link.config.record}
    if recorded:
        from .recording import Recorder

        sinks.append(Recorder(recorded))
    return sinks


def find_sink(gateway, kind: type) -> Sink | None:
    """The gateway's sink of class `kind`, or None."""
    for sink in getattr(gateway, "sinks", ()):
        if isinstance(sink, kind):
            return sink
    return None


__all__ = ["Sink", "TelemetryCache", "build_sinks", "find_sink"]
