"""What the line at the cursor must bind: names the code below reads and nothing defines.

A cursor on an empty line, above code that reads `total` (or loops over `idx, elem`) that nothing in scope binds, is
most often where that binding goes: the line that starts a sum, opens the loop, imports the module. A small model
writes a plausible line that ignores the names below (`for i in range(len(numbers)):` above a body that reads `idx`
and `elem`); the checks see the fault (`diagnose.run_faults`) but cannot write the line. The openings here let the
model write it: the pipeline asks again with the opening after the prefix (`total =`, `for idx, elem in`), so the
model only has to finish it, and ranks what comes back with the rest.

Python only; pure functions over the document's text.
"""

from __future__ import annotations

import ast
import sys
from dataclasses import dataclass

from pyflakes import checker, messages

from dg_lsp import flow, languages, pytree
from dg_lsp.diagnose import RUN_FAULT_CHARS, region_of

# More names than this for one line is not a line that binds them (a block went missing, or a paste is half done).
MAX_NAMES = 3
_UNBOUND = (messages.UndefinedName, messages.UndefinedLocal)


@dataclass(frozen=True)
class Opening:
    """How the missing line starts: `text` after the cursor, which the model finishes; `whole`: it is the line."""

    text: str
    whole: bool = False


def openings(text: str, offset: int, language_id: str) -> list[Opening]:
    """Openings of the line at `offset`, which must be an empty line's indentation (or a blank line): [] where the code
    below reads no name that nothing binds, or where it cannot be read."""
    if not languages.has_compiler(language_id):
        return []
    line_start = text.rfind("\n", 0, offset) + 1
    line_end = text.find("\n", offset)
    line_end = len(text) if line_end < 0 else line_end
    if text[line_start:line_end].strip():
        return []
    indent = text[line_start:offset]
    opens_block = _next_indent(text, line_end) > len(indent.expandtabs())
    # a statement in the gap that binds nothing and reads nothing: the document as it would read with any line there
    placeholder = "if True:" if opens_block else "pass"
    names, modules, unsure = _unbound_below(
        text[:offset] + placeholder + text[line_end:], offset, offset + len(placeholder)
    )
    if not opens_block:  # a line that opens no block can bind what only some paths below find bound
        names += [name for name in unsure if name not in names]
    if not names or len(names) > MAX_NAMES:
        return []
    # No space after the opening: the model's tokens carry their leading space (` 0`, ` range`), and a prefix ending
    # in one would leave it the rarer space-less pieces to write.
    if opens_block:
        return [Opening(f"for {', '.join(names)} in")]
    if names == modules:  # `math.sqrt(x)` below, and nothing binds `math`
        return [Opening(f"import {', '.join(names)}", whole=True)]
    return [Opening(f"{', '.join(names)} =")]


def _next_indent(text: str, at: int) -> int:
    """Indentation (columns) of the first non-blank line after offset `at` (-1 at the end of the text)."""
    for line in text[at:].split("\n")[1:]:
        if line.strip():
            return len(line.expandtabs()) - len(line.expandtabs().lstrip())
    return -1


def _unbound_below(edited: str, start: int, end: int) -> tuple[list[str], list[str], list[str]]:
    """Names read after `edited[start:end]` (the placeholder line), within its function, that nothing binds, in the
    order the code reads them; those of them that are a standard module's name, read only as `name.attribute`; and
    the function's locals read there that some path to the read leaves unbound (`flow.py`), in the same order."""
    region = region_of(edited, start, end)
    if region.hi - region.lo > RUN_FAULT_CHARS:
        return [], [], []
    source = edited[region.lo : region.hi]
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return [], [], []
    row = source.count("\n", 0, start - region.lo) + 1
    last = source.count("\n") + 1
    inner: ast.FunctionDef | ast.AsyncFunctionDef | None = None
    for fn in pytree.walk(tree):
        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)) and fn.lineno < row <= (fn.end_lineno or 0):
            if fn.end_lineno is not None and fn.end_lineno <= last:
                inner, last = fn, fn.end_lineno  # the innermost function around the line
    flakes = checker.Checker(tree, filename="<line>", builtins=set(region.outside_names))
    found = sorted((m.lineno, m.col, str(m.message_args[0])) for m in flakes.messages if isinstance(m, _UNBOUND))
    names = list(dict.fromkeys(name for lineno, _, name in found if row < lineno <= last))
    bases = {id(n.value) for n in pytree.walk(tree) if isinstance(n, ast.Attribute)}
    reads = [n for n in pytree.walk(tree) if isinstance(n, ast.Name) and n.id in names]
    modules = [
        name for name in names if name in sys.stdlib_module_names and all(id(n) in bases for n in reads if n.id == name)
    ]
    below = sorted(
        (r.node.lineno, r.node.col_offset, r.node.id) for r in (flow.reads(inner) if inner else []) if not r.must
    )
    unsure = list(dict.fromkeys(name for lineno, _, name in below if row < lineno <= last))
    return names, modules, unsure
