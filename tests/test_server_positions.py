"""Positions: `dg_lsp.convert` on its own, then encodings, surrogates, CRLF and odd line breaks end to end."""

from __future__ import annotations

import ast

import pytest
from conftest import apply_edits, fake_spec, offset_of, session
from fake_engine import read_events
from hypothesis import given, settings
from hypothesis import strategies as st
from lsprotocol import types
from pygls.workspace.position_codec import PositionCodec
from pytest_lsp import client_capabilities

from dg_lsp import convert

UTF8 = PositionCodec(types.PositionEncodingKind.Utf8)
CODECS = [convert.UTF16, UTF8, convert.UTF32]


def pos(line: int, character: int) -> types.Position:
    return types.Position(line=line, character=character)


# -- units --


def test_only_lsp_line_breaks_split_lines():
    text = "a\nb\r\nc\rd\x0ce\u2028f\x1cg\x85h"
    assert convert.line_starts(text) == [0, 2, 5, 7]
    assert convert.offset_at(text, pos(3, 100)) == len(text)  # form feed, U+2028, ... stay inside line 3


def test_character_past_the_line_end_clamps_before_the_line_break():
    text = "ab\r\ncd"
    assert convert.offset_at(text, pos(0, 99)) == 2
    assert convert.offset_at(text, pos(1, 99)) == 6


def test_line_past_the_end_is_an_error_unless_clamped():
    with pytest.raises(convert.PositionError):
        convert.offset_at("a\n", pos(2, 0))
    assert convert.offset_at("a\n", pos(1, 0)) == 2  # the empty last line exists
    assert convert.offset_at("a\n", pos(5, 0), clamp_line=True) == 2
    assert convert.offset_at("", pos(0, 3)) == 0


def test_surrogate_pairs_and_multibyte_characters():
    text = 'x = "😀é"'
    assert convert.offset_at(text, pos(0, 5)) == 5  # utf-16: the emoji starts at 5 and takes 5-6
    assert convert.offset_at(text, pos(0, 6)) == 5  # inside the pair: its start
    assert convert.offset_at(text, pos(0, 7)) == 6
    assert convert.offset_at(text, pos(0, 8)) == 7  # after é
    assert convert.offset_at(text, pos(0, 7), UTF8) == 5  # utf-8: the emoji is bytes 5-8; inside it: its start
    assert convert.offset_at(text, pos(0, 9), UTF8) == 6
    assert convert.offset_at(text, pos(0, 11), UTF8) == 7
    assert convert.position_at(text, 7) == pos(0, 8)
    assert convert.position_at(text, 7, UTF8) == pos(0, 11)
    assert convert.position_at(text, 7, convert.UTF32) == pos(0, 7)


def test_offset_between_cr_and_lf_is_the_end_of_the_line():
    assert convert.position_at("ab\r\ncd", 3) == pos(0, 2)


def test_reversed_range_is_an_error():
    with pytest.raises(convert.PositionError):
        convert.offsets_of("abc", types.Range(start=pos(0, 2), end=pos(0, 1)))


PIECES = ["a", " ", "\n", "\r", "\r\n", "é", "😀", "\x0c", "\u2028", "\t"]
texts = st.lists(st.sampled_from(PIECES), max_size=40).map("".join)


@settings(max_examples=200, deadline=None)
@given(texts, st.data())
def test_positions_round_trip(text, data):
    offset = data.draw(st.integers(0, len(text)))
    if 0 < offset < len(text) and text[offset - 1] == "\r" and text[offset] == "\n":
        offset -= 1  # between "\r" and "\n" is not a position
    for codec in CODECS:
        assert convert.offset_at(text, convert.position_at(text, offset, codec), codec) == offset


@settings(max_examples=200, deadline=None)
@given(texts, st.data(), st.text(alphabet="ab\n😀", max_size=5))
def test_incremental_change_matches_an_editor(text, data, new):
    a, b = sorted(data.draw(st.integers(0, len(text))) for _ in range(2))
    start, end = convert.position_at(text, a), convert.position_at(text, b)
    change = types.TextDocumentContentChangePartial(range=types.Range(start=start, end=end), text=new)
    expected = apply_edits(text, [types.TextEdit(range=change.range, new_text=new)])  # independent implementation
    assert convert.apply_change(text, change) == expected
    assert offset_of(text, start) == convert.offset_at(text, start)


def test_change_past_the_end_is_clamped():
    change = types.TextDocumentContentChangePartial(range=types.Range(start=pos(9, 0), end=pos(9, 0)), text="!")
    assert convert.apply_change("ab\n", change) == "ab\n!"


# -- end to end --


async def _start_of_last_job(record) -> dict:
    return [e for e in read_events(record) if e["event"] == "start"][-1]


async def test_utf8_positions_when_negotiated(py_uri, tmp_path):
    record = tmp_path / "events.jsonl"
    text = 'def f():\n    return "é" + \n'
    caps = client_capabilities("neovim@v0.11")
    async with session(fake_spec(text='"x"', record=str(record)), capabilities=caps) as s:
        s.open(py_uri, text)
        (item,) = (await s.inline(py_uri, 1, 18)).items  # the line is 17 characters, 18 utf-8 bytes
        assert item.range.start == pos(1, 18)
        assert (await _start_of_last_job(record))["prefix_tail"].endswith('return "é" + ')


async def test_position_inside_a_surrogate_pair_is_clamped(py_uri, tmp_path):
    record = tmp_path / "events.jsonl"
    text = 's = "😀"\n'
    async with session(fake_spec(text="x", record=str(record))) as s:
        s.open(py_uri, text)
        result = await s.inline(py_uri, 0, 6)  # between the two utf-16 units of the emoji
        assert (await _start_of_last_job(record))["prefix_tail"].endswith('s = "')
        assert result is None or result.items[0].range.start == pos(0, 5)


async def test_character_past_the_end_of_the_line_means_its_end(py_uri):
    text = "def add(a, b):\n    return \n"
    async with session(fake_spec()) as s:
        s.open(py_uri, text)
        (item,) = (await s.inline(py_uri, 1, 999)).items
        assert item.range.start == pos(1, 11)


async def test_crlf_file_keeps_its_line_endings(py_uri):
    text = "def double(x):\r\n    \r\n\r\nprint(double(2))\r\n"
    async with session(fake_spec(text="y = x * 2\n    return y")) as s:
        s.open(py_uri, text)
        (item,) = (await s.inline(py_uri, 1, 4)).items
        assert "\n" not in item.insert_text.replace("\r\n", "")  # no bare LF inside a CRLF file
        new = apply_edits(text, [types.TextEdit(range=item.range, new_text=item.insert_text)])
        assert "    y = x * 2\r\n    return y\r\n" in new
        ast.parse(new)


async def test_form_feed_does_not_shift_lines(py_uri, tmp_path):
    # pygls' own sync splits lines at form feeds; an edit below one would land on the wrong line.
    record = tmp_path / "events.jsonl"
    text = "import os\n\x0c\ndef f():\n    return \n"
    async with session(fake_spec(text="os.sep", record=str(record))) as s:
        s.open(py_uri, text)
        s.change(py_uri, [types.TextEdit(range=types.Range(start=pos(3, 11), end=pos(3, 11)), new_text="1 + ")])
        await s.inline(py_uri, 3, 15)
        assert (await _start_of_last_job(record))["prefix_tail"].endswith("def f():\n    return 1 + ")
