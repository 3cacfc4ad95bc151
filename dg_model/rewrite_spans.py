"""Which words of a block a rewrite writes afresh, and the canvases that try them.

A slip changes a block's tokens, not only its characters: `thrshold` is four tokens where `threshold` is one, a
dropped `)` leaves one token fewer. So the denoiser rewrites whole *words* (runs of tokens joined by word characters)
and tries each at several lengths, every other token of the block pinned: the lengths a slip makes likely (one to
three tokens, one fewer, as many, one more). Which words: those holding the tokens the decoder finds least likely in
place, and those the editor's checks point at (an undefined name, where the parser gave up).

Pure functions over token ids and offsets; `engine.DgEngine.rewrite` runs the model.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

Offsets = Sequence[tuple[int, int]]  # each token's characters in the block: block[start:end]


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
