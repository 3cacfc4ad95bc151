"""The GPU lease's prepared call (dg_model/training/lease.py), run here on the CPU on a tiny config: what a lent
device would do with its few minutes (corpus -> train -> export -> $OUT), in the files that come back, loadable."""

import gzip
import json
import subprocess
import sys
import textwrap
from pathlib import Path

from dg_model.api import InfillJob
from dg_model.loading import EMBEDDED_DIR, load_engine
from dg_model.training import export, lease

# The device's image has no language-server packages: the training side must not import them.
BLOCKED = "import sys\nfor m in ('pygls', 'lsprotocol', 'tree_sitter', 'dg_lsp'): sys.modules[m] = None\n"


def _corpus(root: Path) -> Path:
    stdlib = Path(textwrap.__file__).parent
    out = root / "tiny"
    out.mkdir(parents=True)
    files = [stdlib / n for n in ("textwrap.py", "shlex.py", "glob.py", "fnmatch.py")]
    (out / "train.jsonl").write_text("".join(json.dumps({"text": f.read_text()}) + "\n" for f in files[:3]))
    (out / "valid.jsonl").write_text(json.dumps({"text": files[3].read_text()}) + "\n")
    (out / "licenses.json").write_text('{"stdlib": "PSF-2.0"}')
    return out


def test_pack_gzips_the_corpora_and_the_call_fits_the_device(tmp_path):
    corpus = _corpus(tmp_path / "src")
    carry = lease.pack([corpus], wheels=False, repo=tmp_path)
    assert carry == [tmp_path / ".data"]
    with gzip.open(tmp_path / ".data" / "tiny" / "train.jsonl.gz", "rt") as fh:
        assert fh.read() == (corpus / "train.jsonl").read_text()
    assert (tmp_path / ".data" / "tiny" / "licenses.json").exists()
    for continued in (False, True):
        command = lease.device_command(6, "embedded", continued, grow=384)
        assert len(command) <= 2000 and "--grow 384" in command  # the device tool's limit on a command


def test_run_trains_exports_and_leaves_a_loadable_model(tmp_path):
    lease.pack([_corpus(tmp_path / "src")], wheels=False, repo=tmp_path)
    out = tmp_path / "OUT"
    args = ["run", "--out", str(out), "--work", str(tmp_path / "work"), "--data", str(tmp_path / ".data")]
    args += ["--size", "tiny", "--general", "none", "--minutes", "2", "--batch", "4", "--workers", "0"]
    train_args = ["--max-steps", "3", "--compile", "off", "--prompt-tokens", "96", "--canvas", "16", "--device", "cpu"]
    code = BLOCKED + "from dg_model.training.lease import main; main(sys.argv[1:])"
    proc = subprocess.run([sys.executable, "-c", code, *args, *train_args], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]

    summary = json.loads((out / "lease.json").read_text())
    assert summary["train_exit"] == 0 and summary["step"] == 3
    assert summary["final_val"]["loss"] > 0
    back = [p for p in out.rglob("*") if p.is_file()]
    assert len(back) <= 8 and all(p.stat().st_size < 16 * 2**20 for p in back)  # what a call brings back
    assert all(len(p.relative_to(out).parts) <= 3 for p in back)  # $OUT/a/b/file at the deepest
    logged = [json.loads(line) for line in (out / "train.log").read_text().splitlines() if line.startswith("{")]
    assert logged[-1]["done"] and logged[-1]["step"] == 3

    # a second call on the same machine continues that run (its step count goes on) instead of the shipped weights
    again = subprocess.run(
        [sys.executable, "-c", code, *args, "--continue", *train_args], capture_output=True, text=True, timeout=300
    )
    assert again.returncode == 0, again.stderr[-3000:]
    summary = json.loads((out / "lease.json").read_text())
    assert summary["continued"] and summary["train_exit"] == 0 and summary["step"] == 6

    # a later call that fails (another experiment on the same machine) brings back nothing, not the earlier run's
    failed_out = tmp_path / "OUT3"
    failed = [*args[:1], "--out", str(failed_out), *args[3:], "--size", "no-such-size", *train_args]
    third = subprocess.run([sys.executable, "-c", code, *failed], capture_output=True, text=True, timeout=300)
    assert third.returncode == 0, third.stderr[-3000:]
    summary = json.loads((failed_out / "lease.json").read_text())
    assert summary["train_exit"] != 0 and summary["exported"] == [] and summary["step"] is None

    model_dir = tmp_path / "model"
    export.main([str(out / "model"), str(model_dir), "--tokenizer", str(EMBEDDED_DIR)])
    engine = load_engine(str(model_dir), device="cpu")
    result = engine.infill(InfillJob(prefix="def add(a, b):\n    ", suffix="\n", kind="line", max_tokens=4, n=1))
    assert result.candidates  # a tiny model's words, but through the whole serving path


def test_run_exports_nothing_and_says_so_when_training_fails(tmp_path):
    lease.pack([_corpus(tmp_path / "src")], wheels=False, repo=tmp_path)
    out = tmp_path / "OUT"
    args = ["run", "--out", str(out), "--work", str(tmp_path / "work"), "--data", str(tmp_path / ".data")]
    args += ["--size", "no-such-size", "--general", "none", "--minutes", "1", "--workers", "0"]
    # train.py refuses the size and exits non-zero: the summary still comes back, empty-handed.
    proc = subprocess.run([sys.executable, "-m", "dg_model.training.lease", *args], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads((out / "lease.json").read_text())
    assert summary["train_exit"] != 0 and summary["exported"] == [] and summary["step"] is None


def test_small_corpora_are_read_a_few_times_however_long_the_lease(tmp_path):
    general, small = tmp_path / "general", tmp_path / "small"
    for d, size in ((general, 3_500_000), (small, 35_000)):  # ~1 M and ~10 k tokens
        d.mkdir()
        (d / "train.jsonl").write_bytes(b"x" * size)
    short = [float(x) for x in lease.corpus_shares([general, small], expected_tokens=100_000).split(",")]
    long = [float(x) for x in lease.corpus_shares([general, small], expected_tokens=500e6).split(",")]
    assert short == [0.7, 0.3]  # a short run: the CPU runs' mixture
    assert long[1] * 500e6 <= lease.MAX_EPOCHS * 10_000 * 1.01
    assert abs(sum(long) - 1) < 1e-3  # rounded weights: train.py draws by them
    many = [float(x) for x in lease.corpus_shares([general, small, small, small], expected_tokens=100_000).split(",")]
    assert many[0] >= 0.4 - 1e-3 and abs(sum(many) - 1) < 1e-3  # three small corpora do not crowd the general one out
