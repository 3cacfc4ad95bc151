"""Beam search over a hand-written next-token table, where greedy decoding is known to miss the likeliest line."""

import math
import threading

import pytest
import torch

from dg_model.api import Cancelled
from dg_model.beam import ALPHA, beam_search

EOS, A, B, C, D = 0, 1, 2, 3, 4
V = 5


def dist(**probs: float) -> torch.Tensor:
    p = torch.full((V,), 1e-6)
    for name, value in probs.items():
        p[globals()[name]] = value
    return (p / p.sum()).log()


# After A the model is unsure (C or D, then more); after B it is sure the line is over: B alone (0.4) beats the
# greedy A C (0.198 with its EOS) once lengths are normalised.
TABLE = {(): dist(A=0.6, B=0.4), (A,): dist(C=0.55, D=0.45), (B,): dist(EOS=1.0)}


def run(width: int, finish=lambda tokens: len(tokens) if len(tokens) >= 3 else None, cancel=None):
    calls = []
    rows: list[tuple[int, ...]] = [()]

    def advance(parents: list[int], tokens: list[int]) -> torch.Tensor:
        nonlocal rows
        rows = [rows[p] + (t,) for p, t in zip(parents, tokens)]
        calls.append(len(tokens))
        return torch.stack([TABLE.get(r, dist(EOS=0.6, C=0.4)) for r in rows])

    return beam_search(TABLE[()], advance, width, finish, {EOS}, cancel), calls


def test_width_one_is_greedy():
    result, _ = run(1)
    assert [h.tokens for h in result.hypotheses] == [[A, C]]  # A (0.6), C (0.55), EOS (0.6): 0.2 in all


def test_a_wider_beam_finds_the_likelier_line_and_ranks_it_first():
    result, calls = run(2)
    best = result.hypotheses[0]
    assert best.tokens == [B] and best.score == pytest.approx(math.log(0.4) / 2**ALPHA, abs=1e-4)
    assert len(result.hypotheses) == 2 and result.hypotheses[1].score < best.score
    assert max(calls) <= 2 and result.steps == len(calls)


def test_finish_may_cut_a_hypothesis_short():
    result, _ = run(1, finish=lambda tokens: 1 if tokens[-1] == C else None)
    assert result.hypotheses[0].tokens == [A]


def test_cancel_stops_before_the_next_step():
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(Cancelled):
        run(2, cancel=cancel)


def test_two_end_tokens_do_not_take_two_places_among_the_finished():
    rows: list[tuple[int, ...]] = [()]

    def advance(parents, tokens):
        nonlocal rows
        rows = [rows[p] + (t,) for p, t in zip(parents, tokens)]
        return torch.stack([dist(EOS=0.5, C=0.5) for _ in rows])

    # D plays a second end token (as pad does): the empty line comes back once, and the beam goes on to find A
    first = dist(EOS=0.4, D=0.35, A=0.25)
    result = beam_search(first, advance, 2, lambda tokens: None, {EOS, D})
    assert [h.tokens for h in result.hypotheses] == [[], [A]]


def test_may_end_keeps_a_hypothesis_going_past_a_forbidden_eos():
    calls = []
    rows: list[tuple[int, ...]] = [()]

    def advance(parents, tokens):
        nonlocal rows
        rows = [rows[p] + (t,) for p, t in zip(parents, tokens)]
        calls.append(len(tokens))
        return torch.stack([TABLE.get(r, dist(EOS=0.6, C=0.4)) for r in rows])

    finish = lambda tokens: len(tokens) if len(tokens) >= 4 else None  # noqa: E731
    free = beam_search(TABLE[()], advance, 1, finish, {EOS})
    assert [h.tokens for h in free.hypotheses] == [[A, C]]
    rows = [()]
    held = beam_search(TABLE[()], advance, 1, finish, {EOS}, may_end=lambda tokens: len(tokens) >= 3)
    assert [h.tokens for h in held.hypotheses] == [[A, C, C]]  # EOS after A C forbidden: C, then EOS allowed
