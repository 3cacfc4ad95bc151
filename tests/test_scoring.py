"""`Engine.score`: the likelihood of candidate blocks in their place, batched, equal to reading each alone."""

from __future__ import annotations

import pytest
import torch
from transformers import DiffusionGemmaForBlockDiffusion, PreTrainedTokenizerFast

from dg_model.api import ScoreJob
from dg_model.architecture import TINY, build_config
from dg_model.engine import DiffusionEngine, EngineSettings
from dg_model.forward import make_forward
from dg_model.loading import EMBEDDED_DIR
from dg_model.prompts import build_prompt


@pytest.fixture(scope="module", params=["lean", "hf"])
def engine(request):
    torch.manual_seed(0)
    tok = PreTrainedTokenizerFast.from_pretrained(EMBEDDED_DIR)
    model = DiffusionGemmaForBlockDiffusion(build_config(tok.vocab_size, 32, **TINY)).eval()
    return DiffusionEngine(model, tok, EngineSettings(forward=request.param), name="tiny")


def reference(engine: DiffusionEngine, prefix: str, suffix: str, block: str) -> float:
    """The block's log-likelihood from one plain causal pass over prompt + block + EOS."""
    prompt = build_prompt(engine.tokenizer, engine.format, prefix, suffix, engine.settings.prompt_tokens).ids
    ids = engine.tokenizer.encode(block, add_special_tokens=False) + [engine.tokenizer.eos_token_id]
    fwd = make_forward(engine.model, "hf")
    cache = fwd.new_cache()
    with torch.inference_mode():
        hidden = fwd.encode(torch.tensor([prompt + ids]), cache, 0)
        logp = torch.log_softmax(fwd.lm_logits(hidden).float(), -1)[0]
    return float(sum(logp[len(prompt) - 1 + j, t] for j, t in enumerate(ids)))


def test_batched_scores_equal_each_block_read_alone(engine):
    prefix, suffix = "def add(a, b):\n    ", "\n\nprint(add(1, 2))\n"
    blocks = ["return a + b", "retrun a + b", "return (a + b) * 2 if a else b"]
    batched = engine.score(ScoreJob(prefix, suffix, blocks, doc_key="k"))
    for block, got in zip(blocks, batched):
        assert got.logprob == pytest.approx(reference(engine, prefix, suffix, block), abs=2e-3)
        assert "".join(block[t.start : t.end] for t in got.tokens) == block
        assert got.logprob < sum(t.logprob for t in got.tokens) + 1e-4  # plus the end of the middle, a log-prob <= 0
    # the block as it is also gets the tokens the model would rather see, never the one that is there
    first = batched[0]
    assert all(alt != blocks[0][t.start : t.end] for t in first.tokens for alt, _ in t.alternatives)
    assert any(t.alternatives for t in first.tokens)
    # the prompt cache is left as it was: scoring again gives the same numbers
    again = engine.score(ScoreJob(prefix, suffix, blocks[:1], doc_key="k"))
    assert again[0].logprob == pytest.approx(first.logprob, abs=1e-4)


def test_totals_only_skip_the_detail_and_keep_the_numbers(engine):
    prefix, suffix = "def add(a, b):\n    ", "\n"
    blocks = ["return a + b", "return a - b"]
    full = engine.score(ScoreJob(prefix, suffix, blocks, doc_key="t"))
    totals = engine.score(ScoreJob(prefix, suffix, blocks, doc_key="t", detail=False))
    assert [s.logprob for s in totals] == pytest.approx([s.logprob for s in full], abs=1e-4)
    assert all(s.tokens == [] for s in totals)
