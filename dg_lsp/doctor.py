"""`dg-lsp doctor`: what this machine has, where the model is, whether it loads, and how fast.

Each check prints one line `ok|warn|FAIL  name: detail`; the exit code is 1 when any check FAILed, so scripts and
the README's set-up can rely on it. Heavy imports (torch) happen inside the checks, timed, not at module import.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from dg_model.api import EngineError, InfillJob

from .engines import Engines, model_label

Check = tuple[str, str, str]  # (status, name, detail)
T = TypeVar("T")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--no-load", action="store_true", help="skip loading the model")


def run(args: argparse.Namespace, engines: Engines) -> int:
    checks: list[Check] = []

    def report(status: str, name: str, detail: str) -> None:
        checks.append((status, name, detail))
        print(f"{status:4}  {name}: {detail}", flush=True)

    report("ok", "python", f"{platform.python_version()} ({sys.executable})")
    if getattr(args, "remote", None):  # a server runs the model: check it, not this machine's model stack
        _grammars(report)
        _remote(report, args)
        return 1 if any(status == "FAIL" for status, _, _ in checks) else 0
    _torch(report)
    _bitsandbytes(report, args.quantize)
    _grammars(report)
    _model(report, args, engines)
    return 1 if any(status == "FAIL" for status, _, _ in checks) else 0


def _timed(fn: Callable[[], T]) -> tuple[T, float]:
    start = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - start


def _torch(report) -> None:
    try:
        torch, seconds = _timed(lambda: importlib.import_module("torch"))
    except ImportError as exc:
        report("FAIL", "torch", f"not importable: {exc}")
        return
    report("ok", "torch", f"{torch.__version__} (import {seconds:.1f}s)")
    if not torch.cuda.is_available():
        report("ok", "cuda", "not available; the model runs on CPU")
        return
    for i in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(i)
        free, total = torch.cuda.mem_get_info(i)
        report("ok", f"cuda:{i}", f"{props.name}, {total / 2**30:.1f} GiB VRAM, {free / 2**30:.1f} GiB free")


def _bitsandbytes(report, quantize: str) -> None:
    try:
        version = importlib.metadata.version("bitsandbytes")
    except importlib.metadata.PackageNotFoundError:
        status = "FAIL" if quantize != "none" else "warn"
        report(status, "bitsandbytes", "not installed (needed for --quantize 8bit/4bit: pip install 'dg-lsp[cuda]')")
        return
    report("ok", "bitsandbytes", version)


def _grammars(report) -> None:
    try:
        from .languages import grammar_status
    except ImportError as exc:
        report("FAIL", "tree-sitter", f"not importable: {exc}")
        return
    status = grammar_status()
    missing = sorted(name for name, ok in status.items() if not ok)
    loaded = sorted(name for name, ok in status.items() if ok)
    if "python" in missing:
        report("FAIL", "tree-sitter", f"no Python grammar; missing: {', '.join(missing)}")
    elif missing:
        report("warn", "tree-sitter", f"{', '.join(loaded)}; missing (plain text there): {', '.join(missing)}")
    else:
        report("ok", "tree-sitter", ", ".join(loaded))


def _model(report, args: argparse.Namespace, engines: Engines) -> None:
    label = model_label(args.model)
    if args.model is None:
        package = importlib.import_module("dg_model").__file__
        assert package is not None, "dg_model is a regular package"
        embedded = Path(package).parent / "embedded"
        where = f"embedded at {embedded}" + ("" if embedded.is_dir() else " (missing)")
    elif Path(args.model).exists():
        where = f"local path {Path(args.model).resolve()}"
    else:
        where = f"{args.model} (Hugging Face id or cache)"
    report("ok", "model", where)
    if args.no_load:
        return
    try:
        engine, seconds = _timed(lambda: engines.load(args.model, device=args.device, quantize=args.quantize))
    except EngineError as exc:
        report("FAIL", "model load", f"{label}: {exc}")
        return
    except Exception as exc:  # noqa: BLE001 - doctor reports every failure instead of dying on the first one
        report("FAIL", "model load", f"{label}: {type(exc).__name__}: {exc}")
        return
    report("ok", "model load", f"{engine.name} on {engine.device} in {seconds:.1f}s")
    settings = getattr(engine, "settings", None)
    if settings is not None and hasattr(engine, "fwd"):  # the real engine (test doubles have neither)
        kinds = ", ".join(f"{kind} {mode}" for kind, mode in settings.decoding.items())
        beam = f"AR beam {settings.ar_beam}" if settings.ar_beam > 1 else "AR greedy"
        if settings.invoked_beam or settings.next_line_rescore:
            ranked = ", re-ranked by the next line" if settings.next_line_rescore else ""
            beam += f" (asked for: beam {settings.invoked_beam or settings.ar_beam}{ranked})"
        threads = getattr(engine.fwd, "threads", None)  # ONNX Runtime's (two where torch leaves a core spare)
        forward = engine.fwd.kind + (f" on {threads} thread{'s' * (threads > 1)}" if threads else "")
        report("ok", "decoding", f"{kinds} (setting decoding: auto); {beam}; forward: {forward}")
    job = InfillJob(prefix="def add(a, b):\n    return ", suffix="\n", kind="line", max_tokens=8, seed=0)
    try:
        result, seconds = _timed(lambda: engine.infill(job))
    except Exception as exc:  # noqa: BLE001 - as above
        report("FAIL", "completion", f"{type(exc).__name__}: {exc}")
        return
    text = result.candidates[0].text if result.candidates else ""
    steps = result.stats.steps
    report("ok", "completion", f"{seconds * 1000:.0f} ms, {steps} {result.stats.mode} steps -> {text!r}")


# What failed, by RemoteError.kind: the check that names it.
_REMOTE_CHECKS = {"unreachable": "reachable", "timeout": "reachable", "auth": "auth", "model": "model"}


def _remote(report, args: argparse.Namespace) -> None:
    """Reachability, the key, the model and a completion's latency, for `--remote URL`."""
    import os
    import statistics

    from dg_model.remote_errors import API_KEY_ENV, RemoteError, insecure

    from .remote import connect
    from .settings import RemoteSettings, Settings

    try:
        engine = connect(Settings(remote=RemoteSettings(url=args.remote, model=getattr(args, "remote_model", None))))
    except RemoteError as exc:
        report("FAIL", "remote", str(exc))
        return
    if insecure(engine.url):
        report("warn", "remote", f"{engine.url}: plain http to another machine; code and the key travel unencrypted")
    else:
        report("ok", "remote", engine.url)
    key = os.environ.get(API_KEY_ENV)
    report("ok", "api key", f"{API_KEY_ENV} is set (not shown)" if key else f"{API_KEY_ENV} is not set")
    try:
        try:
            info = engine.check(tries=1)
        except RemoteError as exc:
            report("FAIL", _REMOTE_CHECKS.get(exc.kind, "remote"), str(exc))
            return
        report("ok", "reachable", f"GET /v1/models in {info.ms:.0f} ms")
        report("ok", "auth", "the key is accepted" if key else "the server asks for no key")
        report("ok", "model", f"{info.model} (served: {', '.join(info.models)}), prompt format {info.format}")
        report("ok", "token counts", info.counting)
        job = InfillJob(prefix="def add(a, b):\n    return ", suffix="\n", kind="line", max_tokens=8, seed=0)
        seconds, text = [], ""
        for _ in range(3):
            try:
                result, took = _timed(lambda: engine.infill(job))
            except RemoteError as exc:
                report("FAIL", "completion", str(exc))
                return
            seconds.append(took)
            text = result.candidates[0].text if result.candidates else ""
        report(
            "ok",
            "latency",
            f"completion p50 {statistics.median(seconds) * 1000:.0f} ms (min "
            f"{min(seconds) * 1000:.0f}, max {max(seconds) * 1000:.0f}, 3 requests) -> {text!r}",
        )
    finally:
        engine.close()
