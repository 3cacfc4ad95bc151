"""Turn a training checkpoint into a model directory dg-lsp loads:
`python -m dg_model.training.export CKPT OUT --tokenizer DIR`.

    CKPT (train.py's `last/` or `best/`) -> OUT/config.json, model*.safetensors (float16, sharded under
    --max-shard-mb so each file can travel on its own), tokenizer files, generation_config.json and dg_engine.json
    (the engine settings: taken from --engine-settings, by default the embedded model's)

OUT then works as `dg-lsp --model OUT`, and as the embedded model once copied over `dg_model/embedded/` (keep its
MODEL_CARD.md and DATA_LICENSES.json up to date by hand: they record data, compute and evaluation).
Training state (optimizer, train_state.json) stays behind; `train.py --resume CKPT` is what continues a run.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import torch
from transformers import DiffusionGemmaForBlockDiffusion, PreTrainedTokenizerFast

from dg_model.loading import EMBEDDED_DIR

DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


def export(
    checkpoint: Path,
    out: Path,
    tokenizer: Path,
    dtype: str = "float16",
    max_shard_mb: float = 15.0,
    engine_settings: Path | None = None,
) -> list[Path]:
    """Write the model directory; returns the files written, largest first."""
    model = DiffusionGemmaForBlockDiffusion.from_pretrained(checkpoint, dtype=torch.float32)
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("model*.safetensors*"):  # a previous export's shards must not mix with this one's
        old.unlink()
    # Weights stored in `dtype`, config still says float32: the CPU loads them as float32 (bf16 is ~100x slower there).
    # The ignore: transformers wraps `to` with functools.wraps, and mypy then binds the dtype to `self`.
    stored = model.to(DTYPES[dtype])  # type: ignore[arg-type]
    stored.save_pretrained(out, safe_serialization=True, max_shard_size=f"{int(max_shard_mb * 1000)}KB")
    config = json.loads((out / "config.json").read_text())
    config["dtype"] = "float32"
    config.setdefault("text_config", {})["dtype"] = "float32"
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    PreTrainedTokenizerFast.from_pretrained(tokenizer).save_pretrained(out)
    settings = engine_settings or EMBEDDED_DIR / "dg_engine.json"
    shutil.copyfile(settings, out / "dg_engine.json")
    shutil.copyfile(EMBEDDED_DIR / "generation_config.json", out / "generation_config.json")
    return sorted((p for p in out.iterdir() if p.is_file()), key=lambda p: -p.stat().st_size)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint", type=Path, help="a train.py checkpoint directory (last/ or best/)")
    ap.add_argument("out", type=Path, help="the model directory to write")
    ap.add_argument("--tokenizer", type=Path, required=True, help="directory holding the run's tokenizer.json")
    ap.add_argument("--dtype", choices=list(DTYPES), default="float16", help="storage dtype (default float16)")
    ap.add_argument("--max-shard-mb", type=float, default=15.0, help="largest weight file in MB (default 15)")
    ap.add_argument("--engine-settings", type=Path, help="dg_engine.json to ship (default: the embedded model's)")
    args = ap.parse_args(argv)
    files = export(args.checkpoint, args.out, args.tokenizer, args.dtype, args.max_shard_mb, args.engine_settings)
    for path in files:
        print(f"{path.stat().st_size / 1e6:8.2f} MB  {path}")


if __name__ == "__main__":
    main()
