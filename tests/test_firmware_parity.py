"""The sample firmware answers like the simulator, and both answer like the docs say.

firmware_notes/protocol.md holds the contract: a command table whose `example in` /
`example out` columns are run here against gateway.simulator.device.SimulatedDevice and
against the MicroPython `Device` (firmware_notes/micropython/gateway_device.py, which
CPython imports because it keeps `machine` and `network` out of module level), plus the
telemetry pattern. No sockets, no sleeps: every device gets a clock the test moves by hand.
The firmware on its real runtimes: tests/test_firmware_sketch.py, test_firmware_micropython.py
and test_firmware_corpus.py.
"""

from __future__ import annotations

import ast
import importlib.util
import itertools
import re
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from gateway.simulator.device import SimulatedDevice

ROOT = Path(__file__).resolve().parents[1]
PROTOCOL = ROOT / "firmware_notes" / "protocol.md"
MICROPYTHON = ROOT / "firmware_notes" / "micropython" / "gateway_device.py"
SIMULATOR = ROOT / "gateway" / "simulator" / "device.py"

START = 1000.0  # not 0, so a device that reads the clock as uptime is caught
EXAMPLE_AT = 12.5  # seconds after start at which the table's examples are sent


def load_micropython():
    spec = importlib.util.spec_from_file_location("firmware_gateway_device", MICROPYTHON)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


MP = load_micropython()


class FakeClock:
    def __init__(self, now: float = START):
        self.now = now

    def __call__(self) -> float:
        return self.now


def ms(clock):
    """The MicroPython Device counts whole milliseconds (its floats have 24 bits)."""
    return lambda: round(clock() * 1000)


DEVICES = {
    "simulator": lambda clock: SimulatedDevice(clock=clock),
    "micropython": lambda clock: MP.Device(clock=ms(clock)),
}


def ms_to_telemetry(dev):
    if isinstance(dev, SimulatedDevice):
        seconds = dev.seconds_to_telemetry()
        return None if seconds is None else round(seconds * 1000)
    return dev.ms_to_telemetry()


# -- reading protocol.md ----------------------------------------------------------------

HEADER = ["line in", "line(s) out", "example in", "example out"]
_CODE = re.compile(r"`([^`]*)`")
_REGEX = re.compile(r"regex `([^`]+)`")


@dataclass(frozen=True)
class Expect:
    """One expected answer line: exactly `text`, or a line `text` fully matches."""

    text: str
    regex: bool = False

    def matches(self, line: str) -> bool:
        if self.regex:
            return re.fullmatch(self.text, line) is not None
        return line == self.text

    def __str__(self) -> str:
        return f"regex {self.text!r}" if self.regex else repr(self.text)


@dataclass(frozen=True)
class Example:
    lineno: int  # in protocol.md
    line_in: str
    line_out: str
    inputs: tuple[str, ...]
    outputs: tuple[Expect, ...]

    @property
    def id(self) -> str:
        return f"L{self.lineno}:{self.inputs[0]}"


def split_row(row: str) -> list[str]:
    """The cells of a markdown table row; `\\|` is a pipe inside a cell."""
    inner = row.strip()
    if not (inner.startswith("|") and inner.endswith("|")):
        raise ValueError(f"not a table row: {row!r}")
    return [cell.strip().replace("\\|", "|") for cell in re.split(r"(?<!\\)\|", inner[1:-1])]


def parse_inputs(cell: str) -> tuple[str, ...]:
    inputs = []
    for entry in cell.split("<br>"):
        m = _CODE.fullmatch(entry.strip())
        if not m:
            raise ValueError(f"example in entry {entry.strip()!r} is not `in backticks`")
        inputs.append(m.group(1))
    return tuple(inputs)


def parse_outputs(cell: str) -> tuple[Expect, ...]:
    if cell.strip() == "(no lines)":
        return ()
    outputs = []
    for entry in (e.strip() for e in cell.split("<br>")):
        if entry == "(empty line)":
            outputs.append(Expect(""))
        elif m := _CODE.fullmatch(entry):
            outputs.append(Expect(m.group(1)))
        elif m := _REGEX.fullmatch(entry):
            re.compile(m.group(1))
            outputs.append(Expect(m.group(1), regex=True))
        else:
            raise ValueError(
                f"example out entry {entry!r} is none of `line`, regex `pattern`, "
                "(empty line), (no lines)"
            )
    return tuple(outputs)


def parse_table(text: str) -> list[Example]:
    """The command table's rows: the table whose header is HEADER."""
    lines = text.splitlines()
    for start, line in enumerate(lines):
        if line.lstrip().startswith("|") and split_row(line) == HEADER:
            break
    else:
        raise ValueError(f"no table with columns {HEADER} in {PROTOCOL.name}")
    examples = []
    for lineno, line in enumerate(lines[start + 2 :], start=start + 3):
        if not line.lstrip().startswith("|"):
            break
        cells = split_row(line)
        if len(cells) != len(HEADER):
            raise ValueError(f"{PROTOCOL.name}:{lineno}: {len(cells)} cells, expected 4")
        try:
            examples.append(
                Example(lineno, cells[0], cells[1], parse_inputs(cells[2]), parse_outputs(cells[3]))
            )
        except ValueError as exc:
            raise ValueError(f"{PROTOCOL.name}:{lineno}: {exc}") from None
    return examples


def telemetry_pattern(text: str) -> str:
    """The ```regex block of the "Periodic telemetry" section."""
    section = text.split("## Periodic telemetry", 1)[1].split("\n## ", 1)[0]
    m = re.search(r"```regex\n(.+?)\n```", section)
    assert m, "no ```regex block in the Periodic telemetry section"
    return m.group(1)


def telemetry_example(text: str) -> str:
    section = text.split("## Periodic telemetry", 1)[1].split("\n## ", 1)[0]
    m = re.search(r"```text\n(.+?)\n```", section)
    assert m, "no ```text example in the Periodic telemetry section"
    return m.group(1)


DOC = PROTOCOL.read_text(encoding="utf-8")
EXAMPLES = parse_table(DOC)
TELEMETRY = telemetry_pattern(DOC)


# -- running examples -------------------------------------------------------------------


def answers(device, inputs) -> list[str]:
    out: list[str] = []
    for line in inputs:
        out.extend(device.handle(line))
    return out


def run_example(make_device, example: Example) -> list[str]:
    clock = FakeClock()
    device = make_device(clock)
    clock.now = START + EXAMPLE_AT
    return answers(device, example.inputs)


def mismatches(example: Example, got: list[str]) -> list[str]:
    """What is wrong with `got` as the answer to `example` (empty: nothing)."""
    problems = []
    if len(got) != len(example.outputs):
        problems.append(f"{len(got)} lines answered, {len(example.outputs)} documented")
    for i, (expect, line) in enumerate(zip(example.outputs, got), start=1):
        if not expect.matches(line):
            problems.append(f"line {i}: {line!r} does not match {expect}")
    return problems


def test_the_table_has_rows():
    assert len(EXAMPLES) >= 10
    for example in EXAMPLES:
        assert example.inputs and example.line_in and example.line_out, example


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("example", EXAMPLES, ids=lambda e: e.id)
def test_documented_example(device, example):
    got = run_example(DEVICES[device], example)
    assert not mismatches(example, got), (
        f"{PROTOCOL.name}:{example.lineno} {list(example.inputs)} -> {got}: "
        f"{mismatches(example, got)}"
    )


def simulator_command_words() -> set[str]:
    """Every `cmd == "WORD"` that SimulatedDevice.handle() tests."""
    words = set()
    for node in ast.walk(ast.parse(SIMULATOR.read_text(encoding="utf-8"))):
        if (
            isinstance(node, ast.Compare)
            and isinstance(node.left, ast.Name)
            and node.left.id == "cmd"
        ):
            for op, right in zip(node.ops, node.comparators):
                if isinstance(op, ast.Eq) and isinstance(right, ast.Constant):
                    words.add(right.value)
    return words


def first_word(line: str) -> str:
    return line.strip().split(" ", 1)[0].upper()


def test_table_covers_every_command_word():
    known = simulator_command_words()
    # If this fails, handle() no longer compares `cmd == "WORD"`: update the finder.
    assert {"PING", "ECHO", "LED", "GET", "SET", "GO"} <= known
    for word in sorted(known):
        working = [
            e
            for e in EXAMPLES
            if all(first_word(line) == word for line in e.inputs)
            and not any(x.text.startswith("ERR ") for x in e.outputs)
        ]
        assert working, f"{PROTOCOL.name} has no example of {word} that works (no ERR)"


def test_table_covers_unknown_commands():
    known = simulator_command_words()
    unknown = [
        (e, line)
        for e in EXAMPLES
        for line in e.inputs
        if first_word(line) not in known
        and Expect(f"ERR unknown command: {line}") in e.outputs
    ]
    assert unknown, f"{PROTOCOL.name} has no example of an unknown command"


# -- the checks can fail ----------------------------------------------------------------


def example_for(line: str) -> Example:
    found = [e for e in EXAMPLES if e.inputs == (line,)]
    assert found, f"{PROTOCOL.name} lost its example row for {line!r}"
    return found[0]


def test_a_wrong_exact_entry_is_caught():
    ping = example_for("PING")
    wrong = replace(ping, outputs=(Expect("PANG"),))
    got = run_example(DEVICES["simulator"], wrong)
    assert mismatches(wrong, got) == ["line 1: 'PONG' does not match 'PANG'"]


def test_a_wrong_regex_entry_is_caught():
    temp = example_for("GET temp")
    wrong = replace(temp, outputs=(Expect(r"temp=\d+\.\d", regex=True),))  # 1 decimal
    assert mismatches(wrong, run_example(DEVICES["simulator"], wrong))


def test_a_wrong_line_count_is_caught():
    go = example_for("GO 3")
    short = replace(go, outputs=go.outputs[:2])
    assert mismatches(short, run_example(DEVICES["micropython"], short))
    nothing = replace(go, outputs=())
    assert mismatches(nothing, run_example(DEVICES["micropython"], nothing))


def test_a_device_that_answers_differently_is_caught():
    class Rude(SimulatedDevice):
        def handle(self, line):
            return ["PANG"] if line == "PING" else super().handle(line)

    ping = example_for("PING")
    assert mismatches(ping, run_example(lambda clock: Rude(clock=clock), ping))


@pytest.mark.parametrize(
    "cell",
    ["PONG", "`PONG", "regex temp=\\d+", "(nothing)", "`a` `b`", "regex `(`"],
)
def test_malformed_out_cells_are_refused(cell):
    with pytest.raises((ValueError, re.error)):
        parse_outputs(cell)


def test_malformed_rows_are_refused():
    good = "| `PING` | `PONG` | `PING` | `PONG` |"
    header = "| " + " | ".join(HEADER) + " |\n|---|---|---|---|\n"
    assert parse_table(header + good)[0].outputs == (Expect("PONG"),)
    with pytest.raises(ValueError, match="backticks"):
        parse_table(header + "| `PING` | `PONG` | PING | `PONG` |")
    with pytest.raises(ValueError, match="3 cells"):
        parse_table(header + "| `PING` | `PONG` | `PING` |")
    with pytest.raises(ValueError, match="no table"):
        parse_table(good)


def test_escaped_pipes_are_part_of_a_cell():
    assert split_row(r"| a | `x\|y` |") == ["a", "`x|y`"]


# -- telemetry --------------------------------------------------------------------------


def test_documented_telemetry_example_matches_the_documented_pattern():
    assert re.fullmatch(TELEMETRY, telemetry_example(DOC))
    assert not re.fullmatch(TELEMETRY, "temp=21.5 hum=40.2 led=0 uptime=12")


@pytest.mark.parametrize("device", DEVICES)
def test_telemetry_lines_match_the_documented_pattern(device):
    clock = FakeClock()
    dev = DEVICES[device](clock)
    for seconds in [0, 0.4, 1, 12.5, 59.9, 100, 250.25, 3600, 86400 * 3 + 0.5]:
        clock.now = START + seconds
        line = dev.telemetry_line()
        assert re.fullmatch(TELEMETRY, line), line
        assert line.endswith(f" led=0 uptime={int(seconds)}")
    list(dev.handle("LED ON"))
    assert " led=1 " in dev.telemetry_line()


@pytest.mark.parametrize("device", DEVICES)
def test_telemetry_comes_every_interval_seconds(device):
    clock = FakeClock()
    dev = DEVICES[device](clock)

    def due_at(seconds):
        clock.now = START + seconds
        return dev.telemetry_due()

    assert dev.interval == 1.0
    assert ms_to_telemetry(dev) == 1000
    assert due_at(0.999) is None
    assert re.fullmatch(TELEMETRY, due_at(1.0))
    assert due_at(1.0) is None
    assert due_at(1.999) is None
    assert due_at(2.0) is not None
    # A busy device sends one line, not the ones it missed.
    assert due_at(10.5) is not None
    assert due_at(10.5) is None
    assert due_at(11.5) is not None
    # SET interval restarts the schedule; 0 stops it.
    assert list(dev.handle("SET interval 0.5")) == ["OK interval 0.5"]
    assert due_at(11.9) is None
    assert due_at(12.0) is not None
    assert list(dev.handle("SET interval 0")) == ["OK interval 0"]
    assert ms_to_telemetry(dev) is None
    assert due_at(1000) is None


# -- the MicroPython Device against the simulator, beyond the table ----------------------

TRICKY = [
    "", " ", "\t", "PING", "ping", " PING ", "PING x", "PING\t", "PINGPING",
    "ECHO", "ECHO ", "ECHO  two  spaces ", "echo MiXeD", " ECHO leading", "ECHO\ttab",
    "ECHO ünïcödé ✓", "ECHO ECHO", "LED", "LED ON", "led off", "LED  on ", "LED ONN",
    "LED ON OFF", "GET", "GET temp", "GET  hum ", "GET led", "GET uptime", "GET Temp",
    "GET temp hum", "get uptime", "SET", "SET interval", "SET interval 2",
    "SET  interval   2.50 ", "SET interval -0", "SET interval 1e3", "SET interval nan",
    "SET interval -inf", "SET interval 1e999", "SET INTERVAL 1", "SET interval 1 2",
    "SET interval 0.25", "SET interval 0", "SET interval .5", "GO", "GO 0", "GO 1",
    "GO +2", "GO 007", "GO -0", "GO 10000000", "GO 10000001", "GO 2.0", "GO ten",
    "GO 1 2", "HELLO", "FOO bar", "\x00", "ERR", "OK LED ON", "led=1",
    # ASCII only (protocol.md): no Unicode spaces, case-folding, digits or underscores
    "PING\xa0", "\u2003PING", "PING\u3000", "p\u0131ng", "LED \u00f6n", "GO \u0663", "GO 1_0",
    "GO \uff11", "SET interval 1_0", "SET interval \u0661", "SET interval .", "SET interval e3",
    "SET interval 1e", "SET interval +.5e-1", "SET\u2003interval 2", "SET interval\u20032", "\x1cPING",
    "GO 00000000000000000003", "GO " + "9" * 5000, "GO -0000", "SET interval 0x10", "SET interval Infinity",
]


def test_micropython_answers_tricky_lines_like_the_simulator():
    clocks = {name: FakeClock() for name in DEVICES}
    devices = {name: make(clocks[name]) for name, make in DEVICES.items()}
    for step, line in enumerate(TRICKY, start=1):
        seen = {}
        for name, dev in devices.items():
            clocks[name].now = START + 0.7 * step
            answer = list(itertools.islice(dev.handle(line), 5))  # GO 10000000: a few
            seen[name] = (answer, dev.telemetry_due(), ms_to_telemetry(dev))
        assert seen["micropython"] == seen["simulator"], f"after {line!r}"


def test_go_burst_is_lazy_and_exact():
    dev = MP.Device(clock=ms(FakeClock()))
    burst = dev.handle("GO 10000000")
    assert not isinstance(burst, list)
    first = list(itertools.islice(burst, 3))
    assert first == ["t=1 v=0.0100", "t=2 v=0.0200", "t=3 v=0.0300"]
    sim = list(SimulatedDevice(clock=FakeClock()).handle("GO 1000"))
    assert list(dev.handle("GO 1000")) == sim


# -- the MicroPython line handling --------------------------------------------------------


def test_line_buffer_accepts_lf_crlf_and_cr():
    buf = MP.LineBuffer(max_line=16)
    assert buf.feed(b"PING\nECHO a\r\nGO 1\rLED") == ["PING", "ECHO a", "GO 1"]
    assert buf.feed(b" ON\r") == ["LED ON"]
    assert buf.feed(b"\nPING\r") == ["PING"]  # the LF of a split CRLF ends nothing
    assert buf.feed(b"\r\n\n") == ["", ""]
    assert buf.finish() == []


def test_line_buffer_drops_an_overlong_line_and_stays_bounded():
    buf = MP.LineBuffer(max_line=8)
    assert buf.feed(b"12345678\n") == ["12345678"]
    assert buf.feed(b"123456789" * 100) == []
    assert len(buf._buf) <= 8
    assert buf.feed(b"\nPING\n") == [None, "PING"]
    assert buf.feed(b"x" * 20) == []
    assert buf.finish() == [None]


def test_line_buffer_finish_ends_a_message_and_decodes_bad_bytes():
    buf = MP.LineBuffer()
    assert buf.feed(b"PING\nECHO \xff\xfeok") == ["PING"]
    assert buf.finish() == ["ECHO \ufffd\ufffdok"]
    assert buf.finish() == []


def test_link_answers_and_sends_telemetry():
    clock = FakeClock()
    sent: list[str] = []
    link = MP.Link(MP.Device(clock=ms(clock)), sent.append, max_line=32)
    link.feed(b"PING\r\nLED O")
    assert sent == ["PONG"]
    link.feed(b"N\rGO 2\n")
    assert sent == ["PONG", "OK LED ON", "led=1", "t=1 v=0.0100", "t=2 v=0.0200"]
    sent.clear()
    link.message(b"ECHO " + b"x" * 40)
    link.message(b"GET led")
    assert sent == [MP.TOO_LONG, "led=1"]
    sent.clear()
    assert link.wait_ms(cap_ms=5000) == 1000  # whole ms: never wakes before it is due
    assert link.wait_ms(cap_ms=200) == 200
    link.tick()
    assert sent == []
    clock.now = START + 1.0
    link.tick()
    assert len(sent) == 1 and re.fullmatch(TELEMETRY, sent[0])
    link.send = None  # nobody listening: lines are dropped, the schedule goes on
    clock.now = START + 2.0
    link.tick()
    link.feed(b"PING\n")
    assert len(sent) == 1


def test_led_callback_and_sensor():
    changes = []
    # Not 51.25: "%.1f" rounds that tie to 51.3 on MicroPython, 51.2 on CPython
    dev = MP.Device(clock=ms(FakeClock()), on_led=changes.append, sensor=lambda: (23.456, 51.24))
    list(dev.handle("LED ON"))
    list(dev.handle("LED OFF"))
    assert changes == [1, 0]
    assert dev.telemetry_line() == "temp=23.46 hum=51.2 led=0 uptime=0"


def test_micropython_module_stays_importable_and_plain():
    """Top level imports only what every port has; no syntax older MicroPython lacks."""
    tree = ast.parse(MICROPYTHON.read_text(encoding="utf-8"))
    top = {
        alias.name for node in tree.body if isinstance(node, ast.Import) for alias in node.names
    }
    assert top == {"math", "time"}
    assert not [n for n in tree.body if isinstance(n, ast.ImportFrom)]
    for node in ast.walk(tree):
        assert not isinstance(node, (ast.JoinedStr, ast.AnnAssign)), node.lineno
        if isinstance(node, ast.FunctionDef):
            assert node.returns is None, node.name
            assert all(a.annotation is None for a in node.args.args), node.name
    with pytest.raises(ValueError):
        MP.Device(interval=float("nan"))
