"""What training reads: corpora of chosen distributions, and several corpora mixed by share."""

from __future__ import annotations

import pytest
import torch
from tokenizers import Tokenizer

from dg_model import corpus, train
from dg_model.loading import EMBEDDED_DIR


def _file(name: str) -> str:
    body = "".join(f"    {name}_{i} = {name}_{i - 1} + {i}\n" for i in range(1, 40))
    return f"def {name}():\n    {name}_0 = 0\n{body}    return {name}_39\n"


def test_shares_pick_the_corpus_each_example_comes_from():
    cfg = train.TrainConfig(corpus="-", tokenizer=str(EMBEDDED_DIR), out="-", batch=16, prompt_tokens=96, canvas=16)
    tok = Tokenizer.from_file(str(EMBEDDED_DIR / "tokenizer.json"))
    corpora = [[_file("alpha")], [_file("omega")]]
    for shares, seen, unseen in (([0.0, 1.0], "omega", "alpha"), ([1.0, 0.0], "alpha", "omega")):
        prompt, mask, canvas = next(iter(train.FimBatches(corpora, cfg.tokenizer, cfg, seed=0, shares=shares)))
        text = "".join(tok.decode(row.tolist()) for row in torch.cat([prompt, canvas], 1))
        assert seen in text and unseen not in text
    prompt, _, canvas = next(iter(train.FimBatches(corpora, cfg.tokenizer, cfg, seed=0)))  # equal shares by default
    rows = [tok.decode(row.tolist()) for row in torch.cat([prompt, canvas], 1)]
    assert any("alpha" in r for r in rows) and any("omega" in r for r in rows)


def test_a_corpus_of_chosen_distributions_has_only_their_files_and_licences():
    files, licenses = corpus.collect(only={"pluggy"})  # installed with pytest; MIT
    assert files and {f.origin for f in files} == {"pluggy"} and set(licenses) == {"pluggy"}
    assert corpus.is_permissive(licenses["pluggy"])
    with pytest.raises(SystemExit, match="no-such-dist"):
        corpus.collect(only={"pluggy", "no-such-dist"})


def test_bf16_autocast_only_where_asked_or_native():
    assert train.use_bf16("on", torch.device("cpu")) and not train.use_bf16("off", torch.device("cuda"))
    assert train.use_bf16("auto", torch.device("cuda"))
    assert train.use_bf16("auto", torch.device("cpu")) == ("amx_bf16" in open("/proc/cpuinfo").read())
    with pytest.raises(SystemExit):
        train.use_bf16("fp8", torch.device("cpu"))
