"""Candidate repairs of a block: small edits proposed from exact diagnoses and from the model's own reading.

Pure functions, text in, candidate blocks out. Nothing here decides: `fix.py` keeps the candidates the checks accept
(`diagnose.py`) and the model prefers. Proposals are cheap and many; each kind answers one way code slips:

- `renames`: a name that is undefined, unused or written only once becomes a close spelling of a name the file uses
  (or a keyword / builtin): misspelt names, whatever their token count.
- `bracket_repairs`: an opener left unclosed gets its closer at each place it could go on its line (or at the end of
  a later line); a stray closer is dropped; a header line gets its missing colon.
- `operator_flips`: a comparison or +/- operator turned around (`<`/`>`, `<=`/`>=`, `==`/`!=`, `+`/`-`), the slip
  no check sees; only the model can tell which way is meant.
- `substitutions`: where the model would put another token than the one written (a wrong name of one token, an
  operator), that token: DiffusionGemma's self-correction signal.
"""

from __future__ import annotations

import difflib
import re
from collections import Counter
from collections.abc import Iterable, Sequence

from dg_model import code_scan
from dg_model.api import TokenScore

from .diagnose import IDENTIFIER, Problem

_OPEN = {"(": ")", "[": "]", "{": "}"}
_CLOSE = {v: k for k, v in _OPEN.items()}
_SPECIAL = re.compile(r"^<[^<>\s]+>$")  # <eos>, <pad>, <fim_middle>: never code
_HEADER = re.compile(r"^\s*(if|elif|else|for|while|def|class|try|except|finally|with|async\s+def|async\s+for)\b")
CLOSE_MATCHES = 3
Spans = Sequence[tuple[int, int]] | None  # character ranges of a block the model finds unlikely
_FLIPS = {"<": ">", ">": "<", "<=": ">=", ">=": "<=", "==": "!=", "!=": "==", "+": "-", "-": "+"}
# An operator standing alone between operands (not part of `->`, `+=`, `**`, `<<`, ...).
_OPERATOR = re.compile(r"(?<![-+*/%<>=!&|^~])(<=|>=|==|!=|<|>|\+|-)(?![-+*/%<>=!&|^~])")


def renames(
    block: str, text: str, found: Sequence[Problem], pool: Iterable[str], block_start: int, suspicious: Spans = None
) -> list[str]:
    """The block with one suspect name respelt as a close name from `pool`, for each suspect and each close name.
    Suspects: the names the checks flag, every name on a syntax error's line, and names written only once in the file
    where they overlap a `suspicious` span (None: wherever they are)."""
    counts = Counter(IDENTIFIER.findall(text))
    suspects = {p.name for p in found if p.name} | {
        m.group(0)
        for m in IDENTIFIER.finditer(block)
        if counts[m.group(0)] == 1 and not m.group(0).isupper() and _within(m.start(), m.end(), suspicious)
    }
    # A syntax error's line: every identifier on it is suspect (a misspelt keyword reads as a name: `retrun x`).
    for p in found:
        if p.kind == "syntax" and block_start <= p.start <= block_start + len(block):
            line_start = block.rfind("\n", 0, p.start - block_start) + 1
            line_end = block.find("\n", p.start - block_start)
            suspects.update(IDENTIFIER.findall(block[line_start : line_end if line_end >= 0 else len(block)]))
    choices = sorted(set(pool))
    out = []
    for name in sorted(suspects):
        others = [c for c in choices if c != name and abs(len(c) - len(name)) <= 2]
        for close in difflib.get_close_matches(name, others, n=CLOSE_MATCHES, cutoff=0.7):
            out.append(re.sub(rf"(?<!\w){re.escape(name)}(?!\w)", close, block))
    return _distinct(out, block)


def bracket_repairs(block: str, line_comment: str = "#") -> list[str]:
    unclosed, stray = _unbalanced(block, line_comment)
    out = [block[:at] + block[at + 1 :] for at in stray]
    for at, opener in unclosed:
        closer = _OPEN[opener]
        line_end = block.find("\n", at)
        line_end = len(block) if line_end < 0 else line_end
        content_end = len(block[:line_end].rstrip())
        spots = [i for i in range(at + 1, content_end + 1) if _boundary(block, i)]
        # ... or the end of a later line of the block (a call or literal spread over lines)
        pos = line_end
        while pos < len(block):
            nxt = block.find("\n", pos + 1)
            nxt = len(block) if nxt < 0 else nxt
            spots.append(len(block[:nxt].rstrip()))
            pos = nxt
        out += [block[:i] + closer + block[i:] for i in spots]
    for match in re.finditer(r"[^\n]*", block):
        line = match.group(0)
        if _HEADER.match(line) and not line.rstrip().endswith(":"):
            end = match.start() + len(line.rstrip())
            out.append(block[:end] + ":" + block[end:])
    return _distinct(out, block)


def operator_flips(block: str, line_comment: str = "#", suspicious: Spans = None) -> list[str]:
    """The block with one operator outside strings and comments turned around, for each operator that overlaps a
    `suspicious` span (None: every operator)."""
    code = code_scan.code_mask(block, code_scan.Lexicon(line_comment))
    out = []
    for match in _OPERATOR.finditer(block):
        if code[match.start()] and _within(match.start(), match.end(), suspicious):
            out.append(block[: match.start()] + _FLIPS[match.group(1)] + block[match.end() :])
    return _distinct(out, block)


def substitutions(block: str, tokens: Sequence[TokenScore], limit: int = 8) -> list[str]:
    """The block with one token replaced by one the model prefers there, the strongest preferences first."""
    options = []
    for token in tokens:
        for alt, logprob in token.alternatives:
            if not alt or _SPECIAL.match(alt.strip()) or alt == block[token.start : token.end]:
                continue
            options.append((logprob - token.logprob, token.start, token.end, alt))
    options.sort(key=lambda o: -o[0])
    out = [block[:s] + alt + block[e:] for _, s, e, alt in options]
    return _distinct(out, block)[:limit]


def _unbalanced(block: str, line_comment: str) -> tuple[list[tuple[int, str]], list[int]]:
    """(openers never closed, as (offset, char)), and closers with nothing to close. Strings and comments skipped;
    a closer that does not match the innermost opener closes the nearest one it matches, leaving the ones between
    unclosed (`f(a[1)`: the `[` is unclosed)."""
    stack: list[tuple[int, str]] = []
    unclosed, stray = [], []
    for i, ch in code_scan.brackets(block, code_scan.Lexicon(line_comment)):
        if ch in _OPEN:
            stack.append((i, ch))
        elif ch in _CLOSE:
            match = next((k for k in range(len(stack) - 1, -1, -1) if stack[k][1] == _CLOSE[ch]), None)
            if match is None:
                stray.append(i)
            else:
                unclosed += stack[match + 1 :]
                del stack[match:]
    return sorted(unclosed + stack), stray


# Nats per character a repair changes: a noisy channel (Kernighan, Church & Gale 1990) in which a slip of k characters
# is about e^-2k as likely, so between repairs the model finds about as likely, the smaller one wins (`lne` is
# likelier a slip of `len` than of `lst`).
CHANNEL = 2.0


def edit_distance(a: str, b: str) -> int:
    """Characters inserted, deleted, substituted or swapped (adjacent) to turn `a` into `b` (optimal string
    alignment), over the span where they differ: how big a slip would have to be to turn the repair into the text."""
    lo = 0
    while lo < min(len(a), len(b)) and a[lo] == b[lo]:
        lo += 1
    hi = 0
    while hi < min(len(a), len(b)) - lo and a[len(a) - 1 - hi] == b[len(b) - 1 - hi]:
        hi += 1
    a, b = a[lo : len(a) - hi], b[lo : len(b) - hi]
    prev2, prev = None, list(range(len(b) + 1))
    for i in range(1, len(a) + 1):
        row = [i] + [0] * len(b)
        for j in range(1, len(b) + 1):
            row[j] = min(prev[j] + 1, row[j - 1] + 1, prev[j - 1] + (a[i - 1] != b[j - 1]))
            if prev2 is not None and i > 1 and j > 1 and a[i - 1] == b[j - 2] and a[i - 2] == b[j - 1]:
                row[j] = min(row[j], prev2[j - 2] + 1)
        prev2, prev = prev, row
    return prev[len(b)]


def _within(start: int, end: int, spans: Spans) -> bool:
    return spans is None or any(s < end and start < e for s, e in spans)


def _boundary(block: str, i: int) -> bool:
    """Between two tokens: not inside a name or number."""
    before, after = block[i - 1 : i], block[i : i + 1]
    return not (before.isalnum() or before == "_") or not (after.isalnum() or after == "_")


def _distinct(candidates: Iterable[str], block: str) -> list[str]:
    return [c for c in dict.fromkeys(candidates) if c != block]
