"""`dg-lsp bench latency|speed|memory|forward|gpu [--out DIR]`: benchmarks, each writing JSON and a PNG chart to DIR.

A package apart from the runtime: `dg_lsp` and `dg_model` never import it when they load (the `dg-lsp` CLI loads it
as a plug-in, by name; `dg-lsp eval --server` borrows `session`, its client of a `dg-lsp --stdio` subprocess, when it
runs), and matplotlib, the `bench` extra, is imported only to draw a chart. Besides the benchmarks below: `gpu_e2e`
(end-to-end generation on the 26B-A4B architecture per expert kind), `fix_margin` (calibrates "Fix this block"),
`openai_stub` (an OpenAI-compatible server for the remote path), `probe` (the server plus debug requests).

    latency  inline completion while typing a real file through the stdio server: p50/p95 time-to-result,
             cancellations, prompt tokens re-encoded per keystroke vs a full encode          (dg_bench.latency)
    speed    diffusion vs AR decoding of one checkpoint on HumanEval infilling: tok/s, tokens per forward, decoder
             steps, pass@1, the speed ratio                                                     (dg_bench.speed)
    memory   server RSS before the model, idle, under a typing storm and after; peak VRAM with CUDA
    forward  transformers' modules vs the lean forward on one model: encode, AR step, decoder steps
                                                                                              (dg_bench.forward)
    gpu      the 26B-A4B architecture on CUDA: `python -m dg_bench.gpu` (arguments after `--` go to it)
    remote   what the remote path (vLLM's API) adds to server-side time, on loopback           (dg_bench.remote)
    typing   a typing session in a real headless Neovim with the plugin, per ghost backend: suggestions shown per
             pause, time to show, stale suggestions, accepts, start-up                      (dg_bench.typing_session)

The model flags (--model/--device/--quantize) work as for the server. Registers itself as the `bench` sub-command on
import (listed in `dg_lsp.cli.SUBCOMMAND_MODULES`); only argparse-level code runs at import.
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from dg_lsp import cli
from dg_lsp.engines import Engines

BENCHES = ("latency", "speed", "memory", "forward", "gpu", "remote", "typing")
DEFAULT_OUT = "bench_results"


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="bench", metavar="BENCH", required=True)
    from . import forward, latency, memory, remote, speed, typing_session  # argparse-only imports there

    helps = {
        "latency": (latency.add_arguments, "inline completion latency while typing, through the stdio server"),
        "speed": (speed.add_arguments, "diffusion vs AR decoding on HumanEval infilling tasks"),
        "memory": (memory.add_arguments, "server RSS idle and under load, peak VRAM with CUDA"),
        "forward": (forward.add_arguments, "transformers' modules vs the lean forward, step by step"),
        "gpu": (_gpu_arguments, "the full 26B-A4B architecture on CUDA (python -m dg_bench.gpu)"),
        "remote": (remote.add_arguments, "what the remote (OpenAI-compatible) path adds to server-side time"),
        "typing": (typing_session.add_arguments, "a typing session in headless Neovim with the plugin"),
    }
    for name, (add, help_) in helps.items():
        sp = sub.add_parser(name, help=help_, description=help_)
        cli._add_model_flags(sp, defaults=False)
        sp.add_argument(
            "--out",
            metavar="DIR",
            default=argparse.SUPPRESS,
            help=f"write bench_{name}.json and .png here (default: ./{DEFAULT_OUT})",
        )
        if name in ("latency", "memory"):
            sp.add_argument(
                "--no-probe",
                dest="probe",
                action="store_false",
                help="run plain dg-lsp instead of dg_bench.probe (no heap numbers, no VRAM)",
            )
            sp.add_argument("--keep-log", action="store_true", help=f"keep the server log as bench_{name}.server.log")
        add(sp)
    p.add_argument("--out", metavar="DIR", default=DEFAULT_OUT, help=argparse.SUPPRESS)


def _gpu_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("gpu_args", nargs="*", metavar="-- ARGS", help="passed to dg_bench.gpu, e.g. -- --bits 16")


def run(args: argparse.Namespace, engines: Engines) -> int:
    # `engines` goes unused: each benchmark runs a server of its own (a subprocess) or loads the model with the
    # decoding mode it measures (`dg_model.loading.load_engine(..., mode=...)`).
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.bench == "gpu":
        return run_gpu(args, out)
    if args.bench == "remote":
        from . import remote

        return remote.main(args, out)
    if args.bench == "typing":
        from . import typing_session

        return typing_session.main(args, out)
    if args.bench in ("speed", "forward"):
        from . import forward, speed

        return run_in_process(args.bench, speed if args.bench == "speed" else forward, args, out)
    from . import latency, memory
    from .session import ServerSpec

    spec = ServerSpec(model=args.model, device=args.device, quantize=args.quantize, probe=args.probe)
    module = latency if args.bench == "latency" else memory
    with tempfile.TemporaryDirectory(prefix="dg-bench-log-") as tmp:
        log_file = out / f"bench_{args.bench}.server.log" if args.keep_log else Path(tmp) / "server.log"
        log_file.unlink(missing_ok=True)  # the server appends; counts must come from this run only
        result = asyncio.run(module.run(module.config_from(args), spec, log_file))
        return publish(args.bench, module, result, out)


def run_in_process(name: str, module, args: argparse.Namespace, out: Path) -> int:
    """The benchmarks that load the model here: `module.run`, then `publish`."""
    from dg_model.api import EngineError

    try:
        result = module.run(args, say=lambda m: print(m, file=sys.stderr, flush=True))
    except EngineError as exc:
        print(f"dg-lsp: cannot load the model: {exc}", file=sys.stderr)
        return 1
    return publish(name, module, result, out)


def publish(name: str, module, result: dict[str, Any], out: Path) -> int:
    """A benchmark's result as bench_NAME.json, its chart (`chart.NAME`) as bench_NAME.png, then `module`'s report."""
    from . import chart
    from .session import write_json

    write_json(out / f"bench_{name}.json", result)
    getattr(chart, name)(result, out / f"bench_{name}.png")
    module.print_report(result)
    print(f"wrote {out / f'bench_{name}.json'} and {out / f'bench_{name}.png'}")
    return 0


def run_gpu(args: argparse.Namespace, out: Path) -> int:
    """`python -m dg_bench.gpu` in its own process (it owns the GPU), then its chart."""
    extra = list(args.gpu_args)
    if "--out" not in extra:
        extra += ["--out", str(out / "bench_gpu.json")]
    code = subprocess.call([sys.executable, "-m", "dg_bench.gpu", *extra])
    result = Path(extra[extra.index("--out") + 1])
    if code == 0 and result.is_file():
        import json

        from . import chart

        chart.gpu(json.loads(result.read_text()), result.with_suffix(".png"))
    return code


for _module in cli.registries():
    _module.SUBCOMMANDS["bench"] = _module.Subcommand(add_arguments, run, "benchmarks: latency, speed, typing, ...")
