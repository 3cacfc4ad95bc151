"""Which parts of a text are code: its comments and string literals, found by one cheap scan that every layer shares.

Not a tokenizer: it need only not be fooled by `"("`, `# (see below:` or `'{'`, in any language, from any window of
a file. A `Lexicon` says what a language writes as a comment and a string; the scan is one regular expression over
the text, cheap enough for every keystroke. Its rules:

- strings honour backslash escapes (a backslash before a line break continues the string);
- a `"` or `'` string not closed on its line ends there, as a tokenizer recovers: a stray quote spoils one line;
- triple quotes, backticks and block comments span lines, and run to the end of the text when never closed;
- with `char_literals`, `'` opens only a one-character literal (`'x'`, `'\\n'`): any other `'` is code (a Rust
  lifetime, `'a`);
- with `window` (the text is cut from a file at arbitrary offsets, such as the cursor), a string or block comment
  that does not close is code: a string the cut splits then reads the same on both sides of the cut.

Callers: `dg_model.stops` (whether a middle leaves a bracket open), `dg_lsp.postprocess` (bracket balancing) and
`dg_lsp.repairs` (bracket and operator repairs outside strings).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal, NamedTuple

Kind = Literal["comment", "string", "open", "bracket"]  # "open": a string its line (or the text) ends inside
OPENERS = "([{"


@dataclass(frozen=True)
class Lexicon:
    line_comment: str = "#"  # "" for none
    block_comments: bool = False  # /* ... */
    triple_quotes: bool = True  # """ and ''' (Python)
    char_literals: bool = False  # ' only in 'x' and '\n' (C, C++, Go, Java, Rust)
    window: bool = False  # a string or block comment that does not close is code


PYTHON = Lexicon()


class Token(NamedTuple):
    start: int
    end: int
    kind: Kind


def scan(text: str, lexicon: Lexicon = PYTHON) -> Iterator[Token]:
    """The comments, string literals and brackets of `text` in order; what lies between them is code. A bracket is
    one character, in code."""
    pattern, kinds = _pattern(lexicon)
    for m in pattern.finditer(text):
        assert m.lastindex is not None  # every alternative is a group
        yield Token(m.start(), m.end(), kinds[m.lastindex - 1])


def code_mask(text: str, lexicon: Lexicon = PYTHON) -> list[bool]:
    """Per character: is it code (not inside a string literal or a comment)?"""
    mask = [True] * len(text)
    for t in scan(text, lexicon):
        if t.kind != "bracket":
            mask[t.start : t.end] = [False] * (t.end - t.start)
    return mask


def brackets(text: str, lexicon: Lexicon = PYTHON) -> Iterator[tuple[int, str]]:
    """The brackets in code, as (offset, character)."""
    return ((t.start, text[t.start]) for t in scan(text, lexicon) if t.kind == "bracket")


@functools.cache
def _pattern(lexicon: Lexicon) -> tuple[re.Pattern[str], tuple[Kind, ...]]:
    """The scan: one group per alternative; and the kind of token each group is, in order."""
    # (kind, regex, complete: False for a string or block comment that its line or the text ends inside): at one
    # offset the first that matches wins. Possessive runs (`++`, `*+`) never backtrack into a string's body.
    parts: list[tuple[Kind, str, bool]] = []
    if lexicon.line_comment:
        parts.append(("comment", re.escape(lexicon.line_comment) + r"[^\n]*+", True))
    if lexicon.block_comments:
        parts += [("comment", r"/\*[\s\S]*?\*/", True), ("comment", r"/\*[\s\S]*+", False)]
    if lexicon.triple_quotes:
        for q in ('"', "'"):
            body = rf"(?:[^{q}\\]++|\\[\s\S]|{q}(?!{q}{q}))*+"
            parts += [("string", f"{q * 3}{body}{q * 3}", True), ("open", f"{q * 3}{body}\\\\?", False)]
    for q in '"' if lexicon.char_literals else "\"'":
        body = rf"(?:[^{q}\\\n]++|\\[\s\S])*+"
        parts += [("string", f"{q}{body}{q}", True), ("open", f"{q}{body}\\\\?", False)]
    if lexicon.char_literals:
        parts.append(("string", r"'(?:\\.|[^'\\\n])'", True))
    body = r"(?:[^`\\]++|\\[\s\S])*+"
    parts += [("string", f"`{body}`", True), ("open", f"`{body}\\\\?", False)]
    parts.append(("bracket", r"[()\[\]{}]", True))
    kept = [(kind, regex) for kind, regex, complete in parts if complete or not lexicon.window]
    pattern = re.compile("|".join(f"({regex})" for _, regex in kept))
    return pattern, tuple(kind for kind, _ in kept)
