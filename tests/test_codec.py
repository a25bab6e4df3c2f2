"""The line codec: bytes in, values out, no threads."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.codec import LineDecoder, LineError, check_line, encode_line, split_client_text


def texts(lines):
    return [line.text for line in lines]


@pytest.mark.parametrize("data, expected", [
    (b"a\nb\n", ["a", "b"]),
    (b"a\r\nb\r\n", ["a", "b"]),
    (b"a\rb\r", ["a", "b"]),
    (b"a\n\nb\n", ["a", "", "b"]),
    (b"\r\n\r\n", ["", ""]),
    (b"a\n\rb\n", ["a", "", "b"]),
    (b"mixed\r\nend\rlast\n", ["mixed", "end", "last"]),
])
def test_line_ends(data, expected):
    assert texts(LineDecoder().feed(data)) == expected


@pytest.mark.parametrize("data, expected", [
    (b"PONG\n", [("PONG", b"\n")]),
    (b"PONG\r\n", [("PONG", b"\r\n")]),
    (b"\n", [("", b"\n")]),
    (b"\r\n", [("", b"\r\n")]),
    (b"a\rb\n", [("a", b"\r"), ("b", b"\n")]),  # a CR inside is a line end of its own
    (b"a\r\r\n", [("a", b"\r"), ("", b"\r\n")]),
    (b"0123456789\n", [("01234", b""), ("56789", b"\n")]),  # over max_line: cut
    (b"01234\r\n", [("01234", b"\r\n")]),  # exactly max_line
])
def test_a_chunk_that_is_one_line(data, expected):
    """The common case of a reply read whole (a shortcut in feed()), and its edges."""
    d = LineDecoder(max_line=5)
    assert [(line.text, line.end) for line in d.feed(data)] == expected
    assert d.pending == b""
    assert texts(d.feed(b"x\n")) == ["x"]  # and nothing was left behind


def test_a_one_line_chunk_after_a_partial_line_or_a_cr():
    d = LineDecoder()
    d.feed(b"par")
    assert [(x.text, x.end) for x in d.feed(b"t\n")] == [("part", b"\n")]
    d.feed(b"a\r")  # the LF of this CRLF may come next: it ends no line of its own
    assert [(x.text, x.end) for x in d.feed(b"\n")] == []
    assert [(x.text, x.end) for x in d.feed(b"b\n")] == [("b", b"\n")]


def test_line_split_across_feeds():
    d = LineDecoder()
    assert d.feed(b"tem") == []
    assert d.pending == b"tem"
    assert texts(d.feed(b"p=21\nhu")) == ["temp=21"]
    assert texts(d.feed(b"m=4")) == []
    assert texts(d.feed(b"0\n")) == ["hum=40"]


def test_crlf_split_across_feeds_is_one_line_end():
    d = LineDecoder()
    assert texts(d.feed(b"a\r")) == ["a"]
    assert texts(d.feed(b"\nb\r")) == ["b"]
    assert texts(d.feed(b"\r\n")) == [""]


def test_terminators_are_kept_for_the_raw_stream():
    lines = LineDecoder().feed(b"a\r\nb\rc\n")
    assert [(line.raw, line.end) for line in lines] == [(b"a", b"\r\n"), (b"b", b"\r"), (b"c", b"\n")]
    assert b"".join(line.wire for line in lines) == b"a\r\nb\rc\n"


def test_over_long_run_is_cut_in_max_line_pieces_and_counted():
    d = LineDecoder(max_line=4)
    lines = d.feed(b"abcdefghij")
    assert [line.raw for line in lines] == [b"abcd", b"efgh"]
    assert d.pending == b"ij"
    assert d.cut_lines == 2
    assert [line.raw for line in d.feed(b"\n")] == [b"ij"]


def test_line_of_exactly_max_line_is_not_cut():
    d = LineDecoder(max_line=4)
    assert [line.raw for line in d.feed(b"abcd\n")] == [b"abcd"]
    assert d.cut_lines == 0


def test_invalid_utf8_is_delivered_with_replacement_and_raw_bytes():
    d = LineDecoder()
    (line,) = d.feed(b"\xff\xfeok\n")
    assert not line.valid
    assert line.text == "\ufffd\ufffdok"
    assert line.raw == b"\xff\xfeok"
    assert d.invalid_lines == 1


def test_other_encodings():
    (line,) = LineDecoder(encoding="latin-1").feed(b"caf\xe9\n")
    assert line.valid and line.text == "caf\xe9"


def test_flush_delivers_the_partial_line_and_reset_drops_it():
    d = LineDecoder()
    d.feed(b"half a li")
    assert texts(d.flush()) == ["half a li"]
    assert d.flush() == []
    d.feed(b"gone")
    d.reset()
    assert d.pending == b"" and d.flush() == []


def test_max_line_must_be_positive():
    with pytest.raises(ValueError):
        LineDecoder(max_line=0)


@given(st.lists(st.binary(max_size=50), max_size=20), st.integers(min_value=1, max_value=30))
def test_decoding_loses_no_byte_whatever_the_chunking(chunks, max_line):
    d = LineDecoder(max_line=max_line)
    lines = []
    for chunk in chunks:
        lines += d.feed(chunk)
    lines += d.flush()
    # Every byte comes out once, in order, but one: the LF of a CRLF split across two
    # feeds (the line already went out with its CR).
    expected, after_cr = b"", False
    for chunk in filter(None, chunks):
        expected += chunk[1:] if after_cr and chunk[:1] == b"\n" else chunk
        after_cr = chunk.endswith(b"\r")
    assert b"".join(line.wire for line in lines) == expected
    assert all(len(line.raw) <= max_line for line in lines)


# -- client lines to device bytes ---------------------------------------------------------


def test_encode_line_appends_eol():
    assert encode_line("LED ON", "utf-8", b"\r\n", 4096) == b"LED ON\r\n"


def test_encode_line_refuses_too_long_and_unencodable():
    with pytest.raises(LineError, match="max_line"):
        encode_line("x" * 5, "utf-8", b"\n", 4)
    with pytest.raises(LineError, match="ascii"):
        encode_line("caf\xe9", "ascii", b"\n", 100)


@pytest.mark.parametrize("line", ["a\nb", "a\r", "\x00"])
def test_check_line_refuses_breaks_and_nul(line):
    with pytest.raises(LineError):
        check_line(line)


def test_split_client_text():
    assert split_client_text("PING") == ["PING"]
    assert split_client_text("PING\n") == ["PING"]
    assert split_client_text("a\r\nb\rc") == ["a", "b", "c"]
    assert split_client_text("") == [""]
