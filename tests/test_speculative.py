"""Self-speculative decoding gives exactly greedy AR's tokens whatever the drafts are; good drafts only save rounds."""

import threading

import pytest
import torch

from dg_model.api import Cancelled
from dg_model.speculative import speculate

V, EOS = 12, 1
# A deterministic "language": after token t comes NEXT[t]; the text from 5 is 5 6 7 8 9 10 EOS.
NEXT = {5: 6, 6: 7, 7: 8, 8: 9, 9: 10, 10: EOS, 11: 5, 2: 11}


def logp_after(token: int) -> torch.Tensor:
    row = torch.full((V,), -10.0)
    row[NEXT.get(token, EOS)] = -0.1
    return torch.log_softmax(row, -1)


class Verifier:
    """A cache as a list: verify appends, commit trims back."""

    def __init__(self):
        self.cache, self.verified_from, self.calls = [], 0, 0

    def verify(self, seq):
        self.calls += 1
        self.verified_from = len(self.cache)
        self.cache += seq
        return torch.stack([logp_after(t) for t in seq])

    def commit(self, n):
        del self.cache[self.verified_from + n :]


def run(draft, finish=lambda tokens: None, **kw):
    v = Verifier()
    out = speculate(logp_after(11), draft, v.verify, v.commit, finish, {EOS}, **kw)
    return out, v


GREEDY = [5, 6, 7, 8, 9, 10]


def chain(p: int, k: int) -> list[int]:
    """The true next k tokens after p (stopping at EOS)."""
    out = []
    while len(out) < k and p != EOS:
        p = NEXT[p]
        out.append(p)
    return out


def test_perfect_drafts_commit_many_tokens_per_round():
    out, v = run(lambda p, hint: chain(p, 3))
    # round 1: 5 + 6 7 8 accepted; round 2: 9 + 10 EOS accepted
    assert out.tokens == GREEDY and out.rounds == 2 and out.accepted == out.drafted == 5
    assert v.cache == GREEDY + [EOS]  # only committed tokens stay in the cache (an accepted EOS too)


@pytest.mark.parametrize(
    "draft", [lambda p, h: [], lambda p, h: [3, 3, 3], lambda p, h: [NEXT.get(p, 3), 3, NEXT.get(p, 3)]]
)
def test_any_draft_gives_the_greedy_text(draft):
    out, v = run(draft)
    assert out.tokens == GREEDY
    assert v.cache == GREEDY[: len(v.cache)]  # what the cache holds is always a prefix of the committed text
    assert len(out.logprobs) == len(GREEDY) + 1 and out.logprobs[-1] == pytest.approx(float(logp_after(10)[EOS]))


def test_wrong_drafts_cost_one_token_per_round():
    out, _ = run(lambda p, h: [3, 4])
    assert out.accepted == 0 and out.rounds == len(GREEDY) and out.drafted == 2 * len(GREEDY)


def test_an_accepted_eos_ends_the_middle_and_finish_cuts_it():
    out, _ = run(lambda p, h: [NEXT[p], EOS] if p == 9 else [])
    assert out.tokens == GREEDY and out.accepted == 2
    out, _ = run(lambda p, h: [NEXT.get(p, 3)], finish=lambda tokens: 3 if len(tokens) >= 4 else None)
    assert out.tokens == GREEDY[:3]


def test_cancel_stops_before_the_next_round():
    stop = threading.Event()
    calls = []

    def draft(p, hint):
        calls.append(p)
        stop.set()
        return [3]

    with pytest.raises(Cancelled):
        run(draft, cancel=stop)
    assert len(calls) == 1


def test_each_draft_gets_the_last_drafts_guesses_past_its_first_miss():
    hints = []

    def draft(p, hint):
        hints.append(hint)
        return [NEXT.get(p, 3), 3, 4, 5]  # right, then wrong: 4 and 5 are the guesses for the positions after

    out, _ = run(draft)
    assert out.tokens == GREEDY and hints[0] == [] and all(h == [4, 5] for h in hints[1:])


@pytest.mark.parametrize("draft", [lambda p, h: [], lambda p, h: chain(p, 3) + [EOS, 3]])
def test_a_forbidden_eos_is_never_taken_and_the_text_stays_greedy_beams(draft):
    from dg_model.beam import beam_search

    may_end = lambda tokens: len(tokens) >= 8  # noqa: E731
    finish = lambda tokens: 9 if len(tokens) >= 9 else None  # noqa: E731
    out, _ = run(draft, finish=finish, may_end=may_end)
    assert out.tokens[:6] == GREEDY and EOS not in out.tokens and len(out.tokens) >= 8

    def advance(parents, tokens):
        return torch.stack([logp_after(t) for t in tokens])

    beam = beam_search(logp_after(11), advance, 1, finish, {EOS}, may_end=may_end)
    assert beam.hypotheses[0].tokens == out.tokens


def test_lookup_continues_the_latest_earlier_occurrence_of_the_longest_tail():
    from dg_model.speculative import lookup

    context = [1, 2, 3, 9, 9, 7, 2, 3, 4, 5, 6, 1, 2, 3]
    assert lookup(context, 3) == [9, 9, 7]  # the longest tail [1, 2, 3] (at 0), not the later [2, 3] (at 6)
    assert lookup([5, 2, 3, 8, 2, 3], 2) == [8, 2]  # the latest occurrence of [2, 3] before the tail
    assert lookup([1, 2, 3, 4], 3) == []  # no earlier occurrence
    assert lookup([7, 7], 3) == []  # a single-token match is not enough
    assert lookup([4, 5, 1, 4, 5], 9) == [1, 4, 5]  # runs up to the end of the context at most
