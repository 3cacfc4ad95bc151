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


def search_to(limit: int, first: torch.Tensor, next_dist, width: int, **kwargs):
    """A beam over `next_dist(row)` (the tokens so far -> the next log-probabilities), ending at `limit` tokens."""
    rows: list[tuple[int, ...]] = [()]

    def advance(parents, tokens):
        nonlocal rows
        rows = [rows[p] + (t,) for p, t in zip(parents, tokens)]
        return torch.stack([next_dist(r) for r in rows])

    finish = lambda tokens: len(tokens) if len(tokens) >= limit else None  # noqa: E731
    return beam_search(first, advance, width, finish, {EOS}, **kwargs)


def test_prune_stops_once_every_open_line_is_far_less_likely_than_the_finished():
    # B ends at once (p 0.7); after A the model rambles (C or D, each 0.5) until the 12-token limit
    def search(prune):
        ramble = lambda r: dist(EOS=1.0) if r == (B,) else dist(C=0.5, D=0.5)  # noqa: E731
        return search_to(12, dist(B=0.7, A=0.3), ramble, 3, prune=prune)

    full, pruned, loose = search(None), search((1, 2.0)), search((1, 50.0))
    assert full.hypotheses[0].tokens == pruned.hypotheses[0].tokens == [B]
    assert full.steps >= 10 and pruned.steps <= 3  # A C C is already 2.6 nats down against B's 0.36
    assert loose.steps == full.steps  # a margin nothing falls below changes nothing
    assert search((2, 2.0)).steps > pruned.steps  # a second finished line is needed first


def test_a_beam_drops_a_line_cut_where_it_may_not_end_and_greedy_keeps_it():
    # `finish` ends a hypothesis at C (it moved on past the middle); `may_end` says a middle may not end on C
    table = {(): dist(A=0.6, B=0.4), (A,): dist(C=0.9, EOS=0.1), (B,): dist(EOS=1.0)}
    rows: list[tuple[int, ...]] = [()]

    def advance(parents, tokens):
        nonlocal rows
        rows = [rows[p] + (t,) for p, t in zip(parents, tokens)]
        return torch.stack([table.get(r, dist(EOS=1.0)) for r in rows])

    def search(width, may_end):
        nonlocal rows
        rows = [()]
        finish = lambda tokens: len(tokens) if tokens[-1] == C else None  # noqa: E731
        return [h.tokens for h in beam_search(table[()], advance, width, finish, {EOS}, may_end=may_end).hypotheses]

    not_on_c = lambda tokens: tokens[-1] != C  # noqa: E731
    assert [A, C] in search(2, None)
    refused = search(2, not_on_c)
    assert [A, C] not in refused and [B] in refused and len(refused) == 2  # the beam found another second
    assert search(1, not_on_c) == [[A, C]]


def test_lone_margin_stops_a_beam_that_has_one_line_and_searches_garbage_for_a_second():
    # B ends at once (p 0.9); after A the model rambles (C or D) until the 40-token limit, ~0.7 nat a token
    def search(prune):
        ramble = lambda r: dist(EOS=1.0) if r == (B,) else dist(C=0.5, D=0.5)  # noqa: E731
        some = lambda tokens: bool(tokens)  # noqa: E731  # no empty middle: B is the one line that ends
        return search_to(40, dist(B=0.9, A=0.1), ramble, 4, may_end=some, prune=prune)

    two, lone = search((2, 1.0)), search((2, 1.0, 8.0))
    assert two.steps >= 38  # one line complete: the two-candidate rule never fires
    assert lone.hypotheses[0].tokens == two.hypotheses[0].tokens == [B]
    assert lone.steps <= 10  # A and 7 rambling tokens are 2.3 + 7 x 0.69 nats down: 8 below B's 0.1
    assert search((2, 1.0, 100.0)).steps == two.steps  # a margin nothing falls below changes nothing


def test_give_up_ends_a_beam_whose_likeliest_move_is_an_end_it_may_not_take():
    # the model wants to end after every token; `may_end` forbids every end: without give_up it writes to its limit
    def search(give_up):
        never = lambda tokens: False  # noqa: E731
        wants_to_end = lambda r: dist(EOS=0.7, C=0.2, D=0.1)  # noqa: E731
        return search_to(30, dist(EOS=0.7, A=0.3), wants_to_end, 3, may_end=never, give_up=give_up)

    stuck, given_up = search(None), search(3)
    assert stuck.steps >= 28
    assert given_up.steps <= 3 and [h.tokens for h in given_up.hypotheses] == [[]]  # nothing finished: one empty


def test_give_up_does_not_count_refused_ends_the_beam_did_not_prefer():
    # ends are refused, but the likeliest move is always a token: the beam finishes normally
    goes_on = lambda r: dist(C=0.6, EOS=0.4)  # noqa: E731
    result = search_to(5, dist(A=1.0), goes_on, 2, may_end=lambda t: len(t) >= 3, give_up=1)
    assert result.hypotheses[0].tokens[:3] == [A, C, C] and result.steps >= 2
