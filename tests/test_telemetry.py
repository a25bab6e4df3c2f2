"""Telemetry parsing (SPEC section 5): a line in, values out."""

from __future__ import annotations

import pytest

from gateway.telemetry import metrics, parse


@pytest.mark.parametrize("line, expected", [
    ("temp=21.53 hum=40.2 led=0 uptime=12", {"temp": 21.53, "hum": 40.2, "led": 0, "uptime": 12}),
    ("temp:21.5, hum:40", {"temp": 21.5, "hum": 40}),
    ("a=1,b=2", {"a": 1, "b": 2}),
    ("on=true off=false", {"on": True, "off": False}),
    ('mode=auto name="a b"', {"mode": "auto", "name": "a b"}),
    ('{"temp": 21.5, "env": {"hum": 40, "ok": true}}', {"temp": 21.5, "env.hum": 40, "env.ok": True}),
    ("t=1 v=-0.0100", {"t": 1, "v": -0.01}),
])
def test_telemetry_lines(line, expected):
    assert parse(line) == expected


@pytest.mark.parametrize("line", [
    "PONG", "OK LED ON", "ERR unknown command: FOO", "", "   ", "[1, 2]", "{broken",
    "temp=", "hello world=1", "=5",
])
def test_not_telemetry(line):
    assert parse(line) is None


def test_metrics_keep_numbers_and_booleans():
    assert metrics({"t": 1, "on": True, "off": False, "name": "x", "v": 2.5}) == {"t": 1.0, "on": 1.0, "off": 0.0, "v": 2.5}


def test_non_finite_json_numbers_are_not_metrics():
    assert parse('{"a": NaN, "b": 1}') == {"b": 1}


def test_numbers_are_ascii_digits_only():
    from gateway.telemetry import parse

    assert parse("a=12 b=-3 c=1.5e3 d=.5 e=1_000 f=\u0661\u0662 g=\uff11 h=nan") == {
        "a": 12, "b": -3, "c": 1500.0, "d": 0.5, "e": "1_000", "f": "\u0661\u0662", "g": "\uff11", "h": "nan"}
