"""Where a middle ends, besides EOS: pure functions over what the engine has decoded so far.

A one-line job ends at its first line break (engine/sampler). A block ends where the model has moved on to the code
after it (`block_end`), and any job ends where the model goes round in circles (`loop_start`): both stop decoding
early, which is most of the tail latency of a small model, and cut the text there.
"""

from __future__ import annotations

import re

from dg_model import code_scan


def loop_start(
    tokens: list[int],
    max_period: int = 8,
    repeats: int = 4,
    min_span: int = 24,
    max_line: int = 48,
    line_repeats: int = 3,
) -> int | None:
    """Where a degenerate loop begins: if the last max(period * `repeats`, `min_span`) tokens are one cycle of
    1..`max_period` tokens over and over, the index after its first copy (the rest is the model going round in
    circles), else None. `min_span` spares short legitimate runs such as `[0, 0, 0, 0]`. A longer cycle, up to
    `max_line` tokens (a whole line, such as `tri = [1, 3]` and its line break), is a loop after `line_repeats`
    copies: a beam that may not end where it is (the suffix wants a header first) wrote one line over and over until
    its 192-token budget, 7-14 s on a 2-core CPU for an empty answer."""
    n = len(tokens)
    for period in range(1, max_line + 1):
        span = max(period * repeats, min_span) if period <= max_period else period * line_repeats
        if n < span:
            continue
        if tokens[-1] != tokens[-1 - period]:  # most cycles fail here, before the slice
            continue
        tail = tokens[-span:]
        if all(tail[i] == tail[i % period] for i in range(period, span)):
            return n - span + period
    return None


def cursor_indent(prefix: str) -> int:
    """Indentation of the line the cursor is on (its leading blanks, or all of it when it is blank so far)."""
    line = prefix.rsplit("\n", 1)[-1]
    return len(line) - len(line.lstrip(" \t"))


def ended(text: str, kind: str, indent: int, suffix: str = "") -> bool:
    """Whether a middle decoded so far is complete: a line at its first line break after the start, a block at
    `block_end` or once it re-types the `suffix` (`reaches_suffix`)."""
    if kind == "line":
        return "\n" in text.lstrip("\n")
    return block_end(text, indent) is not None or reaches_suffix(text, suffix)


def same_line(a: str, b: str) -> bool:
    """Lines match when their code matches; lines of bare punctuation (`}`, `)`) must match with indentation too."""
    if not any(ch.isalnum() for ch in b):
        return a.rstrip() == b.rstrip()
    return a.strip() == b.strip()


def reaches_suffix(text: str, suffix: str) -> bool:
    """Whether a block has started re-typing the code after the cursor: a complete line after its first that is the
    suffix's first non-blank line, and (when the suffix has one) a next complete line that is its second. Editors'
    post-processing cuts such a repeat anyway (dg_lsp.postprocess); stopping here saves the forwards it costs: at a
    cursor on an emptied line inside a body, the model otherwise writes the rest of the body again."""
    heads = [x for x in suffix[:4000].split("\n") if x.strip()][:2]
    complete = text.split("\n")[:-1]  # the last line may still grow
    if not heads or len(complete) < 2:
        return False
    for i in range(1, len(complete)):
        if same_line(complete[i], heads[0]):
            following = next((x for x in complete[i + 1 :] if x.strip()), None)
            if len(heads) < 2 or (following is not None and same_line(following, heads[1])):
                return True
    return False


def block_end(text: str, indent: int) -> int | None:
    """Where a block written at the cursor's `indent` ends: at the line break before the first later line that starts
    further left (the model has moved on to the code after the block), else None. A line still blank says nothing."""
    start = text.find("\n")
    while start != -1:
        stop = text.find("\n", start + 1)
        line = text[start + 1 : stop if stop != -1 else len(text)]
        if line.strip() and len(line) - len(line.lstrip(" \t")) < indent:
            return start
        start = stop
    return None


def _code(text: str) -> tuple[str, int]:
    """The text with string literals blanked and comments cut (`code_scan`'s Python rules: the scan need not know the
    language, only not be fooled by `"("` or `# (see below:`), and how many brackets it opens and does not close."""
    out, depth, at = [], 0, 0
    for token in code_scan.scan(text):
        if token.kind == "bracket":
            depth += 1 if text[token.start] in code_scan.OPENERS else -1
            continue
        out.append(text[at : token.start])
        at = token.end
        if token.kind != "comment":  # a string: its lines stay; one never closed leaves nothing to read
            out.append(('""' if token.kind == "string" else "") + "\n" * text.count("\n", token.start, token.end))
    out.append(text[at:])
    return "".join(out), depth


def can_end(prefix: str, text: str, suffix: str) -> bool:
    """Whether a middle may end after `text` without leaving code the suffix does not finish: a header line (ending
    in `:`) needs a more indented line after it, an opened bracket its closer. A small model's EOS often lands right
    after a block's first line (`if x:` and nothing under it); forbidding the EOS there lets it write the body."""
    rest_of_line, _, after = suffix.partition("\n")
    if rest_of_line.strip():  # the cursor's line goes on after the middle: the suffix continues whatever it opened
        return True
    following = next((line for line in after.split("\n") if line.strip()), "")
    code, unclosed = _code(prefix.rsplit("\n", 1)[-1] + text)
    if unclosed > 0 and following.lstrip()[:1] not in (")", "]", "}"):
        return False
    line = code.rstrip().rsplit("\n", 1)[-1]
    indent = len(line) - len(line.lstrip(" \t"))
    deeper = len(following) - len(following.lstrip(" \t")) > indent
    if line.rstrip().endswith(":"):
        return deeper
    # The converse: a more indented line after the middle is the body of a block its last line must open (in Python
    # a plain statement there is an IndentationError). Lines that go on (`x +`, `.then(` on the next), and
    # brace-less headers (`if (x)`), are not statements ending there.
    return not deeper or not line.strip() or _opens(line) or following.lstrip().startswith(_CONTINUES)


_CONTINUES = tuple("{([,\\=+-*/%&|^<>.?") + ("=>",)
_HEADERS = re.compile(r"^\s*(?:}\s*)?(?:if|else|for|foreach|while|do|elif|try|catch|finally|switch|case|default)\b")


def _opens(line: str) -> bool:
    """Whether code may follow `line` indented deeper: it opens a block or a bracket, or goes on to the next line."""
    return line.rstrip().endswith(_CONTINUES) or bool(_HEADERS.match(line))
