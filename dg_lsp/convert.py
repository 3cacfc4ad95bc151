"""LSP positions and ranges <-> offsets into a document's text, and `Edit`s -> LSP edits.

Offsets are Python string indices (code points). LSP positions count `character` in the negotiated encoding's code
units (utf-16 by default), which pygls' `PositionCodec` counts for us. Lines end at "\\r\\n", "\\r" or "\\n" only, as
the LSP spec says; `str.splitlines` (which pygls uses) also splits at form feeds, "\\x1c".."\\x1e", NEL and U+2028,
which would shift every position after such a character in "binary-looking" or old GNU-style files.

Every conversion in the server goes through `offset_at` / `position_at`, so clamping rules live in one place:
- a line past the end of the document is an error (`PositionError`): there is no sensible place to complete;
- a character past the end of its line means the end of the line (LSP spec);
- a character inside a multi-unit code point (half a surrogate pair) means the start of that code point.
"""

from __future__ import annotations

import re
from bisect import bisect_right
from collections.abc import Sequence

from lsprotocol import types
from pygls.workspace.position_codec import PositionCodec

_LINE_BREAK = re.compile(r"\r\n|\r|\n")
UTF16 = PositionCodec(types.PositionEncodingKind.Utf16)
UTF32 = PositionCodec(types.PositionEncodingKind.Utf32)  # code points: Python string indices (CLI, tests)


class PositionError(ValueError):
    """A position that names no place in the document."""


def line_starts(text: str) -> list[int]:
    """Offsets at which each line starts; always at least one line."""
    return [0] + [m.end() for m in _LINE_BREAK.finditer(text)]


def _line_end(text: str, starts: Sequence[int], line: int) -> int:
    """Offset of the end of `line`'s content, before its line break."""
    if line + 1 < len(starts):
        end = starts[line + 1]
        return end - 2 if text.startswith("\r\n", end - 2) and end - 2 >= starts[line] else end - 1
    return len(text)


def offset_at(
    text: str,
    position: types.Position,
    codec: PositionCodec = UTF16,
    starts: Sequence[int] | None = None,
    *,
    clamp_line: bool = False,
) -> int:
    """The offset `position` names in `text`. Raises `PositionError` for a line past the end unless `clamp_line`."""
    starts = starts if starts is not None else line_starts(text)
    if position.line >= len(starts):
        if clamp_line:
            return len(text)
        raise PositionError(f"line {position.line} is past the end of the document ({len(starts)} lines)")
    start, end = starts[position.line], _line_end(text, starts, position.line)
    want = position.character
    line = text[start:end]
    if want >= codec.client_num_units(line):
        return end
    if codec.encoding == types.PositionEncodingKind.Utf32 or line.isascii():
        return start + want
    units = 0
    for i, ch in enumerate(line):
        step = codec.impl.code_units_for_char(ch)
        if units + step > want:  # `want` falls on or inside this code point: its start
            return start + i
        units += step
    return end


def position_at(
    text: str, offset: int, codec: PositionCodec = UTF16, starts: Sequence[int] | None = None
) -> types.Position:
    starts = starts if starts is not None else line_starts(text)
    assert 0 <= offset <= len(text), (offset, len(text))
    line = bisect_right(starts, offset) - 1
    # An offset between "\r" and "\n" is not a position; it belongs to the end of the line.
    offset = min(offset, _line_end(text, starts, line))
    return types.Position(line=line, character=codec.client_num_units(text[starts[line] : offset]))


def range_at(
    text: str, start: int, end: int, codec: PositionCodec = UTF16, starts: Sequence[int] | None = None
) -> types.Range:
    starts = starts if starts is not None else line_starts(text)
    return types.Range(start=position_at(text, start, codec, starts), end=position_at(text, end, codec, starts))


def offsets_of(
    text: str, rng: types.Range, codec: PositionCodec = UTF16, starts: Sequence[int] | None = None
) -> tuple[int, int]:
    """Offsets of a range; a reversed range is an error rather than silently swapped."""
    starts = starts if starts is not None else line_starts(text)
    start, end = offset_at(text, rng.start, codec, starts), offset_at(text, rng.end, codec, starts)
    if end < start:
        raise PositionError(f"range end {rng.end.line}:{rng.end.character} is before its start")
    return start, end


def text_edit(text: str, start: int, end: int, new_text: str, codec: PositionCodec = UTF16) -> types.TextEdit:
    return types.TextEdit(range=range_at(text, start, end, codec), new_text=new_text)


def apply_change(text: str, change: types.TextDocumentContentChangeEvent, codec: PositionCodec = UTF16) -> str:
    """Apply one didChange content change. Lenient: a range past the end is clamped, since a notification has no
    way to report an error and dropping the change would desynchronize the document for good."""
    if not isinstance(change, types.TextDocumentContentChangePartial):
        return change.text
    starts = line_starts(text)
    start = offset_at(text, change.range.start, codec, starts, clamp_line=True)
    end = max(start, offset_at(text, change.range.end, codec, starts, clamp_line=True))
    return text[:start] + change.text + text[end:]
