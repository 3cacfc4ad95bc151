"""`dg-lsp eval compare`: two real `eval humaneval` reports (fake engines, real sandboxed tests) side by side."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest

from dg_lsp import cli, eval_cmd  # noqa: F401  (registers `eval`)
from dg_lsp.engines import LOCAL
from dg_model.api import Candidate, InfillJob, JobResult, JobStats
from dg_model.evaluation import compare as cmp
from dg_model.evaluation import humaneval as he

TASKS = he.select(he.build_tasks("single-line", he.load_problems()), 8, seed=3)


@dataclass
class WrongOn:
    """Answers each task's true middle, except `pass` on the tasks named."""

    wrong: frozenset[str]
    name: str = "wrong-on"
    device: str = "cpu"

    def count_tokens(self, text: str) -> int:
        return len(text.split())

    def infill(self, job: InfillJob) -> JobResult:
        task = next(t for t in TASKS if (t.prefix, t.suffix) == (job.prefix, job.suffix))
        text = "pass" if task.task_id in self.wrong else task.middle
        return JobResult([Candidate(text, -0.5)], JobStats(steps=1, new_tokens=1, prompt_tokens=10, total_ms=1.0))

    def rewrite(self, job):  # pragma: no cover - not used
        raise NotImplementedError


def _report(wrong: set[str], tasks=TASKS) -> dict:
    return he.run_tasks(WrongOn(frozenset(wrong)), tasks, "single-line")


def _run(*argv: str) -> int:
    args = cli.build_parser().parse_args(["eval", *argv])
    return cli.SUBCOMMANDS["eval"].run(args, LOCAL)


def test_gained_and_lost_tasks_from_real_reports(tmp_path, capsys):
    ids = [t.task_id for t in TASKS]
    base, new = _report({ids[0], ids[1], ids[2]}), _report({ids[2], ids[3]})
    (tmp_path / "a.json").write_text(json.dumps(base))
    (tmp_path / "b.json").write_text(json.dumps(new))
    assert _run("compare", str(tmp_path / "a.json"), str(tmp_path / "b.json"), "--tasks") == 0
    out = json.loads(capsys.readouterr().out)
    assert out["base"]["passed"] == 5 and out["new"]["passed"] == 6 and out["both"] == 4
    assert out["gained_tasks"] == sorted([ids[0], ids[1]]) and out["lost_tasks"] == [ids[3]]
    assert out["gained"] == 2 and out["lost"] == 1 and out["sign_test_p"] == 1.0 and out["tasks"] == 8


def test_sign_test():
    assert cmp.sign_test(0, 0) == 1.0
    assert cmp.sign_test(6, 0) == pytest.approx(2 / 64)
    assert cmp.sign_test(13, 24) == pytest.approx(cmp.sign_test(24, 13))
    assert 0.05 < cmp.sign_test(13, 24) < 0.15  # session 13's continuation: 13 gained, 24 lost is not clearly worse


def test_reports_of_different_tasks_are_refused(tmp_path, capsys):
    (tmp_path / "a.json").write_text(json.dumps(_report(set(), TASKS[:4])))
    (tmp_path / "b.json").write_text(json.dumps(_report(set(), TASKS[2:6])))
    (tmp_path / "bad.json").write_text("{not json")
    assert _run("compare", str(tmp_path / "a.json"), str(tmp_path / "b.json")) == 1
    assert "different tasks" in capsys.readouterr().err
    assert _run("compare", str(tmp_path / "a.json"), str(tmp_path / "bad.json")) == 1
    assert "cannot read a report" in capsys.readouterr().err
    assert _run("compare", str(tmp_path / "a.json")) == 2
