"""Calibrate "Fix this block"'s MARGIN for a model: how much likelier does the model find a one-token change to code
that passes every check, on working code and on code with one flipped operator?

    python -m dg_bench.fix_margin --corpus /work/corpus/valid.jsonl [--limit 70] [--model M] [--out FILE]

Held-out code of the training distribution (a corpus split the model never trained on; never HumanEval, which the
action is evaluated on): the top-level functions of 6-40 lines, one block of 2-5 lines drawn from each (seeded). For
each block, intact and with one operator flipped, the proposals "Fix this block" would score when the checks find
nothing (`repairs.substitutions`, `renames`, `operator_flips`, everywhere in the block) are scored by the model, and
the report gives, per margin, the share of intact blocks that would change and the share of flips restored.
"""

from __future__ import annotations

import argparse
import ast
import json
import random
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from dg_lsp import fix, repairs
from dg_lsp.eval_rewrite import _slip
from dg_lsp.settings import Settings

MARGINS = (2, 4, 6, 8, 10, 12, 14, 16, 18, 20)


def functions(corpus: Path) -> list[str]:
    out = []
    for line in corpus.open(encoding="utf-8"):
        text = json.loads(line)["text"]
        try:
            tree = ast.parse(text)
        except SyntaxError:
            continue
        for node in tree.body:
            if isinstance(node, ast.FunctionDef) and 6 <= (node.end_lineno or node.lineno) - node.lineno <= 40:
                src = ast.get_source_segment(text, node)
                if src:
                    out.append(src + "\n")
    return out


def blocks(corpus: Path, limit: int, seed: int) -> Iterator[tuple[int, str, int, int]]:
    """(n, function, start, end): `limit` functions of the corpus drawn with `seed`, and in each a block of 2-5 whole
    lines below its header."""
    rng = random.Random(seed)
    docs = functions(corpus)
    rng.shuffle(docs)
    for n, doc in enumerate(docs[:limit]):
        lines = doc.splitlines(keepends=True)
        first = rng.randrange(1, len(lines) - 1)
        last = min(len(lines) - 1, first + rng.randrange(1, 5))
        yield n, doc, sum(map(len, lines[:first])), sum(map(len, lines[: last + 1]))


def gains(engine, doc: str, start: int, end: int, restored: str | None = None) -> tuple[float, float | None] | None:
    """For the block doc[start:end]: the best gain of any proposal, and the gain of the proposal that is `restored`
    (the block before a slip); None if the checks object to the block (then the margin plays no part)."""
    bc = fix.block_context(engine, doc, start, end, "python", Settings())
    if bc is None:  # only blank text: nothing the margin could change
        return None
    fixer = fix._Fixer(engine, doc, bc, "python", Settings(), None, "margin")
    current = fixer.check(bc.block)
    if current.problems:
        return None
    here = fixer.score([current.block], detail=True)[0]
    proposals = (
        repairs.substitutions(current.block, here.tokens)
        + repairs.renames(current.block, doc, [], fixer.pool, bc.start)
        + repairs.operator_flips(current.block)
    )
    options = fixer.admissible(fix._Option(current.block, [], here.logprob), proposals)
    if not options:
        return float("-inf"), None
    scored = [(s.logprob - here.logprob, o.block) for o, s in zip(options, fixer.score([o.block for o in options]))]
    return max(g for g, _ in scored), max((g for g, b in scored if b == restored), default=None)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--corpus", type=Path, required=True, help="a JSONL split of {'text': ...} files")
    p.add_argument("--limit", type=int, default=70, help="functions to draw (default: 70)")
    p.add_argument("--model", help="model path (default: the embedded model)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("dg_model/bench_results/fix_margin.json"))
    args = p.parse_args(argv)
    from dg_model.loading import load_engine

    engine = load_engine(args.model)
    rows: list[dict[str, Any]] = []
    for n, doc, start, end in blocks(args.corpus, args.limit, args.seed):
        for kind in ("intact", "flipped-operator"):
            slipped = _slip(kind, doc, start, end, random.Random(n))
            if slipped is None:
                continue
            text = slipped[0]
            got = gains(engine, text, start, end + len(text) - len(doc), None if kind == "intact" else doc[start:end])
            if got is not None:
                rows.append({"kind": kind, "best_gain": got[0], "restore_gain": got[1]})
                print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    intact = [r for r in rows if r["kind"] == "intact"]
    flips = [r for r in rows if r["kind"] != "intact"]
    table = []
    for m in MARGINS:
        table.append(
            {
                "margin": m,
                "intact_changed": round(sum(r["best_gain"] >= m for r in intact) / max(1, len(intact)), 3),
                "flips_restored": round(sum(_restores(r, m) for r in flips) / max(1, len(flips)), 3),
            }
        )
    report = {
        "corpus": str(args.corpus),
        "model": args.model or "embedded",
        "intact": len(intact),
        "flipped": len(flips),
        "margins": table,
        "current_margin": fix.MARGIN,
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    print(json.dumps({k: v for k, v in report.items() if k != "rows"}, indent=1))
    return 0


def _restores(row: dict, margin: float) -> bool:
    """The flip is undone at this margin: restoring it gains enough and no other proposal gains more."""
    gain = row["restore_gain"]
    return gain is not None and gain >= margin and gain >= row["best_gain"]


if __name__ == "__main__":
    sys.exit(main())
