"""The three ways `DiffusionEngine.infill` decodes a middle on a prompt the engine has already encoded into `cache`.

- `diffuse`: canvases denoised block by block (sampler.py), each committed to the cache before the next one;
- `autoregressive`: next-token decoding through the causal encoder, a beam (beam.py) of which width 1 is greedy;
- `hybrid`: the decoder drafts a canvas and the encoder verifies it (speculative.py): greedy AR's text.

Each returns (texts, scores), best first, and adds what it cost to `stats`. The engine owns the cache and trims it
back to the prompt afterwards, so a decoder may append to it freely.
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import TYPE_CHECKING

import torch

from dg_model.api import Cancelled, InfillJob, JobStats
from dg_model.beam import beam_search
from dg_model.sampler import denoise, noise_like
from dg_model.speculative import lookup, speculate
from dg_model.stops import block_end, can_end, cursor_indent, ended, loop_start

if TYPE_CHECKING:
    from dg_model.engine import DiffusionEngine


def diffuse(eng: DiffusionEngine, cache, canvas_len: int, pinned_tail: list[int], job: InfillJob, stats: JobStats):
    n = max(1, job.n)
    gen = torch.Generator().manual_seed(job.seed or 0)
    sampler = eng.settings.sampler
    if job.temperature is not None:
        sampler = replace(sampler, temperature_start=job.temperature, temperature_end=job.temperature)
    batched = eng.fwd.expand(cache, n) if n > 1 else cache
    tokens: list[list[int]] = [[] for _ in range(n)]
    logprobs: list[list[float]] = [[] for _ in range(n)]
    done = [False] * n
    tail = pinned_tail if len(pinned_tail) < canvas_len else []
    indent = cursor_indent(job.prefix)
    while not all(done) and len(tokens[0]) < job.max_tokens:
        if job.cancel is not None and job.cancel.is_set():
            raise Cancelled()
        canvas = noise_like(torch.zeros(n, canvas_len, dtype=torch.long), eng.vocab_size, gen).to(eng.device)
        pinned = torch.zeros(n, canvas_len, dtype=torch.bool, device=eng.device)
        if tail:
            canvas[:, -len(tail) :] = torch.tensor(tail, device=eng.device)
            pinned[:, -len(tail) :] = True
        result = denoise(
            lambda x, sc: eng.text_only(eng.fwd.decoder_logits(x, batched, sc)),
            canvas,
            pinned,
            eng.vocab_size,
            replace(sampler, greedy=n == 1 and sampler.greedy),
            gen,
            job.cancel,
            eng.drafts(job.on_draft, prefix=tokens[0]),
            greedy_rows=eng.greedy_rows(n),
            stop_ids=tuple(eng.eos_ids),
            late_stop_ids=eng.newline_ids if job.kind == "line" else (),
        )
        stats.steps += result.steps
        stats.decoder_forwards += result.steps
        stats.decoder_ms += result.step_ms
        free = canvas_len - len(tail)
        for i in range(n):
            row, lp = result.tokens[i, :free].tolist(), result.logprobs[i, :free].tolist()
            if not done[i]:
                cut = eng.eos_at(row)
                if job.kind == "line":  # what follows the line break is dropped, so it is not output either
                    cut = next((j + 1 for j, t in enumerate(row[:cut]) if j > 0 and t in eng.newline_ids), cut)
                tokens[i] += row[:cut]
                logprobs[i] += lp[: (cut + 1) if cut is not None else None]
                done[i] = cut is not None or bool(tail)
                if (loop := loop_start(tokens[i])) is not None:
                    del tokens[i][loop:], logprobs[i][loop + 1 :]
                    done[i] = True
        if ended(eng.tokenizer.decode(tokens[0]), job.kind, indent, job.suffix):
            break
        if not all(done):  # block-autoregressive: commit this canvas to the cache, start the next
            eng.fwd.encode(result.tokens, batched, eng.fwd.seq_length(batched), last_only=True)  # keys and values
    stats.new_tokens = len(tokens[0][: job.max_tokens])
    return [eng.tokenizer.decode(t[: job.max_tokens]) for t in tokens], [mean(lp) for lp in logprobs]


# A beam stops after this many steps whose likeliest continuation was an end the suffix forbids (beam.beam_search).
GIVE_UP = 3


def autoregressive(eng: DiffusionEngine, cache, last_hidden, prompt_len: int, job: InfillJob, stats: JobStats):
    """Next-token decoding through the causal encoder and its KV cache: a beam (`DiffusionEngine.beam_width`; width 1
    is greedy decoding). Every finished beam is a candidate, best first, so a model tuned for a wider beam returns
    alternatives even for `n=1`: the editor side ranks them again by what still parses."""
    width = eng.beam_width(job)
    batched = eng.fwd.expand(cache, width) if width > 1 else cache
    stats.steps += 1  # each prediction costs one forward: the prompt's for the first, then one per token

    def advance(parents: list[int], tokens: list[int]) -> torch.Tensor:
        t0 = time.perf_counter()
        pad = width - len(parents)  # rows beyond the live beams copy beam 0 and are fed pad; nobody reads them
        rows = parents + [parents[0]] * pad
        if rows != list(range(width)):
            eng.fwd.reorder(batched, torch.tensor(rows), prompt_len)
        feed = torch.tensor([[t] for t in tokens + [eng.tokenizer.pad_token_id] * pad], device=eng.device)
        hidden = eng.fwd.encode(feed, batched, eng.fwd.seq_length(batched))
        logp = _next_logprobs(eng, hidden[:, -1])[: len(parents)]
        stats.decoder_ms.append((time.perf_counter() - t0) * 1e3)
        return logp

    if job.max_tokens <= 0:
        return [""], [0.0]
    first = _next_logprobs(eng, last_hidden[:, -1])[0]
    prune = eng.settings.beam_prune if job.invoked else None
    result = beam_search(
        first,
        advance,
        width,
        _finish(eng, job),
        eng.eos_ids,
        job.cancel,
        _on_step(eng, job),
        _may_end(eng, job),
        tuple(float(x) for x in prune) if prune else None,
        GIVE_UP if width > 1 else None,  # greedy decoding stays the text the hybrid decoder reproduces
    )
    stats.steps += result.steps
    # An empty middle ranks last: the editor skips it for the next candidate anyway, and length normalisation
    # flatters it (one EOS log-prob against a line's sum divided by its length's square root).
    best = sorted(result.hypotheses, key=lambda h: not h.tokens)
    stats.new_tokens = len(best[0].tokens)
    texts = [eng.tokenizer.decode(h.tokens) for h in best]
    return texts, [h.score for h in best]


def hybrid(eng: DiffusionEngine, cache, last_hidden, prompt_ids: list[int], job: InfillJob, stats: JobStats):
    """Greedy AR text at the cost of fewer encoder forwards: the decoder drafts, the encoder verifies."""
    if job.max_tokens <= 0:
        return [""], [0.0]
    size = max(2, eng.settings.draft_canvas)
    sampler = replace(eng.settings.sampler, max_steps=max(1, eng.settings.draft_steps), greedy=True)
    gen = torch.Generator().manual_seed(job.seed or 0)
    pinned = torch.zeros(1, size, dtype=torch.bool, device=eng.device)
    pinned[0, 0] = True
    history = list(prompt_ids)  # what the cache holds: the prompt and the committed tokens

    def draft(pending: int, hint: list[int]) -> list[int]:
        canvas = noise_like(torch.zeros(1, size, dtype=torch.long), eng.vocab_size, gen).to(eng.device)
        canvas[0, 0] = pending
        if eng.settings.draft_lookup:
            hint = lookup(history + [pending], size - 1) or hint
        hint = hint[: size - 1]
        if hint:  # a guess at what follows (the lookup's, or the last draft's past its first miss): a partly
            canvas[0, 1 : 1 + len(hint)] = torch.tensor(hint, device=eng.device)  # denoised start, not pinned
        if eng.settings.draft_steps <= 0:
            return hint
        result = denoise(
            lambda x, sc: eng.text_only(eng.fwd.decoder_logits(x, cache, sc)),
            canvas,
            pinned,
            eng.vocab_size,
            sampler,
            gen,
            job.cancel,
        )
        stats.steps += result.steps
        stats.decoder_forwards += result.steps
        stats.decoder_ms += result.step_ms
        row = result.tokens[0, 1:].tolist()
        cut = eng.eos_at(row)
        return row[: cut + 1] if cut is not None else row  # the verifier may accept the EOS too

    verified_from = [0]  # the cache length before the last verify: commit keeps what follows it
    verified: list[int] = []

    def verify(seq: list[int]) -> torch.Tensor:
        t0 = time.perf_counter()
        verified[:] = seq
        verified_from[0] = eng.fwd.seq_length(cache)
        hidden = eng.fwd.encode(torch.tensor([seq], device=eng.device), cache, verified_from[0])
        stats.steps += 1
        stats.decoder_ms.append((time.perf_counter() - t0) * 1e3)
        return _next_logprobs(eng, hidden[0])

    def commit(n: int) -> None:
        eng.fwd.trim(cache, verified_from[0] + n)
        history.extend(verified[:n])

    first = _next_logprobs(eng, last_hidden[:, -1])[0]
    result = speculate(
        first, draft, verify, commit, _finish(eng, job), eng.eos_ids, job.cancel, _on_step(eng, job), _may_end(eng, job)
    )
    stats.new_tokens = len(result.tokens)
    stats.drafted, stats.accepted = result.drafted, result.accepted
    return [eng.tokenizer.decode(result.tokens)], [mean(result.logprobs)]


def _next_logprobs(eng: DiffusionEngine, hidden: torch.Tensor) -> torch.Tensor:
    """The causal encoder's log-probabilities of the next token after each of `hidden`'s positions, text only."""
    return eng.text_only(torch.log_softmax(eng.fwd.lm_logits(hidden).float(), -1))


def _on_step(eng: DiffusionEngine, job: InfillJob):
    """The job's draft callback fed the text decoded so far, or None."""
    on_draft = job.on_draft
    return None if on_draft is None else (lambda tokens: on_draft(eng.tokenizer.decode(tokens)))


def _finish(eng: DiffusionEngine, job: InfillJob):
    """Where a middle decoded token by token ends: a loop's start, the job kind's end, or the budget."""
    indent = cursor_indent(job.prefix)

    def finish(tokens: list[int]) -> int | None:
        if (cut := loop_start(tokens)) is not None:
            return cut
        text = eng.tokenizer.decode(tokens)
        if ended(text, job.kind, indent, job.suffix):
            # what `may_end` judges is the middle as it will be cut: before the line that left the block
            end = block_end(text, indent) if job.kind == "block" else None
            keep = len(tokens)
            while end is not None and keep > 1 and len(eng.tokenizer.decode(tokens[:keep])) > end:
                keep -= 1
            if end is not None and len(eng.tokenizer.decode(tokens[:keep])) < end:
                keep += 1  # a token spans the cut (`)\n`): keep it whole; the engine cuts the text at `end` after
            return keep
        if len(tokens) < job.max_tokens:
            return None
        # Out of budget: a block ends with its last whole line (a line cut short may still parse, and be wrong)
        breaks = [j for j, t in enumerate(tokens) if j > 0 and t in eng.newline_ids] if job.kind == "block" else []
        return breaks[-1] if breaks else len(tokens)

    return finish


def _may_end(eng: DiffusionEngine, job: InfillJob):
    """Token-by-token decoding may not end a middle on an open header or bracket the suffix does not finish."""
    return lambda tokens: can_end(job.prefix, eng.tokenizer.decode(tokens), job.suffix)


def mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else 0.0
