"""`dg-lsp eval humaneval --server`: the tasks asked of a real `dg-lsp --stdio` subprocess, as an editor asks.

Each task's document (the middle removed) is opened in the server, an invoked `textDocument/inlineCompletion` is sent
at the cursor (`--trigger automatic`: a typing one), and the first item the server returns is applied to the
document the way the editor applies ghost text (its range replaced by its insert text). The program tested is that
document: whatever the server decided (job kind, decoding, post-processing, ranking, caches, settings) is in it.
Comparing with `--editor` (the same path in-process) keeps the in-process benchmark honest.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from dg_model.api import JobResult, JobStats
from dg_model.evaluation import humaneval

if TYPE_CHECKING:
    from dg_bench.session import Server


def _offset(text: str, line: int, character: int) -> int:
    """utf-16 position -> string offset (HumanEval is ASCII, but do it right anyway)."""
    start = 0
    for _ in range(line):
        start = text.index("\n", start) + 1
    units = 0
    i = start
    while units < character and i < len(text):
        units += 2 if ord(text[i]) > 0xFFFF else 1
        i += 1
    return i


class ServerPath:
    """A solver for `humaneval.run_tasks` over one server subprocess; `close()` stops it."""

    def __init__(self, args: argparse.Namespace, timeout: float = 60.0):
        init = {"decoding": args.mode, "candidates": args.candidates, "typeAhead": False}
        if args.seed is not None:
            init["seed"] = args.seed
        from dg_bench.session import ServerSpec  # the benchmarks' client, loaded when an evaluation asks for it

        self.spec = ServerSpec(
            model=args.model,
            device=getattr(args, "device", "auto"),
            quantize=getattr(args, "quantize", "none"),
            probe=False,
            log_level="info",
            init_options=init,
        )
        self.timeout = timeout
        self.automatic = humaneval.asks_as_typing(args)
        self.loop = asyncio.new_event_loop()
        self.tmp = tempfile.TemporaryDirectory(prefix="dg-eval-server-")
        self.server: Server | None = None
        self.count = 0

    async def _start(self) -> Server:
        from dg_bench.session import Server

        server = Server(self.spec, Path(self.tmp.name) / "server.log")
        await server.start(Path(self.tmp.name))
        server.initialized()
        await server.wait_ready()
        return server

    async def _ask(self, task: humaneval.InfillTask) -> str:
        if self.server is None:
            self.server = await self._start()
        self.count += 1
        from dg_bench.session import Document

        doc = Document(self.server, Path(self.tmp.name, f"task{self.count}.py").as_uri(), task.prefix + task.suffix)
        doc.open()
        try:
            _, future = self.server.inline(doc, len(task.prefix), automatic=self.automatic)
            result = await asyncio.wait_for(future, self.timeout)
        finally:
            doc.close()
        items = result.items if hasattr(result, "items") else (result or [])
        if not items:
            return ""
        item = items[0]
        text = item.insert_text if isinstance(item.insert_text, str) else item.insert_text.value
        start, end = len(task.prefix), len(task.prefix)
        if item.range is not None:
            start = _offset(doc.text, item.range.start.line, item.range.start.character)
            end = _offset(doc.text, item.range.end.line, item.range.end.character)
        after = doc.text[:start] + text + doc.text[end:]
        if not (after.startswith(task.prefix) and after.endswith(task.suffix)):
            return ""  # an edit reaching outside the gap is not a completion of this task; counted as none
        return after[len(task.prefix) : len(after) - len(task.suffix)]

    def __call__(self, task: humaneval.InfillTask) -> tuple[str, JobResult | None]:
        completion = self.loop.run_until_complete(self._ask(task))
        return completion, JobResult([], JobStats(mode="server"))

    def close(self) -> None:
        if self.server is not None:
            self.loop.run_until_complete(self.server.stop())
        self.loop.close()
        self.tmp.cleanup()
