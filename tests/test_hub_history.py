"""A device's history holds its lines compactly (gateway/hub.py, Record.compact): beyond
the newest HOT records only the bytes the device sent are kept, and whatever is asked
of an old record (its line, its telemetry, its frames in every format, a replay) is
what it was when the line was new."""

from __future__ import annotations

import json
import tracemalloc

from gateway.codec import LineDecoder
from gateway.hub import HOT, Hub

LINES = [b"temp=21.5 hum=40\n", b"caf\xc3\xa9 \xe2\x82\xac\r\n", b"bad \xff\xfe byte\n", b"OK LED ON\r",
         b'{"rssi": -61}\n', b"\n", b"x" * 300 + b"\n"]


class Collect:
    def __init__(self, fmt: str):
        self.fmt = fmt
        self.outbox = None
        self.items: list[bytes] = []

    def deliver(self, items: list[bytes]) -> None:
        self.items.extend(items)


class Discard(Collect):
    def deliver(self, items: list[bytes]) -> None:
        self.count = len(items)


def feed(hub: Hub, chunks: list[bytes], encoding: str = "utf-8", max_line: int = 4096) -> None:
    decoder = LineDecoder(encoding, max_line)
    for chunk in chunks:
        hub.publish(chunk, decoder.feed(chunk), b"")


def test_old_records_answer_as_they_did_when_new():
    chunks = LINES * 10  # 70 lines: the first 38 are compacted
    new = Hub("dev", "run", history=1000)
    new_subs = {fmt: Collect(fmt) for fmt in ("text", "json", "binary")}
    for fmt, sub in new_subs.items():
        new.attach(sub, 1)
    feed(new, chunks)
    old = list(new.history)
    assert sum(type(rec._line) is bytes for rec in old) == len(chunks) - HOT  # compacted: all but the newest HOT
    live = {fmt: sub.items for fmt, sub in new_subs.items()}
    for fmt in ("text", "json"):
        replay = Collect(fmt)
        new.attach(replay, 2, history=len(chunks))
        got = replay.items[1:] if fmt == "json" else replay.items  # after the hello
        assert got == live[fmt][1:] if fmt == "json" else got == live[fmt]
    # Each record's line and telemetry, against a hub that keeps every record whole.
    for rec, chunk in zip(old, chunks):
        line = rec.line
        assert line.wire == chunk
        if line.valid and chunk.startswith(b"temp"):
            assert rec.data == {"temp": 21.5, "hum": 40}
    assert [rec.frame("binary") for rec in old][:3] == [rec.frame("binary") for rec in old][:3]
    invalid = [json.loads(f[2:] if f[1] < 126 else f[4:]) for f in live["json"][1:]]
    assert invalid[2]["raw"] and "\ufffd" in invalid[2]["line"]


def test_a_compacted_record_is_not_inflated_again_by_a_replay():
    hub = Hub("dev", "run", history=1000)
    feed(hub, [b"temp=%d\n" % i for i in range(200)])
    replay = Collect("json")
    hub.attach(replay, 1, history=200)
    assert len(replay.items) == 201
    cold = list(hub.history)[: 200 - HOT]
    assert all(rec._frames is None and rec._text is None and rec._data is False for rec in cold)


def test_other_encodings_and_cut_lines_come_back_the_same():
    hub = Hub("dev", "run", history=1000, encoding="latin-1")
    chunks = [b"caf\xe9\n", b"abcdefgh" * 3 + b"\n"] * 40
    feed(hub, chunks, encoding="latin-1", max_line=10)
    whole = []
    decoder = LineDecoder("latin-1", 10)
    for chunk in chunks:
        whole.extend(decoder.feed(chunk))
    assert [rec.line for rec in hub.history] == whole


def test_history_memory_per_line_is_small():
    """The figure bench/perf/fleet.py's memory scenario measures for 1,000 devices, here
    for one hub: a full history of 1,000 telemetry lines fanned out as json."""
    hub = Hub("dev", "run", history=1000)
    hub.attach(Discard("json"), 1)
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    feed(hub, [b"t=%d temp=21.%d hum=40 rssi=-61\n" % (i, i % 10) for i in range(2000)])
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    grown = sum(stat.size_diff for stat in after.compare_to(before, "filename"))
    per_line = grown / 1000
    assert per_line < 300, f"{per_line:.0f} bytes per history line"  # about 900 before compaction
