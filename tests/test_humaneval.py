"""HumanEval infilling harness: task construction, the sandboxed test runner, the report, the CLI, and (when the real
engine exists) a 5-task smoke run on the embedded model. No quality thresholds here."""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass, field

import pytest

from dg_model.api import Candidate, InfillJob, JobResult, JobStats
from dg_model.evaluation import humaneval as he

PROBLEMS = he.load_problems()


@pytest.fixture(scope="module")
def single() -> list[he.InfillTask]:
    return he.build_tasks("single-line", PROBLEMS)


@pytest.fixture(scope="module")
def multi() -> list[he.InfillTask]:
    return he.build_tasks("multi-line", PROBLEMS)


# ------------------------------------------------------------------------------------------------- fake engines
@dataclass
class OracleEngine:
    """Answers every job with the task's true middle (looked up by prefix+suffix), plus an optional tail; or a
    fixed text. Records the jobs."""

    answers: dict[tuple[str, str], str] = field(default_factory=dict)
    tail: str = ""
    fixed: str | None = None
    name: str = "oracle"
    device: str = "cpu"
    jobs: list[InfillJob] = field(default_factory=list)

    @classmethod
    def for_tasks(cls, tasks, **kw) -> OracleEngine:
        return cls(answers={(t.prefix, t.suffix): t.middle for t in tasks}, **kw)

    def count_tokens(self, text: str) -> int:
        return len(text.split())

    def infill(self, job: InfillJob) -> JobResult:
        self.jobs.append(job)
        text = self.fixed if self.fixed is not None else self.answers[(job.prefix, job.suffix)] + self.tail
        new = max(1, len(text) // 4)
        return JobResult([Candidate(text, -0.5)], JobStats(steps=2, new_tokens=new, prompt_tokens=100, total_ms=1.0))

    def rewrite(self, job):  # pragma: no cover - not used
        raise NotImplementedError


# ------------------------------------------------------------------------------------------------- task building
def test_counts(single, multi):
    assert len(PROBLEMS) == 164
    assert len(single) == 1033  # Bavarian et al. (2022) single-line infilling count
    # up to 3 spans per problem; problems whose solution has fewer than 2 non-blank lines have none
    eligible = sum(
        1 for p in PROBLEMS.values() if sum(1 for ln in p["canonical_solution"].splitlines() if ln.strip()) >= 2
    )
    assert eligible * 2 <= len(multi) <= eligible * 3
    assert len({t.task_id for t in single}) == len(single) and len({t.task_id for t in multi}) == len(multi)


def test_pieces_rebuild_the_document(single, multi):
    for t in single + multi:
        p = PROBLEMS[t.problem_id]
        assert t.prefix + t.middle + t.suffix == p["prompt"] + p["canonical_solution"]
        assert t.prefix.startswith(p["prompt"])  # only the solution is ever masked


def test_cursor_at_indentation(single, multi):
    for t in single + multi:
        line_start = t.prefix.rfind("\n") + 1
        assert t.prefix[line_start:].strip(" \t") == ""  # the prefix ends with the line's indentation, nothing else
        assert t.middle and not t.middle[0].isspace()  # the middle starts at the first non-blank character
        assert t.suffix.startswith("\n")  # the last masked line's newline stays in the suffix
    for t in single:
        assert "\n" not in t.middle and t.middle.strip()
    for t in multi:
        assert t.last_line > t.first_line and t.middle.count("\n") == t.last_line - t.first_line


def test_single_line_example():
    t = he.build_tasks("single-line", {"HumanEval/0": PROBLEMS["HumanEval/0"]})
    assert [x.middle for x in t][:2] == [
        "for idx, elem in enumerate(numbers):",
        "for idx2, elem2 in enumerate(numbers):",
    ]
    assert t[1].prefix.endswith(":\n        ") and t[-1].middle == "return False"


def test_multi_line_sample_is_deterministic():
    a = he.build_tasks("multi-line", PROBLEMS)
    b = he.build_tasks("multi-line", dict(reversed(list(PROBLEMS.items()))))
    assert {t.task_id for t in a} == {t.task_id for t in b}
    c = he.build_tasks("multi-line", PROBLEMS, span_seed=1)
    assert {t.task_id for t in c} != {t.task_id for t in a}


def test_select_subset(single):
    s = he.select(single, 50, seed=3)
    assert len(s) == 50 and s == he.select(single, 50, seed=3) and s != he.select(single, 50, seed=4)
    assert [single.index(t) for t in s] == sorted(single.index(t) for t in s)
    assert he.select(single, None) == single and he.select(single, 10_000) == single


# ----------------------------------------------------------------------------------------------- post-processing
def test_postprocess(single, multi):
    t = single[0]
    assert he.postprocess("for x in y:\n    pass\n", t) == "for x in y:"
    m = next(x for x in multi if x.suffix.strip())
    next_line = next(ln for ln in m.suffix.split("\n") if ln.strip())
    following = [ln for ln in m.suffix.split("\n") if ln.strip()][:2]
    assert he.postprocess(m.middle + "\n" + "\n".join(following) + "\nmore", m) == m.middle
    assert he.postprocess(m.middle + "\n" + next_line, m) == m.middle  # the candidate stops after one repeated line
    if len(following) == 2:  # a repeated first line followed by something else is kept
        assert he.postprocess(m.middle + "\n" + next_line + "\nmore", m) == m.middle + "\n" + next_line + "\nmore"
    assert he.postprocess(m.middle, m) == m.middle


def test_cut_at_suffix():
    suffix = "\n    return total\n"
    assert he.cut_at_suffix("total = 1\n    total += 2\n    return total\n", suffix) == "total = 1\n    total += 2"
    # a repeated first line alone counts when the candidate stops there; the first candidate line is never cut
    assert he.cut_at_suffix("return total", suffix) == "return total"
    suffix2 = "\n    else:\n        x = 2\n"
    kept = "if a:\n        x = 1\n    else:\n        y = 3"
    assert he.cut_at_suffix(kept, suffix2) == kept
    assert he.cut_at_suffix("if a:\n        x = 1\n    else:\n        x = 2\n", suffix2) == "if a:\n        x = 1"
    assert he.cut_at_suffix("anything\nelse", "\n\n") == "anything\nelse"


# ------------------------------------------------------------------------------------------------------ execution
def _last_line_task() -> he.InfillTask:
    return he.build_tasks("single-line", {"HumanEval/0": PROBLEMS["HumanEval/0"]})[-1]  # "return False"


def test_canonical_passes_and_wrong_fails():
    t = _last_line_task()
    ok = he.check_completion(t, t.middle)
    assert ok.passed and ok.result == "passed"
    bad = he.check_completion(t, "return True")
    assert not bad.passed and "AssertionError" in bad.result
    syntax = he.check_completion(t, "return (")
    assert not syntax.passed and "Error" in syntax.result


def test_infinite_loop_times_out():
    t0 = time.perf_counter()
    r = he.check_completion(_last_line_task(), "while True: pass", timeout=1.0)
    assert not r.passed and r.result == "timed out"
    assert time.perf_counter() - t0 < 5


def test_sandbox():
    t = _last_line_task()
    assert he.check_completion(t, "import sys; sys.exit(0)").result.startswith("failed")  # no fake pass by exiting
    assert not he.check_completion(t, "import os; os._exit(0)").passed
    assert not he.check_completion(t, "import os; os.fork()").passed
    assert "MemoryError" in he.check_completion(t, "x = bytearray(4 << 30)").result
    # it runs in a scratch directory, not here
    r = he.check_completion(t, "import os; open('dg_he_probe.txt', 'w').write(os.getcwd()); return False")
    assert r.passed and not os.path.exists("dg_he_probe.txt")


# --------------------------------------------------------------------------------------------------------- report
def test_oracle_scores_perfectly(single):
    tasks = [t for t in single if t.problem_id in ("HumanEval/0", "HumanEval/2", "HumanEval/11")]
    engine = OracleEngine.for_tasks(tasks, tail="\n        junk()")
    report = he.run_tasks(engine, tasks, "single-line", seed=7)
    assert report["tasks"] == len(tasks) and report["pass_at_1"] == 1.0 and report["exact_match"] == 1.0
    assert report["problems"] == 3 and report["engine_errors"] == 0 and report["timeouts"] == 0
    assert {j.kind for j in engine.jobs} == {"line"} and {j.seed for j in engine.jobs} == {7}
    assert all(j.n == 1 and j.max_tokens == 64 for j in engine.jobs)
    assert report["tokens_per_forward"] > 0 and report["latency_ms"]["p95"] >= report["latency_ms"]["p50"] >= 0
    json.dumps(report)


def test_multi_line_oracle_with_repeated_suffix(multi):
    tasks = he.select(multi, 12, seed=1)
    engine = OracleEngine(answers={(t.prefix, t.suffix): t.middle + t.suffix for t in tasks})  # repeats the suffix
    report = he.run_tasks(engine, tasks, "multi-line")
    assert report["pass_at_1"] == 1.0 and report["exact_match"] == 1.0
    assert {j.kind for j in engine.jobs} == {"block"} and engine.jobs[0].max_tokens == 256


def test_wrong_answers_and_limit(single):
    engine = OracleEngine(fixed="pass")
    report = he.run_tasks(engine, single, "single-line", limit=6, seed=0)
    assert report["tasks"] == 6 and report["tasks_total"] == len(single) and report["limit"] == 6
    assert report["exact"] == sum(r["middle"].strip() == "pass" for r in report["results"])
    assert 0 <= report["pass_at_1"] <= 1 and len(report["results"]) == 6
    assert [r["task_id"] for r in report["results"]] == [t.task_id for t in he.select(single, 6, 0)]


def test_engine_error_is_reported(single):
    class Broken(OracleEngine):
        def infill(self, job):
            raise RuntimeError("boom")

    report = he.run_tasks(Broken(), single, "single-line", limit=2)
    assert report["engine_errors"] == 2 and report["pass_at_1"] == 0.0
    assert report["results"][0]["engine_error"] == "RuntimeError: boom"


def test_percentile():
    assert he.percentile([], 50) == 0.0
    assert he.percentile([3, 1, 2], 50) == 2
    assert math.isclose(he.percentile(list(range(1, 101)), 95), 95.05)


# ------------------------------------------------------------------------------------------------------------ CLI
def test_cli_registration_and_run(tmp_path, monkeypatch, single):
    import dg_model.loading as loading
    from dg_lsp import cli, eval_cmd  # noqa: F401  (registers `eval`)
    from dg_lsp.engines import LOCAL

    assert "eval" in cli.SUBCOMMANDS
    calls = []

    def fake_load_engine(model=None, device="auto", quantize="none", mode="diffusion"):
        calls.append((model, device, quantize, mode))
        return OracleEngine.for_tasks(single, name="fake-oracle")

    monkeypatch.setattr(loading, "load_engine", fake_load_engine, raising=False)
    out = tmp_path / "r.json"
    args = cli.build_parser().parse_args(
        ["eval", "humaneval", "--kind", "single-line", "--mode", "ar", "--limit", "4", "--out", str(out), "--quiet"]
    )
    assert cli.SUBCOMMANDS["eval"].run(args, LOCAL) == 0
    assert calls == [(None, "auto", "none", "ar")]
    report = json.loads(out.read_text())
    assert report["mode"] == "ar" and report["tasks"] == 4
    assert report["pass_at_1"] == 1.0 and report["model"] == "embedded"


def test_editor_path_asks_what_the_server_asks_and_tests_what_it_shows(tmp_path, monkeypatch, single):
    import argparse

    import dg_model.loading as loading
    from dg_lsp import cli
    from dg_lsp.engines import LOCAL
    from dg_lsp.eval_cmd import editor_path

    task = next(t for t in single if t.middle.startswith("for ") and t.middle.endswith(":"))

    class TwoCandidates(OracleEngine):
        def infill(self, job):
            self.jobs.append(job)
            # the model's favourite leaves the body below it unexpectedly indented; the editor ranks it last
            return JobResult([Candidate("pass", -0.1), Candidate(task.middle, -0.5)], JobStats(steps=2, new_tokens=3))

    engine = TwoCandidates()
    assert he.run_tasks(engine, [task], "single-line")["pass_at_1"] == 0.0  # the engine's first candidate as is
    args = argparse.Namespace(mode="auto", candidates=1, seed=0)
    report = he.run_tasks(engine, [task], "single-line", solve=editor_path(engine, args))
    assert report["pass_at_1"] == 1.0
    # the server's own decision: a cursor on an emptied line is a block job, whatever the benchmark calls the task
    job = engine.jobs[-1]
    assert job.kind == "block" and job.decoding == "auto" and job.prefix.endswith(task.prefix[-40:])
    assert job.invoked  # as a key press asks; --trigger automatic asks as typing does
    import dg_lsp.eval_cmd as eval_cmd
    from dg_lsp.settings import Settings

    typing = argparse.Namespace(mode="auto", candidates=1, seed=0, trigger="automatic")
    assert he.run_tasks(engine, [task], "single-line", solve=editor_path(engine, typing))["pass_at_1"] == 1.0
    assert engine.jobs[-1].invoked  # typing on an emptied line: a block, asked for thoroughly by default
    monkeypatch.setattr(eval_cmd, "Settings", lambda: Settings(thorough_blocks=False))
    he.run_tasks(engine, [task], "single-line", solve=editor_path(engine, typing))
    assert not engine.jobs[-1].invoked  # without thoroughBlocks, typing's fast path

    monkeypatch.setattr(loading, "load_engine", lambda *a, **k: TwoCandidates(), raising=False)
    out = tmp_path / "r.json"
    args = cli.build_parser().parse_args(
        [
            "eval",
            "humaneval",
            "--kind",
            "single-line",
            "--limit",
            "3",
            "--editor",
            "--mode",
            "hybrid",
            "--trigger",
            "automatic",
            "--out",
            str(out),
            "--quiet",
        ]
    )
    assert cli.SUBCOMMANDS["eval"].run(args, LOCAL) == 0
    report = json.loads(out.read_text())
    assert report["tasks"] == 3 and report["mode"] == "hybrid" and report["trigger"] == "automatic"


# ------------------------------------------------------------------------------------------ the real embedded model
def _real_engine(mode: str):
    from dg_model.loading import load_engine

    return load_engine(None, device="cpu", mode=mode)


@pytest.fixture
def one_thread():
    """On a loaded 2-core machine torch's 2 intra-op threads can make a decoder step 20x slower (spinning OpenMP
    barriers); one thread keeps this test's runtime predictable. Restored afterwards."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("mode", ["diffusion", "ar"])
def test_smoke_embedded_model(mode, single, multi, one_thread):
    engine = _real_engine(mode)
    for kind, tasks in (("single-line", single), ("multi-line", multi)):
        limit = 5 if kind == "single-line" else 1
        report = he.run_tasks(engine, tasks, kind, limit=limit, max_tokens=32)
        assert report["tasks"] == limit and report["engine_errors"] == 0
        assert 0.0 <= report["pass_at_1"] <= 1.0 and 0.0 <= report["exact_match"] <= 1.0
        assert report["latency_ms"]["p50"] > 0 and report["mean_steps"] > 0 and report["tokens_per_forward"] > 0
        assert report["results"][0]["used_tokens"] >= 0 and "load_avg" in report
        json.dumps(report)


def test_a_real_server_subprocess_shows_what_the_in_process_editor_path_tests(single, one_thread):
    """`eval --server` (a `dg-lsp --stdio` subprocess, as an editor drives it) and `eval --editor` (the same path in
    process) insert the same text for every task: the in-process benchmark measures what the editor gets."""
    import argparse

    from dg_lsp.eval_cmd import editor_path
    from dg_lsp.eval_server import ServerPath

    engine = _real_engine("auto")
    tasks = [t for t in single if t.problem_id in ("HumanEval/0", "HumanEval/2", "HumanEval/4")][:6]
    args = argparse.Namespace(mode="auto", candidates=1, seed=0, model=None, device="cpu", quantize="none")
    editor = he.run_tasks(engine, tasks, "single-line", solve=editor_path(engine, args))
    server = ServerPath(args)
    try:
        served = he.run_tasks(engine, tasks, "single-line", solve=server)
    finally:
        server.close()
    shown = [r["completion"] for r in editor["results"]]
    assert [r["completion"] for r in served["results"]] == shown
    assert any(c.strip() for c in shown), "the model completes some of these lines"
    assert served["passed"] == editor["passed"]
