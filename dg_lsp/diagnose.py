"""What is wrong with a block of code, by the exact checks that are cheap: the language's compiler (Python),
tree-sitter's ERROR and MISSING nodes (every language), and pyflakes' undefined and unused names (Python).

"Fix this block" asks this of the block as it is and of every repair it considers: a repair must leave the code with
fewer problems than it found, or none where there were none. Checks run on the top-level statement(s) around the
block, as the rest of the file reads them (names the file defines elsewhere count as defined), so a keystroke in a
large file costs one small parse per candidate.
"""

from __future__ import annotations

import ast
import builtins
import functools
import keyword
import re
from dataclasses import dataclass

from pyflakes import checker, messages

from dg_lsp import flow, languages, literals, loops, pytree, smells
from dg_lsp.languages import Doc, top_level_region

IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# A module's top-level definitions by their line's shape, for files that do not parse as a whole.
_TOP_NAME = re.compile(r"^(?:async\s+)?(?:def|class)\s+([A-Za-z_]\w*)|^([A-Za-z_]\w*)\s*(?::[^=]*)?=[^=]", re.M)
_IMPORTED = re.compile(r"^(?:from\s+\S+\s+)?import\s+(.+)$", re.M)
# run_faults reads the whole top-level statement around an edit, ~1 ms per 1,000 characters for each candidate it
# weighs (15 ms for textwrap.py's TextWrapper class): past this it leaves the model's order.
RUN_FAULT_CHARS = 6_000


@dataclass(frozen=True)
class Problem:
    kind: str  # "syntax" | "undefined-name" | "unused-name"
    start: int  # document offsets of what is wrong (a syntax error: where the parser gave up)
    end: int
    message: str
    name: str = ""

    @property
    def hard(self) -> bool:
        """The code cannot be right as it is. An unused name is only a hint (a misspelt assignment, or unfinished)."""
        return self.kind != "unused-name"


@dataclass(frozen=True)
class Region:
    """The rows a block's checks read: the top-level statement(s) around it, and the names defined outside them."""

    lo: int  # document offsets
    hi: int
    outside_names: frozenset[str]


def region_of(text: str, start: int, end: int) -> Region:
    doc = Doc(text, start)
    lo_row, hi_row = top_level_region(doc.lines, doc.row, doc.locate(max(start, end - 1))[0] + 1)
    lo = doc.offset_of(lo_row, 0)
    hi = doc.offset_of(hi_row - 1, len(doc.lines[hi_row - 1])) if hi_row > 0 else len(text)
    hi = min(len(text), hi + 1) if text[hi : hi + 1] == "\n" else hi
    return Region(lo, hi, module_names(text[:lo] + text[hi:]))


@functools.lru_cache(maxsize=4)
def module_names(text: str) -> frozenset[str]:
    """Names a file defines at top level (functions, classes, assignments, imports). Cached: the candidates weighed
    for one request (`run_faults`) all leave the text outside their statement as it was."""
    names: set[str] = set()
    try:
        tree = ast.parse(text)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        for match in _TOP_NAME.finditer(text):
            names.add(match.group(1) or match.group(2))
        for match in _IMPORTED.finditer(text):
            names.update(part.split(" as ")[-1].strip(" ()").split(".")[0] for part in match.group(1).split(","))
        return frozenset(n for n in names if n)
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
        else:
            names.update(n.id for n in pytree.walk(node) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store))
    return frozenset(names)


def problems(text: str, start: int, end: int, language_id: str, region: Region | None = None) -> list[Problem]:
    """Problems in the region around `text[start:end]`; names only where they fall inside the block."""
    region = region or region_of(text, start, end)
    source = text[region.lo : region.hi]
    if languages.has_compiler(language_id):
        return _python_problems(source, region, start, end)
    tree = languages.parse(source.encode("utf-8", "surrogatepass"), language_id)
    if tree is None:
        return []
    return [Problem("syntax", region.lo, region.hi, "tree-sitter error")] * languages.count_errors(tree.root_node)


@dataclass(frozen=True, order=True)
class RunCheck:
    """How code reads once an edit is made, worst first when sorted: `faults`, what a run would certainly hit
    (`run_faults`); `unsure`, locals a read may find unbound (some path to it binds the name, another does not:
    `return i` after a loop that may not run, `if is_prime:` below a loop that sets it only on a break); `hints`, what
    a linter flags that working code seldom has (`_hints`)."""

    faults: int
    unsure: int
    hints: int


def run_faults(text: str, start: int, end: int, new: str, language_id: str) -> int | None:
    """What running the code around would certainly hit once `new` takes the place of `text[start:end]`: uses of
    names that nothing in scope defines (the code after the cursor counts: a line that defines the name the next
    lines use removes one), locals read before their function binds them, calls in `new` of its own function that
    recur on every call, loops in `new` over a number, uses of a local `new` binds to a literal that the literal's
    type cannot serve (`count = []` above `count += 1`: `literals.py`), and `while` loops around or on its lines that
    nothing can end (`loops.py`). Python; None for other languages, where the
    code does not parse (nothing to judge by), or where the statement around is over `RUN_FAULT_CHARS`."""
    check = check_run(text, start, end, new, language_id)
    return None if check is None else check.faults


def check_run(text: str, start: int, end: int, new: str, language_id: str) -> RunCheck | None:
    """`run_faults`, and the linter's hints about the function `new` lands in (`_hints`), from one parse (None as
    there)."""
    if not languages.has_compiler(language_id):
        return None
    edited = text[:start] + new + text[end:]
    region = region_of(edited, start, start + len(new))
    if region.hi - region.lo > RUN_FAULT_CHARS:
        return None
    source = edited[region.lo : region.hi]
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return None
    found = _python_problems(source, region, region.lo, region.hi, tree)
    first, last = (source.count("\n", 0, at - region.lo) + 1 for at in (start, start + len(new)))
    undefined = [p.name for p in found if p.kind == "undefined-name"]
    unbound, unsure = _unbound_reads(tree, set(undefined))
    faults = len(undefined) + _endless_calls(tree, first, last) + unbound
    # only a function spanning the edit's lines can bind a name on them or loop over them: the others' nodes are not
    # collected
    spanning = [
        fn
        for fn in pytree.walk(tree)
        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef))
        and fn.lineno <= last
        and first <= (fn.end_lineno or fn.lineno)
    ]
    for fn in spanning:
        own = list(_own_nodes(fn))
        faults += literals.misuses(fn, own, first, last) + loops.endless(own, first, last)
    faults += literals.number_loops(tree, first, last) + literals.bad_unpacking(tree, first, last)
    unused = [start <= p.start < start + len(new) for p in found if p.kind == "unused-name"]  # bound by `new`?
    return RunCheck(faults, unsure, _hints(tree, first, last, unused.count(True), unused.count(False)))


def _hints(tree: ast.AST, first: int, last: int, unused_new: int, unused_old: int) -> int:
    """What a linter flags in the innermost function around lines first..last, that working code seldom has: locals
    bound and never read (pyflakes; `unused_old` bound elsewhere, as `total = sum(xs)` above `return True`, and, where
    code follows, `unused_new` bound on those lines); where code follows, a parameter it never reads (the line that
    read it is the one missing); a bare `return` beside returns of a value; returns on those lines of a literal whose
    type the annotation excludes (`return None` in `-> str`) or, with no annotation, that none of its other literal
    returns has (`return 0` where they are strings); code that can never run (`_dead_code`); loops and tests on
    those lines that bind or test nothing (`smells.py`)."""
    fn = None
    for node in pytree.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.lineno <= first <= (node.end_lineno or 0):
            fn = node if fn is None or node.lineno > fn.lineno else fn
    if fn is None:
        return 0
    read = {n.id for n in pytree.walk(fn) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}
    params = [a.arg for a in fn.args.posonlyargs + fn.args.args + fn.args.kwonlyargs]
    count = unused_old
    if last < (fn.end_lineno or 0):  # at the end of code still being written, names wait for the lines that read them
        count += unused_new + sum(p not in read and p not in ("self", "cls") and not p.startswith("_") for p in params)
    own = list(_own_nodes(fn))
    returns = [n for n in own if isinstance(n, ast.Return)]
    kinds = [_literal_kind(r.value) for r in returns]
    count += None in kinds and any(k != "None" for k in kinds if k is not None)  # a bare return reads as None
    allowed = _annotated_kinds(fn.returns)
    for ret, kind in zip(returns, kinds):
        if not first <= ret.lineno <= last or kind in (None, "?"):
            continue
        others = {k for r, k in zip(returns, kinds) if r is not ret and k not in (None, "?")}
        expected = allowed if allowed is not None else others
        count += bool(expected) and not _KIN.get(kind, {kind}) & expected
    return count + _dead_code(fn, own, first, last) + smells.smells(fn, own, first, last)


def _dead_code(fn: ast.AST, own: list[ast.AST], first: int, last: int) -> int:
    """Branches that can never run: tests on lines first..last that an `if` of the same chain (`elif`), or an
    earlier sibling `if` that always leaves, already took, or that such a later one repeats (`if n == 1:` written
    above `if n == 1: return 1`, where the base case `n == 0` was missing); statements after one that always leaves
    (`else: return 1` above the function's last `return`). `own`: the function's own nodes (`_own_nodes`)."""
    elifs = {id(n.orelse) for n in own if isinstance(n, ast.If) and _elif(n) is not None}
    count = 0
    for node in (fn, *own):
        for block in (getattr(node, field, None) for field in ("body", "orelse", "finalbody")):
            if not isinstance(block, list) or id(block) in elifs:
                continue
            left: list[tuple[str, int]] = []  # tests of earlier `if`s here whose branch always leaves
            for stmt in block:
                chain, tested = (stmt if isinstance(stmt, ast.If) else None), list(left)
                while chain is not None:
                    test, at = ast.dump(chain.test), chain.test.lineno
                    count += any(t == test and (first <= at <= last or first <= line <= last) for t, line in tested)
                    tested.append((test, at))
                    chain = _elif(chain)
                if isinstance(stmt, ast.If) and _leaves(stmt.body[-1]):
                    left.append((ast.dump(stmt.test), stmt.test.lineno))
            count += any(_leaves(stmt) for stmt in block[:-1])  # what follows can never run
    return count


def _leaves(stmt: ast.stmt) -> bool:
    """Whether a statement always leaves its block: return, raise, break, continue, or an if/else all of whose
    branches do."""
    if isinstance(stmt, ast.If):
        return bool(stmt.orelse) and _leaves(stmt.body[-1]) and _leaves(stmt.orelse[-1])
    return isinstance(stmt, (ast.Return, ast.Raise, ast.Break, ast.Continue))


def _elif(node: ast.If) -> ast.If | None:
    only = node.orelse[0] if len(node.orelse) == 1 else None
    return only if isinstance(only, ast.If) else None


# Literal kinds a return can be judged by, and those that stand in for one another (a flag may be 0 or False).
_KIN = {"int": {"int", "float", "bool"}, "float": {"int", "float"}, "bool": {"bool", "int"}}
_ANNOTATED = {"bool": "bool", "int": "int", "float": "float", "str": "str", "bytes": "bytes", "None": "None"}
_ANNOTATED |= {name: name.lower() for name in ("List", "Dict", "Tuple", "Set")} | {
    k: k for k in ("list", "dict", "tuple", "set")
}


def _literal_kind(value: ast.expr | None) -> str | None:
    """The type a returned expression certainly has ("?" when that takes more than its syntax; None: a bare return)."""
    if value is None:
        return None
    if isinstance(value, ast.UnaryOp) and isinstance(value.op, (ast.USub, ast.UAdd)):
        value = value.operand  # -1 is a number as 1 is
    if isinstance(value, ast.Constant):
        return "None" if value.value is None else type(value.value).__name__
    if isinstance(value, ast.Compare) or (isinstance(value, ast.UnaryOp) and isinstance(value.op, ast.Not)):
        return "bool"
    shapes = {ast.List: "list", ast.ListComp: "list", ast.Tuple: "tuple", ast.Dict: "dict", ast.DictComp: "dict"}
    shapes |= {ast.Set: "set", ast.SetComp: "set", ast.JoinedStr: "str"}
    return shapes.get(type(value), "?")


def _annotated_kinds(annotation: ast.expr | None) -> set[str] | None:
    """The literal kinds a return annotation admits; None where it says nothing a literal can be held to (absent,
    Optional, a union, Any, a class of the program's own)."""
    if annotation is None:
        return None
    head = annotation.value if isinstance(annotation, ast.Subscript) else annotation
    name = head.attr if isinstance(head, ast.Attribute) else head.id if isinstance(head, ast.Name) else None
    if isinstance(annotation, ast.Constant) and annotation.value is None:
        name = "None"
    kind = _ANNOTATED.get(name or "")
    return None if kind is None else _KIN.get(kind, {kind})


def _unbound_reads(tree: ast.AST, reported: set[str]) -> tuple[int, int]:
    """Locals that some read in a function finds unbound on every path that reaches it (`flow.py`: `total += n` above
    `total = 0`, or `return res` in the `else` of an `if` that binds `res`), an UnboundLocalError on the path that
    gets there, which pyflakes does not report once the name is assigned anywhere in the function (names it did
    report, in `reported`, count once); and, apart, locals some read finds bound on some of its paths only."""
    unbound: set[str] = set()
    unsure: set[str] = set()
    for fn in pytree.walk(tree):
        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            found = flow.reads(fn)
            unbound |= {read.node.id for read in found if not read.may}
            unsure |= {read.node.id for read in found if read.may and not read.must}
    return len(unbound - reported), len(unsure - unbound - reported)


def _endless_calls(tree: ast.AST, first: int, last: int) -> int:
    """Calls on lines first..last of a function to itself that recur on every call: with its parameters as they came
    where it never rebinds them (`return fib(n)` inside `fib(n)`, `self.run(x)` inside `run(self, x)`), or with any
    arguments from a statement every call reaches (the body's first statements, before anything that can return; a
    function defined among them returns from itself only)."""
    count = 0
    for fn in pytree.walk(tree):
        if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        params, own = [a.arg for a in fn.args.posonlyargs + fn.args.args], list(_own_nodes(fn))
        rebound = any(isinstance(n, ast.Name) and not isinstance(n.ctx, ast.Load) and n.id in params for n in own)
        always: set[int] = set()
        for stmt in fn.body:
            always.update(id(n) for n in _unconditional(stmt))
            if not isinstance(stmt, flow.SCOPES) and any(
                isinstance(n, (ast.Return, ast.Raise, ast.Yield, ast.YieldFrom)) for n in _own_nodes(stmt)
            ):
                break
        for node in own:
            if not isinstance(node, ast.Call) or not first <= node.lineno <= last:
                continue
            func, args = node.func, [a.id if isinstance(a, ast.Name) else None for a in node.args]
            if isinstance(func, ast.Name) and func.id == fn.name:
                unchanged = args == params
            elif (
                isinstance(func, ast.Attribute)
                and func.attr == fn.name
                and isinstance(func.value, ast.Name)
                and func.value.id in ("self", "cls")
            ):
                unchanged = [func.value.id, *args] == params
            else:
                continue
            count += (unchanged and not rebound and not node.keywords) or id(node) in always
    return count


def _unconditional(stmt: ast.stmt):
    """The nodes of a simple statement that run whenever it does (not behind `and`, `if`-expressions, lambdas or
    comprehensions); compound statements (if, for, try, ...) run theirs conditionally."""
    if not isinstance(stmt, (ast.Expr, ast.Return, ast.Assign, ast.AugAssign, ast.AnnAssign)):
        return
    stack: list[ast.AST] = [stmt]
    while stack:
        node = stack.pop()
        yield node
        if not isinstance(
            node, (ast.BoolOp, ast.IfExp, ast.Lambda, ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp)
        ):
            stack.extend(pytree.children(node))


def _own_nodes(fn: ast.AST, skip: tuple[type, ...] = flow.SCOPES):
    """The nodes of a function's own scope: not those of functions, lambdas or classes defined inside it (nor of any
    other node type in `skip`)."""
    return flow.own_nodes(pytree.children(fn), skip)


def _python_problems(
    source: str, region: Region, start: int, end: int, tree: ast.Module | None = None
) -> list[Problem]:
    """`problems` for Python, over `tree` where the caller has parsed `source` already."""
    try:
        tree = tree or ast.parse(source)
    except SyntaxError as exc:
        at = region.lo + _offset(source, exc.lineno or 1, (exc.offset or 1) - 1)
        return [Problem("syntax", at, at, exc.msg or "invalid syntax")]
    except (ValueError, RecursionError, MemoryError) as exc:
        return [Problem("syntax", region.lo, region.lo, str(exc))]
    found = []
    flakes = checker.Checker(tree, filename="<block>", builtins=set(region.outside_names))
    for msg in flakes.messages:
        kind = {messages.UndefinedName: "undefined-name", messages.UnusedVariable: "unused-name"}.get(type(msg))
        if kind is None:
            continue
        name = str(msg.message_args[0])
        at = region.lo + _offset(source, msg.lineno, msg.col)
        name_at = source.find(name, at - region.lo) + region.lo
        if start <= name_at < end:
            found.append(Problem(kind, name_at, name_at + len(name), msg.message % msg.message_args, name))
    return found


def _offset(source: str, lineno: int, col: int) -> int:
    lines = source.splitlines(keepends=True)
    return sum(len(x) for x in lines[: max(0, lineno - 1)]) + max(0, col)


def name_pool(text: str, language_id: str) -> set[str]:
    """Names a repair may use: every identifier in the file, plus the language's keywords and builtins."""
    pool = set(IDENTIFIER.findall(text))
    if languages.has_compiler(language_id):
        pool |= set(keyword.kwlist) | {n for n in dir(builtins) if not n.startswith("_")}
    return pool
