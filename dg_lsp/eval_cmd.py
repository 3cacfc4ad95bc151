"""`dg-lsp eval humaneval --kind single-line|multi-line [--mode diffusion|ar] [--limit N] [--out PATH]`.

Registers the `eval` sub-command on import (listed in `dg_lsp.cli.SUBCOMMAND_MODULES`). Only the standard library
and `dg_model.api` are imported here; torch and the model load inside the command.
"""

from __future__ import annotations

import sys

from dg_model import humaneval

from . import cli


def _registries() -> list:
    # `python -m dg_lsp.cli` runs the CLI as `__main__`, a second module object next to `dg_lsp.cli`: register in both.
    out = [cli]
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    if main is not None and main is not cli and getattr(spec, "name", None) == "dg_lsp.cli":
        out.append(main)
    return out


for _module in _registries():
    humaneval.register(_module.SUBCOMMANDS, _module.Subcommand)
