"""`python tests/fake_server.py [--probe] [--fallback MODEL] [--stale-answers] [dg-lsp arguments]`: the real dg-lsp
on the tests' fake engine.

It runs dg-lsp's own `cli.main` (the server, its handlers, job runner, fallback and sub-commands, unchanged) with the
`Engines` it takes as a parameter: a model that is a JSON object (`--model '{"text": "a + b"}'`, or the `dg.model`
setting) loads as `fake_engine.from_spec(model)`; any other model loads as in dg-lsp. The end-to-end server tests,
the Neovim and VS Code tests and the benchmarks' smoke tests start it; tests that call the CLI in-process call `main`.

* `--probe`: run it as `python -m dg_bench.probe` does (plus the `dg/debug/*` requests).
* `--fallback MODEL`: what the server falls back to when a model fails to load or runs out of memory (`Engines`'
  `fallback`, on the CPU). By default a fake that fails to load, so a failing load is reported as such and never
  quietly replaced by the real embedded model.
* `--stale-answers`, a protocol fault no correct server has: each inline completion is answered with the previous
  answer (made for an older text and position; nothing the first time), for the typing benchmark's own test that
  it counts stale suggestions. A registration `cli.main` adds to the server after dg-lsp's own (`extras`), which
  wraps the inline completion handler registered before it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # this checkout's dg-lsp, whatever else the interpreter has installed
    sys.path.insert(1, str(REPO))

import fake_engine  # noqa: E402 - tests/ is on sys.path: the script's own directory, or pytest's rootdir

from dg_lsp.engines import Engines, load_local  # noqa: E402

if TYPE_CHECKING:
    from dg_lsp.server import DgServer

NO_FALLBACK = json.dumps({"load_error": "the fake server has no fallback engine (tests/fake_server.py --fallback)"})


def is_fake(model: str | None) -> bool:
    return model is not None and model.lstrip().startswith("{")


def load(model: str | None, device: str = "auto", quantize: str = "none") -> Any:
    """The fake engine for a JSON model, else what dg-lsp loads."""
    if is_fake(model):
        assert model is not None
        return fake_engine.from_spec(model)
    return load_local(model, device, quantize)


def engines(fallback: str = NO_FALLBACK) -> Engines:
    return Engines(loader=load, fallback=(fallback, "cpu", "none"))


def answer_stale(ls: DgServer) -> None:
    """Wrap the real inline completion handler: answer with what it answered the time before."""
    from lsprotocol import types

    features = ls.protocol.fm.features
    real = features[types.TEXT_DOCUMENT_INLINE_COMPLETION]
    last: list[types.InlineCompletionList] = [types.InlineCompletionList(items=[])]

    async def stale(params: types.InlineCompletionParams) -> types.InlineCompletionList:
        answer = await real(params)
        previous, last[0] = last[0], answer
        return previous

    features[types.TEXT_DOCUMENT_INLINE_COMPLETION] = stale


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fake_server", add_help=False, allow_abbrev=False)
    parser.add_argument("--probe", action="store_true")
    parser.add_argument("--fallback", default=NO_FALLBACK)
    parser.add_argument("--stale-answers", action="store_true")
    ours, rest = parser.parse_known_args(argv)
    extras = [answer_stale] if ours.stale_answers else []
    if ours.probe:
        from dg_bench import probe

        return probe.main(rest, engines(ours.fallback), extras)
    from dg_lsp import cli

    return cli.main(rest, engines(ours.fallback), extras)


if __name__ == "__main__":
    sys.exit(main())
