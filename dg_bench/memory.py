"""`dg-lsp bench memory`: the server's resident memory before the model, after its first answer, under a typing storm
(as a series) and after; where the heap's bytes sit; peak VRAM.

RSS comes from /proc/<pid>/status (VmRSS; VmHWM is the kernel's peak), sampled every `--sample-ms` from outside the
process, and reported as a series every `--series-s`. The storm is what an editor sends while a user types fast:
a region of a real file typed at `--keystroke-ms` (paced by the clock, not by the answers), an automatic inline
completion request at every keystroke with the previous one cancelled, the region deleted and typed again until
`--load-s` is over. `--await-every N` also waits for every Nth request's answer (an explicit one; 0: never).

With the probe (the default), `dg/debug/memory` adds the heap's bytes in use and free (glibc's mallinfo2) after the
first answer, after the storm and after a full garbage collection: memory that only the collection gives back was
held by reference cycles. With CUDA it gives the server's `torch.cuda.max_memory_allocated()`.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import platform
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import latency

if TYPE_CHECKING:  # the client stack loads in `run`: argparse set-up must stay cheap for `dg-lsp --stdio`
    from .session import Document, Server, ServerSpec

MIB = 1024 * 1024


@dataclass
class MemoryConfig:
    file: str | None = None
    load_s: float = 60.0
    keystroke_ms: float = 20.0  # 50 edits + requests per second
    await_every: int = 0  # 0: never wait for an answer (the editor does not either)
    sample_ms: float = 100.0
    series_s: float = 10.0
    settle_s: float = 1.0
    ready_timeout_s: float = 300.0


def add_arguments(p: argparse.ArgumentParser) -> None:
    d = MemoryConfig()
    p.add_argument("--file", default=d.file, help="the file to type into (default: the stdlib's textwrap.py)")
    p.add_argument("--load-s", type=float, default=d.load_s, help=f"seconds of typing storm (default {d.load_s:g})")
    p.add_argument(
        "--keystroke-ms",
        type=float,
        default=d.keystroke_ms,
        help=f"time between keystrokes (default {d.keystroke_ms:g}: 50 keys/s)",
    )
    p.add_argument(
        "--await-every",
        type=int,
        default=d.await_every,
        help="wait for every Nth request's answer, sent as an explicit request (default 0: never)",
    )
    p.add_argument("--sample-ms", type=float, default=d.sample_ms, help="RSS sampling interval")
    p.add_argument(
        "--series-s",
        type=float,
        default=d.series_s,
        help=f"interval of the reported RSS series (default {d.series_s:g})",
    )


def config_from(args: argparse.Namespace) -> MemoryConfig:
    return MemoryConfig(**{k: getattr(args, k) for k in asdict(MemoryConfig()) if hasattr(args, k)})


async def _sample(server: Server, every_s: float, out: list[tuple[float, int]], stop: asyncio.Event) -> None:
    t0 = time.monotonic()
    while not stop.is_set():
        rss = server.proc_memory().get("rss_bytes")
        if rss is not None:
            out.append((time.monotonic() - t0, rss))
        try:
            await asyncio.wait_for(stop.wait(), every_s)
        except TimeoutError:
            pass


async def _storm(server: Server, doc: Document, typed: str, region_start: int, cfg: MemoryConfig) -> dict[str, int]:
    keys = latency.keystrokes(typed)
    counts = {"keystrokes": 0, "requests": 0, "cancelled": 0, "answered": 0, "awaited": 0, "awaited_answered": 0}

    def answered(future: asyncio.Future) -> None:
        if not future.cancelled() and future.exception() is None:
            counts["answered"] += 1

    in_flight: tuple[str, asyncio.Future] | None = None
    interval = cfg.keystroke_ms / 1000
    t0 = time.monotonic()
    deadline = t0 + cfg.load_s
    while time.monotonic() < deadline:
        for key in keys:
            if time.monotonic() >= deadline:
                break
            if in_flight is not None and not in_flight[1].done():
                server.cancel(in_flight[0])  # the editor cancels the previous keystroke's request
                counts["cancelled"] += 1
            doc.insert(key)
            counts["keystrokes"] += 1
            invoked = cfg.await_every > 0 and counts["keystrokes"] % cfg.await_every == 0
            msg_id, future = server.inline(doc, automatic=not invoked)
            future.add_done_callback(answered)
            counts["requests"] += 1
            in_flight = (msg_id, future)
            if invoked:
                counts["awaited"] += 1
                try:
                    await asyncio.wait_for(asyncio.shield(future), 30)
                    counts["awaited_answered"] += 1
                except Exception:  # noqa: BLE001 - counted as not answered
                    pass
                t0 = time.monotonic() - counts["keystrokes"] * interval  # the wait does not make the next keys rush
            await asyncio.sleep(max(0.0, t0 + counts["keystrokes"] * interval - time.monotonic()))
        doc.edit(region_start, doc.cursor, "")  # start over
    return counts


async def run(cfg: MemoryConfig, spec: ServerSpec, log_file: Path) -> dict[str, Any]:
    from dg_lsp.languages import spec_for

    from .session import Document, Server, read_log

    path = Path(cfg.file) if cfg.file else latency.default_file()
    source = path.read_text(encoding="utf-8")
    start, end = latency.pick_region(source, "auto", 600)
    end = start + len(source[start:end].removesuffix("\n"))
    language = spec_for(str(path))
    server = Server(spec, log_file)
    samples: list[tuple[float, int]] = []
    result: dict[str, Any] = {}
    debug: dict[str, dict[str, int]] = {}
    with tempfile.TemporaryDirectory(prefix="dg-bench-") as workspace:
        await server.start(Path(workspace))
        result["before_model"] = server.proc_memory()  # the model starts loading at `initialized`
        t0 = time.monotonic()
        server.initialized()
        status = await server.wait_ready(cfg.ready_timeout_s)
        result["load_s"] = time.monotonic() - t0
        await asyncio.sleep(cfg.settle_s)
        result["idle"] = server.proc_memory()
        doc = Document(
            server,
            (Path(workspace) / path.name).as_uri(),
            source[:start] + source[end:],
            language.ids[0] if language else "plaintext",
        )
        doc.cursor = start
        doc.open()
        _, first = server.inline(doc, automatic=False)  # the first answer: the prompt encoded, the model warm
        await asyncio.wait_for(asyncio.shield(first), cfg.ready_timeout_s)
        result["first_answer"] = server.proc_memory()
        if spec.probe:
            debug["first_answer"] = await server.debug_memory()
        stop = asyncio.Event()
        sampler = asyncio.create_task(_sample(server, cfg.sample_ms / 1000, samples, stop))
        t_load = time.monotonic()
        counts = await _storm(server, doc, source[start:end], start, cfg)
        result["load_wall_s"] = time.monotonic() - t_load
        stop.set()
        await sampler
        await asyncio.sleep(cfg.settle_s)
        result["after_load"] = server.proc_memory()
        if spec.probe:
            debug["after_load"] = await server.debug_memory()
            debug["after_gc"] = await server.debug_memory(collect=True)
        await server.stop()
    return _report(cfg, spec, path, status, counts, result, debug, samples, read_log(log_file))


def series(samples: list[tuple[float, int]], every_s: float) -> list[tuple[float, float]]:
    """(t, MiB) of the first sample at or after each multiple of `every_s`, and the last sample."""
    out: list[tuple[float, float]] = []
    mark = 0.0
    for t, rss in samples:
        if t >= mark:
            out.append((round(t, 2), round(rss / MIB, 1)))
            mark = (int(t / every_s) + 1) * every_s if every_s > 0 else t + 1e-9
    if samples and out[-1][0] != round(samples[-1][0], 2):
        out.append((round(samples[-1][0], 2), round(samples[-1][1] / MIB, 1)))
    return out


def _heap(d: dict[str, int]) -> dict[str, float]:
    return {k.removeprefix("heap_").removesuffix("_bytes"): v / MIB for k, v in d.items() if k.startswith("heap_")}


def _report(cfg, spec, path, status, counts, result, debug, samples, log) -> dict[str, Any]:
    from .session import summary

    load_rss = [rss for _, rss in samples]
    rss = {k: result[k].get("rss_bytes", 0) / MIB for k in ("before_model", "idle", "first_answer", "after_load")}
    after = debug.get("after_load", {})
    after_gc = debug.get("after_gc", {})
    cuda_peak = max(d.get("cuda_peak_bytes", 0) for d in (*debug.values(), {}))
    return {
        "bench": "memory",
        "when": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "host": {"machine": platform.machine(), "python": platform.python_version()},
        "server": {
            "model": spec.model or "embedded",
            "device": spec.device,
            "quantize": spec.quantize,
            "status": status,
            "load_s": result["load_s"],
        },
        "config": asdict(cfg),
        "file": str(path),
        "load": counts
        | {
            "wall_s": result["load_wall_s"],
            "keys_per_s": counts["keystrokes"] / result["load_wall_s"] if result["load_wall_s"] else 0,
        },
        "rss_mib": {
            **rss,
            "load": {k: (v / MIB if k != "n" else v) for k, v in summary([float(x) for x in load_rss]).items()},
            "peak_hwm": result["after_load"].get("hwm_bytes", 0) / MIB,
            "growth_idle_to_after": rss["after_load"] - rss["idle"],
            "growth_first_answer_to_after": rss["after_load"] - rss["first_answer"],
        },
        # RSS every `series_s` seconds of the storm, from its start (right after the first answer) to its end
        "series": series(samples, cfg.series_s),
        # glibc's heap (probe only): in use / free inside the heaps / mmapped, in MiB
        "heap_mib": {k: _heap(d) for k, d in debug.items()},
        # bytes in use that a full garbage collection gave back: held by reference cycles until then
        "held_by_cycles_mib": (after.get("heap_in_use_bytes", 0) - after_gc.get("heap_in_use_bytes", 0)) / MIB
        if after and after_gc
        else None,
        "cuda": {
            "peak_allocated_mib": cuda_peak / MIB if cuda_peak else None,
            "reserved_mib": after.get("cuda_reserved_bytes", 0) / MIB or None,
        },
        # left in the server after the load: pygls' futures, open documents, cached answers, threads, ...
        "server_tables": {k: v for k, v in after.items() if not k.endswith("bytes")},
        "engine_jobs": {
            "jobs": len(log.stats),
            "done": sum(1 for r in log.stats if r.get("outcome") == "done"),
            "cancelled": sum(1 for r in log.stats if r.get("outcome") == "cancelled"),
        },
        "timeline": [[round(t, 3), round(rss / MIB, 2)] for t, rss in samples],
    }


def print_report(r: dict[str, Any]) -> None:
    m = r["rss_mib"]
    print(f"memory: {r['server']['status'].get('message', '')}")
    print(
        f"  RSS before the model {m['before_model']:.0f} MiB, idle {m['idle']:.0f} MiB, after the first answer "
        f"{m['first_answer']:.0f} MiB, under load p50 {m['load']['p50']:.0f} / max {m['load']['max']:.0f} MiB, "
        f"after {m['after_load']:.0f} MiB (growth from the first answer {m['growth_first_answer_to_after']:+.1f} "
        f"MiB), peak (VmHWM) {m['peak_hwm']:.0f} MiB"
    )
    print(f"  RSS series (s, MiB): {', '.join(f'{t:.0f}: {v:.0f}' for t, v in r['series'])}")
    for when, heap in r["heap_mib"].items():
        print(f"  heap {when}: " + ", ".join(f"{k} {v:.0f} MiB" for k, v in heap.items()))
    if r["held_by_cycles_mib"] is not None:
        print(f"  held by reference cycles until a full collection: {r['held_by_cycles_mib']:.1f} MiB")
    if r["cuda"]["peak_allocated_mib"]:
        print(f"  CUDA peak allocated {r['cuda']['peak_allocated_mib']:.0f} MiB")
    if r["server_tables"]:
        print(f"  after the load: {r['server_tables']}")
    print(f"  load: {r['load']}, engine jobs {r['engine_jobs']}")
