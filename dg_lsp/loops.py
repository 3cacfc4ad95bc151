"""`while` loops that can never end: nothing in the body can change what the condition reads, and nothing leaves.

A small model that misses the line a loop advances by (`x //= base` under `while x > 0:`) or writes a loop header whose
body never touches its test (`while div:` above `i += 1`) leaves code that compiles and hangs once the loop is
entered (HumanEval single-line through the editor's path: 20 of the shown answers that fail time out). Such a loop is
a run fault (`diagnose.check_run`) where the edit writes its header or a line of its body.

The judgement is conservative: the condition may change wherever the body binds or deletes a name the condition
reads, stores into it (`x[i] = ...`, `x.n = ...`), calls a method on it, passes it to a call that might mutate it, or
calls anything but a pure builtin (a function may change a global the condition reads); and the loop may end wherever
the body can break out of it, return, raise, yield or await. A condition that calls anything may change by itself.

Python only; pure functions over `ast` nodes.
"""

from __future__ import annotations

import ast
from collections.abc import Sequence

from dg_lsp import flow, pytree

# Builtins that neither change their arguments nor any state a loop's condition could read.
PURE = frozenset(
    "abs all any bin bool chr divmod enumerate float format hex int isinstance len list max min oct ord pow range "
    "repr reversed round set sorted str sum tuple zip".split()
)
# Methods that do not change their arguments (they may change the object they are called on).
_KEEP_ARGS = frozenset(
    "append add count discard endswith extend find get index insert join remove replace split startswith".split()
)


def endless(own: Sequence[ast.AST], first: int, last: int) -> int:
    """`while` loops among a function's own nodes (`own`) that span lines first..last and can never end."""
    count = 0
    for loop in own:
        if isinstance(loop, ast.While) and loop.lineno <= last and first <= (loop.end_lineno or loop.lineno):
            count += _stuck(loop)
    return count


def _stuck(loop: ast.While) -> bool:
    tested = set()
    for node in pytree.walk(loop.test):
        if isinstance(node, (ast.Call, ast.Await, ast.NamedExpr, *flow.SCOPES, *flow.COMPREHENSIONS)):
            return False  # the condition computes something that may change by itself
        if isinstance(node, ast.Name):
            tested.add(node.id)
    return not any(_changes(node, tested) or _leaves(node) for node in flow.own_nodes(loop.body, flow.SCOPES))


def _leaves(node: ast.AST) -> bool:
    """Whether a node of the body can end the loop (a `break` of an inner loop counts too: conservative)."""
    return isinstance(node, (ast.Break, ast.Return, ast.Raise, ast.Yield, ast.YieldFrom, ast.Await))


def _changes(node: ast.AST, tested: set[str]) -> bool:
    """Whether a node of the body may change something the condition reads."""
    if isinstance(node, ast.Name):
        return not isinstance(node.ctx, ast.Load) and node.id in tested
    if isinstance(node, ast.Nonlocal):
        return True
    if isinstance(node, (ast.Attribute, ast.Subscript)) and not isinstance(node.ctx, ast.Load):
        return _base(node) in tested or _base(node) is None
    if isinstance(node, ast.Call):
        func = node.func
        if isinstance(func, ast.Name):
            return func.id not in PURE  # a function of the program's own may change a global the condition reads
        # a method may change its object, and any state besides, unless it is one known to keep its arguments
        return not isinstance(func, ast.Attribute) or func.attr not in _KEEP_ARGS or _base(func.value) in tested
    return False


def _base(node: ast.AST) -> str | None:
    """The name an attribute or subscript chain starts from (`x` of `x.a[i].b`), or None."""
    while isinstance(node, (ast.Attribute, ast.Subscript, ast.Starred)):
        node = node.value
    return node.id if isinstance(node, ast.Name) else None
