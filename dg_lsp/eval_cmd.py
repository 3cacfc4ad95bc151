"""`dg-lsp eval humaneval --kind single-line|multi-line [--mode auto|diffusion|ar] [--editor] [--out PATH]`.

Registers the `eval` sub-command on import (listed in `dg_lsp.cli.SUBCOMMAND_MODULES`). Only the standard library,
`dg_model.api` and tree-sitter are imported here; torch and the model load inside the command.

`--editor` tests what the editor would show: every candidate goes through the server's post-processing, and the
ranking of `dg_lsp.pipeline.complete_at` picks one (a candidate that no longer compiles goes last).
"""

from __future__ import annotations

from typing import Sequence

from dg_model import humaneval
from dg_model.api import Candidate

from . import cli
from .postprocess import postprocess, rank

_KIND = {"single-line": "line", "multi-line": "block"}


def editor_choice(task: humaneval.InfillTask, candidates: Sequence[Candidate]) -> str:
    """The completion the server would show first at the task's cursor ("" when it would show nothing)."""
    document = task.prefix + task.suffix
    edits = [postprocess(c.text, document, len(task.prefix), "python", _KIND[task.kind]) for c in candidates]
    # The cursor sits at the end of an emptied line, so an edit never replaces text after it.
    edits = rank([e for e in edits if e is not None and e.end == e.start])
    return edits[0].text if edits else ""


for _module in cli.registries():
    humaneval.register(_module.SUBCOMMANDS, _module.Subcommand, editor_choice)
