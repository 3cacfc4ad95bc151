"""Block-diffusion training: the vectorised clean + noised forward computes, for every block, exactly what inference
computes with transformers' modules (the encoder over the clean context before the block, then the decoder over the
noised block reading that cache); the layout puts a block boundary where the engine's canvas starts; the loss trains."""

import random

import pytest
import torch
from transformers import DiffusionGemmaForBlockDiffusion, DynamicCache

from dg_model.architecture import TINY, build_config
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
    sc = torch.randn(2, N, VOCAB) if self_cond else None
    sc_rows = torch.tensor([True, False]) if self_cond else None
    logits = fwd.logits(fwd.hidden(ids, noised, start, sc, sc_rows))
    text = model.config.text_config
    for b, row in enumerate(rows):
        n = len(row.ids)
        enc = model.model.encoder(input_ids=ids[b : b + 1, :n], past_key_values=DynamicCache(config=text))
        ref = torch.tanh(model.lm_head(enc.last_hidden_state) / 30.0) * 30.0
        torch.testing.assert_close(logits[b, :n], ref[0], atol=1e-4, rtol=1e-4)
        bounds = row.starts + [n]
        for lo, hi in zip(bounds[1:], bounds[2:]):  # every block after the first (the decoder needs a context)
            cache = DynamicCache(config=text)
            model.model.encoder(input_ids=ids[b : b + 1, :lo], past_key_values=cache)
            kwargs = {}
            if self_cond:
                kwargs = dict(self_conditioning_logits=sc[b : b + 1, lo:hi], self_conditioning_mask=sc_rows[b : b + 1])
            dec = model.model.decoder(
                decoder_input_ids=noised[b : b + 1, lo:hi],
                past_key_values=cache,
                decoder_position_ids=torch.arange(lo, hi)[None],
                **kwargs,
            )
            ref = torch.tanh(model.lm_head(dec.last_hidden_state) / 30.0) * 30.0
            torch.testing.assert_close(logits[b, N + lo : N + hi], ref[0], atol=1e-4, rtol=1e-4)


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


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_softcap_cross_entropy_matches_autograd(dtype):
    from dg_model.training.blockdiff import softcap_cross_entropy

    torch.manual_seed(0)
    h = (torch.randn(37, 16) * 3).to(dtype).requires_grad_()
    w = torch.randn(50, 16, requires_grad=True)
    targets, row_weight = torch.randint(0, 50, (37,)), torch.rand(37)
    loss, hits, _ = softcap_cross_entropy(h, w, targets, row_weight, cap=5.0, chunk=8)
    (loss * 2).backward()
    h2, w2 = h.detach().float().requires_grad_(), w.detach().clone().requires_grad_()
    logits = torch.tanh(h2 @ w2.T / 5.0) * 5.0
    ref = (torch.nn.functional.cross_entropy(logits, targets, reduction="none") * row_weight).sum() / row_weight.sum()
    (ref * 2).backward()
    tol = dict(atol=1e-5, rtol=1e-4) if dtype == torch.float32 else dict(atol=3e-2, rtol=3e-2)
    torch.testing.assert_close(loss, ref, **tol)
    torch.testing.assert_close(h.grad.float(), h2.grad, **tol)
    torch.testing.assert_close(w.grad, w2.grad, **tol)
    if dtype == torch.float32:
        assert torch.equal(hits, logits.argmax(-1) == targets)


def test_compiled_training_forward_gives_the_eager_losses_and_gradients():
    """Training runs the layers through torch.compile with dense experts (static shapes): same numbers as the routed
    eager forward, which the test above checks against transformers."""
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


def test_fused_soft_targets_match_autograd_and_leave_the_teacher_alone():
    """Self-distillation: target = (1 - a) onehot + a softmax(teacher logits); no gradient reaches the teacher rows."""
    from dg_model.training.blockdiff import softcap_cross_entropy

    torch.manual_seed(1)
    h = (torch.randn(29, 16) * 3).requires_grad_()
    teacher = (torch.randn(29, 16) * 3).requires_grad_()
    w = torch.randn(50, 16, requires_grad=True)
    targets, row_weight, alpha = torch.randint(0, 50, (29,)), torch.rand(29), torch.rand(29)
    loss, hits, agree = softcap_cross_entropy(h, w, targets, row_weight, cap=5.0, chunk=8, teacher=teacher, alpha=alpha)
    loss.backward()
    h2, w2 = h.detach().clone().requires_grad_(), w.detach().clone().requires_grad_()
    logits = torch.tanh(h2 @ w2.T / 5.0) * 5.0
    with torch.no_grad():
        t_logits = torch.tanh(teacher @ w.T / 5.0) * 5.0
    soft = torch.softmax(t_logits, -1)
    target = (1 - alpha[:, None]) * torch.nn.functional.one_hot(targets, 50) + alpha[:, None] * soft
    ref = (-(target * torch.log_softmax(logits, -1)).sum(-1) * row_weight).sum() / row_weight.sum()
    ref.backward()
    torch.testing.assert_close(loss, ref, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(h.grad, h2.grad, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(w.grad, w2.grad, atol=1e-5, rtol=1e-4)
    assert teacher.grad is None
    assert torch.equal(agree, logits.argmax(-1) == t_logits.argmax(-1))
    assert torch.equal(hits, logits.argmax(-1) == targets)
