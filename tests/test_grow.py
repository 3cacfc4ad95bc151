"""Growing a trained model wider keeps every number it computes (encoder, decoder, self-conditioning) and leaves
the new dimensions trainable."""

import random

import pytest
import torch
from transformers import DiffusionGemmaForBlockDiffusion

from dg_model.architecture import TINY, build_config
from dg_model.loading import EMBEDDED_DIR
from dg_model.training.blockdiff import BlockForward, BlockLayout, block_row, collate_rows, losses, noise_blocks
from dg_model.training.export import export
from dg_model.training.grow import grow

VOCAB = 256


def _narrow():
    torch.manual_seed(0)
    model = DiffusionGemmaForBlockDiffusion(build_config(VOCAB, 16, max_positions=256, **TINY))
    with torch.no_grad():  # trained-looking norms and scales: a factor applied to the wrong one would show
        for name, p in model.named_parameters():
            if "norm" in name or "scale" in name:
                p.add_(torch.randn_like(p) * 0.3)
            elif p.dim() >= 2:  # and activations of a trained model's size, far above the norms' epsilon (which
                p.normal_(0, 0.2)  # padding would otherwise show: it is added to a mean over more dimensions)
    return model.eval()


def _batch():
    rng = random.Random(0)
    layout = BlockLayout(canvases=(8,), middle_tokens=16, prompt_block_min=3, prompt_block_max=9)
    rows = [
        block_row(
            [2] + [rng.randrange(8, VOCAB) for _ in range(n)], [rng.randrange(8, VOCAB) for _ in range(m)], layout, rng
        )
        for n, m in ((30, 11), (17, 3))
    ]
    return collate_rows(rows)


@torch.no_grad()
@pytest.mark.parametrize("self_cond", [False, True])
def test_grown_model_computes_the_narrow_ones_logits(self_cond):
    narrow = _narrow()
    wide = grow(narrow, 96, seed=1).eval()
    text = wide.config.text_config
    assert (text.hidden_size, text.intermediate_size, text.moe_intermediate_size) == (96, 192, 48)
    assert sum(p.numel() for p in wide.parameters()) > sum(p.numel() for p in narrow.parameters())
    batch = _batch()
    ids, start = batch["ids"], batch["start"]
    noised = noise_blocks(ids, start, VOCAB, torch.full(ids.shape, 0.5), 0.02, torch.Generator().manual_seed(1))
    sc = torch.randn(1, ids.shape[1], VOCAB) * 3 if self_cond else None  # row 0 self-conditioned, row 1 not
    rows = torch.tensor([0]) if self_cond else None
    got = [BlockForward(m).logits(BlockForward(m).hidden(ids, noised, start, sc, rows)) for m in (narrow, wide)]
    torch.testing.assert_close(got[1], got[0], atol=2e-4, rtol=2e-4)  # clean (encoder) and noised (decoder) halves
    # and through transformers' own encoder, as the engine loads it
    ref = [m.model.encoder(input_ids=ids[:1]).last_hidden_state @ m.lm_head.weight.T for m in (narrow, wide)]
    torch.testing.assert_close(ref[1], ref[0], atol=2e-4, rtol=2e-4)


def test_new_dimensions_learn():
    wide = grow(_narrow(), 96, seed=1).train()
    before = {n: p.detach().clone() for n, p in wide.named_parameters()}
    opt = torch.optim.AdamW(wide.parameters(), lr=1e-3)
    for step in range(3):
        out = losses(wide, _batch(), self_cond=step == 1, t=torch.full(_batch()["ids"].shape, 0.5))
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
    layer = "model.encoder.language_model.layers.0."
    for name, part in (
        ("model.encoder.language_model.embed_tokens.weight", (slice(None), slice(64, None))),  # new dimensions
        (layer + "self_attn.o_proj.weight", (slice(64, None),)),  # outputs into them
        (layer + "mlp.down_proj.weight", (slice(None), slice(128, None))),  # new units' outputs
        (layer + "experts.down_proj", (slice(None), slice(64, None))),
    ):
        changed = (dict(wide.named_parameters())[name].detach() - before[name])[part]
        assert changed.abs().max() > 0, name


def test_a_model_only_grows():
    with pytest.raises(ValueError, match="only grow"):
        grow(_narrow(), 32)


def test_the_grown_embedded_model_comes_back_from_a_lease_call(tmp_path):
    """A device call brings back at most 8 files of 16 MiB: the lease's export of the shipped weights grown to 384
    (float16 shards, their index, config.json) must leave room for train.log and lease.json."""
    shipped = DiffusionGemmaForBlockDiffusion.from_pretrained(EMBEDDED_DIR, dtype=torch.float32)
    grow(shipped, 384).save_pretrained(tmp_path / "ckpt")
    export(tmp_path / "ckpt", tmp_path / "out", EMBEDDED_DIR)
    weights = [p for p in (tmp_path / "out").iterdir() if p.name.startswith("model") or p.name == "config.json"]
    assert len(weights) <= 6 and all(p.stat().st_size < 16 * 2**20 for p in weights)
    assert sum(p.stat().st_size for p in weights) < 60 * 2**20
