"""`python -m dg_bench latency|speed|memory|forward|gpu ...`: the same as `dg-lsp bench ...`."""

import sys

import dg_bench
from dg_lsp import cli

assert "bench" in cli.SUBCOMMANDS, dg_bench.__name__
sys.exit(cli.main(["bench", *sys.argv[1:]]))
