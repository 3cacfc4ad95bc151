"""Block-diffusion training: the vectorised clean + noised forward computes, for every block, exactly what inference
computes with transformers' modules (the encoder over the clean context before the block, then the decoder over the
noised block reading that cache); the layout puts a block boundary where the engine's canvas starts; the loss trains."""

import random

import pytest
import torch
from transformers import DiffusionGemmaForBlockDiffusion, DynamicCache

from dg_model.architecture import TINY, build_config
from dg_model.forward import with_cache
from dg_model.special_tokens import EOS, PAD
from dg_model.training.blockdiff import (
    BlockForward,
    BlockLayout,
    block_mask,
    block_row,
    collate_rows,
    losses,
    noise_blocks,
    noised_chunks,
)

VOCAB = 256


def _model(seed=0):
    torch.manual_seed(seed)
    model = DiffusionGemmaForBlockDiffusion(build_config(VOCAB, 16, max_positions=256, **TINY))
    with torch.no_grad():  # random norms and scales: a misplaced one would otherwise go unseen
        for name, p in model.named_parameters():
            if "norm" in name or "scale" in name:
                p.add_(torch.randn_like(p) * 0.3)
        for i, layer in enumerate(model.model.encoder.language_model.layers):
            layer.layer_scalar.fill_(0.9 - 0.1 * i)
        for i, layer in enumerate(model.model.decoder.layers):  # buffers, not tied: each side keeps its own
            layer.layer_scalar.fill_(0.8 + 0.1 * i)
    return model


def _batch(seed=0):
    rng = random.Random(seed)
    layout = BlockLayout(canvases=(8,), middle_tokens=16, prompt_block_min=3, prompt_block_max=9)
    rows = [
        block_row(
            [2] + [rng.randrange(8, VOCAB) for _ in range(n)], [rng.randrange(8, VOCAB) for _ in range(m)], layout, rng
        )
        for n, m in ((30, 11), (17, 3))
    ]
    return rows, collate_rows(rows)


def test_layout_has_a_boundary_at_the_canvas_and_ends_the_middle_with_eos():
    rows, batch = _batch()
    long, short = rows
    assert 31 in long.starts and long.ids[31 + 11] == EOS and len(long.ids) == 31 + 16  # two canvases of 8
    assert 18 in short.starts and short.ids[18 + 3] == EOS and short.ids[-1] == PAD and len(short.ids) == 18 + 8
    assert batch["weight"][1, len(short.ids) :].eq(0).all()  # batch padding supervises nothing
    assert batch["weight"][1, -1] == 0 and batch["weight"][1, len(short.ids) - 1] == pytest.approx(0.1)


def test_noised_query_chunks_hold_every_block_they_touch():
    _, batch = _batch()
    start = batch["start"]
    N = start.shape[1]
    chunks = noised_chunks(start, 5)
    assert [a for a, *_ in chunks] == list(range(0, N, 5)) and chunks[-1][1] == N
    # blocks no longer than a chunk: one plan whatever the longest (a compiled graph is specialised on it)
    assert noised_chunks(start, 16) == noised_chunks(torch.arange(N).repeat(2, 1), 16)
    for b in range(2):
        for a, hi_q, lo, hi in chunks:
            for i in range(a, hi_q):
                block = (start[b] == start[b, i]).nonzero().flatten()
                assert lo <= int(block.min()) and int(block.max()) < hi


def test_mask_rows_are_never_empty_and_noised_blocks_never_see_their_own_clean_tokens():
    _, batch = _batch()
    mask = block_mask(batch["start"])[:, 0]
    N = batch["ids"].shape[1]
    assert mask.any(-1).all()
    for b in range(2):
        for i in range(N):
            lo = int(batch["start"][b, i])
            assert not mask[b, N + i, lo:N].any() and mask[b, N + i, :lo].all()


@torch.no_grad()
@pytest.mark.parametrize("self_cond", [False, True])
@pytest.mark.parametrize("query_chunk", [64, 5])  # one call for all noised queries; chunks cutting through blocks
def test_vectorised_forward_matches_transformers_encoder_and_decoder(self_cond, query_chunk):
    model = _model().eval()
    rows, batch = _batch()
    ids, start = batch["ids"], batch["start"]
    N = ids.shape[1]
    noised = noise_blocks(ids, start, VOCAB, torch.full(ids.shape, 0.5), 0.02, torch.Generator().manual_seed(1))
    fwd = BlockForward(model, query_chunk=query_chunk)
    sc = torch.randn(1, N, VOCAB) if self_cond else None  # row 0 self-conditioned, row 1 not
    sc_rows = torch.tensor([0]) if self_cond else None
    logits = fwd.logits(fwd.hidden(ids, noised, start, sc, sc_rows))
    text = model.config.text_config
    for b, row in enumerate(rows):
        n = len(row.ids)
        enc = model.model.encoder(**with_cache(DynamicCache(config=text), input_ids=ids[b : b + 1, :n]))
        ref = torch.tanh(model.lm_head(enc.last_hidden_state) / 30.0) * 30.0
        torch.testing.assert_close(logits[b, :n], ref[0], atol=1e-4, rtol=1e-4)
        bounds = row.starts + [n]
        for lo, hi in zip(bounds[1:], bounds[2:]):  # every block after the first (the decoder needs a context)
            cache = DynamicCache(config=text)
            model.model.encoder(**with_cache(cache, input_ids=ids[b : b + 1, :lo]))
            kwargs = {}
            if self_cond:
                kwargs = dict(self_conditioning_logits=sc[:1, lo:hi], self_conditioning_mask=torch.tensor([b == 0]))
            dec = model.model.decoder(
                **with_cache(
                    cache,
                    decoder_input_ids=noised[b : b + 1, lo:hi],
                    decoder_position_ids=torch.arange(lo, hi)[None],
                    **kwargs,
                ),
            )
            ref = torch.tanh(model.lm_head(dec.last_hidden_state) / 30.0) * 30.0
            torch.testing.assert_close(logits[b, N + lo : N + hi], ref[0], atol=1e-4, rtol=1e-4)


@torch.no_grad()
def test_self_conditioning_reads_its_rows_alone_and_leaves_the_others_unconditioned():
    """The objective's first (self-conditioning) reading runs for the conditioned rows only: a row's reading must not
    depend on the rest of the batch, and a row outside `sc_rows` must be the unconditioned one."""
    model = _model(seed=6).eval()
    _, batch = _batch(seed=7)
    ids, start = batch["ids"], batch["start"]
    noised = noise_blocks(ids, start, VOCAB, torch.full(ids.shape, 0.5), 0.02, torch.Generator().manual_seed(2))
    fwd = BlockForward(model, query_chunk=5)
    _, kv = fwd.clean(ids)
    whole = fwd.noised(noised, start, kv)
    rows = torch.tensor([1])
    alone = fwd.noised(noised[rows], start[rows], [(k[rows], v[rows]) for k, v in kv])
    torch.testing.assert_close(alone[0], whole[1], atol=1e-5, rtol=1e-5)
    conditioned = fwd.noised(noised, start, kv, fwd.logits(alone), rows)
    torch.testing.assert_close(conditioned[0], whole[0], atol=1e-5, rtol=1e-5)
    assert (conditioned[1] - whole[1]).abs().max() > 1e-3


def test_gradients_reach_the_shared_weights_and_the_loss_falls():
    model = _model(seed=1).train()
    _, batch = _batch(seed=2)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    first = None
    for step in range(30):
        torch.manual_seed(step)
        out = losses(model, batch, self_cond=step % 2 == 1, t=torch.full(batch["ids"].shape, 0.5))
        opt.zero_grad()
        out["loss"].backward()
        first = first if first is not None else float(out["loss"])
        if step == 1:  # a self-conditioned step: the self-conditioning MLP learns too
            layer = model.model.encoder.language_model.layers[0]
            for p in (
                layer.self_attn.q_proj.weight,
                layer.experts.gate_up_proj,
                layer.router.scale,
                model.model.decoder.self_conditioning.gate_proj.weight,
            ):
                assert p.grad is not None and p.grad.abs().sum() > 0
        opt.step()
    assert float(out["loss"]) < 0.7 * first
    assert int(out["denoised_tokens"]) > 60 and int(out["ar_tokens"]) > 40


def test_compiled_training_forward_gives_the_eager_losses_and_gradients():
    """Training runs the layers through torch.compile (the routed experts eagerly between compiled pieces): the same
    numbers as the eager forward, which the test above checks against transformers."""
    _, batch = _batch(seed=3)
    t = torch.full(batch["ids"].shape, 0.5)
    grads = []
    for compiled in (False, True):
        model = _model(seed=4).train()
        torch.manual_seed(5)
        out = losses(model, batch, self_cond=True, t=t, compiled=compiled)
        out["loss"].backward()
        grads.append((out, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}))
    (eager, g_eager), (comp, g_comp) = grads
    for key in ("loss", "diffusion", "ar", "canvas_acc"):
        torch.testing.assert_close(comp[key], eager[key], atol=2e-4, rtol=2e-4)
    assert g_eager.keys() == g_comp.keys() and len(g_eager) > 20
    for name in g_eager:
        torch.testing.assert_close(g_comp[name], g_eager[name], atol=1e-4, rtol=1e-3, msg=name)


def _paired_reference(hc, hn, w, targets, wa, wd, alpha, cap):
    """The two losses by autograd over materialised logits."""
    logits_c, logits_n = (torch.tanh(h @ w.T / cap) * cap for h in (hc, hn))
    ar = (torch.nn.functional.cross_entropy(logits_c, targets, reduction="none") * wa).sum() / wa.sum()
    onehot = torch.nn.functional.one_hot(targets, w.shape[0]).float()
    target = onehot + alpha[:, None] * (torch.softmax(logits_c.detach(), -1) - onehot)
    denoise = (-(target * torch.log_softmax(logits_n, -1)).sum(-1) * wd).sum() / wd.sum()
    return ar, denoise, logits_c, logits_n


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_paired_head_losses_match_autograd_and_keep_their_gradients_apart(dtype):
    """Causal-LM loss on the clean rows, denoising loss (soft targets from the clean rows' distribution, which get
    no gradient from it) on the noised rows; each loss's upstream gradient reaches only its own rows."""
    from dg_model.training.head_loss import paired_losses

    torch.manual_seed(0)
    M, H, V = 37, 16, 50
    hc, hn = ((torch.randn(M, H) * 3).to(dtype).requires_grad_() for _ in range(2))
    w = torch.randn(V, H, requires_grad=True)
    targets, alpha = torch.randint(0, V, (M,)), torch.rand(M)
    wa, wd = (torch.rand(M) > 0.3).float(), torch.rand(M)  # a row may count for one loss only
    ar, denoise, hits, agree = paired_losses(hc, hn, w, targets, wa, wd, alpha, cap=5.0, chunk=8)
    (2 * ar + 3 * denoise).backward()
    hc2, hn2 = (h.detach().float().requires_grad_() for h in (hc, hn))
    w2 = w.detach().clone().requires_grad_()
    ref_ar, ref_denoise, logits_c, logits_n = _paired_reference(hc2, hn2, w2, targets, wa, wd, alpha, 5.0)
    (2 * ref_ar + 3 * ref_denoise).backward()
    tol = dict(atol=1e-5, rtol=1e-4) if dtype == torch.float32 else dict(atol=3e-2, rtol=3e-2)
    torch.testing.assert_close(ar, ref_ar, **tol)
    torch.testing.assert_close(denoise, ref_denoise, **tol)
    for got, ref in ((hc, hc2), (hn, hn2), (w, w2)):
        torch.testing.assert_close(got.grad.float(), ref.grad, **tol)
    if dtype == torch.float32:
        assert torch.equal(hits, logits_n.argmax(-1) == targets)
        assert torch.equal(agree, logits_n.argmax(-1) == logits_c.argmax(-1))


def test_paired_losses_in_the_objective_are_the_two_losses_read_apart():
    """`losses` pairs the encoder's state at q - 1 with the decoder's at q: the same numbers as the causal-LM loss
    and the self-distilled denoising loss computed separately from the forward's states."""
    model = _model(seed=6).eval()
    _, batch = _batch(seed=7)
    ids, start, weight, real = (batch[k] for k in ("ids", "start", "weight", "real"))
    t = torch.full(ids.shape, 0.5)
    torch.manual_seed(8)
    out = losses(model, batch, self_cond=False, t=t, distill=0.4)
    torch.manual_seed(8)
    noised = noise_blocks(ids, start, VOCAB, t, 0.02)
    fwd = BlockForward(model)
    h = fwd.hidden(ids, noised, start)
    N = ids.shape[1]
    logits_c, logits_n = fwd.logits(h[:, :N]), fwd.logits(h[:, N:])
    pairs = real[:, :-1] & real[:, 1:] & (ids[:, 1:] != PAD)
    ar = torch.nn.functional.cross_entropy(logits_c[:, :-1][pairs], ids[:, 1:][pairs])
    teacher = torch.softmax(torch.cat([logits_c[:, :1], logits_c[:, :-1]], 1), -1)
    alpha = (torch.arange(N) > 0).float()[None, :, None] * 0.4
    onehot = torch.nn.functional.one_hot(ids, VOCAB).float()
    target = onehot + alpha * (teacher - onehot)
    sel = weight > 0
    ce = -(target * torch.log_softmax(logits_n, -1)).sum(-1)
    denoise = (ce * weight)[sel].sum() / weight[sel].sum()
    torch.testing.assert_close(out["ar"], ar, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out["diffusion"], denoise, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_traceable_grouped_product_and_its_gradients_are_each_groups_own(dtype):
    """The training experts' grouped product (an operator of ours, for torch.compile): each group of rows times its
    own matrix, gradients as autograd gives them for the products one by one (an empty group included); bf16 rows
    (autocast) with float32 weights give bf16 products and float32 weight gradients."""
    from dg_model.training.blockdiff import traceable_grouped_mm

    torch.manual_seed(0)
    a = torch.randn(23, 8).to(dtype).requires_grad_()
    b = torch.randn(4, 8, 16).transpose(1, 2).contiguous().transpose(1, 2).requires_grad_()  # strided as in training
    ends = torch.tensor([6, 6, 17, 23], dtype=torch.int32)
    out = traceable_grouped_mm(a, b, ends)
    grad = torch.randn_like(out)
    got = torch.autograd.grad(out, (a, b), grad)
    cuts = [0, *ends.tolist()]
    ref_out = torch.cat([a[lo:hi].float() @ b[e] for e, (lo, hi) in enumerate(zip(cuts, cuts[1:]))])
    ref = torch.autograd.grad(ref_out, (a, b), grad.float())
    tol = {} if dtype == torch.float32 else dict(atol=0.1, rtol=0.05)
    assert out.dtype == dtype and got[0].dtype == dtype and got[1].dtype == torch.float32
    torch.testing.assert_close(out.float(), ref_out, **tol)
    for g, r in zip(got, ref):
        torch.testing.assert_close(g.float(), r.float(), **tol)
