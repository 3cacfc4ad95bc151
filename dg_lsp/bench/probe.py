"""`python -m dg_lsp.bench.probe [dg-lsp flags]`: the real `dg-lsp` server plus instruments for benchmarks and tests.

Everything the server does is unchanged (same `cli.main`, handlers, job runner and engine); the probe adds:

- one log line per engine call, `engine stats {json}` (the job's `JobStats`, its kind and outcome, and the CUDA
  memory peak when CUDA is in use), at INFO on `dg_lsp.bench.probe`, so `dg-lsp bench latency` can count prompt
  tokens re-encoded per keystroke without the server having to expose `JobStats`;
- `dg/debug/document` `{uri}` -> `{text, version}` | null: the server's copy of an open document, so the hardening
  fuzz can check that incremental sync kept it equal to the client's;
- `dg/debug/memory` `{}` -> `{rss_bytes, hwm_bytes, cuda_*_bytes?, request_futures, documents, cached_answers}`.

pygls' per-message DEBUG logging is kept at WARNING, so `--log-level debug` (needed for the job runner's
"superseded" lines) does not log every didChange body.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import sys
import time
from typing import Any
from urllib.parse import unquote

from dg_model.api import Cancelled, InfillJob, JobResult, RewriteJob

log = logging.getLogger("dg_lsp.bench.probe")  # not __name__: the probe runs as __main__

STATS_MARK = "engine stats "
DOCUMENT_METHOD = "dg/debug/document"
MEMORY_METHOD = "dg/debug/memory"


class StatsEngine:
    """Delegates to the real engine; logs one `engine stats` line per infill/rewrite, cancelled ones included."""

    def __init__(self, engine: Any) -> None:
        self._engine = engine
        self.name, self.device = engine.name, engine.device

    def __getattr__(self, name: str) -> Any:  # anything else the server might use (reset caches, ...)
        return getattr(self._engine, name)

    def count_tokens(self, text: str) -> int:
        return self._engine.count_tokens(text)

    def infill(self, job: InfillJob) -> JobResult:
        return self._timed("infill", job, self._engine.infill)

    def rewrite(self, job: RewriteJob) -> JobResult:
        return self._timed("rewrite", job, self._engine.rewrite)

    def _timed(self, kind: str, job: Any, call: Any) -> JobResult:
        started = time.perf_counter()
        record: dict[str, Any] = {"kind": kind, "doc_key": job.doc_key, "t": time.time()}
        try:
            result = call(job)
        except Cancelled:
            record["outcome"] = "cancelled"
            raise
        except BaseException as exc:
            record["outcome"] = f"error: {type(exc).__name__}"
            raise
        else:
            record["outcome"] = "done"
            record.update(dataclasses.asdict(result.stats))
            record["candidates"] = len(result.candidates)
            return result
        finally:
            record["wall_ms"] = (time.perf_counter() - started) * 1000
            record.update(_cuda_memory())
            log.info("%s%s", STATS_MARK, json.dumps(record))


def _cuda_memory() -> dict[str, int]:
    torch = sys.modules.get("torch")  # never import torch for this: a fake engine does not need it
    if torch is None or not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return {}
    return {
        "cuda_allocated_bytes": torch.cuda.memory_allocated(),
        "cuda_peak_bytes": torch.cuda.max_memory_allocated(),
        "cuda_reserved_bytes": torch.cuda.memory_reserved(),
    }


def _proc_status() -> dict[str, int]:
    out: dict[str, int] = {}
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                if key in ("VmRSS", "VmHWM"):
                    out["rss_bytes" if key == "VmRSS" else "hwm_bytes"] = int(value.split()[0]) * 1024
    except OSError:
        pass
    return out


def install() -> None:
    """Patch the loader the lifecycle feature uses and the server factory, before `cli.main` runs."""
    from dg_lsp import cli, server
    from dg_lsp.features import lifecycle

    load = lifecycle.load_engine
    lifecycle.load_engine = lambda *args, **kwargs: StatsEngine(load(*args, **kwargs))

    create = server.create_server

    def create_server(settings=None):
        ls = create(settings)

        # pygls passes the server only to a first parameter named `ls` (or annotated with a resolvable type)
        @ls.feature(DOCUMENT_METHOD)
        def debug_document(ls: server.DgServer, params: Any) -> dict[str, Any] | None:
            uri = getattr(params, "uri", None) if not isinstance(params, dict) else params.get("uri")
            doc = ls.workspace.text_documents.get(unquote(uri)) if isinstance(uri, str) else None
            return None if doc is None else {"text": doc.source, "version": doc.version}

        @ls.feature(MEMORY_METHOD)
        def debug_memory(ls: server.DgServer, params: Any) -> dict[str, int]:
            # what grows when something leaks: pygls' table of handler futures, open documents, cached answers
            tables = {
                "request_futures": len(ls.protocol._request_futures),
                "documents": len(ls.workspace.text_documents),
                "cached_answers": len(ls.answers),
            }
            return {**_proc_status(), **_cuda_memory(), **tables}

        return ls

    server.create_server = create_server
    setup = cli.setup_logging

    def setup_logging(log_file: str | None, level: str) -> None:
        setup(log_file, level)
        logging.getLogger("pygls").setLevel(logging.WARNING)
        log.setLevel(logging.INFO)

    cli.setup_logging = setup_logging


def main(argv: list[str] | None = None) -> int:
    install()
    from dg_lsp import cli

    return cli.main(argv)


if __name__ == "__main__":
    sys.exit(main())
