"""`dg-lsp eval humaneval --kind single-line|multi-line [--mode auto|diffusion|ar] [--limit N] [--out PATH]`.

Registers the `eval` sub-command on import (listed in `dg_lsp.cli.SUBCOMMAND_MODULES`). Only the standard library
and `dg_model.api` are imported here; torch and the model load inside the command.
"""

from __future__ import annotations


from dg_model import humaneval

from . import cli


for _module in cli.registries():
    humaneval.register(_module.SUBCOMMANDS, _module.Subcommand)
