"""Block diffusion over whole training sequences, so every token supervises the denoiser (BD3-LM, Arriola et al.
2025), in DiffusionGemma's own terms.

A row is one FIM example laid out as the engine decodes it: `prompt + middle + EOS + pad` (the canvas region). The
row is cut into blocks with a boundary exactly where the engine's first canvas starts (after `<fim_middle>`): blocks
of the canvas region are canvas-sized (a middle longer than one canvas continues in the next block, as block-
autoregressive decoding does), blocks of the prompt random-sized (more denoising practice on real code, conditioned
on the clean code before it). One forward runs the clean row (the causal encoder: causal-LM loss) and a noised copy
(the bidirectional decoder: denoising loss on every position) over their concatenation with a block-structured mask:

                 keys: clean                     noised
    clean query        causal                     -
    noised query       clean, before its block    its own block

which is what inference computes: the encoder's KV cache of the context, and a canvas attending to it and to
itself. The layers are `lean._Layer`s packed per step with gradients: the same math as transformers' modules, checked
against them in tests/test_blockdiff.py. Shapes: B rows, N positions, H hidden, V vocabulary.
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


# Noised queries in chunks of this many positions: each reads the clean keys up to its end and the noised keys near
# it, where one call over all of them read 2N keys per query of which ~N/2 + a block were visible.
QUERY_CHUNK = 64


def noised_chunks(start: torch.Tensor, chunk: int = QUERY_CHUNK) -> list[tuple[int, int, int, int]]:
    """(a, b, lo, hi) per chunk of noised queries [a, b): the noised keys [lo, hi) hold every block those queries
    are in (blocks are at most `span` long: a block reaching into [a, b) lies inside [a - span + 1, b + span - 1)).
    `span` is rounded up to a power of two so that compiled graphs see few distinct plans."""
    N = start.shape[1]
    span = int((torch.arange(N, device=start.device) - start).max()) + 1
    span = 1 << (span - 1).bit_length()
    return [(a, min(a + chunk, N), max(0, a - span + 1), min(N, a + chunk + span - 1)) for a in range(0, N, chunk)]


class BlockForward:
    """The clean and noised passes over a model's parameters (rebuilt per step: packs carry this step's weights):
    `clean` runs the causal encoder and keeps each layer's keys and values, `noised` the decoder over noised blocks
    reading them. Two passes rather than one over the concatenation: a self-conditioning pass reuses the clean one.
    `compiled`: the layers run through torch.compile (fixed row width, or it recompiles per width), all but the routed
    experts: their per-expert row counts are data, which a compiled graph would specialise on and recompile for; the
    experts run eagerly between compiled pieces (a step 0.79x the time of every expert on every row, compiled)."""

    def __init__(self, model, compiled: bool = False, query_chunk: int = QUERY_CHUNK):
        text = model.config.text_config
        self.query_chunk = query_chunk
        self.enc, self.dec = model.model.encoder.language_model, model.model.decoder
        self.eps, self.softcap = text.rms_norm_eps, text.final_logit_softcapping
        self.layers = [_Layer(layer, self.eps, trainable=True) for layer in self.enc.layers]
        if compiled:
            for layer in self.layers:
                layer.moe = torch.compiler.disable(layer.moe)  # type: ignore[method-assign]  # per-instance swap
        compile_ = functools.partial(torch.compile, dynamic=False) if compiled else (lambda f: f)
        self.run_clean, self.run_noised = compile_(self._run_clean), compile_(self._run_noised)
        # the only per-half difference inside the shared layers: each side's layer scalar (a buffer, not tied)
        self.scalars = [(enc.layer_scalar, dec.layer_scalar) for enc, dec in zip(self.enc.layers, self.dec.layers)]
        self.lm_head = model.lm_head.weight

    def clean(self, ids: torch.Tensor) -> tuple[torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]]]:
        """The encoder's final hidden states [B, N, H] and each layer's keys and values [B, g, N, d]."""
        return self.run_clean(self.enc.embed_tokens(ids))

    def noised(self, noised, start, kv, sc_logits=None, sc_rows=None) -> torch.Tensor:
        """The decoder's final hidden states [B, N, H] over `noised` blocks, each reading the clean keys and values
        `kv` (from `clean`) before its block; self-conditioned on `sc_logits` in rows `sc_rows`."""
        x = self.dec.embed_tokens(noised)
        if sc_logits is not None:
            soft = torch.softmax(sc_logits, -1, dtype=torch.float32).to(x.dtype) @ self.dec.embed_tokens.weight
            soft = soft * self.dec.embed_tokens.embed_scale.to(x.dtype) * sc_rows.to(x.dtype)[:, None, None]
            x = self.dec.self_conditioning(x, soft)
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

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        return softcap(h @ self.lm_head.T, self.softcap)


def _chunk_loss_and_grad(hc, W, tc, wc, scale, cap: float, ht=None, ac=None):
    """One chunk of rows: (sum of weighted losses, argmax hits, argmax agreeing with the teacher's, d loss / d logits
    before the cap). With teacher rows `ht` the target is `(1 - ac) * onehot(tc) + ac * softmax(teacher logits)`:
    the teacher's whole distribution, not just the sampled next token, reaches the student."""
    t = torch.tanh((hc @ W.T).float() / cap)
    s = t * cap
    lse = torch.logsumexp(s, -1)
    top = s.argmax(-1)
    hits = top == tc
    target = F.one_hot(tc, s.shape[1]).to(s.dtype)
    agree = hits
    if ht is not None:
        st = torch.tanh((ht @ W.T).float() / cap) * cap
        agree = top == st.argmax(-1)
        target = target + ac[:, None] * (torch.softmax(st, -1) - target)
    g = (torch.exp(s - lse[:, None]) - target) * (wc * scale)[:, None] * (1 - t * t)
    return ((lse - (target * s).sum(-1)) * wc).sum(), hits, agree, g.to(hc.dtype)


@functools.cache
def _compiled_chunk():
    # inductor fuses the ~12 passes over each [chunk, V] block into two: 4x faster on this CPU (bench_train.json)
    return torch.compile(_chunk_loss_and_grad, dynamic=False)


class _SoftcapCrossEntropy(torch.autograd.Function):
    """Weighted mean cross-entropy of soft-capped logits `cap * tanh(h @ W.T / cap)`, computed in row chunks with
    its gradients in the same pass (the fused linear cross-entropy of Liger and others): the [rows, V] logits never
    exist for autograd, which held ~5 GB per step of the embedded model at batch 16. Returns the loss and, per row,
    whether the argmax is the target and whether it is the teacher's (`teacher` rows, no gradient through them)."""

    @staticmethod
    def forward(ctx, h, weight, targets, row_weight, cap: float, chunk: int, compiled: bool, teacher, alpha):
        W = weight.to(h.dtype) if h.dtype == torch.bfloat16 else weight
        step = _compiled_chunk() if compiled else _chunk_loss_and_grad
        M = h.shape[0]
        pad = -M % chunk  # whole chunks only: one compiled shape
        hp = F.pad(h.to(W.dtype), (0, 0, 0, pad))
        tp, wp = F.pad(targets, (0, pad)), F.pad(row_weight, (0, pad))
        if teacher is not None:
            teacher, alpha = F.pad(teacher.to(W.dtype), (0, 0, 0, pad)), F.pad(alpha, (0, pad))
        scale = 1.0 / row_weight.sum().clamp(min=1e-9)  # a tensor: a float would be compiled in as a constant
        loss = torch.zeros((), dtype=torch.float32, device=h.device)
        hits = torch.empty(M + pad, dtype=torch.bool, device=h.device)
        agree = torch.empty(M + pad, dtype=torch.bool, device=h.device)
        grad_h = torch.empty_like(hp)
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=h.device)
        for lo in range(0, M + pad, chunk):
            hc, part = hp[lo : lo + chunk], slice(lo, lo + chunk)
            soft = () if teacher is None else (teacher[part], alpha[part])
            chunk_loss, hits[part], agree[part], g = step(hc, W, tp[part], wp[part], scale, cap, *soft)
            loss += chunk_loss
            grad_h[part] = g @ W
            grad_w += (g.T @ hc).float()
        ctx.save_for_backward(grad_h[:M].to(h.dtype), grad_w)
        hits, agree = hits[:M], agree[:M]
        ctx.mark_non_differentiable(hits, agree)
        return loss * scale, hits, agree

    @staticmethod
    def backward(ctx, grad_loss, _grad_hits, _grad_agree):
        grad_h, grad_w = ctx.saved_tensors
        return grad_h * grad_loss.to(grad_h.dtype), grad_w * grad_loss, None, None, None, None, None, None, None


def softcap_cross_entropy(
    h,
    weight,
    targets,
    row_weight=None,
    cap: float = 30.0,
    chunk: int = 2048,
    compiled: bool = False,
    teacher=None,
    alpha=None,
):
    """(weighted mean loss, per-row argmax hits, per-row agreement with the teacher's argmax) of the soft-capped LM
    head on hidden rows `h` [M, H]. `teacher` [M, H] (detached hidden rows) with `alpha` [M]: soft targets mixing
    the teacher's distribution in (self-distillation). `compiled`: through torch.compile (training; a one-off
    compile of ~30 s), else eager (same numbers)."""
    row_weight = torch.ones(h.shape[0], device=h.device) if row_weight is None else row_weight
    if teacher is not None:
        teacher = teacher.detach()
        alpha = torch.zeros(h.shape[0], device=h.device) if alpha is None else alpha.float()
    return _SoftcapCrossEntropy.apply(h, weight, targets, row_weight.float(), cap, chunk, compiled, teacher, alpha)


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
    verifier accepts. `agree`: also report `canvas_agree`, how often the denoiser's argmax already is the encoder's.
    Either needs the encoder's logits at every denoised position, one more LM-head pass, so only then is it made."""
    ids, start, weight, real, middle = (batch[k] for k in ("ids", "start", "weight", "real", "middle"))
    B, N = ids.shape
    fwd = BlockForward(model, compiled)
    noised = noise_blocks(ids, start, model.config.text_config.vocab_size, t, noise_eps, full=full_noise)
    h_clean, kv = fwd.clean(ids)
    sc_logits = sc_rows = None
    if self_cond:  # the sampler feeds each step the previous step's logits; half the rows learn to use them
        with torch.no_grad():
            sc_logits = fwd.logits(fwd.noised(noised, start, kv))
        sc_rows = torch.rand(B, device=ids.device) < 0.5
    h_noised = fwd.noised(noised, start, kv, sc_logits, sc_rows)

    sel = weight > 0  # denoising: every position of every block predicts its clean token
    teacher = alpha = None
    if distill > 0 or agree:
        teacher = torch.cat([h_clean[:, :1], h_clean[:, :-1]], 1)[sel]  # position i's next-token states: i - 1's
        alpha = (torch.arange(N, device=ids.device) > 0).expand(B, N)[sel] * distill  # position 0 has no teacher
    diffusion, hit, agrees = softcap_cross_entropy(
        h_noised[sel], fwd.lm_head, ids[sel], weight[sel], fwd.softcap, compiled=compiled, teacher=teacher, alpha=alpha
    )
    in_canvas = (middle & (ids != PAD))[sel]
    canvas_n = in_canvas.sum().clamp(min=1)

    pairs = real[:, :-1] & real[:, 1:] & (ids[:, 1:] != PAD)  # causal LM: prompt, middle and its EOS
    ar, _, _ = softcap_cross_entropy(
        h_clean[:, :-1][pairs], fwd.lm_head, ids[:, 1:][pairs], None, fwd.softcap, compiled=compiled
    )
    out = {
        "loss": diffusion + ar_weight * ar,
        "diffusion": diffusion,
        "ar": ar,
        "canvas_acc": (hit & in_canvas).sum() / canvas_n,
        "denoised_tokens": (sel & (ids != PAD)).sum(),
        "ar_tokens": pairs.sum(),
    }
    if agree:
        out["canvas_agree"] = (agrees & in_canvas).sum() / canvas_n
    return out
