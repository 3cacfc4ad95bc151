"""A trained model made wider without changing what it computes, so a short run can spend its compute on the new
capacity instead of relearning what the narrow model knew (function-preserving growth, Net2Net's idea).

Widths grow (hidden, dense-MLP, expert and self-conditioning intermediates); depth, heads, vocabulary stay. Every
RMSNorm in DiffusionGemma normalises over the hidden width, and two have no weight (the router's input and the
self-conditioning output), so zero-padding alone would change the numbers. The grown model instead carries the whole
residual stream `s = sqrt(H' / H)` times larger in the old dimensions and zero in the new: an RMS over H' of `[s x, 0]`
equals the RMS of `x` over H, so

- norms reading the stream (pre-norms, the final norms) divide their weights by `s` and give the old outputs; the
  router's `scale * H**-0.5` input already comes out the same;
- norms writing into it (post-norms) keep their weights: the sublayer's output `[y, 0]` normalises to `s` times the
  old one, as the stream now needs;
- the embedding (shared with the LM head) is scaled so the stream starts `s` times larger, and the final norms absorb
  that factor again before the head; the self-conditioning MLP's output is scaled by `s`, its weightless output norm
  then gives `s` times the old decoder input.

New rows of output projections and new embedding dimensions are zero (the new dimensions start silent); new columns
of input projections and new intermediate units are small random values, so gradients reach the new dimensions from
the first step (all-zero new dimensions would receive no gradient at all). `tests/test_grow.py` checks the logits of
the encoder and the decoder, with and without self-conditioning, against the narrow model.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from transformers import DiffusionGemmaForBlockDiffusion

# parameters by what they do to the residual stream, by name suffix (all others write into it, or are embeddings)
_INPUTS = (
    "q_proj.weight",
    "k_proj.weight",
    "v_proj.weight",
    "gate_proj.weight",
    "up_proj.weight",
    "router.proj.weight",
    "experts.gate_up_proj",
)
_PRE_NORMS = (
    "input_layernorm.weight",
    "pre_feedforward_layernorm.weight",
    "pre_feedforward_layernorm_2.weight",
    "self_conditioning.pre_norm.weight",
)
_FINAL_NORMS = ("language_model.norm.weight", "decoder.norm.weight")


def width(model: DiffusionGemmaForBlockDiffusion) -> int:
    """The hidden size: what `grow` widens."""
    text: Any = model.config.text_config
    return int(text.hidden_size)


def grow(
    model: DiffusionGemmaForBlockDiffusion,
    hidden_size: int,
    intermediate_size: int | None = None,
    moe_intermediate_size: int | None = None,
    seed: int = 0,
    init_std: float = 0.02,
) -> DiffusionGemmaForBlockDiffusion:
    """A new model of the given widths computing what `model` computes (intermediates default to the hidden's ratio)."""
    text: Any = model.config.text_config  # (typed as a union with dict and None; a loaded model's is a config)
    H, D, M = text.hidden_size, text.intermediate_size, text.moe_intermediate_size
    ratio = hidden_size / H
    I2 = intermediate_size or round(D * ratio)
    M2 = moe_intermediate_size or round(M * ratio)
    if hidden_size < H or I2 < D or M2 < M:
        raise ValueError(f"widths only grow: hidden {H} -> {hidden_size}, MLP {D} -> {I2}, experts {M} -> {M2}")
    config = model.config.__class__.from_dict(model.config.to_dict())
    wide: Any = config.text_config
    wide.hidden_size, wide.intermediate_size, wide.moe_intermediate_size = hidden_size, I2, M2
    new = DiffusionGemmaForBlockDiffusion(config)
    s = math.sqrt(hidden_size / H)
    embed_ratio = float(model.model.encoder.language_model.embed_tokens.embed_scale) / float(
        new.model.encoder.language_model.embed_tokens.embed_scale
    )
    gen = torch.Generator().manual_seed(seed)
    old_params = dict(model.named_parameters())
    with torch.no_grad():
        for name, p in new.named_parameters():
            old = old_params[name].detach().float()
            if old.shape == p.shape and not name.endswith(("embed_tokens.weight", *_PRE_NORMS, *_FINAL_NORMS)):
                p.copy_(old)  # untouched by the widths: the vision tower, per-head norms, per-expert scales
                continue
            if name.endswith(_INPUTS):
                p.copy_(torch.randn(p.shape, generator=gen) * init_std)  # new columns and units: small, not silent
            elif p.dim() == 1:
                p.fill_(float(old.mean()))  # a norm's or the router's scale on a dimension that starts at zero
            else:
                p.zero_()  # outputs into new dimensions, new units' outputs, new embedding dimensions
            old_part = tuple(slice(0, n) for n in old.shape)
            if name.endswith("experts.gate_up_proj"):  # gate and up halves, each grown at its own end
                p[:, :M, :H], p[:, M2 : M2 + M, :H] = old[:, :M], old[:, M:]
            else:
                p[old_part] = old
            if name.endswith("embed_tokens.weight"):  # the stream starts s times larger
                p[old_part] *= embed_ratio * s
            elif name.endswith(_PRE_NORMS):
                p[old_part] /= s
            elif name.endswith(_FINAL_NORMS):  # back to the old scale, and the embedding's factor undone for the head
                p[old_part] /= embed_ratio * s * s
            elif name.endswith("self_conditioning.down_proj.weight"):
                p[old_part] *= s
    return new
