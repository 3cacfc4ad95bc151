"""Token counts for a model served over HTTP (remote.py), without its tokenizer in this process.

The context builder counts 5-15 texts per keystroke, so a count must rarely wait for the server. Best first:
1. a local copy of the model's tokenizer (`remote.tokenizer`, the served model's folder, or the Hugging Face cache),
   when its count of a probe text matches the server's /tokenize (or the server has none): exact, no round trip;
2. the server's /tokenize (vLLM serves it next to /v1), asked for the token strings too: a text it has tokenized
   (exact) is kept with its tokens' character offsets, and a later text made of runs of kept texts (the context
   builder counts ~9 cuts and joins of the same windows per completion) is counted from those offsets with no round
   trip, exact or a little high (`count_pieces`). A few new lines in it count as a bound while the text is
   tokenized in the background; only a text mostly new waits for a request (0.2 per completion typing down a file);
3. an estimate of CHARS_PER_TOKEN characters per token.
"""

from __future__ import annotations

import bisect
import logging
import math
from functools import lru_cache
from itertools import accumulate
from pathlib import Path

from dg_model.remote_errors import RemoteError

log = logging.getLogger(__name__)

# Code averages 3.5-4 characters per BPE token; counting a little high keeps the prompt inside the model's window.
CHARS_PER_TOKEN = 3.0
SPAN_TEXTS = 16  # tokenized texts kept with their token offsets, to count texts made of them without a round trip
MAX_PIECES = 16  # a text counted from kept texts may join this many runs of them (a scope's header lines)
MIN_PIECE = 16  # characters: a shorter run found in a kept text is more likely chance than the same text
NEW_SHARE = 0.25  # a text at most this share of which was never tokenized is counted at once (see count_pieces)

Spans = list[tuple[str, list[int]]]  # tokenized texts, newest last, each with its tokens' end offsets


def find_tokenizer(configured: str | None, model: str):
    """(tokenizers.Tokenizer, its path) of the served model on this disk, or (None, None). Never downloads."""
    from tokenizers import Tokenizer

    places: list[Path] = []
    if configured:
        places.append(Path(configured).expanduser())
    elif Path(model).expanduser().is_dir():  # `vllm serve /path/to/model` serves it under that name
        places.append(Path(model).expanduser())
    else:
        try:
            from huggingface_hub import try_to_load_from_cache

            cached = try_to_load_from_cache(model, "tokenizer.json")
            if isinstance(cached, str):
                places.append(Path(cached))
        except Exception as exc:  # noqa: BLE001 - not a hub id, no hub library: no cached tokenizer
            log.debug("no cached tokenizer for %s: %s", model, exc)
    for place in places:
        file = place / "tokenizer.json" if place.is_dir() else place
        if file.is_file():
            return Tokenizer.from_file(str(file)), str(file)
    if configured:
        raise RemoteError("config", f"remote.tokenizer: no tokenizer.json at {configured}")
    return None, None


def estimate_tokens(text: str) -> int:
    return math.ceil(len(text) / CHARS_PER_TOKEN)


def keep(spans: Spans, text: str, ends: list[int], limit: int = SPAN_TEXTS) -> Spans:
    """`spans` with `text` the newest, at most `limit` texts: a new list, so a count on another thread never sees
    one half changed."""
    kept = [(r, e) for r, e in spans if r not in text]  # a kept text inside this one adds nothing
    return [*kept[max(0, len(kept) - limit + 1) :], (text, ends)]


def count_pieces(
    text: str, spans: Spans, max_pieces: int = MAX_PIECES, new_share: float = NEW_SHARE
) -> tuple[int, bool] | None:
    """A count of `text` from the kept tokenized texts `spans`, kept at or above the tokenizer's (the context budget
    must hold), and whether `text` holds new lines; None when too little of `text` has been tokenized for one.

    `text` is cut into runs, each the longest found in one kept tokenized text and counted from its token offsets
    (`_span_tokens`: a token cut by the run's end counts twice). Lines found in none are new text: when they are
    at most NEW_SHARE of `text`, each counts one token per UTF-8 byte (a bound no byte-level or byte-fallback
    tokenizer exceeds, so the context fitter leaves them out rather than overrun its budget); the caller then
    tokenizes `text` in the background, so the next count of it, or of text around it, comes from its offsets."""
    if not spans:
        return None
    total, new, pos, pieces = 0, 0, 0, 0
    while pos < len(text):
        pieces += 1
        if pieces > max_pieces:
            return None
        length, ends, at = 0, [], -1
        for ref, e in reversed(spans):  # newest first: the likeliest to hold the rest of the text
            found, where = _longest_at(text, pos, ref, max(length + 1, min(MIN_PIECE, len(text) - pos)))
            if found > length:
                length, ends, at = found, e, where
                if pos + length == len(text):
                    break
        if length:
            total += _span_tokens(ends, at, at + length)
            pos += length
            continue
        line_end = text.find("\n", pos + 1)
        line_end = len(text) if line_end < 0 else line_end
        new += line_end - pos
        if new > new_share * len(text):
            return None
        total += len(text[pos:line_end].encode()) + 1  # +1: a tokenizer may add a prefix space to a text
        pos = line_end
    return total, new > 0


def _longest_at(text: str, pos: int, ref: str, at_least: int) -> tuple[int, int]:
    """(length, where in `ref`) of the longest run of `text` from `pos` found in `ref`, if `at_least` long; else (0,
    -1)."""
    rest = len(text) - pos
    if at_least > rest or (where := ref.find(text[pos : pos + at_least])) < 0:
        return 0, -1
    if (whole := ref.find(text[pos:])) >= 0:
        return rest, whole
    good, bad = at_least, rest  # text[pos:pos+good] is in ref, text[pos:pos+bad] is not
    while bad - good > 1:
        mid = (good + bad) // 2
        if (at := ref.find(text[pos : pos + mid])) >= 0:
            good, where = mid, at
        else:
            bad = mid
    return good, where


def _span_tokens(ends: list[int], start: int, end: int) -> int:
    """Tokens of `ref[start:end]` for a tokenized `ref` (its tokens' end offsets: `ends`), meant to be at least as
    many as the tokenizer gives that text alone: the tokens the span overlaps, a token cut at either end counted twice
    (its part may re-tokenize as two). Exact when the cuts fall on token boundaries; a cut at a line start usually
    splits a newline-and-indent token whose indent is one token, 1 high. Not a proof: a part re-tokenizing as three,
    or two runs joining into more tokens than both, would count low; on the stdlib files of tests/test_remote.py
    (budgets 128-2048, jumps and typing) no count was."""
    first = bisect.bisect_right(ends, start)  # the first token ending past `start`
    last = bisect.bisect_left(ends, end)  # the first token reaching `end`
    count = last - first + 1
    count += (ends[first - 1] if first else 0) < start  # the first token starts before the span
    count += ends[last] > end  # the last token runs past it
    return count


@lru_cache(maxsize=1)
def _byte_level() -> dict[str, int]:
    """GPT-2's byte-level BPE alphabet: the character each byte is written as in a token string -> the byte."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[chr(b)] = b
        else:
            chars[chr(256 + extra)] = b
            extra += 1
    return chars


@lru_cache(maxsize=1)
def _byte_table() -> dict[int, int]:
    """`str.translate` table: a byte-level token string -> one character per byte, with the byte's code."""
    return {ord(ch): b for ch, b in _byte_level().items()}


def _token_bytes(token: str) -> bytes:
    byte_level = _byte_level()
    if all(ch in byte_level for ch in token):
        return bytes(byte_level[ch] for ch in token)
    if len(token) == 6 and token.startswith("<0x") and token.endswith(">"):  # SentencePiece byte fallback
        try:
            return bytes([int(token[3:5], 16)])
        except ValueError:
            pass
    return token.replace("\u2581", " ").encode()


def token_ends(text: str, token_strs) -> list[int] | None:
    """Each token's end offset in `text` (characters), from a /tokenize answer's token strings (byte-level BPE or
    SentencePiece spellings); None when they do not spell `text` (another spelling, or no token strings)."""
    if not isinstance(token_strs, list) or not all(isinstance(t, str) for t in token_strs):
        return None
    want = text.encode()
    try:  # byte-level BPE, the common case, without a loop in Python: one character per byte
        got = "".join(token_strs).translate(_byte_table()).encode("latin-1")
    except UnicodeEncodeError:
        got = None
    if got == want:
        byte_ends = list(accumulate(map(len, token_strs)))
    else:
        pieces = [_token_bytes(t) for t in token_strs]
        got = b"".join(pieces)
        if got != want:
            if got == b" " + want and pieces and pieces[0][:1] == b" ":  # a prefix space the tokenizer added
                pieces[0] = pieces[0][1:]
            else:
                return None
        byte_ends = list(accumulate(len(p) for p in pieces))
    if len(want) == len(text):
        return byte_ends
    char_ends = list(accumulate(len(ch.encode()) for ch in text))  # a token ending inside a character: round up
    return [bisect.bisect_left(char_ends, b) + 1 if b else 0 for b in byte_ends]
