"""Config: TOML and flags into frozen dataclasses; every mistake names file, key, value."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from gateway.config import Button, Config, ConfigError, apply_flags, from_dict, load_file
from gateway.counts import parse_count

CONFIG_DIR = Path(__file__).parent.parent / "config"


def test_defaults_serve_the_simulator():
    config = apply_flags(Config(), None, None, [])
    assert config.server.host == "127.0.0.1" and config.server.port == 8765
    assert [(d.name, d.url) for d in config.devices] == [("sim", "sim://")]
    assert [b.line for b in config.devices[0].buttons] == ["PING", "LED ON", "LED OFF", "GET temp"]
    assert config.limits.max_message == 65536 and config.limits.queue == 10000


def test_full_device_table():
    config = from_dict({
        "server": {"host": "0.0.0.0", "port": 9000, "ping_interval": 5},
        "limits": {"queue": 50},
        "device": [{"name": "esp", "url": "serial:///dev/ttyUSB0?baudrate=115200", "eol": "crlf",
                    "pace_ms": 5, "buttons": [{"label": "On", "line": "LED ON"}]}],
    }, "f.toml")
    (dev,) = config.devices
    assert dev.eol_bytes == b"\r\n" and dev.pace_ms == 5 and dev.kind == "serial"
    assert dev.buttons == (Button("On", "LED ON"),)
    assert config.server.ping_interval == 5.0 and config.limits.queue == 50
    with pytest.raises(dataclasses.FrozenInstanceError):
        dev.eol = "lf"


def test_device_options_in_the_url_query():
    (dev,) = from_dict({"device": [{"name": "u", "url": "tcp://10.0.0.5:2323?eol=cr&max_line=256&history=5"}]}, "f").devices
    assert (dev.eol, dev.max_line, dev.history) == ("cr", 256, 5)


@pytest.mark.parametrize("data, key, value", [
    ({"sever": {}}, "sever", "{}"),
    ({"server": {"port": "80"}}, "server.port", "'80'"),
    ({"server": {"port": 70000}}, "server.port", "70000"),
    ({"server": {"colour": 1}}, "server.colour", "1"),
    ({"limits": {"queue": 0}}, "limits.queue", "0"),
    ({"device": [{"url": "sim://"}]}, "device[0].name", "None"),
    ({"device": [{"name": "a b", "url": "sim://"}]}, "device[0].name", "'a b'"),
    ({"device": [{"name": "a", "url": "sim://", "eol": "lfcr"}]}, "device[0].eol", "'lfcr'"),
    ({"device": [{"name": "a", "url": "sim://", "encoding": "klingon"}]}, "device[0].encoding", "'klingon'"),
    ({"device": [{"name": "a", "url": "sim://", "max_line": 0}]}, "device[0].max_line", "0"),
    ({"device": [{"name": "a", "url": "sim://", "baud": 9600}]}, "device[0].baud", "9600"),
    ({"device": [{"name": "a", "url": "gopher://x"}]}, "device[0].url", "'gopher://x'"),
    ({"device": [{"name": "a", "url": "tcp://nohost"}]}, "device[0].url", "'tcp://nohost'"),
    ({"device": [{"name": "a", "url": "udp://h:1?bind=nope"}]}, "device[0].url", "'udp://h:1?bind=nope'"),
    ({"device": [{"name": "a", "url": "serial:///dev/x?baudrate=fast"}]}, "device[0].url", "baudrate=fast"),
    ({"device": [{"name": "a", "url": "sim://?interval=-1"}]}, "device[0].url", "interval=-1"),
    ({"device": [{"name": "a", "url": "sim://?max_line=x"}]}, "device[0].url", "max_line=x"),
    ({"device": [{"name": "a", "url": "sim://?max_line=\u00b2"}]}, "device[0].url", "max_line=\u00b2"),
    ({"device": [{"name": "a", "url": "sim://?history=\u0661\u0662"}]}, "device[0].url", "history="),
    ({"device": [{"name": "a", "url": "sim://?pace_ms=+5"}]}, "device[0].url", "pace_ms=+5"),
    ({"device": [{"name": "a", "url": "sim://", "allow": ["LED (ON"]}]}, "device[0].allow", "'LED (ON'"),
    ({"server": {"allowed_hosts": "gw.lan"}}, "server.allowed_hosts", "'gw.lan'"),
    ({"server": {"allowed_hosts": ["ok.lan", "http://gw.lan"]}}, "server.allowed_hosts[1]", "'http://gw.lan'"),
    ({"server": {"allowed_hosts": ["gw.lan:8765"]}}, "server.allowed_hosts[0]", "'gw.lan:8765'"),
    ({"server": {"allowed_hosts": ["gw lan"]}}, "server.allowed_hosts[0]", "'gw lan'"),
    ({"server": {"allowed_hosts": [".."]}}, "server.allowed_hosts[0]", "'..'"),
    ({"server": {"allowed_hosts": [8765]}}, "server.allowed_hosts[0]", "8765"),
    ({"limits": {"max_pending": 0}}, "limits.max_pending", "0"),
    ({"server": {"gateway_id": "bench/a"}}, "server.gateway_id", "'bench/a'"),
    ({"server": {"gateway_id": "-a"}}, "server.gateway_id", "'-a'"),
    ({"server": {"gateway_id": "a" * 65}}, "server.gateway_id", "'aaa"),
    ({"auth": {"anonymous": "yes"}}, "auth.anonymous", "'yes'"),
    ({"auth": {"anonymous": True, "tokens": [{"token": "s3cret", "role": "view"}]}}, "auth.anonymous", "True"),
    ({"device": [{"name": "a", "url": "sim://", "buttons": [{"label": "x"}]}]}, "device[0].buttons[0]", "{'label': 'x'}"),
    ({"device": [{"name": "a", "url": "sim://"}, {"name": "a", "url": "loop://"}]}, "device[1].name", "'a'"),
])
def test_errors_name_file_key_and_value(data, key, value):
    with pytest.raises(ConfigError) as err:
        from_dict(data, "gw.toml")
    message = str(err.value)
    assert message.startswith(f"gw.toml: {key} = ")
    assert value in message
    assert "\n" not in message


def test_security_keys_and_their_defaults():
    config = Config()
    assert config.server.allowed_hosts == () and config.auth.anonymous is False
    assert config.limits.max_pending == 256
    config = from_dict({"server": {"allowed_hosts": ["GW.example.com", ".Lan", "[::1]", "::1", "10.0.0.5", "*"]},
                        "auth": {"anonymous": True}, "limits": {"max_pending": 32}}, "f")
    assert config.server.allowed_hosts == ("gw.example.com", ".lan", "[::1]", "[::1]", "10.0.0.5", "*")
    assert config.auth.anonymous is True and config.limits.max_pending == 32


def test_gateway_id_defaults_to_a_topic_safe_host_name(monkeypatch):
    import gateway.config as config_module
    assert from_dict({"server": {"gateway_id": "bench-a.lab_2"}}, "f").server.gateway_id == "bench-a.lab_2"
    monkeypatch.setattr(config_module.socket, "gethostname", lambda: "Lab PC #2")
    assert config_module.default_gateway_id() == "Lab-PC--2"
    monkeypatch.setattr(config_module.socket, "gethostname", lambda: "")
    assert config_module.default_gateway_id() == "gateway"


def test_counts_are_ascii_digits_only():
    assert parse_count("0") == 0 and parse_count("4096") == 4096 and parse_count("007") == 7
    for text in ("\u00b2", "\u0661\u0662", "\uff11", " 1", "1 ", "+1", "-1", "1_000", "1.0", "", "0x10", "1" * 21):
        with pytest.raises(ValueError) as err:
            parse_count(text)
        assert "\n" not in str(err.value)
    assert parse_count("65535", 0, 65535) == 65535
    with pytest.raises(ValueError, match="expected 0 to 65535"):
        parse_count("65536", 0, 65535)


def test_flags_override_the_file(tmp_path):
    path = tmp_path / "gw.toml"
    path.write_text('[server]\nport = 9000\n[[device]]\nname = "esp"\nurl = "tcp://127.0.0.1:2323"\n')
    config = apply_flags(load_file(str(path)), "0.0.0.0", 0, ["esp=loop://", "sim=sim://"])
    assert config.server.host == "0.0.0.0" and config.server.port == 0
    assert [(d.name, d.url) for d in config.devices] == [("esp", "loop://"), ("sim", "sim://")]


def test_bad_device_flag():
    with pytest.raises(ConfigError, match="NAME=URL"):
        apply_flags(Config(), None, None, ["justaname"])
    with pytest.raises(ConfigError, match="--device: url = 'nope://'"):
        apply_flags(Config(), None, None, ["x=nope://"])


def test_unreadable_and_invalid_files(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        load_file(str(tmp_path / "missing.toml"))
    bad = tmp_path / "bad.toml"
    bad.write_text("[server\n")
    with pytest.raises(ConfigError, match="bad.toml: not valid TOML"):
        load_file(str(bad))


@pytest.mark.parametrize("path", sorted(CONFIG_DIR.glob("*.toml")), ids=lambda p: p.name)
def test_shipped_examples_load(path):
    config = load_file(str(path))
    assert config.devices, f"{path.name} configures no device"


# -- property: whatever the file holds, a Config or one ConfigError line ---------------------

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6), st.floats(allow_nan=True),
                     st.text(max_size=30), st.sampled_from(["sim://", "loop://", "tcp://127.0.0.1:1", "udp://h:2",
                                                           "serial:///dev/x?baudrate=9600", "lf", "crlf", "view"]))
_values = st.recursive(_scalars, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                         st.dictionaries(st.text(max_size=8), inner, max_size=3)),
                       max_leaves=8)
_device_keys = st.sampled_from(["name", "url", "eol", "encoding", "max_line", "pace_ms", "history", "buttons",
                                "record", "allow", "bogus"])
_devices = st.lists(st.dictionaries(_device_keys, _values, max_size=6), max_size=3)
_tables = st.fixed_dictionaries({}, optional={
    "server": st.dictionaries(st.sampled_from(["host", "port", "ping_interval", "certfile", "allowed_hosts", "x"]),
                              _values, max_size=3),
    "limits": st.dictionaries(st.sampled_from(["max_message", "queue", "max_clients", "lines_per_second", "max_pending"]),
                              _values, max_size=3),
    "auth": st.dictionaries(st.sampled_from(["tokens", "allowed_origins", "anonymous", "x"]), _values, max_size=2),
    "mqtt": st.dictionaries(st.sampled_from(["url", "prefix", "discovery", "buffer"]), _values, max_size=3),
    "device": _devices,
    "other": _values,
})


@settings(max_examples=300, deadline=None)
@given(_tables)
def test_any_table_gives_a_config_or_one_config_error_line(data):
    try:
        config = from_dict(data, "fuzz.toml")
    except ConfigError as err:
        message = str(err)
        assert message.startswith("fuzz.toml: ") and "\n" not in message
    else:
        assert isinstance(config, Config)
