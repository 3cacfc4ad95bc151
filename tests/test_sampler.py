"""The denoiser's sampler draws tokens from the model's distribution, not just its argmax."""

import math

import torch

from dg_model.sampler import SamplerConfig, denoise


def test_sampled_rows_follow_the_softmax_and_greedy_rows_take_the_argmax():
    vocab, rows = 10, 4000
    logits = torch.full((vocab,), -1e4)
    logits[8], logits[9] = 0.0, math.log(3.0)  # p = 0.25 / 0.75

    def logits_fn(x, _sc):
        return logits.expand(*x.shape, vocab).clone()

    cfg = SamplerConfig(max_steps=1, temperature_start=1.0, temperature_end=1.0, greedy=False)
    canvas = torch.zeros(rows, 1, dtype=torch.long)
    greedy = torch.zeros(rows, dtype=torch.bool)
    greedy[0] = True
    out = denoise(
        logits_fn,
        canvas,
        torch.zeros_like(canvas, dtype=torch.bool),
        vocab,
        cfg,
        torch.Generator().manual_seed(0),
        greedy_rows=greedy,
    ).tokens[:, 0]
    assert out[0] == 9
    assert set(out.tolist()) == {8, 9}
    share = (out[1:] == 9).float().mean().item()
    assert abs(share - 0.75) < 0.03, share
