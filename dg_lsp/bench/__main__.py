"""`python -m dg_lsp.bench latency|speed|memory|forward|gpu ...`: the same as `dg-lsp bench ...`."""

import sys

from dg_lsp import bench, cli

assert "bench" in cli.SUBCOMMANDS, bench.__name__
sys.exit(cli.main(["bench", *sys.argv[1:]]))
