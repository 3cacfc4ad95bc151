"""`Engine.score`: the likelihood of candidate blocks in their place, batched, equal to reading each alone."""

from __future__ import annotations

import pytest
import torch
from transformers import DiffusionGemmaForBlockDiffusion, PreTrainedTokenizerFast

from dg_model import scoring
from dg_model.api import ScoreJob
from dg_model.architecture import TINY, build_config
from dg_model.engine import DiffusionEngine, EngineSettings
from dg_model.forward import make_forward
from dg_model.loading import EMBEDDED_DIR
from dg_model.prompts import build_prompt


@pytest.fixture(scope="module", params=["ort", "lean", "hf"])
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


def test_candidates_sharing_their_start_score_as_each_read_alone(engine):
    # a beam's candidates: duplicates, shared first tokens, one a prefix of another, one a single token
    prefix, suffix = "def add(a, b):\n    ", "\n\nprint(add(1, 2))\n"
    blocks = ["return a + b", "return a + b", "return a + b + 1", "return a - b", "return", "x"]
    got = engine.score(ScoreJob(prefix, suffix, blocks, doc_key="tree", detail=False))
    for block, s in zip(blocks, got):
        assert s.logprob == pytest.approx(reference(engine, prefix, suffix, block), abs=2e-3)


def test_many_candidates_are_read_in_groups_of_bounded_tokens_with_the_same_scores(engine, monkeypatch):
    """A rewrite may bring a hundred candidates of a long block: they are read in groups of at most READ_TOKENS
    tokens (one tree of them all took a process from 2.2 to 6.6 GB), each scoring as in one reading."""
    prefix, suffix = "def add(a, b):\n    ", "\n\nprint(add(1, 2))\n"
    blocks = ["return a + b", "retrun a + b", "return a + b + 1", "return a - b", "return", "x = a + b\n    return x"]
    one = engine.score(ScoreJob(prefix, suffix, blocks, doc_key="g"))
    monkeypatch.setattr(scoring, "READ_TOKENS", 8)
    read, widths = scoring.encoder_logprobs, []
    monkeypatch.setattr(
        scoring, "encoder_logprobs", lambda *a: widths.append(sum(map(len, a[3]))) or read(*a)
    )  # tokens per reading
    grouped = engine.score(ScoreJob(prefix, suffix, blocks, doc_key="g"))
    assert len(widths) > 1 and max(widths) <= 8 + len(engine.tokenizer.encode(blocks[-1])) + 1
    assert [s.logprob for s in grouped] == pytest.approx([s.logprob for s in one], abs=1e-4)
    for got, want in zip(grouped[0].tokens, one[0].tokens):
        assert [a for a, _ in got.alternatives] == [a for a, _ in want.alternatives]
        assert [lp for _, lp in got.alternatives] == pytest.approx([lp for _, lp in want.alternatives], abs=1e-4)
    assert scoring._groups([[1] * 5, [1] * 5, [1] * 20, [1] * 3], 10) == [[0, 1], [2], [3]]


def test_prefix_tree_reads_each_shared_start_once():
    seqs = [[5, 6, 7, 1], [5, 6, 7, 1], [5, 6, 8, 1], [9, 1]]
    ids, depth, visible, rows = scoring.prefix_tree(seqs, 4)
    # the proper prefixes: 5 / 5 6 / 5 6 7 / 5 6 8 / 9
    assert ids.tolist() == [5, 6, 7, 8, 9] and depth.tolist() == [0, 1, 2, 2, 0]
    # each node sees its ancestors and itself, never a sibling's branch
    assert visible.int().tolist() == [
        [1, 0, 0, 0, 0],
        [1, 1, 0, 0, 0],
        [1, 1, 1, 0, 0],
        [1, 1, 0, 1, 0],
        [0, 0, 0, 0, 1],
    ]
    # token j of a sequence is predicted by the state after its first j tokens (row 0: the prompt's last state)
    assert rows.tolist() == [[0, 1, 2, 3], [0, 1, 2, 3], [0, 1, 2, 4], [0, 5, 0, 0]]


class _BatchOnly:
    """A forward without the tree reading: the batched path of `encoder_logprobs`."""

    def __init__(self, fwd):
        self.fwd = fwd

    def __getattr__(self, name: str):
        if name == "encode_tree":
            raise AttributeError(name)
        return getattr(self.fwd, name)


@pytest.mark.parametrize("kind", ["ort", "lean"])
def test_tree_reading_gives_the_batched_readings_numbers(kind):
    torch.manual_seed(0)
    tok = PreTrainedTokenizerFast.from_pretrained(EMBEDDED_DIR)
    model = DiffusionGemmaForBlockDiffusion(build_config(tok.vocab_size, 32, **TINY)).eval()
    fwd = make_forward(model, kind)
    prompt = build_prompt(tok, "fim-spm", "def f(x):\n    ", "\n", 256).ids
    seqs = [tok.encode(t, add_special_tokens=False) + [1] for t in ("return x", "return x + 1", "return x", "pass")]
    cache = fwd.new_cache()
    with torch.inference_mode():
        last = fwd.encode(torch.tensor([prompt]), cache, 0)[:, -1:]
        tree = scoring.encoder_logprobs(fwd, cache, last, seqs, 0)
        batch = scoring.encoder_logprobs(_BatchOnly(fwd), cache, last, seqs, 0)
    assert fwd.seq_length(cache) == len(prompt)  # both leave the prompt's cache as it was
    for i, s in enumerate(seqs):
        n = len(s)
        assert torch.allclose(tree[0][i, :n], batch[0][i, :n], atol=1e-4)
        assert tree[1][i, :n].tolist() == batch[1][i, :n].tolist()
        assert torch.allclose(tree[2][i, :n], batch[2][i, :n], atol=1e-4)
