"""The LM head's two training losses in one pass over the vocabulary, computed in row chunks together with their
gradients (the fused linear cross-entropy of Liger and others): the [rows, V] logits never exist for autograd, which
held ~5 GB per step of the embedded model at batch 16.

Row q pairs the encoder's clean state one position earlier with the decoder's noised state at q. Both predict token
q: the encoder as the next token (the causal-LM loss), the decoder as the clean token under the noise (the denoising
loss). The encoder's distribution there is also the denoiser's self-distillation teacher, so its logits serve both
losses, where reading them twice cost a seventh of the head's products and a third of its passes over the logits.
Logits are soft-capped, `cap * tanh(h @ W.T / cap)`, as the model computes them.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F


def _chunk(hc, hn, W, tc, wa, wd, sa, sd, ac, cap: float):
    """One chunk of rows -> (weighted causal-LM loss sum, weighted denoising loss sum, the denoiser's argmax hits,
    its argmax agreeing with the encoder's, d loss / d logits before the cap for the clean and the noised rows).
    The denoiser's target is `(1 - ac) * onehot(tc) + ac * softmax(encoder logits)` (no gradient to the encoder)."""
    t_clean = torch.tanh((hc @ W.T).float() / cap)
    s_clean = t_clean * cap
    lse_clean = torch.logsumexp(s_clean, -1)
    p_clean = torch.exp(s_clean - lse_clean[:, None])
    onehot = F.one_hot(tc, s_clean.shape[1]).to(s_clean.dtype)
    ar = ((lse_clean - s_clean.gather(1, tc[:, None])[:, 0]) * wa).sum()
    g_clean = (p_clean - onehot) * (wa * sa)[:, None] * (1 - t_clean * t_clean)

    t = torch.tanh((hn @ W.T).float() / cap)
    s = t * cap
    lse = torch.logsumexp(s, -1)
    top = s.argmax(-1)
    target = onehot + ac[:, None] * (p_clean - onehot)
    denoise = ((lse - (target * s).sum(-1)) * wd).sum()
    g = (torch.exp(s - lse[:, None]) - target) * (wd * sd)[:, None] * (1 - t * t)
    return ar, denoise, top == tc, top == s_clean.argmax(-1), g_clean.to(hc.dtype), g.to(hn.dtype)


@functools.cache
def _compiled_chunk():
    # inductor fuses the passes over each [chunk, V] block into a few: 4x faster on this CPU (bench_train.json)
    return torch.compile(_chunk, dynamic=False)


class _PairedHeadLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h_clean, h_noised, weight, targets, ar_weight, denoise_weight, alpha, cap, chunk, compiled):
        W = weight.to(h_noised.dtype) if h_noised.dtype == torch.bfloat16 else weight
        step = _compiled_chunk() if compiled else _chunk
        M = h_noised.shape[0]
        pad = -M % chunk  # whole chunks only: one compiled shape
        hc, hn = (F.pad(h.to(W.dtype), (0, 0, 0, pad)) for h in (h_clean, h_noised))
        tp, wa, wd, ac = (F.pad(x, (0, pad)) for x in (targets, ar_weight, denoise_weight, alpha))
        # tensors: a float would be compiled in as a constant
        sa, sd = (1.0 / w.sum().clamp(min=1e-9) for w in (ar_weight, denoise_weight))
        ar = torch.zeros((), dtype=torch.float32, device=hn.device)
        denoise = torch.zeros_like(ar)
        hits = torch.empty(M + pad, dtype=torch.bool, device=hn.device)
        agree = torch.empty_like(hits)
        grad_clean, grad_noised = torch.empty_like(hc), torch.empty_like(hn)
        grad_w_ar = torch.zeros(weight.shape, dtype=torch.float32, device=hn.device)
        grad_w_denoise = torch.zeros_like(grad_w_ar)
        for lo in range(0, M + pad, chunk):
            part = slice(lo, lo + chunk)
            a, d, hits[part], agree[part], g_clean, g = step(
                hc[part], hn[part], W, tp[part], wa[part], wd[part], sa, sd, ac[part], cap
            )
            ar += a
            denoise += d
            grad_clean[part], grad_noised[part] = g_clean @ W, g @ W
            grad_w_ar += (g_clean.T @ hc[part]).float()
            grad_w_denoise += (g.T @ hn[part]).float()
        ctx.save_for_backward(
            grad_clean[:M].to(h_clean.dtype), grad_noised[:M].to(h_noised.dtype), grad_w_ar, grad_w_denoise
        )
        hits, agree = hits[:M], agree[:M]
        ctx.mark_non_differentiable(hits, agree)
        return ar * sa, denoise * sd, hits, agree

    @staticmethod
    def backward(ctx, grad_ar, grad_denoise, _grad_hits, _grad_agree):
        grad_clean, grad_noised, grad_w_ar, grad_w_denoise = ctx.saved_tensors
        grad_w = grad_w_ar * grad_ar + grad_w_denoise * grad_denoise
        return (
            grad_clean * grad_ar.to(grad_clean.dtype),
            grad_noised * grad_denoise.to(grad_noised.dtype),
            grad_w,
            *(None,) * 7,
        )


def paired_losses(
    h_clean,
    h_noised,
    weight,
    targets,
    ar_weight,
    denoise_weight,
    alpha=None,
    cap: float = 30.0,
    chunk: int = 2048,
    compiled: bool = False,
):
    """Rows [M, H] of encoder states `h_clean` (each one position before its target) and decoder states `h_noised`,
    `targets` [M], LM head `weight` [V, H] -> (causal-LM loss, denoising loss, per-row denoiser argmax == target,
    per-row denoiser argmax == encoder argmax). Each loss is a mean weighted by its own row weights [M] (a row can
    count for one loss only); `alpha` [M]: the share of the encoder's distribution in the denoiser's target
    (self-distillation; default none). `compiled`: through torch.compile (training; a one-off compile of ~30 s), else
    eager (the same numbers)."""
    alpha = torch.zeros(h_noised.shape[0], device=h_noised.device) if alpha is None else alpha.float()
    return _PairedHeadLoss.apply(
        h_clean, h_noised, weight, targets, ar_weight.float(), denoise_weight.float(), alpha, cap, chunk, compiled
    )
