"""What training reads: corpora of chosen distributions, and several corpora mixed by share."""

from __future__ import annotations

import dataclasses
import subprocess
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer

from dg_model.loading import EMBEDDED_DIR
from dg_model.training import corpus, train


def _encoder(tok: Tokenizer):
    return lambda s: tok.encode(s, add_special_tokens=False).ids


def _file(name: str) -> str:
    body = "".join(f"    {name}_{i} = {name}_{i - 1} + {i}\n" for i in range(1, 40))
    return f"def {name}():\n    {name}_0 = 0\n{body}    return {name}_39\n"


@pytest.mark.parametrize("objective", ["block", "canvas"])
def test_shares_pick_the_corpus_each_example_comes_from(objective):
    cfg = train.TrainConfig(
        corpus="-", tokenizer=str(EMBEDDED_DIR), out="-", batch=16, prompt_tokens=96, canvas=16, objective=objective
    )
    tok = Tokenizer.from_file(str(EMBEDDED_DIR / "tokenizer.json"))
    corpora = [[_file("alpha")], [_file("omega")]]

    def rows(batch) -> list[str]:
        ids = batch["ids"] if objective == "block" else torch.cat([batch[0], batch[2]], 1)
        return [tok.decode(row.tolist()) for row in ids]

    for shares, seen, unseen in (([0.0, 1.0], "omega", "alpha"), ([1.0, 0.0], "alpha", "omega")):
        text = "".join(rows(next(iter(train.FimBatches(corpora, cfg.tokenizer, cfg, seed=0, shares=shares)))))
        assert seen in text and unseen not in text
    decoded = rows(next(iter(train.FimBatches(corpora, cfg.tokenizer, cfg, seed=0))))  # equal shares by default
    assert any("alpha" in r for r in decoded) and any("omega" in r for r in decoded)


def test_a_corpus_of_chosen_distributions_has_only_their_files_and_licences():
    files, licenses = corpus.collect(only={"pluggy"})  # installed with pytest; MIT
    assert files and {f.origin for f in files} == {"pluggy"} and set(licenses) == {"pluggy"}
    assert corpus.is_permissive(licenses["pluggy"])
    with pytest.raises(SystemExit, match="no-such-dist"):
        corpus.collect(only={"pluggy", "no-such-dist"})


def _install_fake(site, name: str = "fakeutil", licence: str = "MIT") -> None:
    """A distribution as pip installs it: its package and a dist-info whose RECORD lists the package's files."""
    module = name.replace("-", "_")
    (site / module).mkdir(parents=True)
    (site / module / "__init__.py").write_text(_file(module))
    info = site / f"{module}-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\nLicense: {licence}\n")
    (info / "RECORD").write_text(f"{module}/__init__.py,,\n{info.name}/METADATA,,\n")


def test_a_small_corpus_is_collected_from_its_own_site_directory_alone(tmp_path):
    _install_fake(tmp_path / "site")
    summary = corpus.write_corpus(tmp_path / "out", only={"fakeutil"}, site=tmp_path / "site")
    assert summary["files"]["train"] + summary["files"]["valid"] == 1 and summary["distributions"] == 1
    written = "".join((tmp_path / "out" / f"{split}.jsonl").read_text() for split in ("train", "valid"))
    assert "fakeutil_39" in written
    with pytest.raises(SystemExit, match="pluggy"):  # installed in the environment, but not in that directory
        corpus.collect(only={"fakeutil", "pluggy"}, site=tmp_path / "site")


def test_a_named_domain_corpus_installs_its_packages_without_dependencies(tmp_path, monkeypatch):
    asked = []

    def fake_pip(cmd, **kw):
        asked.append(cmd)
        site = Path(cmd[cmd.index("--target") + 1])
        for name in corpus.DOMAINS["domain"]:
            _install_fake(site, name, "BSD-3-Clause")
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(corpus.subprocess, "run", fake_pip)
    summary = corpus.write_domain(tmp_path / "d", "domain")
    assert summary["distributions"] == len(corpus.DOMAINS["domain"]) and "--no-deps" in asked[0]
    assert set(corpus.DOMAINS["domain"]) <= set(asked[0])
    with pytest.raises(SystemExit, match="choose one of"):
        corpus.write_domain(tmp_path / "e", "no-such-domain")


def test_bf16_autocast_only_where_asked_or_native():
    assert train.use_bf16("on", torch.device("cpu")) and not train.use_bf16("off", torch.device("cuda"))
    assert train.use_bf16("auto", torch.device("cuda"))
    assert train.use_bf16("auto", torch.device("cpu")) == ("amx_bf16" in open("/proc/cpuinfo").read())
    with pytest.raises(SystemExit):
        train.use_bf16("fp8", torch.device("cpu"))


@pytest.mark.parametrize("long_at_indent", [0.0, 0.5])
def test_fim_cuts_at_an_indented_cursor_take_whole_bodies_when_asked(long_at_indent):
    """An editor's cursor on an emptied line sits after the indentation; `long_at_indent` decides how often training
    shows a whole body missing there."""
    import random

    from dg_model.training.fim_examples import sample_fim

    text = "".join(
        f"def f{i}(x):\n    y = x + {i}\n    z = y * 2\n    if z:\n        return z\n    return y\n\n"
        for i in range(30)
    )
    rng = random.Random(0)
    spans = []
    for _ in range(2000):
        p = sample_fim(text, rng, long_at_indent)
        assert p is not None and p.prefix + p.middle + p.suffix == text
        if p.prefix.endswith("    ") and p.prefix.rstrip(" ").endswith("\n"):
            spans.append(p.middle.count("\n") + 1)
    assert len(spans) > 300
    long = sum(n >= 4 for n in spans)
    assert (long > len(spans) // 4) if long_at_indent else (long == 0)


def test_body_cuts_start_inside_documented_functions_after_their_docstrings():
    """`--body-cuts`: a share of cuts starts where an editor's requests land, in the body of a documented function
    below its docstring, and ends with that function; undocumented code, signatures and docstrings are never cut."""
    import random

    from dg_model.training.fim_examples import documented_bodies, sample_fim

    text = (
        "import os\n\n\n"
        "def plain(x):\n    return x\n\n\n"
        'def documented(xs):\n    """Sum the even numbers."""\n    total = 0\n    for x in xs:\n'
        "        if x % 2 == 0:\n            total += x\n    return total\n\n\n"
        "class Box:\n"
        '    async def size(self):\n        """How many."""\n        return len(self.items)\n'
    )
    lines = text.split("\n")
    body = documented_bodies(text)
    assert [lines[i].strip() for i in sorted(body)] == [
        "total = 0", "for x in xs:", "if x % 2 == 0:", "total += x", "return total", "return len(self.items)"
    ]  # fmt: skip
    assert {lines[last] for last in body.values()} == {"    return total", "        return len(self.items)"}
    assert documented_bodies("def broken(:\n") == {}

    rng = random.Random(0)
    starts = set()
    for _ in range(300):
        p = sample_fim(text, rng, lines_from=body)
        assert p is not None and p.prefix + p.middle + p.suffix == text
        starts.add(p.prefix.count("\n"))  # the line the cut starts on
    assert starts == set(body)

    corpora = [[text]]
    cfg = train.TrainConfig(corpus="-", tokenizer=str(EMBEDDED_DIR), out="-", batch=8, prompt_tokens=96, canvas=16)
    tok = Tokenizer.from_file(str(EMBEDDED_DIR / "tokenizer.json"))
    cut = dataclasses.replace(cfg, body_cuts=1.0)
    examples = train.FimBatches(corpora, cfg.tokenizer, cut, seed=0)._examples(random.Random(0), _encoder(tok), 16)
    for _ in range(40):
        _, middle = next(examples)
        assert "def " not in tok.decode(middle) and "class " not in tok.decode(middle)  # within one function
