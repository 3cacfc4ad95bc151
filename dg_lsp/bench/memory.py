"""`dg-lsp bench memory`: the server's resident memory before the model, idle, under load and after; peak VRAM.

RSS comes from /proc/<pid>/status (VmRSS; VmHWM is the kernel's peak), sampled every `--sample-ms` from outside the
process. "Load" is a typing storm through the real stdio server: a region of a real file typed at `--keystroke-ms`
with an automatic inline completion request per keystroke (the previous one cancelled), an explicit one awaited every
`--await-every` keystrokes, the region deleted and typed again until `--load-s` is over. With CUDA, the server's
`torch.cuda.max_memory_allocated()` comes from the probe's `dg/debug/memory` request.
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
    load_s: float = 20.0
    keystroke_ms: float = 20.0  # 50 edits + requests per second
    await_every: int = 10
    sample_ms: float = 100.0
    settle_s: float = 1.0
    ready_timeout_s: float = 300.0


def add_arguments(p: argparse.ArgumentParser) -> None:
    d = MemoryConfig()
    p.add_argument("--file", default=d.file, help="the file to type into (default: the stdlib's textwrap.py)")
    p.add_argument("--load-s", type=float, default=d.load_s, help=f"seconds of load (default {d.load_s:g})")
    p.add_argument("--keystroke-ms", type=float, default=d.keystroke_ms, help="time between keystrokes under load")
    p.add_argument("--await-every", type=int, default=d.await_every, help="wait for every Nth request's answer")
    p.add_argument("--sample-ms", type=float, default=d.sample_ms, help="RSS sampling interval")


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


async def _load(server: Server, doc: Document, typed: str, region_start: int, cfg: MemoryConfig) -> dict[str, int]:
    keys = latency.keystrokes(typed)
    counts = {"keystrokes": 0, "requests": 0, "awaited": 0, "answered": 0}
    in_flight: tuple[str, asyncio.Future] | None = None
    deadline = time.monotonic() + cfg.load_s
    while time.monotonic() < deadline:
        for key in keys:
            if time.monotonic() >= deadline:
                break
            if in_flight is not None and not in_flight[1].done():
                server.cancel(in_flight[0])
            doc.insert(key)
            counts["keystrokes"] += 1
            invoked = counts["keystrokes"] % max(1, cfg.await_every) == 0
            msg_id, future = server.inline(doc, automatic=not invoked)
            counts["requests"] += 1
            in_flight = (msg_id, future)
            if invoked:
                counts["awaited"] += 1
                try:
                    await asyncio.wait_for(asyncio.shield(future), 30)
                    counts["answered"] += 1
                except Exception:  # noqa: BLE001 - counted as not answered
                    pass
            else:
                await asyncio.sleep(cfg.keystroke_ms / 1000)
        doc.edit(region_start, doc.cursor, "")  # start over
    return counts


async def run(cfg: MemoryConfig, spec: ServerSpec, log_file: Path) -> dict[str, Any]:
    from ..languages import spec_for
    from .session import Document, Server, read_log, summary

    path = Path(cfg.file) if cfg.file else latency.default_file()
    source = path.read_text(encoding="utf-8")
    start, end = latency.pick_region(source, "auto", 600)
    end = start + len(source[start:end].removesuffix("\n"))
    language = spec_for(str(path))
    server = Server(spec, log_file)
    samples: list[tuple[float, int]] = []
    result: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="dg-bench-") as workspace:
        await server.start(Path(workspace))
        result["before_model"] = server.proc_memory()  # the model starts loading at `initialized`
        t0 = time.monotonic()
        server.initialized()
        status = await server.wait_ready(cfg.ready_timeout_s)
        result["load_s"] = time.monotonic() - t0
        await asyncio.sleep(cfg.settle_s)
        result["idle"] = server.proc_memory()
        doc = Document(server, (Path(workspace) / path.name).as_uri(), source[:start] + source[end:],
                       language.ids[0] if language else "plaintext")
        doc.cursor = start
        doc.open()
        stop = asyncio.Event()
        sampler = asyncio.create_task(_sample(server, cfg.sample_ms / 1000, samples, stop))
        t_load = time.monotonic()
        counts = await _load(server, doc, source[start:end], start, cfg)
        result["load_wall_s"] = time.monotonic() - t_load
        stop.set()
        await sampler
        await asyncio.sleep(cfg.settle_s)
        result["after_load"] = server.proc_memory()
        result["debug_memory"] = await server.debug_memory() if spec.probe else {}
        await server.stop()
    load_rss = [rss for _, rss in samples]
    log = read_log(log_file)
    cuda_peaks = [r["cuda_peak_bytes"] for r in log.stats if "cuda_peak_bytes" in r]
    cuda_peak = max([*cuda_peaks, result["debug_memory"].get("cuda_peak_bytes", 0)] or [0])
    return {
        "bench": "memory",
        "when": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "host": {"machine": platform.machine(), "python": platform.python_version()},
        "server": {"model": spec.model or "embedded", "device": spec.device, "quantize": spec.quantize,
                   "status": status, "load_s": result["load_s"]},
        "config": asdict(cfg),
        "file": str(path),
        "load": counts | {"wall_s": result["load_wall_s"]},
        "rss_mib": {
            "before_model": result["before_model"].get("rss_bytes", 0) / MIB,
            "idle": result["idle"].get("rss_bytes", 0) / MIB,
            "load": {k: (v / MIB if k != "n" else v) for k, v in summary([float(x) for x in load_rss]).items()},
            "after_load": result["after_load"].get("rss_bytes", 0) / MIB,
            "peak_hwm": result["after_load"].get("hwm_bytes", 0) / MIB,
            "growth_idle_to_after": (result["after_load"].get("rss_bytes", 0) - result["idle"].get("rss_bytes", 0))
            / MIB,
        },
        "cuda": {"peak_allocated_mib": cuda_peak / MIB if cuda_peak else None,
                 "reserved_mib": result["debug_memory"].get("cuda_reserved_bytes", 0) / MIB or None},
        # left in the server after the load; request_futures grows by one per notification while pygls leaks them
        "server_tables": {k: v for k, v in result["debug_memory"].items() if not k.endswith("bytes")},
        "engine_jobs": {"jobs": len(log.stats), "done": sum(1 for r in log.stats if r.get("outcome") == "done"),
                        "cancelled": sum(1 for r in log.stats if r.get("outcome") == "cancelled")},
        "timeline": [[round(t, 3), round(rss / MIB, 2)] for t, rss in samples],
    }


def print_report(r: dict[str, Any]) -> None:
    m = r["rss_mib"]
    print(f"memory: {r['server']['status'].get('message', '')}")
    print(f"  RSS before the model {m['before_model']:.0f} MiB, idle {m['idle']:.0f} MiB, under load p50 "
          f"{m['load']['p50']:.0f} / max {m['load']['max']:.0f} MiB, after {m['after_load']:.0f} MiB "
          f"(growth {m['growth_idle_to_after']:+.1f} MiB), peak (VmHWM) {m['peak_hwm']:.0f} MiB")
    if r["cuda"]["peak_allocated_mib"]:
        print(f"  CUDA peak allocated {r['cuda']['peak_allocated_mib']:.0f} MiB")
    if r["server_tables"]:
        print(f"  after the load: {r['server_tables']}")
    print(f"  load: {r['load']}")


def main(args: argparse.Namespace, spec: ServerSpec, out: Path, log_file: Path) -> int:
    from .session import write_json

    result = asyncio.run(run(config_from(args), spec, log_file))
    write_json(out / "bench_memory.json", result)
    from . import chart

    chart.memory(result, out / "bench_memory.png")
    print_report(result)
    print(f"wrote {out / 'bench_memory.json'} and {out / 'bench_memory.png'}")
    return 0
