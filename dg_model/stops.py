"""Where a middle ends, besides EOS: pure functions over what the engine has decoded so far.

A one-line job ends at its first line break (engine/sampler). A block ends where the model has moved on to the code
after it (`block_end`), and any job ends where the model goes round in circles (`loop_start`): both stop decoding
early, which is most of the tail latency of a small model, and cut the text there.
"""

from __future__ import annotations


def loop_start(tokens: list[int], max_period: int = 8, repeats: int = 4, min_span: int = 24) -> int | None:
    """Where a degenerate loop begins: if the last max(period * `repeats`, `min_span`) tokens are one cycle of
    1..`max_period` tokens over and over, the index after its first copy (the rest is the model going round in
    circles), else None. `min_span` spares short legitimate runs such as `[0, 0, 0, 0]`."""
    for period in range(1, max_period + 1):
        span = max(period * repeats, min_span)
        if len(tokens) < span:
            break
        tail = tokens[-span:]
        if all(tail[i] == tail[i % period] for i in range(period, span)):
            return len(tokens) - span + period
    return None


def cursor_indent(prefix: str) -> int:
    """Indentation of the line the cursor is on (its leading blanks, or all of it when it is blank so far)."""
    line = prefix.rsplit("\n", 1)[-1]
    return len(line) - len(line.lstrip(" \t"))


def ended(text: str, kind: str, indent: int) -> bool:
    """Whether a middle decoded so far is complete: a line at its first line break after the start, a block at
    `block_end`."""
    return "\n" in text.lstrip("\n") if kind == "line" else block_end(text, indent) is not None


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
