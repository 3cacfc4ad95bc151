"""Smoke runs of `dg-lsp bench latency|speed|memory|forward|gpu`: each runs end to end on small settings and its
numbers are sane (consistent counts, ordered percentiles, positive rates). Never an absolute timing bound.

latency and memory drive the real stdio server with the fake engine; speed runs `dg_model.evaluation.humaneval` on a few
tasks with a stand-in engine per decoding mode (the real embedded model in the slow test); gpu checks the delegation to
`python -m dg_bench.gpu` (whose own smoke test is tests/test_bench_gpu.py).
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from conftest import FAKE_SERVER, REPO, TESTS, fake_spec

import dg_bench as bench
from dg_bench import latency, speed
from dg_lsp import cli
from dg_model.api import Candidate, InfillJob, JobResult, JobStats

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def fake_env(monkeypatch):
    """The bench's server is tests/fake_server.py (the real server, its `--model <json spec>` the fake engine)."""
    from dg_bench import session

    command = session.ServerSpec.command

    def fake_server_command(self, log_file):
        python, *args = command(self, log_file)
        assert args[:2] == ["-m", "dg_bench.probe" if self.probe else "dg_lsp.cli"], args
        return [python, str(FAKE_SERVER), *(["--probe"] if self.probe else []), *args[2:]]

    monkeypatch.setattr(session.ServerSpec, "command", fake_server_command)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(TESTS), str(REPO), os.environ.get("PYTHONPATH", "")]))


def run_cli(monkeypatch, *argv: str) -> int:
    # as `dg-lsp` will run it once "dg_bench" is in cli.SUBCOMMAND_MODULES
    monkeypatch.setattr(cli, "SUBCOMMAND_MODULES", ("dg_bench",))
    return cli.main(list(argv))


def run_bench(monkeypatch, name: str, out: Path, *flags: str) -> dict:
    """`dg-lsp bench NAME --out OUT FLAGS...` in this process: it succeeds, draws its chart (`png`), and this is the
    bench_NAME.json it wrote."""
    assert run_cli(monkeypatch, "bench", name, "--out", str(out), *flags) == 0
    png(out / f"bench_{name}.png")
    return json.loads((out / f"bench_{name}.json").read_text())


def fake_model(**overrides) -> str:
    return json.dumps(fake_spec(text="a + b", steps=3, step_ms=5, **overrides))


def sane_summary(s: dict, n_min: int = 1) -> None:
    assert s["n"] >= n_min
    assert 0 <= s["p50"] <= s["p95"] <= s["max"] and s["mean"] <= s["max"]


def png(path: Path) -> None:
    """The chart, when matplotlib is installed (an optional dependency); without it the bench skips the chart."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert not path.exists()
        return
    assert path.read_bytes()[:8] == PNG and path.stat().st_size > 5_000


def test_registered_as_a_sub_command():
    assert cli.SUBCOMMANDS["bench"].run is bench.run
    for name in bench.BENCHES:
        args = cli.build_parser().parse_args(["bench", name, "--out", "x", "--model", "m"])
        assert (args.command, args.bench, args.out, args.model) == ("bench", name, "x", "m")
    assert cli.build_parser().parse_args(["bench", "latency"]).out == bench.DEFAULT_OUT


def test_keystrokes_and_pauses():
    typed = "    if x:\n        return f(a, b)\n"
    keys = latency.keystrokes(typed)
    assert "".join(keys) == typed and keys[0] == "    " and "\n        " in keys  # auto-indent is one keystroke
    done, pauses = "", []
    for i, key in enumerate(keys):
        done += key
        if latency.is_pause(done, key, "token", i):
            pauses.append(key)
    assert pauses == [" ", ":", "\n        ", " ", "(", ",", ")", "\n"]  # token boundaries, not inside words
    assert [i for i in range(12) if latency.is_pause("", "x", "4", i)] == [3, 7, 11]  # every 4th character


def test_region_is_whole_lines_of_a_function_body():
    source = Path(latency.default_file()).read_text()
    start, end = latency.pick_region(source, "auto", 200)
    assert source[start - 1] == "\n" and source[end - 1] == "\n" and 0 < end - start <= 200
    start, end = latency.pick_region(source, "10-12", 10_000)
    assert source[start:end] == "".join(source.splitlines(keepends=True)[9:12])


def test_latency_smoke(monkeypatch, fake_env, tmp_path):
    out = tmp_path / "out"
    r = run_bench(
        monkeypatch,
        "latency",
        out,
        "--model",
        fake_model(),
        "--chars",
        "90",
        "--keystroke-ms",
        "15",
        "--pause-ms",
        "20",
        "--timeout-s",
        "10",
        "--retry-candidates",  # one engine call per request: every job's steps are the fake engine's own
        "0",
        "--keep-log",
    )
    assert r["keystrokes"] > 10 and r["requests"]["sent"] == r["keystrokes"]
    assert sum(r["requests"]["outcomes"].values()) == r["requests"]["sent"]
    assert r["requests"]["outcomes"].get("items", 0) >= 1 and not r["requests"]["outcomes"].get("error")
    sane_summary(r["time_to_answer_ms"])
    sane_summary(r["time_to_result_ms"])
    assert r["time_to_result_ms"]["n"] <= r["time_to_answer_ms"]["n"] <= r["requests"]["at_pauses"]
    by_place = r["time_to_result_by_place_ms"]  # after a line break (a block job) and within a line, apart
    assert by_place["line_start"]["n"] >= 1 and by_place["mid_line"]["n"] >= 1
    assert by_place["line_start"]["n"] + by_place["mid_line"]["n"] == r["time_to_result_ms"]["n"]
    line_starts = [s for s in r["samples"] if s["line_start"]]
    assert line_starts and all(s["pause"] for s in line_starts)  # a line break is always a pause
    e = r["engine"]
    assert e["jobs"] >= 1 and e["done"] + e["cancelled"] + e["errors"] == e["jobs"]
    assert e["steps"]["mean"] == 3  # the fake engine's JobStats came through the server's log line
    assert r["tokens"]["reencoded_per_keystroke"] == 0  # the fake engine encodes nothing
    assert r["first_request_ms"] > 0 and r["server"]["status"]["state"] == "ready"
    assert (out / "bench_latency.server.log").stat().st_size > 0


def test_latency_counts_prompt_reuse_from_engine_stats(fake_env, tmp_path):
    """Parsing `engine stats` lines: re-encoded = prompt - reused, per job and per keystroke."""
    from dg_bench.session import ServerSpec, read_log

    log = tmp_path / "server.log"
    lines = [
        {"kind": "infill", "outcome": "done", "prompt_tokens": 500, "reused_tokens": 0, "steps": 8},
        {"kind": "infill", "outcome": "done", "prompt_tokens": 502, "reused_tokens": 498, "steps": 6},
        {"kind": "infill", "outcome": "cancelled"},
    ]
    log.write_text(
        "".join(f"2026 DEBUG dg_lsp.answers: engine stats {json.dumps(x)}\n" for x in lines)
        + "2026 DEBUG dg_lsp.jobs: job for file:///a.py superseded\n"
    )
    parsed = read_log(log)
    assert len(parsed.stats) == 3 and parsed.superseded == 1
    r = latency._report(
        latency.LatencyConfig(),
        ServerSpec(),
        Path("x.py"),
        "a\nb\n",
        2,
        "b",
        2,
        [],
        parsed,
        {"state": "ready"},
        0.0,
        1.0,
        1.0,
        {},
    )
    assert r["tokens"]["full_encode_mean"] == 501 and r["tokens"]["reencoded_per_job_mean"] == 252
    assert r["tokens"]["reencoded_per_keystroke"] == 252 and math.isclose(r["tokens"]["reuse_ratio"], 498 / 1002)
    assert (r["engine"]["done"], r["engine"]["cancelled"]) == (2, 1)


def test_memory_smoke(monkeypatch, fake_env, tmp_path):
    out = tmp_path / "out"
    r = run_bench(
        monkeypatch,
        "memory",
        out,
        "--model",
        fake_model(),
        "--load-s",
        "2",
        "--keystroke-ms",
        "20",
        "--sample-ms",
        "50",
        "--series-s",
        "0.5",
        "--await-every",
        "10",
    )
    m = r["rss_mib"]
    assert 10 < m["before_model"] <= m["peak_hwm"] and 10 < m["idle"] <= m["peak_hwm"]
    assert 10 < m["first_answer"] <= m["peak_hwm"]
    sane_summary(m["load"], n_min=5)
    assert m["load"]["max"] <= m["peak_hwm"] + 1 and math.isfinite(m["growth_first_answer_to_after"])
    # the storm: a request per keystroke, the previous one cancelled while it was still in flight
    load = r["load"]
    assert load["keystrokes"] >= 10 and load["requests"] == load["keystrokes"]
    assert load["awaited_answered"] == load["awaited"] >= 1 and load["answered"] >= load["awaited"]
    assert load["answered"] <= load["requests"] and load["cancelled"] < load["requests"]
    assert r["cuda"]["peak_allocated_mib"] is None  # no CUDA in the fake server
    assert len(r["timeline"]) >= 5
    # the series: one point per half second of the 2 s storm, in time order
    times = [t for t, _ in r["series"]]
    assert len(times) >= 4 and times == sorted(times) and times[0] < 0.5
    assert r["series"][0][1] == pytest.approx(r["timeline"][0][1], abs=0.1)
    # the probe's view: the heap after the first answer, the storm and a full collection
    assert set(r["heap_mib"]) == {"first_answer", "after_load", "after_gc"}
    assert all(h["in_use"] > 0 for h in r["heap_mib"].values()) and r["held_by_cycles_mib"] is not None
    tables = r["server_tables"]
    assert tables["documents"] == 1 and tables["request_futures"] < 10 and tables["threads"] >= 2
    from dg_lsp.answers import MAX_CACHED

    assert 1 <= tables["cached_answers"] <= MAX_CACHED  # answered far more places than that: the cache is bounded
    assert r["engine_jobs"]["jobs"] >= 1  # the server's own `engine stats` lines


def test_memory_series_takes_one_sample_per_interval_and_the_last():
    from dg_bench import memory

    mib = memory.MIB
    samples = [
        (0.0, 100 * mib),
        (0.4, 101 * mib),
        (1.02, 102 * mib),
        (1.5, 103 * mib),
        (2.1, 104 * mib),
        (2.3, 105 * mib),
    ]
    assert memory.series(samples, 1.0) == [(0.0, 100.0), (1.02, 102.0), (2.1, 104.0), (2.3, 105.0)]
    assert memory.series([], 1.0) == []


# -- speed: stand-in engines with the two modes' shapes --


@dataclass
class StandIn:
    """Answers each HumanEval task with its canonical middle (so pass@1 is 1) and JobStats shaped like the mode:
    diffusion commits several tokens per forward, AR one."""

    mode: str
    middles: dict[tuple[str, str], str]
    name: str = "stand-in"
    device: str = "cpu"
    calls: list[str] = field(default_factory=list)

    def count_tokens(self, text: str) -> int:
        return len(text.split())

    def infill(self, job: InfillJob) -> JobResult:
        text = self.middles.get((job.prefix, job.suffix), "pass")
        n = max(1, self.count_tokens(text))
        steps = n if self.mode == "ar" else max(1, n // 4)
        time.sleep(0.0005 * steps)
        self.calls.append(job.doc_key)
        stats = JobStats(mode=self.mode, prompt_tokens=100, steps=steps, new_tokens=n, total_ms=0.5 * steps + 0.1)
        return JobResult([Candidate(text, -0.1)], stats)

    def rewrite(self, job):  # pragma: no cover - not used by the speed bench
        raise NotImplementedError


def test_speed_smoke(monkeypatch, tmp_path, capsys):
    from dg_model.evaluation import humaneval

    middles = {(t.prefix, t.suffix): t.middle for kind in humaneval.KINDS for t in humaneval.build_tasks(kind)}
    engines: list[StandIn] = []

    def load(model, device, quantize, mode):
        engines.append(StandIn(mode, middles))
        return engines[-1]

    monkeypatch.setattr(speed, "_load", load)
    out = tmp_path / "out"
    r = run_bench(monkeypatch, "speed", out, "--limit", "3", "--workers", "2")
    assert [e.mode for e in engines] == ["diffusion", "ar", "hybrid"]  # one after the other, same checkpoint flags
    for k in r["kinds"].values():
        d, a = k["diffusion"], k["ar"]
        assert d["tasks"] == a["tasks"] == 3 and d["pass_at_1"] == a["pass_at_1"] == 1.0
        assert d["tokens_per_forward"] > a["tokens_per_forward"] == 1.0
        assert d["tok_per_s"] > 0 and a["tok_per_s"] > 0
        assert math.isclose(k["ratio"]["tok_per_s"], d["tok_per_s"] / a["tok_per_s"])
        assert k["ratio"]["pass_at_1_delta"] == 0
        assert k["hybrid"]["tokens_per_forward"] > 1.0 and math.isclose(
            k["ratio_hybrid"]["tok_per_s"], k["hybrid"]["tok_per_s"] / a["tok_per_s"]
        )
        assert len(d["rows"]["steps"]) == len(a["rows"]["latency_ms"]) == 3
    printed = capsys.readouterr().out
    assert "speed ratio diffusion/AR" in printed and "speed ratio hybrid/AR" in printed


@pytest.mark.slow
def test_speed_on_the_embedded_model(tmp_path):
    out = tmp_path / "out"
    assert (
        cli.main(["bench", "speed", "--out", str(out), "--limit", "2", "--kinds", "single-line", "--device", "cpu"])
        == 0
    )
    r = json.loads((out / "bench_speed.json").read_text())
    k = r["kinds"]["single-line"]
    assert k["ar"]["tokens_per_forward"] <= 1.0 + 1e-9 and k["diffusion"]["mean_steps"] > 0
    assert 0 <= k["diffusion"]["pass_at_1"] <= 1 and k["ratio"]["tok_per_s"] > 0


def test_gpu_delegates_to_bench_gpu(monkeypatch, tmp_path):
    calls = []

    def call(cmd):
        calls.append(cmd)
        Path(cmd[cmd.index("--out") + 1]).write_text(
            (REPO / "dg_model" / "bench_results" / "bench_4bit.json").read_text()
        )
        return 0

    monkeypatch.setattr(bench.subprocess, "call", call)
    out = tmp_path / "out"
    assert run_cli(monkeypatch, "bench", "gpu", "--out", str(out), "--", "--bits", "16") == 0
    (cmd,) = calls
    assert cmd[1:3] == ["-m", "dg_bench.gpu"] and cmd[3:5] == ["--bits", "16"]
    assert cmd[5:] == ["--out", str(out / "bench_gpu.json")]
    png(out / "bench_gpu.png")


def test_forward_compares_every_path_on_the_embedded_model(monkeypatch, tmp_path, capsys):
    out = tmp_path / "out"
    r = run_bench(
        monkeypatch, "forward", out, "--rounds", "3", "--canvases", "8,16", "--prompt-tokens", "64", "--device", "cpu"
    )
    assert r["forwards"] == ["hf", "lean", "ort"]
    assert list(r["ops"]) == ["encode", "ar_step", "beam_step", "canvas_8", "canvas_16"]
    assert r["max_logit_diff"] < 1e-3, "the lean forward must compute what transformers' modules compute"
    assert r["max_logit_diff_ort"] < 1e-3, "so must its ONNX Runtime encoder"
    for o in r["ops"].values():
        assert o["hf_ms"] > 0 and o["lean_ms"] > 0 and o["ort_ms"] > 0
        assert o["speedup"] == pytest.approx(o["hf_ms"] / o["lean_ms"], rel=1e-2)
        assert o["ort_speedup"] == pytest.approx(o["lean_ms"] / o["ort_ms"], rel=1e-2)
    assert "lean/ort" in capsys.readouterr().out


def test_forward_prices_an_untrained_size(monkeypatch, tmp_path):
    out = tmp_path / "out"
    flags = ("--size", "tiny", "--rounds", "2", "--canvases", "8", "--prompt-tokens", "32", "--device", "cpu")
    r = run_bench(monkeypatch, "forward", out, *flags)
    assert r["model"] == "random tiny" and r["params"] < 2_000_000 and r["max_logit_diff"] < 1e-3
