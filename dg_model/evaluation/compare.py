"""Two `eval humaneval` reports of the same tasks, side by side: `dg-lsp eval compare BASE.json NEW.json`.

Shipping a checkpoint or a decoding change is decided on this: the tasks each side passes, the ones gained and lost,
and how likely that split of the discordant tasks is if the two were equally good (an exact two-sided sign test).
Two reports pass counts alone hide that 211 vs 207 can be 15 gained and 19 lost, the same within noise.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any


class ReportMismatch(ValueError):
    """The two reports did not run the same tasks, so a paired comparison means nothing."""


def sign_test(gained: int, lost: int) -> float:
    """Two-sided exact binomial p-value of `gained` vs `lost` discordant tasks under p = 1/2."""
    n = gained + lost
    if n == 0:
        return 1.0
    k = min(gained, lost)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2**n
    return min(1.0, 2 * tail)


def _passes(report: dict[str, Any], name: str) -> dict[str, bool]:
    rows = report.get("results")
    if not isinstance(rows, list):
        raise ReportMismatch(f"{name}: no per-task results (was it written by `eval humaneval --out`?)")
    try:
        return {str(r["task_id"]): bool(r["passed"]) for r in rows}
    except (KeyError, TypeError) as exc:
        raise ReportMismatch(f"{name}: a result row lacks task_id or passed ({exc})") from None


def compare(base: dict[str, Any], new: dict[str, Any], names: tuple[str, str] = ("base", "new")) -> dict[str, Any]:
    """The paired comparison of `new` against `base` (both `eval humaneval` reports, task rows included)."""
    if base.get("kind") != new.get("kind"):
        raise ReportMismatch(f"kinds differ: {names[0]} {base.get('kind')!r}, {names[1]} {new.get('kind')!r}")
    a, b = _passes(base, names[0]), _passes(new, names[1])
    if a.keys() != b.keys():
        only_a, only_b = sorted(a.keys() - b.keys()), sorted(b.keys() - a.keys())
        raise ReportMismatch(
            f"the reports ran different tasks ({len(only_a)} only in {names[0]}, {len(only_b)} only in {names[1]}; "
            f"first: {(only_a or only_b)[0]}): run both with the same --limit and --seed"
        )
    gained = sorted(t for t in a if b[t] and not a[t])
    lost = sorted(t for t in a if a[t] and not b[t])

    def side(report: dict[str, Any], passes: dict[str, bool]) -> dict[str, Any]:
        latency = report.get("latency_ms") or {}
        return {
            "model": report.get("model"),
            "mode": report.get("mode"),
            "path": report.get("path"),
            "passed": sum(passes.values()),
            "latency_p50_ms": latency.get("p50"),
            "empty_completions": report.get("empty_completions"),
        }

    return {
        "kind": base.get("kind"),
        "tasks": len(a),
        names[0]: side(base, a),
        names[1]: side(new, b),
        "both": sum(a[t] and b[t] for t in a),
        "gained": len(gained),
        "lost": len(lost),
        "sign_test_p": round(sign_test(len(gained), len(lost)), 4),
        "gained_tasks": gained,
        "lost_tasks": lost,
    }


def _load(path: str) -> dict[str, Any]:
    try:
        report = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ReportMismatch(f"{path}: cannot read a report ({exc})") from None
    if not isinstance(report, dict):
        raise ReportMismatch(f"{path}: not an `eval humaneval` report")
    return report


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("reports", nargs="*", metavar="REPORT.json", help="compare: the base report, then the new one")
    p.add_argument("--tasks", action="store_true", help="compare: list the gained and lost task ids")


def run_cli(args: argparse.Namespace, engines: Any = None) -> int:
    if len(args.reports) != 2:
        print("dg-lsp: eval compare takes two reports: BASE.json NEW.json", file=sys.stderr)
        return 2
    try:
        out = compare(_load(args.reports[0]), _load(args.reports[1]))
    except ReportMismatch as exc:
        print(f"dg-lsp: eval compare: {exc}", file=sys.stderr)
        return 1
    if not args.tasks:
        out = {k: v for k, v in out.items() if not k.endswith("_tasks")}
    print(json.dumps(out, indent=2))
    return 0
