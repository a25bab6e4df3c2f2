"""Configuration: a TOML file and command-line flags into frozen dataclasses.

Precedence: flags over the file over the defaults. `--device NAME=URL` adds a device, or
replaces the file's device of that name. With no device at all, the gateway serves the
embedded default: one simulated device named `sim`.

Every mistake raises `ConfigError` with one line naming the file, the key and the value,
e.g. `gateway.toml: device[0].url = 'foo://x': unknown scheme 'foo'`.
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
import tomllib
from dataclasses import dataclass, field, fields, replace
from urllib.parse import parse_qsl, urlencode, urlsplit

from . import transports
from .codec import EOLS
from .counts import parse_count
from .signals import parse_sequence

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class ConfigError(ValueError):
    pass


@dataclass(frozen=True)
class Button:
    label: str
    line: str


@dataclass(frozen=True)
class DeviceConfig:
    name: str
    url: str
    eol: str = "lf"
    encoding: str = "utf-8"
    max_line: int = 4096
    pace_ms: int = 0
    history: int = 1000
    buttons: tuple[Button, ...] = ()
    record: str = ""  # path of a JSON-lines recording of the device's lines ("" = off)
    allow: tuple[str, ...] = ()  # regular expressions a client line must match (empty = any)
    # The board's reset sequence (gateway/signals.py): "esp", "dtr", "none" or steps such
    # as "D0 R1 W100 R0"; "" = esp for devices that carry signals (serial, sim), else none.
    reset: str = ""
    # The gateway id of the device's owner when it is another gateway's, discovered over
    # MQTT (gateway/discovery.py); "" = this gateway's own device.
    owner: str = ""

    @property
    def kind(self) -> str:
        return self.url.split("://", 1)[0].lower()

    @property
    def eol_bytes(self) -> bytes:
        return EOLS[self.eol]

    @property
    def reset_sequence(self) -> str:
        if self.reset:
            return self.reset
        return "esp" if self.kind in SIGNAL_SCHEMES else "none"


# Schemes whose transport carries DTR, RTS and BREAK.
SIGNAL_SCHEMES = ("serial", "hwgrep", "rfc2217", "sim")
# Schemes whose URL query takes a baud rate (the `baudrate` key of a device table).
BAUD_SCHEMES = ("serial", "hwgrep", "rfc2217")


@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8765
    ping_interval: float = 20.0
    handshake_timeout: float = 10.0
    certfile: str = ""  # with keyfile: serve https:// and wss:// on the same port
    keyfile: str = ""
    # Host header values allowed besides loopback names and the bound address (DNS
    # rebinding): exact names, ".example.com" for a domain and its subdomains, "*" for any.
    allowed_hosts: tuple[str, ...] = ()
    # The gateway's name among several (a fleet over MQTT: topics, the page, /metrics):
    # letters, digits, "-", "_" and "."; "" = this machine's host name.
    gateway_id: str = ""


@dataclass(frozen=True)
class Token:
    token: str
    role: str  # "view" (receive only) or "control" (receive and send)


ROLES = ("view", "control", "admin")  # admin: control plus the device API (POST/PATCH/DELETE /api/devices)


@dataclass(frozen=True)
class SerialConfig:
    # Globs of serial ports to list besides pyserial's list_ports (GET /api/ports, hot-plug).
    scan: tuple[str, ...] = ("/dev/serial/by-id/*", "/dev/ttyUSB*", "/dev/ttyACM*")
    rescan: float = 1.0  # seconds between scans for ports plugged in or pulled out (0: off)


@dataclass(frozen=True)
class AuthConfig:
    tokens: tuple[Token, ...] = ()
    allowed_origins: tuple[str, ...] = ()
    # Bound beyond loopback with no tokens, the gateway makes a control token at start;
    # anonymous = true serves everyone instead (and says so in a WARNING).
    anonymous: bool = False


@dataclass(frozen=True)
class MqttConfig:
    url: str = ""  # mqtt://HOST:PORT; "" = no MQTT sink
    prefix: str = "gateway"
    client_id: str = ""  # "" = gateway-<run id>
    keepalive: int = 30
    buffer: int = 1000  # messages held while the broker is away; beyond that, counted drops
    discovery: bool = False  # Home Assistant MQTT discovery for numeric telemetry keys
    discovery_prefix: str = "homeassistant"
    # List the devices other gateways announce on the broker as remote devices, and
    # announce this gateway's own (retained PREFIX/NAME/meta/ID; gateway/discovery.py).
    discover: bool = False


@dataclass(frozen=True)
class MdnsConfig:
    # Bound beyond loopback, advertise the page (_http._tcp) and the devices
    # (_gateway-ws._tcp) over mDNS; never on loopback.
    enabled: bool = True
    name: str = ""  # the service instance name; "" = "gateway on HOSTNAME"


@dataclass(frozen=True)
class LimitsConfig:
    max_message: int = 65536
    lines_per_second: float = 0
    queue: int = 10000
    max_clients: int = 10000
    max_pending: int = 256  # HTTP requests accepted but not yet read whole; beyond it the oldest is dropped


@dataclass(frozen=True)
class Config:
    server: ServerConfig = field(default_factory=ServerConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    mqtt: MqttConfig = field(default_factory=MqttConfig)
    mdns: MdnsConfig = field(default_factory=MdnsConfig)
    serial: SerialConfig = field(default_factory=SerialConfig)
    devices: tuple[DeviceConfig, ...] = ()
    source: str = "defaults"


# The embedded default: the simulator, with buttons for the control page.
DEFAULT_DEVICE = DeviceConfig(name="sim", url="sim://", buttons=(
    Button("Ping", "PING"), Button("LED on", "LED ON"), Button("LED off", "LED OFF"),
    Button("Temperature", "GET temp"),
))


def _fail(where: str, key: str, value: object, why: str) -> ConfigError:
    return ConfigError(f"{where}: {key} = {value!r}: {why}")


_TYPES = {"str": str, "int": int, "float": float, "bool": bool}


def _typed(cls, table: dict, where: str, prefix: str, overrides: dict | None = None):
    """Build dataclass `cls` from `table`, checking each key's name and type."""
    known = {f.name: _TYPES.get(f.type) for f in fields(cls) if f.type in _TYPES}
    values = {}
    for key, value in table.items():
        if key not in known:
            names = [f.name for f in fields(cls)]  # also those parsed before: allow, buttons, allowed_hosts
            raise _fail(where, f"{prefix}{key}", value, f"unknown key (known: {', '.join(names)})")
        want = known[key]
        if want is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, want) or (isinstance(value, bool) and want is not bool):
            raise _fail(where, f"{prefix}{key}", value, f"expected {want.__name__}")
        values[key] = value
    if overrides:
        values.update(overrides)
    return cls(**values)


def _check_device_values(dev: DeviceConfig, where: str, prefix: str) -> None:
    if not NAME_RE.match(dev.name):
        raise _fail(where, f"{prefix}name", dev.name, "use letters, digits, '_', '.', '-' (at most 64)")
    if dev.eol not in EOLS:
        raise _fail(where, f"{prefix}eol", dev.eol, f"expected one of {', '.join(EOLS)}")
    try:
        "".encode(dev.encoding)
    except LookupError:
        raise _fail(where, f"{prefix}encoding", dev.encoding, "unknown encoding") from None
    if not 1 <= dev.max_line <= 16 * 1024 * 1024:
        raise _fail(where, f"{prefix}max_line", dev.max_line, "expected 1 to 16777216 bytes")
    if not 0 <= dev.pace_ms <= 60000:
        raise _fail(where, f"{prefix}pace_ms", dev.pace_ms, "expected 0 to 60000 ms")
    if not 0 <= dev.history <= 1_000_000:
        raise _fail(where, f"{prefix}history", dev.history, "expected 0 to 1000000 lines")
    try:
        parse_sequence(dev.reset)
    except ValueError as exc:
        raise _fail(where, f"{prefix}reset", dev.reset, str(exc)) from None
    if dev.reset and dev.reset.strip().lower() != "none" and dev.kind not in SIGNAL_SCHEMES:
        raise _fail(where, f"{prefix}reset", dev.reset,
                    f"a {dev.kind}:// device carries no signals (only {', '.join(SIGNAL_SCHEMES)} do)")


_INT_OPTIONS = ("max_line", "pace_ms", "history")


def device_from(table: dict, where: str, prefix: str) -> DeviceConfig:
    for key in ("name", "url"):
        if key not in table:
            raise _fail(where, f"{prefix}{key}", None, "missing (every device needs name and url)")
        if not isinstance(table[key], str):
            raise _fail(where, f"{prefix}{key}", table[key], "expected str")
    url = table["url"]
    if "baudrate" in table:
        url = _with_baudrate(url, table["baudrate"], where, prefix)
        table = {k: v for k, v in table.items() if k != "baudrate"}
        table["url"] = url
    try:
        _, _, _, url_options = transports.split_url(url)
        transports.create(url)  # checks the transport's own options; opens nothing
    except ValueError as exc:
        raise _fail(where, f"{prefix}url", url, str(exc)) from None
    # Device options may also stand in the URL's query; a config key wins over the URL.
    merged: dict = {}
    for key, value in url_options.items():
        if key in _INT_OPTIONS:
            try:
                merged[key] = parse_count(value)
            except ValueError:
                raise _fail(where, f"{prefix}url", url, f"{key} must be a whole number, not {value!r}") from None
        else:
            merged[key] = value
    buttons = table.get("buttons", [])
    if not isinstance(buttons, list):
        raise _fail(where, f"{prefix}buttons", buttons, "expected a list of { label, line }")
    parsed_buttons = []
    for i, b in enumerate(buttons):
        if not isinstance(b, dict) or set(b) != {"label", "line"} or not all(isinstance(v, str) for v in b.values()):
            raise _fail(where, f"{prefix}buttons[{i}]", b, "expected { label = \"...\", line = \"...\" }")
        parsed_buttons.append(Button(b["label"], b["line"]))
    allow = table.get("allow", [])
    if not isinstance(allow, list) or not all(isinstance(p, str) for p in allow):
        raise _fail(where, f"{prefix}allow", allow, "expected a list of regular expressions")
    for pattern in allow:
        try:
            re.compile(pattern)
        except re.error as exc:
            raise _fail(where, f"{prefix}allow", pattern, f"not a regular expression: {exc}") from None
    if "owner" in table:  # set by discovery for other gateways' devices, never by a table
        raise _fail(where, f"{prefix}owner", table["owner"], "not a device key (remote devices are discovered)")
    rest = {k: v for k, v in table.items() if k not in ("buttons", "allow")}
    dev = _typed(DeviceConfig, {**merged, **rest}, where, prefix,
                 {"buttons": tuple(parsed_buttons), "allow": tuple(allow)})
    _check_device_values(dev, where, prefix)
    return dev


def _with_baudrate(url: str, baud: object, where: str, prefix: str) -> str:
    """The `baudrate` key of a device table: the URL with its baudrate option replaced."""
    if isinstance(baud, bool) or not isinstance(baud, int) or not 1 <= baud <= 100_000_000:
        raise _fail(where, f"{prefix}baudrate", baud, "expected a whole number of bits per second")
    parts = urlsplit(url)
    if parts.scheme.lower() not in BAUD_SCHEMES:
        raise _fail(where, f"{prefix}baudrate", baud,
                    f"only {', '.join(s + '://' for s in BAUD_SCHEMES)} devices have a baud rate")
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k != "baudrate"]
    query.append(("baudrate", str(baud)))
    return url.split("?", 1)[0] + "?" + urlencode(query, safe="/:")  # (urlunsplit drops serial:///'s "//")


def baudrate_of(url: str) -> int | None:
    """The baud rate a device URL asks for, or None."""
    for key, value in parse_qsl(urlsplit(url).query):
        if key == "baudrate":
            try:
                return parse_count(value, 1)
            except ValueError:
                return None
    return None


def device_table(dev: DeviceConfig) -> dict:
    """`dev` as the table it could be read from (keys at their defaults left out): what
    PATCH /api/devices/NAME changes keys of."""
    table: dict = {"name": dev.name, "url": dev.url}
    for f in fields(DeviceConfig):
        if f.name in table:
            continue
        value = getattr(dev, f.name)
        if value == f.default:
            continue
        if f.name == "buttons":
            value = [{"label": b.label, "line": b.line} for b in value]
        elif f.name == "allow":
            value = list(value)
        table[f.name] = value
    return table


SERIAL_KEYS = ("scan", "rescan")


def _serial_from(table: dict, where: str) -> SerialConfig:
    for key in table:
        if key not in SERIAL_KEYS:
            raise _fail(where, f"serial.{key}", table[key], f"unknown key (known: {', '.join(SERIAL_KEYS)})")
    scan = table.get("scan", list(SerialConfig.scan))
    if not isinstance(scan, list) or not all(isinstance(g, str) and g.startswith("/") for g in scan):
        raise _fail(where, "serial.scan", scan, 'expected a list of absolute globs such as ["/dev/ttyUSB*"]')
    rescan = table.get("rescan", SerialConfig.rescan)
    if isinstance(rescan, bool) or not isinstance(rescan, (int, float)) or not (rescan == 0 or 0.1 <= rescan <= 3600):
        raise _fail(where, "serial.rescan", rescan, "expected 0 (off) or 0.1 to 3600 seconds")
    return SerialConfig(scan=tuple(scan), rescan=float(rescan))


def _check_server(server: ServerConfig, where: str) -> None:
    if not 0 <= server.port < 65536:
        raise _fail(where, "server.port", server.port, "expected 0 to 65535")
    if server.ping_interval < 0:
        raise _fail(where, "server.ping_interval", server.ping_interval, "expected seconds >= 0 (0 turns pings off)")
    if bool(server.certfile) != bool(server.keyfile):
        raise _fail(where, "server.certfile" if not server.certfile else "server.keyfile", "",
                    "certfile and keyfile go together")
    for key in ("certfile", "keyfile"):
        path = getattr(server, key)
        if path and not os.path.isfile(path):
            raise _fail(where, f"server.{key}", path, "no such file")
    if server.handshake_timeout <= 0:
        raise _fail(where, "server.handshake_timeout", server.handshake_timeout, "expected seconds > 0")
    if server.gateway_id and not GATEWAY_ID.fullmatch(server.gateway_id):
        raise _fail(where, "server.gateway_id", server.gateway_id,
                    "expected 1 to 64 letters, digits, '-', '_' or '.' (it is part of MQTT topics)")


GATEWAY_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


def default_gateway_id() -> str:
    """This machine's host name, cut to what a gateway id may hold."""
    name = re.sub(r"[^A-Za-z0-9_.-]", "-", socket.gethostname())[:64].lstrip("-_.")
    return name or "gateway"


def _check_limits(limits: LimitsConfig, where: str) -> None:
    for key, low in (("max_message", 125), ("queue", 1), ("max_clients", 1), ("max_pending", 1)):
        if getattr(limits, key) < low:
            raise _fail(where, f"limits.{key}", getattr(limits, key), f"expected at least {low}")
    if limits.lines_per_second < 0:
        raise _fail(where, "limits.lines_per_second", limits.lines_per_second, "expected >= 0 (0 is off)")


HOST_NAME_RE = re.compile(r"^[a-z0-9_]([a-z0-9_-]{0,62})(\.[a-z0-9_]([a-z0-9_-]{0,62}))*$")


def host_entry(entry: object) -> str:
    """One `allowed_hosts` entry, normalised (lower case, IPv6 in brackets); ValueError if
    it is not "*", a host name, ".domain", an IPv4 address or an [IPv6] address."""
    if not isinstance(entry, str):
        raise ValueError("expected a host name such as \"gateway.example.com\"")
    text = entry.strip().lower()
    if text == "*":
        return text
    if "://" in text or "/" in text:
        raise ValueError("expected a host name, not a URL (e.g. \"gateway.example.com\")")
    bare = text[1:-1] if text.startswith("[") and text.endswith("]") else text
    if ":" in bare:
        try:
            return f"[{ipaddress.IPv6Address(bare).compressed}]"
        except ValueError:
            raise ValueError("expected a host name without a port (the port is not checked)") from None
    name = text[1:] if text.startswith(".") else text
    if not HOST_NAME_RE.match(name) or len(name) > 253:
        raise ValueError("expected a host name such as \"gateway.example.com\", \".example.com\" or \"*\"")
    return text


def _check_allowed_hosts(value: object, where: str) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise _fail(where, "server.allowed_hosts", value, 'expected a list such as ["gateway.example.com"]')
    out = []
    for i, entry in enumerate(value):
        try:
            out.append(host_entry(entry))
        except ValueError as exc:
            raise _fail(where, f"server.allowed_hosts[{i}]", entry, str(exc)) from None
    return tuple(out)


AUTH_KEYS = ("tokens", "allowed_origins", "anonymous")


def _auth_from(table: dict, where: str) -> AuthConfig:
    for key in table:
        if key not in AUTH_KEYS:
            raise _fail(where, f"auth.{key}", table[key], f"unknown key (known: {', '.join(AUTH_KEYS)})")
    tokens = table.get("tokens", [])
    if not isinstance(tokens, list):
        raise _fail(where, "auth.tokens", tokens, 'expected a list of { token = "...", role = "view" | "control" | "admin" }')
    parsed = []
    for i, t in enumerate(tokens):
        if not isinstance(t, dict) or set(t) != {"token", "role"} or not all(isinstance(v, str) for v in t.values()):
            raise _fail(where, f"auth.tokens[{i}]", t, 'expected { token = "...", role = "view" | "control" | "admin" }')
        if t["role"] not in ROLES:
            raise _fail(where, f"auth.tokens[{i}].role", t["role"], "expected view, control or admin")
        if len(t["token"]) < 4:
            raise _fail(where, f"auth.tokens[{i}].token", t["token"], "too short (at least 4 characters)")
        parsed.append(Token(t["token"], t["role"]))
    origins = table.get("allowed_origins", [])
    if not isinstance(origins, list) or not all(isinstance(o, str) for o in origins):
        raise _fail(where, "auth.allowed_origins", origins, 'expected a list such as ["https://dash.example.com"]')
    anonymous = table.get("anonymous", False)
    if not isinstance(anonymous, bool):
        raise _fail(where, "auth.anonymous", anonymous, "expected true or false")
    if anonymous and parsed:
        raise _fail(where, "auth.anonymous", anonymous, "anonymous = true and tokens do not go together")
    return AuthConfig(tokens=tuple(parsed), allowed_origins=tuple(o.rstrip("/") for o in origins), anonymous=anonymous)


def _check_mqtt(mqtt: MqttConfig, where: str) -> None:
    if mqtt.url and not mqtt.url.startswith(("mqtt://", "mqtts://")):
        raise _fail(where, "mqtt.url", mqtt.url, "expected mqtt://HOST:PORT")
    if not mqtt.prefix or any(c in mqtt.prefix for c in "#+") or mqtt.prefix.startswith("/"):
        raise _fail(where, "mqtt.prefix", mqtt.prefix, "expected a topic prefix without wildcards")
    if mqtt.buffer < 1:
        raise _fail(where, "mqtt.buffer", mqtt.buffer, "expected at least 1 message")
    if not 0 <= mqtt.keepalive <= 65535:
        raise _fail(where, "mqtt.keepalive", mqtt.keepalive, "expected 0 to 65535 seconds")
    if mqtt.discover and not mqtt.url.startswith("mqtt://"):
        raise _fail(where, "mqtt.discover", mqtt.discover,
                    "needs [mqtt] url = \"mqtt://HOST:PORT\" (the broker the gateways share; not mqtts://)")


def _check_mdns(mdns: MdnsConfig, where: str) -> None:
    if len(mdns.name.encode()) > 63 or any(ord(c) < 32 for c in mdns.name):
        raise _fail(where, "mdns.name", mdns.name, "expected at most 63 bytes of printable text")


def from_dict(data: dict, where: str) -> Config:
    sections = {"server", "limits", "device", "auth", "mqtt", "mdns", "serial"}
    for key in data:
        if key not in sections:
            raise _fail(where, key, data[key], f"unknown section (known: {', '.join(sorted(sections))})")
    server_table = dict(_table(data, "server", where))
    hosts = _check_allowed_hosts(server_table.pop("allowed_hosts"), where) if "allowed_hosts" in server_table else ()
    server = _typed(ServerConfig, server_table, where, "server.", {"allowed_hosts": hosts})
    _check_server(server, where)
    limits = _typed(LimitsConfig, _table(data, "limits", where), where, "limits.")
    _check_limits(limits, where)
    auth = _auth_from(_table(data, "auth", where), where)
    mqtt = _typed(MqttConfig, _table(data, "mqtt", where), where, "mqtt.")
    _check_mqtt(mqtt, where)
    mdns = _typed(MdnsConfig, _table(data, "mdns", where), where, "mdns.")
    _check_mdns(mdns, where)
    serial_config = _serial_from(_table(data, "serial", where), where)
    raw_devices = data.get("device", [])
    if not isinstance(raw_devices, list):
        raise _fail(where, "device", raw_devices, "expected [[device]] tables")
    devices = []
    for i, table in enumerate(raw_devices):
        if not isinstance(table, dict):
            raise _fail(where, f"device[{i}]", table, "expected a table")
        devices.append(device_from(table, where, f"device[{i}]."))
    _check_unique(devices, where)
    return Config(server=server, limits=limits, auth=auth, mqtt=mqtt, mdns=mdns, serial=serial_config,
                  devices=tuple(devices), source=where)


def _table(data: dict, key: str, where: str) -> dict:
    table = data.get(key, {})
    if not isinstance(table, dict):
        raise _fail(where, key, table, "expected a table")
    return table


def _check_unique(devices: list[DeviceConfig], where: str) -> None:
    seen = set()
    for i, dev in enumerate(devices):
        if dev.name in seen:
            raise _fail(where, f"device[{i}].name", dev.name, "two devices have this name")
        seen.add(dev.name)


def load_file(path: str) -> Config:
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    return from_dict(data, path)


def parse_device_flag(text: str) -> DeviceConfig:
    name, sep, url = text.partition("=")
    if not sep or not name or not url:
        raise ConfigError(f"--device {text!r}: expected NAME=URL, e.g. esp=serial:///dev/ttyUSB0?baudrate=115200")
    return device_from({"name": name, "url": url}, "--device", "")


def apply_flags(config: Config, host: str | None, port: int | None, devices: list[str]) -> Config:
    server = config.server
    if host is not None:
        server = replace(server, host=host)
    if port is not None:
        server = replace(server, port=port)
    _check_server(server, "--port")
    merged = {d.name: d for d in config.devices}
    for text in devices:
        dev = parse_device_flag(text)
        merged[dev.name] = dev
    result = tuple(merged.values()) or (DEFAULT_DEVICE,)
    return replace(config, server=server, devices=result)
