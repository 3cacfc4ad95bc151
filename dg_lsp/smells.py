"""Headers that run but say nothing: what a linter flags on the edit's lines that a right line seldom has.

A small model asked for the line above an indented block writes a loop far more often than the test the block needs
(HumanEval single-line through the editor's path: of the 257 missing headers it got wrong, 52 were an `if` answered
with a `for`). Such a loop runs, so no run fault tells it apart; what does is that it binds nothing the code uses: the
body never reads its variable (`for j in range(n):` over `ns.append(i)`), it rebinds the variable of the loop around
it (`for c in s:` inside `for c in s:`), or it walks its own variable (`for c in c:`). A test of an expression
against itself (`if x[i] < x[i]:`) is the same kind of line, as are an assignment of an expression to itself
(`x[i] = x[i]`) and a list given itself (`xs.append(xs)`). Each counts as a linter's hint (`diagnose.check_run`),
which ranks a candidate below one that runs as well without it.

Python only; pure functions over one function's nodes.
"""

from __future__ import annotations

import ast
from collections.abc import Sequence

from dg_lsp import flow, pytree

# Comparisons whose two sides may legitimately be the same expression: a NaN test (`x != x`), identity with itself.
_SELF_OK = (ast.NotEq, ast.Is, ast.IsNot)


def smells(fn: ast.AST, own: Sequence[ast.AST], first: int, last: int) -> int:
    """Loops and tests on lines first..last of `fn` (whose own nodes are `own`, `diagnose._own_nodes`) that bind or
    test nothing: see the module's docstring."""
    reads = {n.id for n in own if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}
    count = 0
    for loop in (n for n in own if isinstance(n, (ast.For, ast.AsyncFor)) and first <= n.lineno <= last):
        names = flow.stored(loop.target)
        if not names:
            continue
        count += not names & reads and not all(name.startswith("_") for name in names)
        count += bool(names & _enclosing_targets(fn, loop))
        count += bool(names & {n.id for n in pytree.walk(loop.iter) if isinstance(n, ast.Name)})
    for node in (n for n in own if first <= getattr(n, "lineno", 0) <= last):
        count += _to_itself(node)
    for test in (n for n in own if isinstance(n, ast.Compare) and first <= n.lineno <= last):
        sides = [test.left, *test.comparators]
        count += any(not isinstance(op, _SELF_OK) and _same(a, b) for op, a, b in zip(test.ops, sides, sides[1:]))
    return count


def _to_itself(node: ast.AST) -> bool:
    """An assignment of an expression to itself (`x[i] = x[i]`), or a container given itself (`xs.append(xs)`)."""
    if isinstance(node, ast.Assign) and len(node.targets) == 1:
        return _same(node.targets[0], node.value)
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in _GROW:
        return any(_same(node.func.value, arg) for arg in node.args)
    return False


_GROW = frozenset(("append", "extend", "add", "insert"))


def _same(a: ast.AST, b: ast.AST) -> bool:
    """Whether two expressions are written alike (their load or store context aside)."""
    return ast.dump(a).replace("Store()", "Load()") == ast.dump(b)


def _enclosing_targets(fn: ast.AST, loop: ast.AST) -> set[str]:
    """Names the loops around `loop` (within `fn`) bind."""
    names: set[str] = set()
    stack: list[tuple[ast.AST, frozenset[str]]] = [(fn, frozenset())]
    while stack:
        node, outer = stack.pop()
        if node is loop:
            names |= outer
            continue
        inner = outer | flow.stored(node.target) if isinstance(node, (ast.For, ast.AsyncFor)) else outer
        for child in pytree.children(node):
            if isinstance(node, (ast.For, ast.AsyncFor)) and child in (node.target, node.iter):
                continue
            stack.append((child, inner))
    return names
