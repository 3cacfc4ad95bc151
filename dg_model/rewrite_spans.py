"""Which words of a block a rewrite writes afresh, and the canvases that try them.

A slip changes a block's tokens, not only its characters: `thrshold` is four tokens where `threshold` is one, a
dropped `)` leaves one token fewer. So the denoiser rewrites whole *words* (runs of tokens joined by word characters)
and tries each at several lengths, every other token of the block pinned: the lengths a slip makes likely (one to
three tokens, one fewer, as many, one more). Which words: those holding the tokens the decoder finds least likely in
place, and those the editor's checks point at (an undefined name, where the parser gave up).

Functions over token ids and offsets; `write` takes the model's reading as a function,
`engine.DiffusionEngine.rewrite` passes the decoder's.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from dg_model.decoders import mean

Offsets = Sequence[tuple[int, int]]  # each token's characters in the block: block[start:end]
# The decoder's logits [R, C, V] for canvases [R, C], with optional self-conditioning logits of the same shape.
Read = Callable[[torch.Tensor, "torch.Tensor | None"], torch.Tensor]

# Logits (float32 elements) one forward of a rewrite may hold: 2**25, 128 MiB. The rows grow with the block's words
# and each row with its length, so one unbounded batch grows with the square of the block: several GB at once for a
# block of a few hundred tokens.
LOGITS_BUDGET = 2**25


@dataclass(frozen=True)
class Variant:
    """A word `ids[start:end]` written afresh in `length` tokens."""

    start: int
    end: int
    length: int


def words(block: str, offsets: Offsets) -> list[tuple[int, int]]:
    """For each token, the token range of its word: neighbours whose characters touch across word characters."""
    first = list(range(len(offsets)))
    for i in range(1, len(offsets)):
        joint = offsets[i - 1][1]
        if joint == offsets[i][0] and 0 < joint < len(block) and _wordy(block[joint - 1]) and _wordy(block[joint]):
            first[i] = first[i - 1]
    last = {f: i + 1 for i, f in enumerate(first)}
    return [(f, last[f]) for f in first]


def _wordy(ch: str) -> bool:
    return ch.isalnum() or ch == "_"


def doubted(
    block: str, offsets: Offsets, in_place: torch.Tensor, share: float, suspects: Sequence[tuple[int, int]] = ()
) -> list[tuple[int, int]]:
    """The words to rewrite, as token ranges: those holding a suspect (character ranges of the block; a point is the
    token there), then the words of the least likely tokens in place (`in_place` [T] log-probabilities) up to `share`
    of the block's words, at least one."""
    spans = words(block, offsets)
    chosen: list[tuple[int, int]] = []

    def add(span: tuple[int, int]) -> None:
        if not any(s < span[1] and span[0] < e for s, e in chosen):
            chosen.append(span)

    for lo, hi in suspects:
        hit = [i for i, (s, e) in enumerate(offsets) if s < max(hi, lo + 1) and e > lo]
        if hit:
            add((spans[hit[0]][0], spans[hit[-1]][1]))
    budget = len(chosen) + max(1, round(share * len(set(spans))))
    for i in in_place.argsort().tolist():
        if len(chosen) >= budget:
            break
        add(spans[i])
    return chosen


def variants(spans: Sequence[tuple[int, int]]) -> list[Variant]:
    """Each span at the lengths a slip leaves likely: 1-3 tokens (a misspelt name split into pieces the right one
    does not need), one fewer, as many, one more (a dropped bracket)."""
    out = []
    for start, end in spans:
        n = end - start
        out += [Variant(start, end, m) for m in sorted({1, 2, 3, n - 1, n, n + 1}) if m >= 1]
    return out


def canvases(ids: Sequence[int], rows: Sequence[Variant], eos: int, pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """[R, C] canvases (the block with one word's slots free, then the end, padded to the longest) and [R, C] which
    slots are free."""
    width = max(len(ids) - (v.end - v.start) + v.length for v in rows) + 1
    canvas = torch.full((len(rows), width), pad, dtype=torch.long)
    free = torch.zeros(len(rows), width, dtype=torch.bool)
    for r, v in enumerate(rows):
        row = [*ids[: v.start], *[pad] * v.length, *ids[v.end :], eos]
        canvas[r, : len(row)] = torch.tensor(row)
        free[r, v.start : v.start + v.length] = True
    return canvas, free


def written(ids: Sequence[int], v: Variant, row: Sequence[int]) -> list[int]:
    """The block's tokens with `v`'s word as the canvas `row` wrote it."""
    return [*ids[: v.start], *row[v.start : v.start + v.length], *ids[v.end :]]


def batches(rows: int, width: int, k: int, vocab: int) -> list[slice]:
    """The rows in batches whose logits, each row tried with `k` first tokens, stay within LOGITS_BUDGET elements."""
    per = max(1, LOGITS_BUDGET // max(1, k * width * vocab))
    return [slice(lo, min(rows, lo + per)) for lo in range(0, rows, per)]


def write(
    read: Read,
    ids: Sequence[int],
    rows: Sequence[Variant],
    canvas: torch.Tensor,
    free: torch.Tensor,
    k: int,
    steps: int,
) -> tuple[list[list[int]], list[float], int]:
    """Each row's word written on its canvas (free slots noised): the first free slot takes its `k` likeliest tokens,
    one candidate each, the other slots the decoder's choice (with `steps` 2, read again behind that first token).
    -> per candidate (row-major, `k` per row) the block's tokens and the mean log-probability of the word's slots,
    and the decoder forwards run."""
    logits = read(canvas, None)
    every_row = torch.arange(len(rows), device=canvas.device)
    heads = torch.tensor([v.start for v in rows], device=canvas.device)
    firsts = logits[every_row, heads].topk(k, -1)
    rows = [v for v in rows for _ in range(k)]
    canvas, free, logits = (t.repeat_interleave(k, 0) for t in (canvas, free, logits))
    every, heads = torch.arange(len(rows), device=canvas.device), heads.repeat_interleave(k)
    canvas[every, heads] = firsts.indices.reshape(-1)
    free[every, heads] = False
    forwards = 1
    if steps > 1 and bool(free.any()):
        again = free.any(-1)
        logits[again] = read(canvas[again], logits[again])
        forwards += 1
    canvas = torch.where(free, logits.argmax(-1), canvas)
    chosen = torch.log_softmax(logits.float(), -1).gather(-1, canvas[..., None]).squeeze(-1)
    tokens = [written(ids, v, canvas[r].tolist()) for r, v in enumerate(rows)]
    scores = [mean(chosen[r, v.start : v.start + v.length].tolist()) for r, v in enumerate(rows)]
    return tokens, scores, forwards
