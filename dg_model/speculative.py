"""Self-speculative decoding: the denoiser drafts, the causal encoder of the same weights verifies.

Each round the bidirectional decoder denoises a short canvas whose first slot is the token the encoder already chose
(pinned); the encoder then reads that token and the draft in ONE teacher-forced forward, which predicts the next token
after each of them. The longest prefix of the draft that agrees with those greedy predictions is kept, and the
encoder's own prediction after it becomes the next round's first slot. So the text is exactly greedy AR decoding of
the checkpoint (never worse than AR), and the denoiser only decides how many tokens each round commits: one when the
draft is wrong from its first token, up to the canvas when it is right (S2D2 and self-speculative diffusion decoding
work this way). The engine binds `draft`, `verify` and `commit` to a prompt cache; this loop never sees tensors of
the model beyond the verifier's log-probabilities.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Collection
from dataclasses import dataclass, field

import torch

from dg_model.api import Cancelled


@dataclass
class SpecResult:
    tokens: list[int]  # the middle, without its EOS
    logprobs: list[float]  # the verifier's log-probability of each token (and of the EOS when one ended it)
    rounds: int = 0  # draft + verify pairs
    drafted: int = 0  # draft tokens offered to the verifier
    accepted: int = 0  # draft tokens the verifier agreed with
    step_ms: list[float] = field(default_factory=list)


def speculate(
    first: torch.Tensor,
    draft: Callable[[int, list[int]], list[int]],
    verify: Callable[[list[int]], torch.Tensor],
    commit: Callable[[int], None],
    finish: Callable[[list[int]], int | None],
    eos_ids: Collection[int],
    cancel: threading.Event | None = None,
    on_step: Callable[[list[int]], None] | None = None,
    may_end: Callable[[list[int]], bool] | None = None,
) -> SpecResult:
    """Greedy decoding, several tokens per round.

    first [V]: log-probabilities of the token after the context (the prompt encode computed them already).
    draft(p, hint): tokens the denoiser proposes after `p` (the cache holds everything before `p`); `hint` is what the
        last draft guessed for those positions (its tokens after the first rejected one), a better start than noise.
    verify(seq): encode `seq` (`p` + draft) at the cache's end; [len(seq), V] log-probabilities of each next token.
    commit(n): keep the first n of the tokens just verified in the cache, drop the rest.
    finish(tokens): where the middle ends (a cut index) once it has ended, else None.
    may_end(tokens): whether an EOS may end the middle after `tokens` (else the best other token is taken, as beam
        search does, so the text stays greedy AR's).
    """

    def choose(logp: torch.Tensor, tokens: list[int]) -> int:
        token = int(logp.argmax())
        if token in eos_ids and may_end is not None and not may_end(tokens):
            ranked = logp.topk(len(eos_ids) + 1).indices.tolist()
            token = next(t for t in ranked if t not in eos_ids)
        return token

    pending = choose(first, [])
    pending_lp = float(first[pending])
    out = SpecResult([], [])
    hint: list[int] = []
    while True:
        if cancel is not None and cancel.is_set():
            raise Cancelled()
        if pending in eos_ids:
            out.logprobs.append(pending_lp)
            return out
        out.tokens.append(pending)
        out.logprobs.append(pending_lp)
        if (cut := finish(out.tokens)) is not None:
            del out.tokens[cut:], out.logprobs[cut:]
            return out
        proposal = draft(pending, hint)
        logp = verify([pending] + proposal)
        best = logp.argmax(-1).tolist()
        agree = 0
        while agree < len(proposal) and best[agree] == proposal[agree]:
            if proposal[agree] in eos_ids and may_end is not None and not may_end(out.tokens + proposal[:agree]):
                break
            agree += 1
        commit(1 + agree)
        out.rounds += 1
        out.drafted += len(proposal)
        out.accepted += agree
        for j in range(agree):
            token = proposal[j]
            if token in eos_ids:
                out.logprobs.append(float(logp[j, token]))
                return out
            out.tokens.append(token)
            out.logprobs.append(float(logp[j, token]))
            if (cut := finish(out.tokens)) is not None:
                del out.tokens[cut:], out.logprobs[cut:]
                return out
        if on_step is not None:
            on_step(out.tokens)
        pending = choose(logp[agree], out.tokens)
        pending_lp = float(logp[agree, pending])
        hint = proposal[agree + 1 :]


def lookup(context: list[int], k: int, longest: int = 4, shortest: int = 2) -> list[int]:
    """The `k` tokens that followed the latest earlier occurrence of the context's last n tokens (n from `longest`
    down to `shortest`), else []. Code repeats itself (names, calls, the suffix the middle leads into): a draft that
    starts from such a continuation has the denoiser correcting a good guess instead of inventing from noise."""
    for n in range(min(longest, len(context) - 1), shortest - 1, -1):
        tail = context[-n:]
        for start in range(len(context) - n - 1, -1, -1):
            if context[start : start + n] == tail:
                return context[start + n : start + n + k]
    return []
