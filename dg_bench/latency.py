"""`dg-lsp bench latency`: time-to-result of inline completion while typing, through the real stdio server.

An editor session, replayed: open a real file (default: the stdlib's `textwrap.py`) with a region of it cut out, type
the region back character by character (a line's indentation in one keystroke, as auto-indent does) with incremental
`didChange`, and send an automatic `textDocument/inlineCompletion` after every keystroke, as VS Code does. A newer
keystroke cancels the request still in flight (`$/cancelRequest`). At pauses (after each token boundary, or every N
characters) the typist waits for the answer: that wait is the time-to-result. The server's own debounce applies
(`--debounce-ms` overrides it).

Reported: p50/p95 of time-to-result (answers with items, and all answers), requests cancelled by the client and jobs
superseded or cancelled on the server, and from the engine's `JobStats` (the server's own `engine stats` log lines,
`dg_lsp.answers.STATS_MARK`): prompt tokens per job (a full encode) against the tokens actually re-encoded (prompt -
reused), per job and per keystroke.
"""

from __future__ import annotations

import argparse
import ast
import asyncio
import datetime
import platform
import tempfile
import textwrap
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the client stack loads in `run`: argparse set-up must stay cheap for `dg-lsp --stdio`
    from .session import Document, Server, ServerSpec

_WORD = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_")


@dataclass
class LatencyConfig:
    file: str | None = None  # default: textwrap.py from the stdlib
    region: str = "auto"  # "auto" | "START-END" (1-based lines, inclusive)
    chars: int = 300  # type at most this many characters of the region
    keystroke_ms: float = 60.0  # between keystrokes: ~16 characters per second, a fast typist
    pause: str = "token"  # "token": after each token boundary; "N": every N characters
    pause_ms: float = 150.0  # think time after an answer at a pause
    every_keystroke: bool = True  # request at every keystroke (VS Code), not only at pauses
    timeout_s: float = 10.0  # longest wait for one answer at a pause
    debounce_ms: int | None = None  # server setting debounceMs; None: the server's default
    type_ahead: bool | None = None  # server setting typeAhead; None: the server's default
    thorough_blocks: bool | None = None  # server setting thoroughBlocks; None: the server's default
    typing_block_tokens: int | None = None  # server setting typingBlockTokens; None: the server's default
    retry_candidates: int | None = None  # server setting retryCandidates; None: the server's default
    time_limit_s: float = 600.0
    ready_timeout_s: float = 300.0


def add_arguments(p: argparse.ArgumentParser) -> None:
    d = LatencyConfig()
    p.add_argument("--file", default=d.file, help="the file to type (default: the stdlib's textwrap.py)")
    p.add_argument("--region", default=d.region, help="lines START-END to type, or auto (a function body)")
    p.add_argument("--chars", type=int, default=d.chars, help=f"characters to type at most (default {d.chars})")
    p.add_argument("--keystroke-ms", type=float, default=d.keystroke_ms, help="time between keystrokes")
    p.add_argument("--pause", default=d.pause, help="'token' (after token boundaries) or N (every N characters)")
    p.add_argument("--pause-ms", type=float, default=d.pause_ms, help="think time after the answer at a pause")
    p.add_argument("--only-pauses", dest="every_keystroke", action="store_false", help="request only at pauses")
    p.add_argument("--timeout-s", type=float, default=d.timeout_s, help="longest wait for an answer at a pause")
    p.add_argument("--debounce-ms", type=int, default=d.debounce_ms, help="server debounceMs (default: its own)")
    p.add_argument("--typing-block-tokens", type=int, help="server typingBlockTokens (default: its own)")
    p.add_argument("--retry-candidates", type=int, help="server retryCandidates (default: its own)")
    on_off = {"on": True, "off": False}
    for flag, key in (("--type-ahead", "typeAhead"), ("--thorough-blocks", "thoroughBlocks")):
        p.add_argument(flag, type=on_off.__getitem__, metavar="on|off", help=f"server {key} (default: its own)")
    p.add_argument("--time-limit-s", type=float, default=d.time_limit_s, help="stop typing after this long")


def config_from(args: argparse.Namespace) -> LatencyConfig:
    return LatencyConfig(**{k: getattr(args, k) for k in asdict(LatencyConfig()) if hasattr(args, k)})


# ------------------------------------------------------------------------------------------------ what to type


def default_file() -> Path:
    return Path(textwrap.__file__)


def pick_region(source: str, region: str, chars: int) -> tuple[int, int]:
    """Offsets [start, end) of the text to type: whole lines, `region` or a function body near the middle."""
    starts = [0]
    for i, ch in enumerate(source):
        if ch == "\n":
            starts.append(i + 1)
    if region != "auto":
        first, _, last = region.partition("-")
        a, b = int(first), int(last or first)
        if not 1 <= a <= b <= len(starts):
            raise ValueError(f"--region {region}: the file has {len(starts)} lines")
        return _whole_lines(source, starts[a - 1], starts[b] if b < len(starts) else len(source), chars)
    try:
        tree = ast.parse(source)
    except SyntaxError:
        tree = None
    bodies = []
    for node in ast.walk(tree) if tree is not None else ():
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            body = node.body[1:] if _is_docstring(node.body[0]) and len(node.body) > 1 else node.body
            a, b = body[0].lineno, node.end_lineno or body[-1].lineno
            bodies.append((a, b))
    if bodies:
        middle = len(starts) / 2
        # long enough bodies first, then the one nearest the middle of the file
        a, b = min(
            bodies,
            key=lambda ab: (starts[min(ab[1], len(starts) - 1)] - starts[ab[0] - 1] < chars // 2, abs(ab[0] - middle)),
        )
        return _whole_lines(source, starts[a - 1], starts[b] if b < len(starts) else len(source), chars)
    a = len(starts) // 2
    return _whole_lines(source, starts[a], len(source), chars)


def _whole_lines(source: str, start: int, end: int, chars: int) -> tuple[int, int]:
    """[start, end) cut to at most `chars` characters at a line end (at least one line), so that the cursor never
    has the rest of a line after it, which would gate automatic completion off."""
    if end - start <= chars:
        return start, end
    cut = source.rfind("\n", start, start + chars)
    if cut < 0:
        cut = source.find("\n", start, end)
    return start, (cut + 1 if cut >= 0 else end)


def _is_docstring(stmt: ast.stmt) -> bool:
    return isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant) and isinstance(stmt.value.value, str)


def keystrokes(typed: str) -> list[str]:
    """One keystroke per character, except a newline and the next line's indentation (auto-indent)."""
    keys: list[str] = []
    i = 0
    while i < len(typed):
        if typed[i] == "\n" or (i == 0 and typed[0] in " \t"):
            j = i + 1 if typed[i] == "\n" else i
            while j < len(typed) and typed[j] in " \t":
                j += 1
            keys.append(typed[i:j])
            i = j
        else:
            keys.append(typed[i])
            i += 1
    return keys


def is_pause(typed_so_far: str, key: str, pause: str, index: int) -> bool:
    if pause != "token":
        return (index + 1) % max(1, int(pause)) == 0
    ch = key[-1] if key.strip(" \t") else key[0]
    prev = typed_so_far[-len(key) - 1] if len(typed_so_far) > len(key) else ""
    if key.startswith("\n"):
        return True
    if ch in _WORD:
        return False
    return ch in "([{.,:=" or prev in _WORD


# ------------------------------------------------------------------------------------------------ the run


@dataclass
class Sample:
    index: int
    pause: bool
    sent: float
    line_start: bool = False  # after a line break and its indentation: an empty line, a block job
    outcome: str = "pending"  # items | empty | cancelled | error | timeout
    latency_ms: float | None = None
    items: int = 0


async def run(cfg: LatencyConfig, spec: ServerSpec, log_file: Path) -> dict[str, Any]:
    from dg_lsp.languages import spec_for

    from .session import Document, Server, read_log

    path = Path(cfg.file) if cfg.file else default_file()
    source = path.read_text(encoding="utf-8")
    start, end = pick_region(source, cfg.region, cfg.chars)
    typed = source[start:end].removesuffix("\n")  # the last line break stays: the cursor ends each line
    end = start + len(typed)
    for key, value in (
        ("debounceMs", cfg.debounce_ms),
        ("typeAhead", cfg.type_ahead),
        ("thoroughBlocks", cfg.thorough_blocks),
        ("typingBlockTokens", cfg.typing_block_tokens),
        ("retryCandidates", cfg.retry_candidates),
    ):
        if value is not None:
            spec.init_options = {**(spec.init_options or {}), key: value}
    language = spec_for(str(path))
    language_id = language.ids[0] if language else "plaintext"

    server = Server(spec, log_file)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="dg-bench-") as workspace:
        # The file is opened from a scratch workspace: the server must not need the original on disk.
        uri = (Path(workspace) / path.name).as_uri()
        await server.start(Path(workspace))
        server.initialized()
        status = await server.wait_ready(cfg.ready_timeout_s)
        load_s = time.monotonic() - started
        doc = Document(server, uri, source[:start] + source[end:], language_id)
        doc.cursor = start
        doc.open()
        first_ms = await _first_request(server, doc, max(60.0, 3 * cfg.timeout_s))
        samples, keys, elapsed = await _type(server, doc, typed, cfg)
        samples_done = await _collect(samples, cfg.timeout_s)
        memory = server.proc_memory()
        await server.stop()
    log = read_log(log_file)
    return _report(
        cfg, spec, path, source, start, typed, keys, samples_done, log, status, load_s, first_ms, elapsed, memory
    )


async def _first_request(server: Server, doc: Document, timeout: float) -> float | None:
    """An explicit request before typing (the cold path: first encode of the document); None if it timed out."""
    t0 = time.perf_counter()
    msg_id, first = server.inline(doc, automatic=False)
    try:
        await asyncio.wait_for(asyncio.shield(first), timeout)
    except TimeoutError:
        server.cancel(msg_id)
        return None
    return (time.perf_counter() - t0) * 1000


async def _type(server: Server, doc: Document, typed: str, cfg: LatencyConfig):
    keys = keystrokes(typed)
    samples: list[tuple[Sample, asyncio.Future]] = []
    in_flight: tuple[str, asyncio.Future] | None = None
    done = ""
    began = time.monotonic()
    typed_keys = 0
    for i, key in enumerate(keys):
        if time.monotonic() - began > cfg.time_limit_s:
            break
        if in_flight is not None and not in_flight[1].done():
            server.cancel(in_flight[0])  # the editor cancels the request of the previous keystroke
        in_flight = None
        doc.insert(key)
        done += key
        typed_keys += 1
        pause = is_pause(done, key, cfg.pause, i)
        if not (pause or cfg.every_keystroke):
            await asyncio.sleep(cfg.keystroke_ms / 1000)
            continue
        msg_id, future = server.inline(doc, automatic=True)
        sample = Sample(index=i, pause=pause, sent=time.perf_counter(), line_start=key.startswith("\n"))
        samples.append((sample, future))
        if pause:
            try:
                result = await asyncio.wait_for(asyncio.shield(future), cfg.timeout_s)
                sample.latency_ms = (time.perf_counter() - sample.sent) * 1000
                sample.items = len(result.items) if result is not None else 0
                sample.outcome = "items" if sample.items else "empty"
            except TimeoutError:
                sample.outcome = "timeout"
                server.cancel(msg_id)
            except Exception:  # noqa: BLE001 - an error answer is an outcome to count
                sample.outcome = "error"
            await asyncio.sleep(cfg.pause_ms / 1000)
        else:
            in_flight = (msg_id, future)
            await asyncio.sleep(cfg.keystroke_ms / 1000)
    return samples, typed_keys, time.monotonic() - began


async def _collect(samples: list[tuple[Sample, asyncio.Future]], timeout: float) -> list[Sample]:
    """Wait for the answers still out (cancelled requests are answered too) and classify them."""
    from pygls.exceptions import JsonRpcRequestCancelled

    for sample, future in samples:
        if sample.outcome != "pending":
            if sample.outcome == "timeout":  # cancelled at the timeout; its answer is still owed
                await asyncio.wait([future], timeout=timeout)
            if future.done() and not future.cancelled():
                future.exception()  # retrieved: no "exception was never retrieved" noise
            continue
        try:
            result = await asyncio.wait_for(future, timeout)
            sample.items = len(result.items) if result is not None else 0
            sample.outcome = "items" if sample.items else "empty"
        except JsonRpcRequestCancelled:
            sample.outcome = "cancelled"
        except TimeoutError:
            sample.outcome = "timeout"
        except Exception:  # noqa: BLE001
            sample.outcome = "error"
    return [s for s, _ in samples]


def _report(cfg, spec, path, source, start, typed, keys, samples, log, status, load_s, first_ms, elapsed, memory):
    from .session import summary

    pauses = [s for s in samples if s.pause]
    answered = [s.latency_ms for s in pauses if s.latency_ms is not None]
    shown = [s for s in pauses if s.outcome == "items" and s.latency_ms is not None]
    with_items = [s.latency_ms for s in shown]
    # The two goals differ: a line at the cursor 150 ms, a block on an empty line 400 ms
    by_place = {
        place: summary([s.latency_ms for s in shown if s.line_start == at])
        for place, at in (("line_start", True), ("mid_line", False))
    }
    outcomes: dict[str, int] = {}
    for s in samples:
        outcomes[s.outcome] = outcomes.get(s.outcome, 0) + 1
    jobs = [r for r in log.stats if r.get("kind") == "infill"]
    done = [r for r in jobs if r.get("outcome") == "done"]
    prompt = [float(r.get("prompt_tokens", 0)) for r in done]
    reused = [float(r.get("reused_tokens", 0)) for r in done]
    reencoded = [p - r for p, r in zip(prompt, reused, strict=True)]
    per_step = [ms for r in done for ms in r.get("decoder_ms", [])]
    tokens = {
        "full_encode_mean": summary(prompt)["mean"],
        "reencoded_per_job_mean": summary(reencoded)["mean"],
        "reencoded_per_keystroke": sum(reencoded) / keys if keys else float("nan"),
        "full_encode_per_keystroke": sum(prompt) / keys if keys else float("nan"),
        "reuse_ratio": sum(reused) / sum(prompt) if sum(prompt) else float("nan"),
        "note": "cancelled jobs log no JobStats; their encode work is not counted",
    }
    return {
        "bench": "latency",
        "when": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "host": {"machine": platform.machine(), "processor": platform.processor(), "python": platform.python_version()},
        "server": {
            "model": spec.model or "embedded",
            "device": spec.device,
            "quantize": spec.quantize,
            "probe": spec.probe,
            "status": status,
            "load_s": load_s,
            "rss_bytes_at_end": memory.get("rss_bytes"),
        },
        "config": asdict(cfg),
        "file": str(path),
        "region": {"start_line": source.count("\n", 0, start) + 1, "chars": len(typed)},
        "keystrokes": keys,
        "typing_s": elapsed,
        "first_request_ms": first_ms,
        "requests": {"sent": len(samples), "at_pauses": len(pauses), "outcomes": outcomes},
        "time_to_result_ms": summary(with_items),
        "time_to_result_by_place_ms": by_place,
        "time_to_answer_ms": summary(answered),
        "server_jobs": {
            "superseded": log.superseded,
            "cancelled": log.cancelled,
            "errors": len(log.errors),
            "typed_ahead": log.typed_ahead,
        },
        "engine": {
            "jobs": len(jobs),
            "done": len(done),
            "cancelled": sum(1 for r in jobs if r.get("outcome") == "cancelled"),
            "errors": sum(1 for r in jobs if str(r.get("outcome", "")).startswith("error")),
            "prompt_tokens": summary(prompt),
            "reused_tokens": summary(reused),
            "reencoded_tokens": summary(reencoded),
            "encode_ms": summary([float(r.get("encode_ms", 0)) for r in done]),
            "steps": summary([float(r.get("steps", 0)) for r in done]),
            "decoder_step_ms": summary(per_step),
            "new_tokens": summary([float(r.get("new_tokens", 0)) for r in done]),
            "total_ms": summary([float(r.get("total_ms", 0)) for r in done]),
            "wall_ms": summary([float(r.get("wall_ms", 0)) for r in done]),
        },
        "tokens": tokens,
        "samples": [asdict(s) | {"sent": s.sent - samples[0].sent} for s in samples],
    }


def print_report(r: dict[str, Any]) -> None:
    ttr, tta, tok, eng = r["time_to_result_ms"], r["time_to_answer_ms"], r["tokens"], r["engine"]
    print(
        f"latency: {r['server']['status'].get('message', '')}; {r['keystrokes']} keystrokes of {r['file']} "
        f"(line {r['region']['start_line']}) in {r['typing_s']:.1f} s"
    )
    if r["first_request_ms"] is not None:
        print(f"  first (cold, explicit) request {r['first_request_ms']:.0f} ms")
    print(f"  time-to-result (with items) p50 {ttr['p50']:.0f} ms  p95 {ttr['p95']:.0f} ms  (n={ttr['n']})")
    print(f"  time-to-answer (all pauses)  p50 {tta['p50']:.0f} ms  p95 {tta['p95']:.0f} ms  (n={tta['n']})")
    for place, ms in r.get("time_to_result_by_place_ms", {}).items():
        if ms["n"]:
            print(f"    {place.replace('_', ' ')}: p50 {ms['p50']:.0f} ms  p95 {ms['p95']:.0f} ms  (n={ms['n']})")
    print(
        f"  requests {r['requests']['sent']} {r['requests']['outcomes']}; server: superseded "
        f"{r['server_jobs']['superseded']}, cancelled {r['server_jobs']['cancelled']}, answered typed-ahead "
        f"{r['server_jobs'].get('typed_ahead', 0)}"
    )
    print(
        f"  engine jobs {eng['jobs']} (done {eng['done']}, cancelled {eng['cancelled']}, errors {eng['errors']}); "
        f"encode p50 {eng['encode_ms']['p50']:.1f} ms, steps mean {eng['steps']['mean']:.1f}"
    )
    print(
        f"  prompt tokens per job {tok['full_encode_mean']:.0f} (full encode) vs re-encoded "
        f"{tok['reencoded_per_job_mean']:.1f}; per keystroke {tok['reencoded_per_keystroke']:.1f} re-encoded vs "
        f"{tok['full_encode_per_keystroke']:.1f} without reuse (reuse {tok['reuse_ratio']:.0%})"
    )
