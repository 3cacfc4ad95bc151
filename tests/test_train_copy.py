"""Training and inference agree: a tiny DiffusionGemma learns a task whose answer is only in the prompt.

The canvas must copy the last 12 prompt tokens, then EOS, then pad (a fixed relative offset: RoPE carries no
absolute position, so "copy the first k" of a variable-length prompt is a much harder task). Training batches are
left-padded with masks (as in dg_model.training.train); inference encodes one unpadded prompt and runs our sampler from
pure noise. If positions, masks, the cache hand-off or the noise vocabulary disagreed between the two paths, accuracy
would stay at chance.
"""

import random

import pytest
import torch
from transformers import DiffusionGemmaForBlockDiffusion, DynamicCache

from dg_model.architecture import TINY, build_config
from dg_model.forward import decoder_logits, encode
from dg_model.sampler import SamplerConfig, denoise, noise_like
from dg_model.special_tokens import BOS, EOS, PAD
from dg_model.training.train import TrainConfig, collate, losses

VOCAB, CANVAS = 64, 16


def make_row(rng: random.Random) -> tuple[list[int], list[int]]:
    n = rng.randint(16, 24)
    prompt = [BOS] + [rng.randrange(7, VOCAB) for _ in range(n)]
    canvas = prompt[-12:] + [EOS] + [PAD] * (CANVAS - 13)
    return prompt, canvas


@pytest.fixture(scope="module")
def trained():
    torch.manual_seed(0)
    rng = random.Random(0)
    model = DiffusionGemmaForBlockDiffusion(build_config(VOCAB, CANVAS, **TINY))
    cfg = TrainConfig(corpus="", tokenizer="", out="", self_cond_prob=0.5, pad_weight=0.1)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(250):
        prompt, mask, canvas = collate([make_row(rng) for _ in range(32)])
        loss = losses(model, prompt, mask, canvas, cfg)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


@torch.no_grad()
def test_sampler_recovers_prompt_only_answer(trained):
    rng = random.Random(1)
    gen = torch.Generator().manual_seed(0)
    hits = 0
    for _ in range(20):
        prompt, canvas = make_row(rng)
        cache = DynamicCache(config=trained.config.text_config)
        encode(trained, torch.tensor([prompt]), cache, 0)
        init = noise_like(torch.zeros(1, CANVAS, dtype=torch.long), VOCAB, gen)
        out = denoise(
            lambda x, sc, cache=cache: decoder_logits(trained, x, cache, sc),
            init,
            torch.zeros(1, CANVAS, dtype=torch.bool),
            VOCAB,
            SamplerConfig(max_steps=8),
            gen,
        )
        got = out.tokens[0].tolist()
        k = canvas.index(EOS)
        hits += got[: k + 1] == canvas[: k + 1]
    assert hits >= 18, f"only {hits}/20 canvases copied the prompt"


@torch.no_grad()
def test_pinned_positions_are_never_renoised(trained):
    gen = torch.Generator().manual_seed(0)
    prompt, _ = make_row(random.Random(2))
    cache = DynamicCache(config=trained.config.text_config)
    encode(trained, torch.tensor([prompt]), cache, 0)
    init = noise_like(torch.zeros(1, CANVAS, dtype=torch.long), VOCAB, gen)
    pinned = torch.zeros(1, CANVAS, dtype=torch.bool)
    pinned[0, 10:] = True
    init[0, 10:] = torch.tensor([9, 10, 11, 12, 13, 14])
    seen = []
    out = denoise(
        lambda x, sc: (seen.append(x.clone()), decoder_logits(trained, x, cache, sc))[1],
        init,
        pinned,
        VOCAB,
        SamplerConfig(max_steps=6, greedy=False, confidence=0.0),
        gen,
    )
    assert all(torch.equal(x[0, 10:], init[0, 10:]) for x in seen)
    assert out.tokens[0, 10:].tolist() == [9, 10, 11, 12, 13, 14]
