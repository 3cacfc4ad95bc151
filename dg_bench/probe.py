"""`python -m dg_bench.probe [dg-lsp flags]`: the real `dg-lsp` server plus debug requests for benchmarks and tests.

Everything the server does is unchanged (same `cli.main`, handlers, job runner and engine; the engine's `JobStats`
come from the server's own `engine stats` log lines, `dg_lsp.answers.STATS_MARK`); the probe adds:

- `dg/debug/document` `{uri}` -> `{text, version}` | null: the server's copy of an open document, so the hardening
  fuzz can check that incremental sync kept it equal to the client's;
- `dg/debug/memory` `{collect?}` -> `{rss_bytes, hwm_bytes, cuda_*_bytes?, heap_*_bytes?, python_blocks, threads,
  request_futures, documents, cached_answers, gc_collected?}`: the process' memory, where it sits (the C heap's
  bytes in use and free, glibc's `mallinfo2`; Python's allocated blocks; CUDA's allocator) and the server tables
  that grow when something leaks. `collect: true` runs a full garbage collection first: what it gives back was held
  by reference cycles.

pygls' per-message DEBUG logging is kept at WARNING, so `--log-level debug` (needed for the job runner's
"superseded" lines and the `engine stats` lines) does not log every didChange body.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import logging
import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

from dg_lsp.engines import LOCAL, Engines

if TYPE_CHECKING:
    from dg_lsp.server import DgServer, Register

DOCUMENT_METHOD = "dg/debug/document"
MEMORY_METHOD = "dg/debug/memory"


def _cuda_memory() -> dict[str, int]:
    torch = sys.modules.get("torch")  # never import torch for this: a fake engine does not need it
    if torch is None or not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return {}
    return {
        "cuda_allocated_bytes": torch.cuda.memory_allocated(),
        "cuda_peak_bytes": torch.cuda.max_memory_allocated(),
        "cuda_reserved_bytes": torch.cuda.memory_reserved(),
    }


def proc_memory(pid: int | None = None) -> dict[str, int]:
    """VmRSS and VmHWM (peak RSS) of a process (this one unless `pid`), in bytes; {} when /proc is not there."""
    out: dict[str, int] = {}
    try:
        with open(f"/proc/{'self' if pid is None else pid}/status", encoding="ascii") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                if key in ("VmRSS", "VmHWM"):
                    out["rss_bytes" if key == "VmRSS" else "hwm_bytes"] = int(value.split()[0]) * 1024
    except OSError:
        pass
    return out


class _Mallinfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena",
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",
            "keepcost",
        )
    ]


def _heap() -> dict[str, int]:
    """glibc's malloc, all arenas: bytes handed out (`in_use`), held free inside the heaps (`free`: fragmentation
    or not yet returned), in mmapped chunks; {} without glibc >= 2.33."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallinfo2 = libc.mallinfo2
    except (OSError, AttributeError):
        return {}
    mallinfo2.restype = _Mallinfo2
    info = mallinfo2()
    return {
        "heap_in_use_bytes": info.uordblks,
        "heap_free_bytes": info.fordblks,
        "heap_mmapped_bytes": info.hblkhd,
        "heap_arena_bytes": info.arena,
    }


def _threads() -> int:
    """Native threads (torch's OpenMP pool included), each a potential malloc arena; 0 without /proc."""
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        return 0


def register(ls: DgServer) -> None:
    """Add the debug requests to the server and quieten pygls (`cli.main` set up logging before the server)."""
    logging.getLogger("pygls").setLevel(logging.WARNING)

    # pygls passes the server only to a first parameter named `ls` (or annotated with a resolvable type)
    @ls.feature(DOCUMENT_METHOD)
    def debug_document(ls: DgServer, params: Any) -> dict[str, Any] | None:
        uri = getattr(params, "uri", None) if not isinstance(params, dict) else params.get("uri")
        doc = ls.workspace.text_documents.get(unquote(uri)) if isinstance(uri, str) else None
        return None if doc is None else {"text": doc.source, "version": doc.version}

    @ls.feature(MEMORY_METHOD)
    def debug_memory(ls: DgServer, params: Any) -> dict[str, int]:
        collect = getattr(params, "collect", None) if not isinstance(params, dict) else params.get("collect")
        # `{"collect": true}`: a full garbage collection first; what it frees was held by reference cycles only
        collected = {"gc_collected": gc.collect()} if collect else {}
        # what grows when something leaks: pygls' table of handler futures, open documents, cached answers
        tables = {
            "request_futures": len(ls.protocol._request_futures),
            "documents": len(ls.workspace.text_documents),
            "cached_answers": len(ls.answers),
            "python_blocks": sys.getallocatedblocks(),
            "threads": _threads(),
        }
        return {**proc_memory(), **_heap(), **_cuda_memory(), **tables, **collected}


def main(argv: list[str] | None = None, engines: Engines = LOCAL, extras: Sequence[Register] = ()) -> int:
    """`cli.main` with the debug requests added to the server (and `extras`, for a program that runs the probe)."""
    from dg_lsp import cli

    return cli.main(argv, engines, (register, *extras))


if __name__ == "__main__":
    sys.exit(main())
