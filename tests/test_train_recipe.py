"""The training recipe end to end on a tiny config, on the CPU, in seconds: the commands a GPU session runs.

    corpus (JSONL of real stdlib files) -> python -m dg_model.training.train (checkpoints last/ and best/) -> --resume
    -> python -m dg_model.training.export (float16, sharded) -> load_engine(OUT) -> a completion

It proves the pieces fit together (file layouts, resume state, shard loading, engine settings), not that a model
learns: tests/test_train_copy.py does that on a synthetic task.
"""

import json
import textwrap
from pathlib import Path

import pytest
from safetensors.torch import load_file

from dg_model.api import InfillJob
from dg_model.loading import EMBEDDED_DIR, load_engine
from dg_model.training import export, train


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("corpus")
    stdlib = Path(textwrap.__file__).parent
    files = [stdlib / n for n in ("textwrap.py", "shlex.py", "glob.py", "fnmatch.py", "colorsys.py")]
    (out / "train.jsonl").write_text("".join(json.dumps({"text": f.read_text()}) + "\n" for f in files[:4]))
    (out / "valid.jsonl").write_text(json.dumps({"text": files[4].read_text()}) + "\n")
    return out


def _train(corpus: Path, out: Path, *extra: str) -> None:
    args = [
        "--corpus",
        str(corpus),
        "--tokenizer",
        str(EMBEDDED_DIR),
        "--out",
        str(out),
        "--size",
        "tiny",
        "--batch",
        "4",
        "--prompt-tokens",
        "96",
        "--canvas",
        "16",
        "--workers",
        "0",
        "--eval-every",
        "2",
        "--warmup-steps",
        "2",
        "--minutes",
        "5",
        "--device",
        "cpu",
        *extra,
    ]
    train.main(args)


def test_train_resume_export_and_serve(corpus, tmp_path, capsys):
    run = tmp_path / "run"
    _train(corpus, run, "--max-steps", "4")
    logs = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert logs[-1]["done"] and logs[-1]["step"] == 4
    for ckpt in ("last", "best"):
        state = json.loads((run / ckpt / "train_state.json").read_text())
        assert (run / ckpt / "trainer.pt").exists() and state["step"] >= 2
    assert json.loads((run / "best" / "train_state.json").read_text())["best_step"] in (2, 4)

    _train(corpus, run, "--max-steps", "2", "--resume", str(run / "last"))  # optimizer state and step count go on
    resumed = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert resumed[-1]["done"] and resumed[-1]["step"] == 6

    model_dir = tmp_path / "model"
    export.main([str(run / "last"), str(model_dir), "--tokenizer", str(EMBEDDED_DIR), "--max-shard-mb", "1.2"])
    files = [p for p in model_dir.iterdir() if p.is_file()]
    shards = sorted(model_dir.glob("model-*.safetensors"))
    assert len(shards) > 1 and (model_dir / "model.safetensors.index.json").exists()
    assert all(f.stat().st_size < 1.25e6 for f in shards), "every weight file stays under the shard limit"
    assert {p.name for p in files} >= {"config.json", "tokenizer.json", "dg_engine.json", "generation_config.json"}
    assert all(str(t.dtype) == "torch.float16" for t in load_file(shards[0]).values())

    engine = load_engine(str(model_dir), device="cpu")
    assert engine.fwd.kind == "ort" and next(engine.model.parameters()).dtype.is_floating_point
    result = engine.infill(InfillJob("def area(r):\n    return ", "\n", kind="line", max_tokens=4))
    assert result.stats.steps >= 1  # an untrained tiny model: that it runs through the real loader is the point


def test_train_grows_a_resumed_model_once_and_continues_it_with_its_optimizer(corpus, tmp_path):
    fast = ("--max-steps", "2", "--compile", "off")
    _train(corpus, tmp_path / "narrow", *fast)
    _train(corpus, tmp_path / "a", *fast, "--resume", str(tmp_path / "narrow" / "last"), "--grow", "96")
    saved = json.loads((tmp_path / "a" / "last" / "config.json").read_text())
    assert saved["text_config"]["hidden_size"] == 96  # tiny's 64, widened (grow.py)
    _train(corpus, tmp_path / "b", *fast, "--resume", str(tmp_path / "a" / "last"), "--grow", "96")  # not again
    state = json.loads((tmp_path / "b" / "last" / "train_state.json").read_text())
    assert state["step"] == 4 and state["step_at_resume"] == 2  # the grown run's optimizer state carried on
