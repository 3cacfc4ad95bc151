"""Calibrate how "Rewrite this block" chooses (`rewrite_block.choose`: the channel's price per changed character and
the tolerance for a broken block) on slips nobody evaluates on:

    python -m dg_bench.rewrite_tolerance --corpus /work/corpus/valid.jsonl [--limit 120] [--model M] [--out FILE]

Held-out code of the training distribution (never HumanEval, which `dg-lsp eval rewrite` judges the action on): the
top-level functions of 6-40 lines of a corpus split the model never trained on, one block of 2-5 lines drawn from
each (seeded), with one misspelt name or one dropped bracket (`eval_rewrite._slip`, the checks see both) and intact.
Each goes through `rewrite_block.rewrite_options` once; the report gives, per channel and tolerance, the share of
slips whose rewrite restores the code as written, the share offered a rewrite that does not (the damage), and the
share of intact blocks changed.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import random
import sys
from pathlib import Path
from typing import Any

from dg_bench.fix_margin import blocks
from dg_lsp import rewrite_block
from dg_lsp.eval_rewrite import _slip
from dg_lsp.postprocess import Edit
from dg_lsp.rewrite_block import REWRITE_CHANNEL, REWRITE_TOLERANCE
from dg_lsp.settings import Settings

CHANNELS = (1.0, 2.0, 4.0, 6.0, 8.0, 12.0, 16.0)
TOLERANCES = (-2.0, 0.0, 1.0, 2.0, 4.0, 8.0)  # -2: a broken block's rewrite must be 2 nats likelier
KINDS = ("intact", "misspelt-name", "dropped-bracket")


@dataclasses.dataclass(frozen=True)
class Case:
    kind: str
    text: str  # the document as slipped
    original: str  # as written
    found: rewrite_block.RewriteOptions

    def restores(self, edit: Edit) -> bool:
        return self.text[: edit.start] + edit.text + self.text[edit.end :] == self.original


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--corpus", type=Path, required=True, help="a JSONL split of {'text': ...} files")
    p.add_argument("--limit", type=int, default=120, help="functions to draw (default: 120)")
    p.add_argument("--model", help="model path (default: the embedded model)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("dg_model/bench_results/rewrite_tolerance.json"))
    args = p.parse_args(argv)
    from dg_model.loading import load_engine

    engine = load_engine(args.model)
    rows: list[dict[str, Any]] = []
    cases: list[Case] = []
    for n, doc, start, end in blocks(args.corpus, args.limit, args.seed):
        for kind in KINDS:
            slipped = _slip(kind, doc, start, end, random.Random(n))
            if slipped is None:
                continue
            text = slipped[0]
            found = rewrite_block.rewrite_options(
                engine, text, start, end + len(text) - len(doc), "python", Settings(), doc_key=f"t{n}"
            )
            if found is None:
                continue
            case = Case(kind, text, doc, found)
            cases.append(case)
            rows.append(
                {
                    "kind": kind,
                    "broken": found.broken,
                    "options": [
                        {"gain": o.logprob_gain, "distance": o.distance, "restores": case.restores(o.edit)}
                        for o in found.options
                    ],
                }
            )
            print(json.dumps({"n": n, "kind": kind, "options": len(found.options)}), file=sys.stderr, flush=True)
    report = {
        "corpus": str(args.corpus),
        "model": args.model or "embedded",
        "tasks": {k: sum(r["kind"] == k for r in rows) for k in KINDS},
        "current": {"channel": REWRITE_CHANNEL, "tolerance": REWRITE_TOLERANCE},
        "table": table(cases),
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    print(json.dumps({k: v for k, v in report.items() if k != "rows"}, indent=1))
    return 0


def table(cases: list[Case]) -> list[dict[str, Any]]:
    """Per channel and tolerance, what `rewrite_block.choose` offers: slips restored, slips offered something else,
    intact blocks changed (slips the checks do not see are judged at MARGIN, as working code is)."""
    out = []
    slips = [c for c in cases if c.kind != "intact"]
    intact = [c for c in cases if c.kind == "intact"]
    for channel in CHANNELS:
        for tolerance in TOLERANCES:
            chosen = [(c, rewrite_block.choose(c.found, channel, tolerance)) for c in slips]
            restored = sum(e is not None and c.restores(e) for c, e in chosen)
            out.append(
                {
                    "channel": channel,
                    "tolerance": tolerance,
                    "restored": _share(restored, slips),
                    "damaged": _share(sum(e is not None for _, e in chosen) - restored, slips),
                    "intact_changed": _share(
                        sum(rewrite_block.choose(c.found, channel, tolerance) is not None for c in intact), intact
                    ),
                }
            )
    return out


def _share(count: int, of: list) -> float:
    return round(count / max(1, len(of)), 3)


if __name__ == "__main__":
    sys.exit(main())
