"""`dg-lsp`: run the language server (stdio or TCP), or one of its sub-commands.

    dg-lsp [--stdio | --tcp [HOST:]PORT] [--model M] [--device D] [--quantize Q] [--log-file F] [--log-level L]
    dg-lsp complete FILE:LINE:COL     the completion the server would give there (1-based line and column)
    dg-lsp rewrite FILE:START-END     the rewrite of lines START..END (1-based, inclusive)
    dg-lsp fix FILE:START-END         lines START..END with their slips fixed, or why nothing changed
    dg-lsp doctor                     what is installed, where the model is, whether it loads, how fast

`complete` and `rewrite` call the same functions as the LSP handlers (`dg_lsp.pipeline`, `dg_lsp.rewrite_block`).
More sub-commands (eval, bench, train) plug in through `SUBCOMMANDS`: add a `Subcommand(add_arguments, run, help)`
under a name, directly or from a module listed in `SUBCOMMAND_MODULES` (imported before parsing; keep its heavy
imports inside `run`).

`main(argv, engines=LOCAL, extras=())` is the whole program: a program that runs dg-lsp differently passes how its
models load (`engines.Engines`: the server's and every sub-command's) and feature registrations to add to the
server (`extras`); the tests' `tests/fake_server.py` and the benchmarks' `dg_bench.probe` are such programs.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from lsprotocol.types import Position

from dg_model.api import EngineError

from . import convert, doctor
from .engines import LOCAL, Engines
from .languages import spec_for
from .settings import RemoteSettings, Settings

if TYPE_CHECKING:
    from .server import Register

log = logging.getLogger("dg_lsp")


class Subcommand(NamedTuple):
    add_arguments: Callable[[argparse.ArgumentParser], None]
    # Gets the parsed args (incl. the model flags) and how models load (`engines.load`); returns the exit code.
    run: Callable[[argparse.Namespace, Engines], int]
    help: str = ""


SUBCOMMANDS: dict[str, Subcommand] = {}


def registries() -> list:
    """Modules whose SUBCOMMANDS a plug-in must fill: `python -m dg_lsp.cli` runs this file as `__main__`, a second
    module object next to `dg_lsp.cli`, so registering in one alone would miss the other."""
    this = sys.modules.get("dg_lsp.cli")
    main = sys.modules.get("__main__")
    out = [m for m in (this,) if m is not None]
    if main is not None and main is not this and getattr(getattr(main, "__spec__", None), "name", None) == "dg_lsp.cli":
        out.append(main)
    return out


SUBCOMMAND_MODULES: tuple[str, ...] = ("dg_lsp.eval_cmd", "dg_bench")


def main(argv: list[str] | None = None, engines: Engines = LOCAL, extras: Sequence[Register] = ()) -> int:
    for module in SUBCOMMAND_MODULES:
        try:
            importlib.import_module(module)
        except ImportError as exc:  # a broken optional stack must not take `dg-lsp --stdio` down with it
            print(f"dg-lsp: sub-commands from {module} unavailable: {exc}", file=sys.stderr)
    args = build_parser().parse_args(argv)
    setup_logging(args.log_file, args.log_level)
    if args.command is None:
        return serve(args, engines, extras)
    return SUBCOMMANDS[args.command].run(args, engines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dg-lsp",
        description="Language server for multi-line code completion and block rewrites from a local diffusion model. "
        "Without a COMMAND it runs the server.",
    )
    parser.add_argument("--version", action=_Version, nargs=0, help="print the version and exit")
    transport = parser.add_mutually_exclusive_group()
    transport.add_argument("--stdio", action="store_true", help="talk LSP over stdin/stdout (the default)")
    transport.add_argument(
        "--tcp",
        metavar="[HOST:]PORT",
        type=_host_port,
        help="listen for one LSP client on TCP (host 127.0.0.1 unless given)",
    )
    _add_model_flags(parser, defaults=True)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, command in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=command.help, description=command.help)
        _add_model_flags(p, defaults=False)
        command.add_arguments(p)
    return parser


class _Version(argparse.Action):
    # Lazy: the version lives with the server module, which `--help` and sub-commands need not import.
    def __call__(self, parser, namespace, values, option_string=None):
        from .server import __version__

        print(f"dg-lsp {__version__}")
        parser.exit()


def _add_model_flags(parser: argparse.ArgumentParser, *, defaults: bool) -> None:
    # Sub-parsers repeat these with SUPPRESS defaults so they work before or after the sub-command name without
    # the sub-parser's defaults overwriting values given before it.
    d = (lambda value: value) if defaults else (lambda value: argparse.SUPPRESS)
    parser.add_argument(
        "--model", metavar="PATH|HF_ID", default=d(None), help="model weights (default: the embedded model)"
    )
    parser.add_argument(
        "--device", choices=["auto", "cpu", "cuda"], default=d("auto"), help="where the model runs (default: auto)"
    )
    parser.add_argument(
        "--quantize",
        choices=["none", "8bit", "4bit"],
        default=d("none"),
        help="weight quantization, CUDA only (default: none)",
    )
    parser.add_argument(
        "--remote",
        metavar="URL",
        default=d(None),
        help="use the model served at this OpenAI-compatible /v1 base (vLLM) instead of a local one; "
        "API key from DG_LSP_API_KEY (docs/remote.md)",
    )
    parser.add_argument(
        "--remote-model",
        metavar="NAME",
        default=d(None),
        help="the served model's name (default: the one model the server lists)",
    )
    parser.add_argument("--log-file", metavar="PATH", default=d(None), help="write logs here instead of stderr")
    parser.add_argument(
        "--log-level",
        choices=["debug", "info", "warning", "error"],
        default=d("info"),
        help="log verbosity (default: info)",
    )


def _host_port(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    host = host.strip("[]") if sep else "127.0.0.1"
    try:
        number = int(port)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected [HOST:]PORT, got {value!r}") from None
    if not 0 <= number <= 65535:
        raise argparse.ArgumentTypeError(f"port out of range: {number}")
    return host or "127.0.0.1", number


def setup_logging(log_file: str | None, level: str) -> None:
    handler: logging.Handler = (
        logging.FileHandler(log_file, encoding="utf-8") if log_file else logging.StreamHandler(sys.stderr)
    )
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler._dg_lsp = True  # type: ignore[attr-defined]  # replace our own handler on a second call, only it
    root = logging.getLogger()
    root.handlers[:] = [h for h in root.handlers if not getattr(h, "_dg_lsp", False)] + [handler]
    root.setLevel(level.upper())
    # pygls logs every message body at INFO; a 5 MB didOpen would flood the log.
    logging.getLogger("pygls").setLevel(logging.DEBUG if level == "debug" else logging.WARNING)
    logging.getLogger("httpx").setLevel(logging.DEBUG if level == "debug" else logging.WARNING)  # a line per request


def settings_from(args: argparse.Namespace) -> Settings:
    """The base settings the command line gives; client settings merge over these."""
    return Settings(
        model=args.model,
        device=args.device,
        quantize=args.quantize,
        log_level=args.log_level,
        remote=RemoteSettings(url=args.remote, model=args.remote_model),
    )


def engine_from(args: argparse.Namespace, engines: Engines):
    """Load the engine the flags name (for sub-commands). Raises EngineError."""
    if args.remote:
        from . import remote

        return remote.connect(settings_from(args))
    return engines.load(args.model, device=args.device, quantize=args.quantize)


# -- the server --


def serve(args: argparse.Namespace, engines: Engines, extras: Sequence[Register] = ()) -> int:
    from .server import create_server  # pygls and the handlers only for the server itself

    server = create_server(settings_from(args), engines, extras)
    if args.tcp is not None:
        host, port = args.tcp
        server.start_tcp(host, port)
        return server.exit_code
    # The protocol gets its own handle on the real stdout; fd 1 and sys.stdout then point at stderr, so a stray
    # print() or a C library writing to stdout cannot corrupt the JSON-RPC stream.
    protocol_out = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    sys.stdout = sys.stderr
    server.start_io(sys.stdin.buffer, protocol_out)
    return server.exit_code


# -- complete / rewrite --


def _add_complete_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("target", metavar="FILE:LINE:COL", help="1-based line and column (column in characters)")
    p.add_argument("--language", metavar="ID", help="LSP language id (default: from the file extension)")
    p.add_argument("--json", action="store_true", help="print every candidate as JSON edits")


def _add_rewrite_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("target", metavar="FILE:START-END", help="1-based inclusive line range (or FILE:LINE)")
    p.add_argument("--language", metavar="ID", help="LSP language id (default: from the file extension)")
    p.add_argument("--json", action="store_true", help="print the edit as JSON")


def run_complete(args: argparse.Namespace, engines: Engines) -> int:
    path, line, col = _split_target(args.target)
    text, language = _read(path, args.language)
    starts = convert.line_starts(text)
    _line_offset(text, starts, line)
    # Columns count characters; one past the end of the line means its end, as in the server.
    offset = convert.offset_at(text, Position(line=line - 1, character=col - 1), convert.UTF32, starts)
    engine = _engine_or_exit(args, engines)
    from . import pipeline  # tree-sitter and the post-processor only for the commands that use them

    edits = pipeline.complete(engine, text, offset, language, settings_from(args), doc_key=str(path)).edits
    return _print_edits(args, text, edits, "no completion here")


def _line_range(args: argparse.Namespace) -> tuple[Path, str, str, int, int]:
    """FILE:START-END as (path, text, language, start, end): whole lines, the last one's line break included."""
    path, first, last = _split_target(args.target, range_sep="-")
    text, language = _read(path, args.language)
    starts = convert.line_starts(text)
    if last < first:
        _fail(f"empty line range {first}-{last}")
    start = _line_offset(text, starts, first)
    return path, text, language, start, starts[last] if last < len(starts) else len(text)


def run_rewrite(args: argparse.Namespace, engines: Engines) -> int:
    path, text, language, start, end = _line_range(args)
    engine = _engine_or_exit(args, engines)
    from . import rewrite_block

    edit = rewrite_block.rewrite_range(engine, text, start, end, language, settings_from(args), doc_key=str(path))
    if edit is None or args.json:
        return _print_edits(args, text, [edit] if edit else [], rewrite_block.NO_REWRITE)
    # The rewritten lines: the range with the edit applied (the edit may extend past the range's end).
    stop = max(end, edit.end)
    sys.stdout.write(text[start : edit.start] + edit.text + text[edit.end : stop])
    return 0


def run_fix(args: argparse.Namespace, engines: Engines) -> int:
    path, text, language, start, end = _line_range(args)
    engine = _engine_or_exit(args, engines)
    from .fix import fix_range

    result = fix_range(engine, text, start, end, language, settings_from(args), doc_key=str(path))
    edit = result.edit
    if edit is None or args.json:
        return _print_edits(args, text, [edit] if edit else [], result.message)
    print(f"dg-lsp: {result.message}", file=sys.stderr)
    sys.stdout.write(text[start : edit.start] + edit.text + text[edit.end : max(end, edit.end)])
    return 0


def _split_target(target: str, range_sep: str | None = None) -> tuple[Path, int, int]:
    try:
        if range_sep:
            path, spec = target.rsplit(":", 1)
            first, _, last = spec.partition(range_sep)
            a, b = int(first), int(last or first)
        else:
            path, line, col = target.rsplit(":", 2)
            a, b = int(line), int(col)
    except ValueError:
        _fail(f"cannot parse {target!r}; expected " + ("FILE:START-END" if range_sep else "FILE:LINE:COL"))
    if a < 1 or b < 1:
        _fail("lines and columns are 1-based")
    return Path(path), a, b


def _read(path: Path, language: str | None) -> tuple[str, str]:
    try:
        with open(path, encoding="utf-8", errors="replace", newline="") as fh:  # keep CRLF as it is
            text = fh.read()
    except OSError as exc:
        _fail(f"cannot read {path}: {exc}")
    if language is None:
        spec = spec_for(str(path))
        language = spec.ids[0] if spec else "plaintext"
    return text, language


def _line_offset(text: str, starts: list[int], line: int) -> int:
    if line > len(starts):
        _fail(f"line {line} is past the end of the file ({len(starts)} lines)")
    return starts[line - 1]


def _engine_or_exit(args: argparse.Namespace, engines: Engines):
    try:
        return engine_from(args, engines)
    except EngineError as exc:
        _fail(f"cannot load the model: {exc}", code=1)


def _print_edits(args: argparse.Namespace, text: str, edits: list, empty_message: str) -> int:
    if args.json:
        starts = convert.line_starts(text)
        out = []
        for e in edits:
            rng = convert.range_at(text, e.start, e.end, convert.UTF32, starts)
            out.append(
                {
                    "start": {"line": rng.start.line + 1, "col": rng.start.character + 1},
                    "end": {"line": rng.end.line + 1, "col": rng.end.character + 1},
                    "text": e.text,
                }
            )
        print(json.dumps(out, indent=2))
        return 0 if edits else 1
    if not edits:
        print(f"dg-lsp: {empty_message}", file=sys.stderr)
        return 1
    sys.stdout.write(edits[0].text if edits[0].text.endswith("\n") else edits[0].text + "\n")
    return 0


def _fail(message: str, code: int = 2):
    print(f"dg-lsp: {message}", file=sys.stderr)
    raise SystemExit(code)


SUBCOMMANDS["complete"] = Subcommand(_add_complete_args, run_complete, "print the completion at FILE:LINE:COL")
SUBCOMMANDS["rewrite"] = Subcommand(_add_rewrite_args, run_rewrite, "print the rewrite of lines FILE:START-END")
SUBCOMMANDS["fix"] = Subcommand(_add_rewrite_args, run_fix, "print lines FILE:START-END with their slips fixed")
SUBCOMMANDS["doctor"] = Subcommand(doctor.add_arguments, doctor.run, "check the installation and the model")


if __name__ == "__main__":
    sys.exit(main())
