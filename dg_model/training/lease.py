"""Train on a lent GPU in one prepared call: `python -m dg_model.training.lease pack | run | plan`.

A GPU is lent to a session by chance, for ~15 minutes of device time in all (starting the machine included), to a
bare machine that reaches nothing outside itself and gets this repository's working tree (64 MiB at most) plus the
ignored paths a call carries. Those minutes are worth more than every CPU session together (MODEL_CARD.md: the H100
run processed 322 M tokens in 19 minutes; a 3-hour CPU session ~10 M), so everything is prepared here first:

- `pack` (here, with PyPI): the domain corpora gzipped into `.data/` and wheels of what the device's image lacks into
  `.whl/` (its transformers predates DiffusionGemma); prints the `run` call, command and carry list.
- `run` (there): builds the general corpus from the device's own installed, permissively licensed Python (seconds),
  unpacks the carried ones, trains with train.py's block recipe under a wall-clock budget, checkpointing every two
  minutes, exports float16 shards, and leaves under $OUT only what comes back (at most 8 files of 16 MiB): the weight
  shards with their index and config in `model/`, the training log, and `lease.json` (phases' seconds, the GPU,
  held-out losses, tokens). Whatever stops the training (its budget, a crash, the watchdog), the last checkpoint is
  exported.
- `plan` prints the device call without packing.

Back here, `python -m dg_model.training.export FILES_AT/model MODEL --tokenizer dg_model/embedded` makes a model
directory to evaluate side by side with the shipped one (docs/gpu-training.md).
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from importlib import metadata
from pathlib import Path

from dg_model.loading import EMBEDDED_DIR
from dg_model.training.corpus import write_corpus

REPO = Path(__file__).resolve().parents[2]
DATA, WHEELS = ".data", ".whl"
# The device image's packages (KINDS.md of the device tool, 2026-11): transformers 5.17 lacks DiffusionGemma; regex
# travels because transformers needs a newer one than an image may hold. The rest (tokenizers, safetensors,
# huggingface_hub, typer, numpy) is there in versions transformers accepts.
CARRIED_DISTRIBUTIONS = ("transformers", "regex")
DEVICE_PYTHON = "3.12"
MANYLINUX = ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64")
TREE_LIMIT = 64 * 2**20
# What a lease's mixture is sized by: an H200 trained the embedded model at ~0.79 M tokens/s over a call's budget,
# compiling included (session 12); the tokenizer writes ~3.5 bytes of Python per token; a pass over a small corpus
# past the eighth teaches its files, not code.
TOKENS_PER_S, BYTES_PER_TOKEN, MAX_EPOCHS = 0.79e6, 3.5, 8.0
RECIPE = [  # train.py's block recipe (MODEL_CARD.md, session 8), at a GPU's batch
    "--objective", "block", "--canvases", "4,8,8,16,64", "--full-noise-prob", "0.3", "--distill", "0.5",
    "--ar-weight", "1.5", "--ckpt-minutes", "2", "--eval-every", "100",
]  # fmt: skip


def pack(corpora: list[Path], wheels: bool, repo: Path = REPO) -> list[Path]:
    """Gzip each corpus directory into repo/.data/NAME/ and (with `wheels`) download the carried wheels into
    repo/.whl/; returns the carry list."""
    data = repo / DATA
    shutil.rmtree(data, ignore_errors=True)
    for corpus in corpora:
        dest = data / corpus.name
        dest.mkdir(parents=True)
        for split in ("train", "valid"):
            with open(corpus / f"{split}.jsonl", "rb") as src, gzip.open(dest / f"{split}.jsonl.gz", "wb") as out:
                shutil.copyfileobj(src, out)
        for extra in ("licenses.json", "summary.json"):
            if (corpus / extra).exists():
                shutil.copy(corpus / extra, dest / extra)
    carry = [data]
    if wheels:
        shutil.rmtree(repo / WHEELS, ignore_errors=True)
        platforms = [arg for p in MANYLINUX for arg in ("--platform", p)]
        pins = [f"{name}=={metadata.version(name)}" for name in CARRIED_DISTRIBUTIONS]
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--python-version",
             DEVICE_PYTHON, "--implementation", "cp", *platforms, "-d", str(repo / WHEELS), *pins],
            check=True,
        )  # fmt: skip
        carry.append(repo / WHEELS)
    return carry


# A second call on the still-warm machine picks up the first's run with its optimizer state: half the lr, a short
# warm-up (AdamW's moments are kept) and another data order.
CONTINUE = "--continue --lr 1.5e-4 --warmup-steps 10 --seed 1"
GROW_HELP = "widen the shipped weights to this hidden size first, computing the same (grow.py; e.g. 384: 2x params)"


def corpus_shares(corpora: list[Path], expected_tokens: float, max_epochs: float = MAX_EPOCHS) -> str:
    """`--corpus-shares` for a run of about `expected_tokens`: the small carried corpora (all but the first) as much as
    the CPU runs' 0.3 each, but never more than `max_epochs` passes over one; the first (general) corpus the rest.

    The CPU runs' fixed 0.4 / 0.3 / 0.3 met ~5 M tokens a session; on an H200's 530 M (session 12) it read each ~1
    M-token domain corpus ~150 times: its training loss halved (1.32 -> 0.71 nats) while the general held-out loss
    did not move, and HumanEval single-line fell from 211 to 192 of 1,033."""
    small = [min(0.3, max_epochs * _tokens(c) / expected_tokens) for c in corpora[1:]]
    small = [x * min(1.0, 0.6 / sum(small)) for x in small] if sum(small) > 0 else small  # general keeps >= 0.4
    return ",".join(f"{x:.4g}" for x in [1 - sum(small), *small])


def _tokens(corpus: Path) -> float:
    return (corpus / "train.jsonl").stat().st_size / BYTES_PER_TOKEN


def device_command(minutes: float, size: str, continued: bool = False, grow: int = 0) -> str:
    """The shell command for the device tool's `run` (at most 2,000 characters)."""
    return (
        f"python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "
        f"{WHEELS}/*.whl && export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 && "
        f"python3 -m dg_model.training.lease run --minutes {minutes:g} --size {size} --out $OUT"
        + (f" --grow {grow}" if grow else "")
        + (f" {CONTINUE}" if continued else "")
    )


def tree_bytes(repo: Path, carry: list[Path]) -> int:
    """What a call sends: tracked and untracked-not-ignored files plus the carried paths."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=repo, capture_output=True
    ).stdout.split(b"\0")
    files = [repo / os.fsdecode(p) for p in listed if p] + [p for c in carry for p in c.rglob("*")]
    return sum(p.stat().st_size for p in files if p.is_file())


def _unpack(data: Path, work: Path) -> list[Path]:
    out = []
    for corpus in sorted(p for p in data.iterdir() if p.is_dir()) if data.exists() else []:
        dest = work / corpus.name
        dest.mkdir(parents=True, exist_ok=True)
        for split in ("train", "valid"):
            with gzip.open(corpus / f"{split}.jsonl.gz", "rb") as src, open(dest / f"{split}.jsonl", "wb") as o:
                shutil.copyfileobj(src, o)
        out.append(dest)
    return out


def _gpu() -> str:
    import torch

    return torch.cuda.get_device_name() if torch.cuda.is_available() else "none (cpu)"


def _train(cmd: list[str], limit_s: float, log) -> int:
    """train.py in a subprocess, its output to `log` and ours; killed past `limit_s` (train.py stops itself at its
    budget, compilation included: this is for a hang). Returns its exit code."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    watchdog = threading.Timer(limit_s, proc.kill)
    watchdog.start()
    assert proc.stdout is not None
    for line in proc.stdout:
        log.write(line)
        sys.stdout.write(line)
    code = proc.wait()
    watchdog.cancel()
    return code


def run(args: argparse.Namespace, train_args: list[str]) -> dict:
    """On the device: corpus -> train (watchdog) -> export -> $OUT. Returns what lease.json records."""
    out, work = Path(args.out), Path(args.work)
    seconds: dict[str, float] = {}
    t = time.time()
    general = work / "general"
    corpora = [] if args.general == "none" else [general]
    if corpora and not (args.continue_ and (general / "summary.json").exists()):
        write_corpus(general, include_packages=args.general == "all")
    corpora += _unpack(Path(args.data), work / "carried")
    seconds["corpus"] = time.time() - t
    shares = corpus_shares(corpora, args.minutes * 60 * TOKENS_PER_S) if len(corpora) > 1 else ""
    resume = [] if args.size != "embedded" or args.from_scratch else ["--resume", str(EMBEDDED_DIR)]
    previous = work / "run" / "last"
    continued = args.continue_ and (previous / "train_state.json").exists()
    if continued:  # the run directory is written anew: resume from a copy of its last checkpoint
        shutil.rmtree(work / "previous", ignore_errors=True)
        shutil.copytree(previous, work / "previous")
        resume = ["--resume", str(work / "previous")]
    # an earlier call's checkpoints must not pass for this one's (a call failing before its first checkpoint would
    # otherwise export them)
    shutil.rmtree(work / "run", ignore_errors=True)
    cmd = [
        sys.executable, "-m", "dg_model.training.train", *RECIPE, "--corpus", ",".join(map(str, corpora)),
        *(["--corpus-shares", shares] if shares else []), "--tokenizer", str(EMBEDDED_DIR), "--out", str(work / "run"),
        "--size", args.size, "--minutes", f"{args.minutes:g}", "--batch", str(args.batch), "--lr", f"{args.lr:g}",
        "--warmup-steps", str(args.warmup_steps), "--workers", str(args.workers), "--seed", str(args.seed),
        *resume, *(["--grow", str(args.grow)] if args.grow else []), *train_args,
    ]  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    t = time.time()
    ckpt = work / "run" / "last"
    with open(out / "train.log", "w") as log:
        code = _train(cmd, args.minutes * 60 + args.grace_s, log)
        left = args.minutes - (time.time() - t) / 60
        if code != 0 and not ckpt.exists() and left > args.minutes / 2:
            # Failed before its first checkpoint, as a compiler missing from the image would make it: the rest of
            # the budget in eager mode, rather than a lease with nothing to show.
            cmd = [*cmd, "--compile", "off", "--minutes", f"{left:.2f}"]
            code = _train(cmd, left * 60 + args.grace_s, log)
    seconds["train"] = time.time() - t
    t = time.time()
    state = json.loads((ckpt / "train_state.json").read_text()) if (ckpt / "train_state.json").exists() else {}
    if state:
        from dg_model.training.export import export

        exported = work / "export"
        export(ckpt, exported, EMBEDDED_DIR)
        (out / "model").mkdir(exist_ok=True)
        for f in exported.iterdir():
            if f.name.startswith("model") or f.name == "config.json":  # tokenizer and settings are the repo's
                shutil.copy(f, out / "model" / f.name)
    seconds["export"] = time.time() - t
    summary = {
        "gpu": _gpu(),
        "size": args.size,
        "grow": args.grow,
        "continued": continued,  # False with --continue: no earlier run on this machine, the shipped weights instead
        "train_exit": code,
        "seconds": {k: round(v, 1) for k, v in seconds.items()},
        "corpora": [str(c) for c in corpora],
        "command": cmd,
        "step": state.get("step"),
        "tokens": state.get("tokens"),
        "final_val": state.get("final_val"),
        "exported": sorted(p.name for p in (out / "model").iterdir()) if (out / "model").exists() else [],
    }
    (out / "lease.json").write_text(json.dumps(summary, indent=1))
    return summary


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="verb", required=True)
    p = sub.add_parser("pack", help="here: corpora into .data/, wheels into .whl/, print the device call")
    p.add_argument("--corpora", default="/work/domain,/work/domain2", help="corpus directories to carry")
    p.add_argument("--no-wheels", action="store_true", help="skip the wheels (no PyPI, or already there)")
    for q in (p, sub.add_parser("plan", help="print the device call")):
        q.add_argument("--minutes", type=float, default=6.0, help="training budget (the call's limit is 10 min)")
        q.add_argument("--size", default="embedded", help="embedded (continues the shipped weights) | medium")
        q.add_argument("--continue", dest="continue_", action="store_true", help="the call that continues a first")
        q.add_argument("--grow", type=int, default=0, help=GROW_HELP)
    r = sub.add_parser("run", help="there: corpus, train, export into --out")
    r.add_argument("--out", required=True, help="$OUT: what comes back")
    r.add_argument("--minutes", type=float, default=6.0)
    r.add_argument("--size", default="embedded")
    r.add_argument("--from-scratch", action="store_true", help="embedded size without the shipped weights")
    r.add_argument("--grow", type=int, default=0, help=GROW_HELP)
    r.add_argument(
        "--continue", dest="continue_", action="store_true",
        help="resume the previous call's run on this (still warm) machine, optimizer state included",
    )  # fmt: skip
    r.add_argument("--general", choices=("all", "stdlib", "none"), default="all", help="the general corpus")
    r.add_argument("--work", default="/tmp/lease", help="scratch directory (corpora, checkpoints)")
    r.add_argument("--data", default=str(REPO / DATA), help="the carried corpora (pack's output)")
    # A continuation at 16x the CPU runs' batch: 3x their lr (1e-4), a short warm-up since AdamW starts cold.
    r.add_argument("--batch", type=int, default=256)
    r.add_argument("--lr", type=float, default=3e-4)
    r.add_argument("--warmup-steps", type=int, default=30)
    r.add_argument("--workers", type=int, default=min(12, max(1, (os.cpu_count() or 2) - 2)))
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--grace-s", type=float, default=120.0, help="past the budget before the watchdog stops it")
    args, rest = ap.parse_known_args(argv)
    if rest and args.verb != "run":
        ap.error(f"unknown arguments: {' '.join(rest)}")
    if args.verb == "run":
        print(json.dumps(run(args, rest), indent=1))
        return
    carry = [REPO / DATA, REPO / WHEELS]
    if args.verb == "pack":
        carry = pack([Path(c) for c in args.corpora.split(",") if c], not args.no_wheels)
    size_mib = tree_bytes(REPO, carry) / 2**20
    command = device_command(args.minutes, args.size, args.continue_, args.grow)
    print(json.dumps({"command": command, "carry": [DATA, WHEELS]}, indent=1))
    print(f"what travels: {size_mib:.1f} MiB of {TREE_LIMIT / 2**20:.0f}", file=sys.stderr)
    if size_mib * 2**20 > TREE_LIMIT:
        raise SystemExit("over the device's limit: carry less")


if __name__ == "__main__":
    main()
