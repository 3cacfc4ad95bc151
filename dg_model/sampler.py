"""Our denoising loop over DiffusionGemma's encoder and decoder.

The stock `generate()` cannot pin tokens, stop on a cancel, reuse a prompt cache or size the canvas per request, so
this module re-implements the sampler as small functions (gpt-fast style) around one model call,
`logits_fn(canvas, sc_logits) -> logits` (a `forward.Forward`'s `decoder_logits` bound to a prompt cache).

Each step predicts every canvas position, accepts the lowest-entropy tokens whose summed entropy (minus the
largest) stays under `entropy_bound`, and re-noises the rest with random vocabulary ids: self-correction. Pinned
positions are never re-noised. The loop stops when the argmax canvas is stable and confident, or at `max_steps`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from dg_model.api import Cancelled

FIRST_NOISE_ID = 7  # special tokens are never drawn as noise (same as in training)


@dataclass(frozen=True)
class SamplerConfig:
    max_steps: int = 12
    entropy_bound: float = 0.1
    temperature_start: float = 0.8  # linear schedule over max_steps, as in the reference sampler
    temperature_end: float = 0.4
    stability: int = 1  # steps the argmax canvas must stay unchanged
    confidence: float = 0.005  # ... and mean entropy of the free positions below this
    self_conditioning: bool = True
    greedy: bool = True  # editors want the same answer twice; sampling only for n > 1 candidates
    # Committed tokens are kept instead of re-decided each step, and every step commits at least
    # free/steps_left tokens, so the canvas is complete by max_steps. A small model's late-step argmax over a
    # still-noisy canvas is much worse than its early confident tokens; the 26B can afford full re-noising.
    freeze_accepted: bool = True
    # Added to each position's entropy when ranking what to commit: > 0 prefers left-to-right order, which a small
    # model needs (its confident tokens far from the cursor are often wrong); 0 is pure entropy order.
    position_bias: float = 0.0


@dataclass
class DenoiseResult:
    tokens: torch.Tensor  # [B, C] final argmax canvas
    logprobs: torch.Tensor  # [B, C] log-probability of each final token
    steps: int
    step_ms: list[float]


def noise_like(canvas: torch.Tensor, vocab_size: int, generator: torch.Generator | None) -> torch.Tensor:
    return torch.randint(FIRST_NOISE_ID, vocab_size, canvas.shape, device=canvas.device, generator=generator)


def entropy(logits: torch.Tensor) -> torch.Tensor:
    logp = torch.log_softmax(logits, -1)
    return -(logp.exp() * logp).sum(-1)


def accept_mask(token_entropy: torch.Tensor, free: torch.Tensor, bound: float) -> torch.Tensor:
    """Lowest-entropy free tokens whose summed entropy minus the largest of them stays <= bound (at least one)."""
    ent = token_entropy.masked_fill(~free, float("inf"))
    sorted_ent, order = torch.sort(ent, dim=-1)
    finite = torch.isfinite(sorted_ent)
    cum = torch.cumsum(sorted_ent.masked_fill(~finite, 0.0), -1)
    chosen = (cum - sorted_ent.masked_fill(~finite, 0.0) <= bound) & finite
    return torch.zeros_like(chosen).scatter(-1, order, chosen)


def _ended(x: torch.Tensor, committed: torch.Tensor, stop: torch.Tensor, late_stop: torch.Tensor) -> torch.Tensor:
    """[B] rows whose canvas holds a committed stop token with everything before it committed. `late_stop` ids
    (newlines, for a one-line job) end a row only after its first position, so a leading newline does not."""
    late = torch.isin(x, late_stop) & (torch.arange(x.shape[1], device=x.device) > 0)
    is_stop = committed & (torch.isin(x, stop) | late)
    first = torch.where(is_stop.any(-1), is_stop.float().argmax(-1), torch.full_like(x[:, 0], x.shape[1]))
    before = torch.arange(x.shape[1], device=x.device)[None] < first[:, None]
    return is_stop.any(-1) & (committed | ~before).all(-1)


def temperature_at(cfg: SamplerConfig, step: int) -> float:
    frac = step / max(cfg.max_steps - 1, 1)
    return cfg.temperature_start + (cfg.temperature_end - cfg.temperature_start) * frac


def denoise(
    logits_fn: Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor],
    canvas: torch.Tensor,
    pinned: torch.Tensor,
    vocab_size: int,
    cfg: SamplerConfig,
    generator: torch.Generator | None = None,
    cancel: threading.Event | None = None,
    on_step: Callable[[torch.Tensor], None] | None = None,
    greedy_rows: torch.Tensor | None = None,
    stop_ids: tuple[int, ...] = (),
    late_stop_ids: tuple[int, ...] = (),
) -> DenoiseResult:
    """Refine `canvas` [B, C] (pinned positions hold their tokens, free ones start as given, e.g. noise).
    `greedy_rows` [B] bool overrides `cfg.greedy` per row: candidate 0 stays greedy while the others sample."""
    x = canvas.clone()
    committed = pinned.clone()
    stop = torch.tensor(stop_ids, dtype=torch.long, device=canvas.device)
    late_stop = torch.tensor(late_stop_ids, dtype=torch.long, device=canvas.device)
    sc: torch.Tensor | None = None
    argmax = prev = None
    stable, step_ms = 0, []
    logits = None
    for step in range(cfg.max_steps):
        if cancel is not None and cancel.is_set():
            raise Cancelled()
        t0 = time.perf_counter()
        logits = logits_fn(x, sc) / temperature_at(cfg, step)
        token_entropy = entropy(logits)
        if cfg.position_bias:
            token_entropy = token_entropy + cfg.position_bias * torch.linspace(0, 1, x.shape[1], device=x.device)
        argmax = torch.where(committed if cfg.freeze_accepted else pinned, x, logits.argmax(-1))
        if cfg.greedy and greedy_rows is None:
            sample = logits.argmax(-1)
        else:
            # Gumbel-max: a draw from softmax(logits), ~15x cheaper than torch.multinomial over the vocabulary here
            u = torch.rand(logits.shape, generator=generator, device=logits.device).clamp_(min=1e-20)
            sample = (logits.float() - torch.log(-torch.log(u))).argmax(-1)
            if greedy_rows is not None:
                sample = torch.where(greedy_rows[:, None], logits.argmax(-1), sample)
        free = ~committed if cfg.freeze_accepted else ~pinned
        accepted = accept_mask(token_entropy, free, cfg.entropy_bound)
        if cfg.freeze_accepted:
            need = (free.sum(-1, keepdim=True) + cfg.max_steps - step - 1) // (cfg.max_steps - step)
            rank = token_entropy.masked_fill(~free, float("inf")).argsort(-1).argsort(-1)
            accepted |= (rank < need) & free
            x = torch.where(accepted, sample, torch.where(committed, x, noise_like(x, vocab_size, generator)))
            committed |= accepted
            argmax = torch.where(committed, x, argmax)
        else:
            x = torch.where(accepted | pinned, sample, noise_like(x, vocab_size, generator))
        sc = logits if cfg.self_conditioning else None
        step_ms.append((time.perf_counter() - t0) * 1e3)
        if on_step is not None:
            on_step(argmax)
        if cfg.freeze_accepted:
            if bool(committed.all()) or (
                (stop_ids or late_stop_ids) and bool(_ended(x, committed, stop, late_stop).all())
            ):
                break
            continue
        stable = stable + 1 if prev is not None and torch.equal(argmax, prev) else 0
        prev = argmax
        mean_entropy = (token_entropy * free).sum() / free.sum().clamp(min=1)
        if stable >= cfg.stability and (mean_entropy < cfg.confidence or bool((accepted | pinned).all())):
            break
    assert argmax is not None and logits is not None, "max_steps must be >= 1"
    logprobs = torch.log_softmax(logits, -1).gather(-1, argmax.unsqueeze(-1)).squeeze(-1)
    return DenoiseResult(argmax, logprobs, len(step_ms), step_ms)
