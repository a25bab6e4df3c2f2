"""GET /metrics: the Prometheus text exposition, through prometheus_client.

One collector reads the live values at scrape time (device links' counters, the hubs,
the I/O loop, gateway stats, the sinks): no second bookkeeping. What an operator alerts on:

    gateway_telemetry{device,key}                     last value of each numeric telemetry key
    gateway_device_connected{device}                  1 while the device is connected
    gateway_device_state{device,state}                1 for the device's current state
    gateway_device_lines_in_total{device}             ... and every DeviceLink counter as
                                                      gateway_device_<counter>_total
    gateway_device_clients{device}                    WebSocket clients of the device
    gateway_device_last_line_timestamp_seconds{device}
    gateway_clients_connected                         WebSocket clients, all devices
    gateway_frames_sent_total, gateway_client_queue_overflows_total,
    gateway_client_keepalive_drops_total              the I/O loop's counters
    gateway_<stat>_total                              each GatewayStats field
    gateway_mqtt_*{device}, gateway_recording_*{device}   the sinks, when configured
    gateway_mqtt_broker_connected{broker}             1 while the gateway's one connection to
    gateway_mqtt_broker_connects_total{broker}          that broker is up; connects made
    gateway_remote_devices{owner}                     devices of other gateways listed here
    process_*, python_info                            prometheus_client's own collectors
"""

from __future__ import annotations

import sys
import weakref
from dataclasses import fields

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

from .hub import State
from .sinks import TelemetryCache, find_sink

STAT_DOCS = {
    "handshakes_refused_full": "WebSocket handshakes refused with 503: max_clients reached",
    "handshakes_refused_auth": "WebSocket handshakes refused with 401: no valid token",
    "handshakes_refused_origin": "WebSocket handshakes refused with 403: Origin not allowed",
    "handshakes_bad": "WebSocket handshakes refused with 400",
    "messages_oversize": "Clients closed with 1009: message over max_message",
    "lines_refused": "Client lines not written: role, allowlist, rate limit or format",
    "rate_limited": "Client lines over lines_per_second",
    "clients_total": "WebSocket clients ever connected",
    "requests_refused_host": "HTTP and WebSocket requests refused with 403: Host header not allowed (DNS rebinding)",
    "requests_dropped_pending": "Unfinished HTTP requests dropped: more than limits.max_pending at once",
}

_registries: "weakref.WeakKeyDictionary[object, CollectorRegistry]" = weakref.WeakKeyDictionary()


def render(gateway) -> tuple[bytes, str]:
    """(body, content type) of one scrape."""
    return generate_latest(registry_for(gateway)), CONTENT_TYPE_PLAIN_0_0_4


def registry_for(gateway) -> CollectorRegistry:
    registry = _registries.get(gateway)
    if registry is None:
        registry = CollectorRegistry(auto_describe=False)
        registry.register(GatewayCollector(gateway))
        ProcessCollector(registry=registry)
        PlatformCollector(registry=registry)
        _registries[gateway] = registry
    return registry


def _counter(name: str, doc: str, labels=()) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, labels=list(labels))


def _gauge(name: str, doc: str, labels=()) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, labels=list(labels))


class GatewayCollector:
    def __init__(self, gateway):
        self._gateway = weakref.proxy(gateway)

    def collect(self):
        gw = self._gateway
        yield from self._telemetry(gw)
        yield from self._devices(gw)
        yield from self._gateway_wide(gw)
        yield from self._mqtt(gw)
        yield from self._fleet(gw)
        yield from self._recording(gw)

    # -- telemetry --------------------------------------------------------------------------

    def _telemetry(self, gw):
        cache = find_sink(gw, TelemetryCache)
        if cache is None:
            return
        values = _gauge("gateway_telemetry", "Last value of each numeric telemetry key a device sent",
                        ("device", "key"))
        for device, keys in cache.snapshot().items():
            for key, value in keys.items():
                values.add_metric([device, key], value)
        yield values
        last = _gauge("gateway_device_last_line_timestamp_seconds", "UNIX time of the newest line from the device",
                      ("device",))
        for device, ts in list(cache.last_line_ts.items()):
            last.add_metric([device], ts)
        yield last
        refused = _counter("gateway_telemetry_keys_refused", "Distinct telemetry keys not exported: over the "
                           "per-device limit", ("device",))
        for device in gw.links:
            refused.add_metric([device], cache.keys_refused.get(device, 0))
        yield refused

    # -- devices ----------------------------------------------------------------------------

    def _devices(self, gw):
        links = list(gw.links.items())
        connected = _gauge("gateway_device_connected", "1 while the device is connected", ("device",))
        state = _gauge("gateway_device_state", "1 for the device's current state", ("device", "state"))
        info = _gauge("gateway_device_info", "The device's kind (URL scheme)", ("device", "kind"))
        clients = _gauge("gateway_device_clients", "WebSocket clients of the device", ("device",))
        for name, link in links:
            current = link.state
            connected.add_metric([name], 1.0 if current is State.CONNECTED else 0.0)
            for s in State:
                state.add_metric([name, s.value], 1.0 if s is current else 0.0)
            info.add_metric([name, link.config.kind], 1.0)
            clients.add_metric([name], link.hub.clients)
        yield from (connected, state, info, clients)
        if not links:
            return
        docs = {
            "lines_in": "Lines read from the device",
            "lines_out": "Lines written to the device",
            "bytes_in": "Bytes read from the device",
            "bytes_out": "Bytes written to the device",
            "errors": "Writes that failed or were refused",
            "reconnects": "Times the device was lost and reopened",
            "cut_lines": "Pieces delivered because a line reached max_line",
            "invalid_lines": "Lines not valid in the device's encoding",
            "write_queue_full": "Writes refused because the device's write queue was full",
        }
        for field in fields(links[0][1].counters):
            family = _counter(f"gateway_device_{field.name}", docs.get(field.name, field.name.replace("_", " ")),
                              ("device",))
            for name, link in links:
                family.add_metric([name], getattr(link.counters, field.name))
            yield family

    # -- the gateway --------------------------------------------------------------------------

    def _gateway_wide(self, gw):
        clients = _gauge("gateway_clients_connected", "WebSocket clients connected, all devices")
        clients.add_metric([], gw.client_count())
        yield clients
        manager = getattr(gw, "manager", None)
        sender = getattr(manager, "stats", None)
        if sender is not None:
            for attr, name, doc in (
                ("frames_sent", "gateway_frames_sent", "WebSocket frames written to clients"),
                ("overflows", "gateway_client_queue_overflows", "Clients closed with 1008: outbound queue full"),
                ("keepalive_drops", "gateway_client_keepalive_drops", "Clients closed for not answering a ping"),
            ):
                family = _counter(name, doc)
                family.add_metric([], getattr(sender, attr, 0))
                yield family
        stats = getattr(gw, "stats", None)
        if stats is not None:
            for field in fields(stats):
                doc = STAT_DOCS.get(field.name, f"Gateway counter {field.name.replace('_', ' ')}")
                family = _counter(f"gateway_{field.name}", doc)
                family.add_metric([], getattr(stats, field.name))
                yield family
        started = getattr(gw, "started_at", 0.0)
        if started:
            family = _gauge("gateway_start_time_seconds", "UNIX time the gateway started")
            family.add_metric([], started)
            yield family
        info = _gauge("gateway_info", "The gateway's id ([server] gateway_id) and run id (new at every start)",
                      ("run", "gateway_id"))
        info.add_metric([gw.run_id, gw.gateway_id], 1.0)
        yield info

    # -- sinks --------------------------------------------------------------------------------

    def _mqtt(self, gw):
        module = sys.modules.get("gateway.sinks.mqtt")  # not imported: no MQTT sink (and no paho)
        sink = find_sink(gw, module.MqttSink) if module is not None else None
        if sink is None:
            return
        stats = sink.stats
        connected = _gauge("gateway_mqtt_connected", "1 while the gateway's connection to the sink's broker is up",
                           ("device",))
        buffered = _gauge("gateway_mqtt_buffered", "Lines waiting to be published", ("device",))
        for device, s in stats.items():
            connected.add_metric([device], 1.0 if s.connected else 0.0)
            buffered.add_metric([device], sink.buffered(device))
        yield connected
        yield buffered
        for attr, doc in (
            ("published", "MQTT messages published"),
            ("dropped", "Lines or messages that did not reach the broker (buffer full, connection lost)"),
            ("reconnects", "Times the broker connection came back while the device was published"),
            ("commands", "Lines from PREFIX/NAME/tx queued for the device"),
            ("commands_refused", "Lines from PREFIX/NAME/tx not written"),
        ):
            family = _counter(f"gateway_mqtt_{attr}", doc, ("device",))
            for device, s in stats.items():
                family.add_metric([device], getattr(s, attr))
            yield family

    def _fleet(self, gw):
        pool = getattr(gw, "brokers", None)
        conns = pool.connections() if pool is not None else []
        if conns:
            up = _gauge("gateway_mqtt_broker_connected", "1 while the gateway's connection to the broker is up",
                        ("broker",))
            connects = _counter("gateway_mqtt_broker_connects", "Connections made to the broker (the first, "
                                "then each reconnect)", ("broker",))
            for conn in conns:
                up.add_metric([conn.describe()], 1.0 if conn.connected else 0.0)
                connects.add_metric([conn.describe()], conn.connects)
            yield up
            yield connects
        owners: dict[str, int] = {}
        for link in list(gw.links.values()):
            owner = getattr(link.config, "owner", "")
            if owner:
                owners[owner] = owners.get(owner, 0) + 1
        if owners:
            remote = _gauge("gateway_remote_devices", "Devices of other gateways listed here (discovered over MQTT)",
                            ("owner",))
            for owner, n in sorted(owners.items()):
                remote.add_metric([owner], n)
            yield remote

    def _recording(self, gw):
        module = sys.modules.get("gateway.sinks.recording")
        sink = find_sink(gw, module.Recorder) if module is not None else None
        if sink is None:
            return
        for attr, doc in (
            ("lines", "Lines written to the device's recording"),
            ("dropped", "Lines not recorded: the writer fell behind"),
            ("errors", "Lines not recorded: the file could not be opened or written"),
        ):
            family = _counter(f"gateway_recording_{attr}", doc, ("device",))
            for device, s in sink.stats.items():
                family.add_metric([device], getattr(s, attr))
            yield family
