"""Beam search for autoregressive decoding through the causal encoder.

The engine's `"ar"` mode decodes with it: width 1 is greedy decoding, wider beams return several distinct
completions ranked by likelihood, which the editor side ranks again by what still parses (dg_lsp.postprocess). On
HumanEval single-line infilling with the embedded model, a beam of 4 puts a passing line among its candidates about
twice as often as greedy decoding has one (model card).

Model calls stay with the caller: `advance(parents, tokens)` must reorder its cache rows to `parents`, append
`tokens` and return the next log-probabilities, so this module is plain Python over lists and one tensor per step.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Collection
from dataclasses import dataclass, field

import torch

from dg_model.api import Cancelled

# Ranking divides a hypothesis's summed log-probability by length**ALPHA: 0 favours short lines, 1 long ones
# (GNMT-style; 0.5 ranked best of 0 / 0.5 / 1 on a 300-task HumanEval subset).
ALPHA = 0.5


@dataclass
class Hypothesis:
    tokens: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)  # one per token, plus the EOS's when it ended on one

    @property
    def score(self) -> float:
        return sum(self.logprobs) / max(1, len(self.logprobs)) ** ALPHA if self.logprobs else float("-inf")


@dataclass
class BeamResult:
    hypotheses: list[Hypothesis]  # best first
    steps: int  # calls to `advance`


def beam_search(
    first_logp: torch.Tensor,
    advance: Callable[[list[int], list[int]], torch.Tensor],
    width: int,
    finish: Callable[[list[int]], int | None],
    eos_ids: Collection[int],
    cancel: threading.Event | None = None,
    on_step: Callable[[list[int]], None] | None = None,
    may_end: Callable[[list[int]], bool] | None = None,
    prune: tuple[float, ...] | None = None,
    give_up: int | None = None,
) -> BeamResult:
    """Decode from `first_logp` [V] (the prediction after the prompt).

    `finish(tokens)` says whether a hypothesis is complete after its last token, and how many of its tokens to keep
    (None: go on); EOS completes one without adding a token. `may_end(tokens)` may refuse either ending: after EOS the
    hypothesis goes on without it; cut by `finish` (it moved on to the code after the middle, which could not end
    there) a beam drops it and goes on with the others, while greedy decoding keeps its one line, the text the
    hybrid decoder must reproduce.
    The search stops once `width` hypotheses are complete, counting only those that ranked among the `width` best of
    their step, so width 1 is exactly greedy decoding.

    `prune=(k, margin)` stops it earlier: once `k` hypotheses are complete and the likeliest one still going is
    `margin` nats below the k-th of them in summed log-probability (which only falls as a hypothesis grows).
    `prune=(k, margin, lone)` also once fewer are complete and every one still going is `lone` nats below the best
    of them: a beam with one short line complete searched for a second through near-garbage until its 192-token
    budget (the open lines' log-probability falls ~0.25 nat a token, so they were 50 nats down by then).

    `give_up=n` ends a search stuck where it may not end: once the likeliest continuation of the whole beam has been an
    EOS that `may_end` refused at `n` steps. A model that keeps wanting to stop where the suffix forbids it (a header
    the code below is indented under, which it does not write) otherwise writes lines until its budget, near-copies
    of each other that no loop check sees: 192 steps, 7-14 s on a 2-core CPU, for an empty answer. What finished by
    then is returned (nothing: one empty hypothesis).
    """
    width = max(1, width)
    alive = [Hypothesis()]
    logp = first_logp.float().reshape(1, -1)
    done: list[Hypothesis] = []
    steps = refused = 0
    while alive:
        if cancel is not None and cancel.is_set():
            raise Cancelled()
        totals = torch.tensor([sum(h.logprobs) for h in alive])[:, None] + logp.cpu()
        index = totals.flatten().topk(min(2 * width, totals.numel())).indices
        nxt: list[tuple[int, Hypothesis]] = []
        vocab = logp.shape[-1]
        for rank, flat in enumerate(index.tolist()):
            parent, token = divmod(flat, vocab)
            h = alive[parent]
            lp = float(logp[parent, token])
            if token in eos_ids:
                # EOS and pad end a hypothesis alike: only the likelier of the two takes a place among the finished
                if may_end is not None and not may_end(h.tokens):
                    refused += rank == 0
                    continue
                if rank < width and all(d.tokens != h.tokens for d in done):
                    done.append(Hypothesis(h.tokens, h.logprobs + [lp]))
                continue
            child = Hypothesis(h.tokens + [token], h.logprobs + [lp])
            keep = finish(child.tokens)
            if keep is None:
                nxt.append((parent, child))
            elif rank < width and (width == 1 or may_end is None or may_end(child.tokens[:keep])):
                done.append(Hypothesis(child.tokens[:keep], child.logprobs[:keep]))
            if len(nxt) == width:
                break
        if len(done) >= width or not nxt or (prune is not None and _outranked(done, nxt, *prune)):
            break
        if give_up is not None and refused >= give_up:
            return BeamResult(sorted(done, key=lambda h: -h.score)[:width] or [Hypothesis()], steps)
        alive = [h for _, h in nxt]
        logp = advance([p for p, _ in nxt], [h.tokens[-1] for h in alive])
        steps += 1
        if on_step is not None:
            on_step(alive[0].tokens)
    done = done or alive  # only when a step had nothing to continue and nothing finished
    return BeamResult(sorted(done, key=lambda h: -h.score)[:width], steps)


def _outranked(
    done: list[Hypothesis], alive: list[tuple[int, Hypothesis]], k: float, margin: float, *lone: float
) -> bool:
    if not done:
        return False
    finished = sorted((sum(h.logprobs) for h in done), reverse=True)
    best_open = max(sum(h.logprobs) for _, h in alive)
    if len(done) < k:
        return bool(lone) and best_open < finished[0] - lone[0]
    return best_open < finished[int(k) - 1] - margin
