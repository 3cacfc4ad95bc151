"""Block diffusion over whole training sequences, so every token supervises the denoiser (BD3-LM, Arriola et al.
2025), in DiffusionGemma's own terms.

A row is one FIM example laid out as the engine decodes it: `prompt + middle + EOS + pad` (the canvas region). The
row is cut into blocks with a boundary exactly where the engine's first canvas starts (after `<fim_middle>`): blocks
of the canvas region are canvas-sized (a middle longer than one canvas continues in the next block, as block-
autoregressive decoding does), blocks of the prompt random-sized (more denoising practice on real code, conditioned
on the clean code before it). The clean row runs through the causal encoder (causal-LM loss) and a noised copy
through the bidirectional decoder (denoising loss on every position), as two passes that together compute this
block-structured attention over their concatenation:

                 keys: clean                     noised
    clean query        causal                     -
    noised query       clean, before its block    its own block

which is what inference computes: the encoder's KV cache of the context, and a canvas attending to it and to
itself. The layers are `lean._Layer`s packed per step with gradients: the same math as transformers' modules, checked
against them in tests/test_blockdiff.py; the LM head's two losses are `head_loss.py`'s. Shapes: B rows, N positions,
H hidden, V vocabulary.
"""

from __future__ import annotations

import functools
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from dg_model.forward import softcap
from dg_model.lean import _Layer, _rms
from dg_model.sampler import FIRST_NOISE_ID  # noise never draws special tokens, in training as in the sampler
from dg_model.special_tokens import PAD
from dg_model.training.fim_examples import canvas_target
from dg_model.training.head_loss import paired_losses


@dataclass(frozen=True)
class BlockLayout:
    """How rows are cut. The canvas region's block size is drawn per row from `canvases` (the engine's canvases);
    prompt blocks are drawn from [prompt_block_min, prompt_block_max]."""

    canvases: Sequence[int] = (16, 24, 32, 64)
    middle_tokens: int = 64  # the canvas region keeps at most max(this, one canvas) tokens
    prompt_block_min: int = 4
    prompt_block_max: int = 32
    prompt_weight: float = 0.5  # denoising weight of prompt blocks; the canvas region (the product's task) has 1
    pad_weight: float = 0.1  # pad after EOS inside the canvas region: the model must learn where a middle ends


@dataclass
class BlockRow:
    ids: list[int]  # prompt + canvas region
    starts: list[int]  # first position of each block, ascending from 0
    weight: list[float]  # denoising weight per position
    middle_from: int  # first position of the canvas region (== len(prompt))


def block_row(prompt: list[int], middle: list[int], layout: BlockLayout, rng: random.Random) -> BlockRow:
    canvas = rng.choice(tuple(layout.canvases))
    blocks = min(math.ceil((len(middle) + 1) / canvas), max(1, layout.middle_tokens // canvas))
    region = canvas_target(middle, canvas * blocks)
    starts = [len(prompt) + canvas * i for i in range(blocks)]
    s = len(prompt)
    while s > 0:  # prompt blocks, walking back from the canvas start
        s = max(0, s - rng.randint(layout.prompt_block_min, layout.prompt_block_max))
        starts.insert(0, s)
    weight = [layout.prompt_weight] * len(prompt) + [layout.pad_weight if t == PAD else 1.0 for t in region]
    return BlockRow(prompt + region, starts, weight, len(prompt))


def collate_rows(rows: Sequence[BlockRow], width: int = 0) -> dict[str, torch.Tensor]:
    """Right-padded tensors, `width` wide at least. `start[b, i]`: first position of i's block (a padding position
    is a block of its own, so nothing real attends to it and its attention row is never empty)."""
    width = max(width, *(len(r.ids) for r in rows))
    ids = torch.full((len(rows), width), PAD, dtype=torch.long)
    start = torch.arange(width).repeat(len(rows), 1)
    weight = torch.zeros(len(rows), width)
    real = torch.zeros(len(rows), width, dtype=torch.bool)
    middle = torch.zeros(len(rows), width, dtype=torch.bool)
    for b, r in enumerate(rows):
        n = len(r.ids)
        ids[b, :n] = torch.tensor(r.ids)
        bounds = r.starts + [n]
        for lo, hi in zip(bounds, bounds[1:]):
            start[b, lo:hi] = lo
        weight[b, :n] = torch.tensor(r.weight)
        real[b, :n] = True
        middle[b, r.middle_from : n] = True
    return {"ids": ids, "start": start, "weight": weight, "real": real, "middle": middle}


def noised_sees(start: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[B, N] block starts -> what each noised query sees, [B, 1, N, N] booleans each: the clean keys before its
    block, and the noised keys of its own block."""
    pos = torch.arange(start.shape[1], device=start.device)
    return (pos[None, None, :] < start[:, :, None])[:, None], (start[:, :, None] == start[:, None, :])[:, None]


def block_mask(start: torch.Tensor) -> torch.Tensor:
    """[B, N] block starts -> [B, 1, 2N, 2N] boolean attention mask over (clean, noised) x (clean, noised): the
    attention of the two passes (`BlockForward`) written as one matrix."""
    B, N = start.shape
    pos = torch.arange(N, device=start.device)
    clean_clean = (pos[:, None] >= pos[None, :]).expand(B, 1, N, N)
    top = torch.cat([clean_clean, torch.zeros_like(clean_clean)], 3)
    return torch.cat([top, torch.cat(noised_sees(start), 3)], 2)


def noise_blocks(
    ids: torch.Tensor,
    start: torch.Tensor,
    vocab: int,
    t: torch.Tensor | None,
    eps: float,
    gen: torch.Generator | None = None,
    full: float = 0.0,
) -> torch.Tensor:
    """Uniform-state noise at one rate per block (t ~ U(eps, 1) unless given, [B, N] or broadcastable); a share
    `full` of the blocks is noised completely, the state a draft (and a first denoising step) starts from, which
    U(eps, 1) alone almost never shows the decoder."""
    if t is None:
        t = torch.rand(ids.shape, generator=gen, device=ids.device) * (1 - eps) + eps
        if full > 0:
            t = torch.where(torch.rand(ids.shape, generator=gen, device=ids.device) < full, 1.0, t)
        t = t.gather(1, start)
    noise = torch.randint(FIRST_NOISE_ID, vocab, ids.shape, generator=gen, device=ids.device)
    return torch.where(torch.rand(ids.shape, generator=gen, device=ids.device) < t, noise, ids)


def _group_products(a: torch.Tensor, b: torch.Tensor, ends: torch.Tensor) -> torch.Tensor:
    """Rows a[ends[e-1]:ends[e]] times b[e], for each e, in a's dtype (under autocast the rows are bf16, the
    experts' weights float32). `F.grouped_mm` where it runs (any CPU; bf16 on CUDA), else a product per group."""
    b = b.to(a.dtype)
    if a.device.type == "cpu" or a.dtype == torch.bfloat16:
        return F.grouped_mm(a, b, offs=ends)
    cuts = [0, *ends.tolist()]
    return torch.cat([a[lo:hi] @ b[e] for e, (lo, hi) in enumerate(zip(cuts, cuts[1:]))])


def _group_outer_products(a: torch.Tensor, g: torch.Tensor, ends: torch.Tensor) -> torch.Tensor:
    """a[rows of e].T @ g[rows of e] for each group e -> [E, a columns, g columns]."""
    if a.device.type == "cpu" or a.dtype == torch.bfloat16:
        return F.grouped_mm(a.T, g, offs=ends)
    cuts = [0, *ends.tolist()]
    return torch.stack([a[lo:hi].T @ g[lo:hi] for lo, hi in zip(cuts, cuts[1:])])


@torch.library.custom_op("dg_model::grouped_mm", mutates_args=())
def traceable_grouped_mm(a: torch.Tensor, b: torch.Tensor, ends: torch.Tensor) -> torch.Tensor:
    """`_group_products` as an operator torch.compile can trace (torch's own grouped product has a bf16-only fake
    implementation), so the routed experts stay inside the compiled graph."""
    return _group_products(a, b, ends).contiguous()


@traceable_grouped_mm.register_fake
def _(a, b, ends):
    return a.new_empty(a.shape[0], b.shape[-1])


@torch.library.custom_op("dg_model::grouped_mm_backward", mutates_args=())
def _grouped_mm_backward(
    grad: torch.Tensor, a: torch.Tensor, b: torch.Tensor, ends: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    # each group's rows: d a = grad @ b[e].T; d b[e] = a.T @ grad over them
    grad = grad.to(a.dtype)
    grad_a = _group_products(grad, b.transpose(1, 2), ends)
    return grad_a.contiguous(), _group_outer_products(a, grad, ends).to(b.dtype).contiguous()


@_grouped_mm_backward.register_fake
def _(grad, a, b, ends):
    return a.new_empty(a.shape), b.new_empty(b.shape)


def _save_inputs(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _grouped_mm_grad(ctx, grad):
    return *_grouped_mm_backward(grad, *ctx.saved_tensors), None


traceable_grouped_mm.register_autograd(_grouped_mm_grad, setup_context=_save_inputs)


def _grouped_moe(layer: _Layer, route: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """`_Layer.moe` with static shapes: the (row, slot) pairs sorted by expert go through one grouped product per
    projection, where inference slices them per expert by counts read back to Python (a graph break per layer here,
    which fragmented the compiled step into recompiles). The same products and sums; in inference the grouped
    product was no faster for a beam's rows and 1.36x slower for a prompt's (one thread)."""
    weights, index = layer.routing(route)
    experts, order = index.flatten().sort(stable=True)
    rows = order // layer.top_k
    ends = torch.searchsorted(experts, torch.arange(layer.experts_down.shape[0], device=x.device), right=True)
    ends = ends.to(torch.int32)
    gate, up = traceable_grouped_mm(x[rows], layer.experts_gate_up.transpose(1, 2), ends).chunk(2, -1)
    y = traceable_grouped_mm(layer.expert_act(gate) * up, layer.experts_down.transpose(1, 2), ends)
    return torch.zeros_like(x).index_add_(0, rows, (y * weights.flatten()[order, None]).to(x.dtype))


# Noised queries in chunks of this many positions: each reads the clean keys up to its end and the noised keys near
# it, where one call over all of them read 2N keys per query of which ~N/2 + a block were visible.
QUERY_CHUNK = 64


def noised_chunks(start: torch.Tensor, chunk: int = QUERY_CHUNK) -> list[tuple[int, int, int, int]]:
    """(a, b, lo, hi) per chunk of noised queries [a, b): the noised keys [lo, hi) hold every block those queries
    are in (blocks are at most `span` long: a block reaching into [a, b) lies inside [a - span + 1, b + span - 1)).
    `span` is at least `chunk` and a power of two: the plan is an argument a compiled graph is specialised on, and
    batches whose longest block differs (64 in most, 32 in some) recompiled it for a minute each."""
    N = start.shape[1]
    span = int((torch.arange(N, device=start.device) - start).max()) + 1
    span = max(chunk, 1 << (span - 1).bit_length())
    return [(a, min(a + chunk, N), max(0, a - span + 1), min(N, a + chunk + span - 1)) for a in range(0, N, chunk)]


class BlockForward:
    """The clean and noised passes over a model's parameters (rebuilt per step: packs carry this step's weights):
    `clean` runs the causal encoder and keeps each layer's keys and values, `noised` the decoder over noised blocks
    reading them. Two passes rather than one over the concatenation: a self-conditioning pass reuses the clean one.
    `compiled`: the layers run through torch.compile (fixed row width, or it recompiles per width), the routed experts
    as grouped products (`_grouped_moe`: static shapes, one graph per pass)."""

    def __init__(self, model, compiled: bool = False, query_chunk: int = QUERY_CHUNK):
        text = model.config.text_config
        self.query_chunk = query_chunk
        self.enc, self.dec = model.model.encoder.language_model, model.model.decoder
        self.eps, self.softcap = text.rms_norm_eps, text.final_logit_softcapping
        self.layers = [_Layer(layer, self.eps, trainable=True) for layer in self.enc.layers]
        for layer in self.layers:
            layer.moe = functools.partial(_grouped_moe, layer)  # type: ignore[method-assign]  # per-instance swap
        compile_ = functools.partial(torch.compile, dynamic=False) if compiled else (lambda f: f)
        self.run_clean, self.run_noised = compile_(self._run_clean), compile_(self._run_noised)
        # self-conditioning's [B, N, V] logits and softmax: eager, ~10 passes over 75 M floats per step at batch 16
        self.logits, self.conditioned = compile_(self._logits), compile_(self._conditioned)
        # the only per-half difference inside the shared layers: each side's layer scalar (a buffer, not tied)
        self.scalars = [(enc.layer_scalar, dec.layer_scalar) for enc, dec in zip(self.enc.layers, self.dec.layers)]
        self.lm_head = model.lm_head.weight

    def clean(self, ids: torch.Tensor) -> tuple[torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]]]:
        """The encoder's final hidden states [B, N, H] and each layer's keys and values [B, g, N, d]."""
        return self.run_clean(self.enc.embed_tokens(ids))

    def noised(self, noised, start, kv, sc_logits=None, sc_rows=None) -> torch.Tensor:
        """The decoder's final hidden states [B, N, H] over `noised` blocks, each reading the clean keys and values
        `kv` (from `clean`) before its block; rows `sc_rows` (indices [k]) self-conditioned on `sc_logits` [k, N, V],
        the others on nothing."""
        x = self.dec.embed_tokens(noised)
        if sc_logits is not None:
            x = self.conditioned(x, sc_logits, sc_rows)
        else:  # a zero signal passes the self-conditioning MLP as zero: only its output norm is left
            x = _rms(x, None, self.eps)
        x = x.to(self.enc.embed_tokens.weight.dtype)
        return self.run_noised(x, start, kv, noised_chunks(start, self.query_chunk))

    def hidden(self, ids, noised, start, sc_logits=None, sc_rows=None) -> torch.Tensor:
        """Final hidden states [B, 2N, H]: clean positions first, then noised ones."""
        h_clean, kv = self.clean(ids)
        return torch.cat([h_clean, self.noised(noised, start, kv, sc_logits, sc_rows)], 1)

    def _rope(self, x: torch.Tensor) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        pos = torch.arange(x.shape[1], device=x.device)[None]
        rope = {}
        for layer in self.layers:
            if layer.layer_type not in rope:
                cos, sin = self.enc.rotary_emb(x, pos, layer.layer_type)
                rope[layer.layer_type] = (cos[0, :, None], sin[0, :, None])
        return rope

    def _run_clean(self, x: torch.Tensor):
        rope, kv = self._rope(x), []

        def attend(q, k, v):
            kv.append((k, v))
            return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=1.0, enable_gqa=True)

        for layer, (enc_scalar, _) in zip(self.layers, self.scalars):
            layer.scalar = enc_scalar
            x = layer(x, *rope[layer.layer_type], attend)
        return _rms(x, self.enc.norm.weight, self.eps), kv

    def _run_noised(self, x: torch.Tensor, start: torch.Tensor, kv, chunks) -> torch.Tensor:
        sees_clean, sees_noised = noised_sees(start)
        masks = [torch.cat([sees_clean[..., a:b, :b], sees_noised[..., a:b, lo:hi]], -1) for a, b, lo, hi in chunks]
        rope, kv_of = self._rope(x), iter(kv)

        def attend(q, k, v):
            k_clean, v_clean = next(kv_of)
            out = []
            for (a, b, lo, hi), mask in zip(chunks, masks):
                keys = torch.cat([k_clean[:, :, :b], k[:, :, lo:hi]], 2)
                values = torch.cat([v_clean[:, :, :b], v[:, :, lo:hi]], 2)
                out.append(F.scaled_dot_product_attention(q[:, :, a:b], keys, values, mask, scale=1.0, enable_gqa=True))
            return torch.cat(out, 2)

        for layer, (_, dec_scalar) in zip(self.layers, self.scalars):
            layer.scalar = dec_scalar
            x = layer(x, *rope[layer.layer_type], attend)
        return _rms(x, self.enc.norm.weight, self.eps)

    def _conditioned(self, x: torch.Tensor, sc_logits: torch.Tensor, sc_rows: torch.Tensor) -> torch.Tensor:
        soft = torch.softmax(sc_logits, -1, dtype=torch.float32).to(x.dtype) @ self.dec.embed_tokens.weight
        soft = soft * self.dec.embed_tokens.embed_scale.to(x.dtype)
        return self.dec.self_conditioning(x, torch.zeros_like(x).index_copy(0, sc_rows, soft))

    def _logits(self, h: torch.Tensor) -> torch.Tensor:
        return softcap(h @ self.lm_head.T, self.softcap)


def losses(
    model,
    batch: dict[str, torch.Tensor],
    *,
    self_cond: bool,
    noise_eps: float = 0.02,
    t: torch.Tensor | None = None,
    ar_weight: float = 1.0,
    compiled: bool = False,
    full_noise: float = 0.0,
    distill: float = 0.0,
    agree: bool = False,
) -> dict[str, torch.Tensor]:
    """The block objective's losses on one batch. `distill`: the denoiser's target at each position mixes in that
    share of the causal encoder's own next-token distribution there (from the clean states one position earlier,
    detached): the denoiser learns to draft what greedy AR of the same weights writes, which is what the hybrid's
    verifier accepts. `agree`: also report `canvas_agree`, how often the denoiser's argmax already is the encoder's."""
    ids, start, weight, real, middle = (batch[k] for k in ("ids", "start", "weight", "real", "middle"))
    B, N = ids.shape
    fwd = BlockForward(model, compiled)
    noised = noise_blocks(ids, start, model.config.text_config.vocab_size, t, noise_eps, full=full_noise)
    h_clean, kv = fwd.clean(ids)
    sc_logits = sc_rows = None
    if self_cond:  # the sampler feeds each step the previous step's logits; half the rows learn to use them
        # their first reading is run for those rows only (a fixed count: one compiled shape): the other half's was
        # computed and multiplied by zero (on the 2-core EPYC 3.6 of a ~55 s self-conditioned eager step)
        sc_rows = torch.randperm(B, device=ids.device)[: max(1, B // 2)]
        with torch.no_grad():
            kv_rows = [(k[sc_rows], v[sc_rows]) for k, v in kv]
            sc_logits = fwd.logits(fwd.noised(noised[sc_rows], start[sc_rows], kv_rows))
    h_noised = fwd.noised(noised, start, kv, sc_logits, sc_rows)

    # position q's token: the decoder denoises it at q (every position of every block), the encoder predicts it from
    # q - 1 (the causal LM over prompt, middle and its EOS; position 0 has no predictor, nor a teacher)
    pairs = F.pad(real[:, :-1] & real[:, 1:] & (ids[:, 1:] != PAD), (1, 0))
    rows = (weight > 0) | pairs
    before = torch.cat([torch.zeros_like(h_clean[:, :1]), h_clean[:, :-1]], 1)
    alpha = (torch.arange(N, device=ids.device) > 0).expand(B, N) * distill
    ar, diffusion, hit, agrees = paired_losses(
        before[rows],
        h_noised[rows],
        fwd.lm_head,
        ids[rows],
        pairs[rows],
        weight[rows],
        alpha[rows],
        fwd.softcap,
        compiled=compiled,
    )
    in_canvas = (middle & (ids != PAD))[rows]
    canvas_n = in_canvas.sum().clamp(min=1)
    out = {
        "loss": diffusion + ar_weight * ar,
        "diffusion": diffusion,
        "ar": ar,
        "canvas_acc": (hit & in_canvas).sum() / canvas_n,
        "denoised_tokens": ((weight > 0) & (ids != PAD)).sum(),
        "ar_tokens": pairs.sum(),
    }
    if agree:
        out["canvas_agree"] = (agrees & in_canvas).sum() / canvas_n
    return out
