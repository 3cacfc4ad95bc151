"""`dg-lsp eval humaneval --kind single-line|multi-line [--mode auto|diffusion|ar] [--editor] [--out PATH]`.

Registers the `eval` sub-command on import (listed in `dg_lsp.cli.SUBCOMMAND_MODULES`). Only the standard library,
`dg_model.api` and tree-sitter are imported here; torch and the model load inside the command.

`--editor` tests what the editor would show: every candidate goes through the server's post-processing, and the
ranking of `dg_lsp.pipeline.candidate_edits` (as `complete_at` uses it) picks one (a candidate that no longer compiles goes last).
"""

from __future__ import annotations

from typing import Literal, Sequence

from dg_model import humaneval
from dg_model.api import Candidate

from . import cli
from .pipeline import candidate_edits

_KIND: dict[str, Literal["line", "block"]] = {"single-line": "line", "multi-line": "block"}


def editor_choice(task: humaneval.InfillTask, candidates: Sequence[Candidate]) -> str:
    """The completion the server would show first at the task's cursor ("" when it would show nothing)."""
    edits = candidate_edits([c.text for c in candidates], task.prefix + task.suffix, len(task.prefix), "python",
                            _KIND[task.kind])
    # The cursor sits at the end of an emptied line, so an edit never replaces text after it.
    edits = [e for e in edits if e.end == e.start]
    return edits[0].text if edits else ""


for _module in cli.registries():
    humaneval.register(_module.SUBCOMMANDS, _module.Subcommand, editor_choice)
