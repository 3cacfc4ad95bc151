"""`dg-lsp eval humaneval --kind single-line|multi-line [--mode auto|diffusion|ar|hybrid] [--editor|--server]`, and
`dg-lsp eval rewrite [--action fix|rewrite]` (eval_rewrite.py), and `dg-lsp eval compare BASE.json NEW.json` (two
reports side by side: gained, lost, sign test; `dg_model.evaluation.compare`).

Registers the `eval` sub-command on import (listed in `dg_lsp.cli.SUBCOMMAND_MODULES`). Only the standard library,
`dg_model.api` and tree-sitter are imported here; torch and the model load inside the command.

`--editor` tests what the editor gets: each task's document (the middle removed, the cursor where it began) goes
through `dg_lsp.pipeline.complete` with the server's default settings, as an explicit inline-completion request
would: the context module decides the job kind (an emptied line at its indentation is a *block* job there, whatever
the task's kind), the model's settings the decoding, and post-processing and ranking pick the edit shown.
`--server` asks a real `dg-lsp --stdio` subprocess the same way (`eval_server.py`).
"""

from __future__ import annotations

import argparse
import dataclasses

from dg_model.api import Engine, JobResult
from dg_model.evaluation import humaneval

from . import cli
from .pipeline import complete
from .settings import Settings


def editor_path(engine: Engine, args: argparse.Namespace) -> humaneval.Solver:
    settings = dataclasses.replace(Settings(), decoding=args.mode, candidates=args.candidates, seed=args.seed)
    automatic = humaneval.asks_as_typing(args)

    def solve(task: humaneval.InfillTask) -> tuple[str, JobResult | None]:
        document = task.prefix + task.suffix
        out = complete(engine, document, len(task.prefix), "python", settings, doc_key="humaneval", automatic=automatic)
        # The cursor sits at the end of an emptied line, so an edit never replaces text after it.
        edits = [e for e in out.edits if e.end == e.start]
        return (edits[0].text if edits else ""), out.result

    return solve


def server_path(engine: Engine, args: argparse.Namespace) -> humaneval.Solver:
    from .eval_server import ServerPath  # pygls' client and asyncio only when asked for

    return ServerPath(args)


def _rewrite_suite() -> tuple:
    from . import eval_rewrite

    return eval_rewrite.add_arguments, eval_rewrite.run_cli


def _compare_suite() -> tuple:
    from dg_model.evaluation import compare

    return compare.add_arguments, compare.run_cli


for _module in cli.registries():
    humaneval.register(
        _module.SUBCOMMANDS,
        _module.Subcommand,
        editor_path,
        server_path,
        others={"rewrite": _rewrite_suite(), "compare": _compare_suite()},
    )
