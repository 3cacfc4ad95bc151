"""Walking a parsed Python tree that is read many times over.

`diagnose.check_run` reads each candidate's tree in ~10 passes (the linter's, the flow of bindings, loops, literals,
smells), and `ast.iter_child_nodes` looked each node's fields up again on every pass: a third of the check's time. Here
a node's children are listed at the first visit and kept on the node (the trees are parsed per check and never
changed), in the order `ast.iter_child_nodes` gives them; `walk` visits in `ast.walk`'s order (caching whole walks
too measured no faster).
"""

from __future__ import annotations

import ast
from collections import deque
from collections.abc import Iterator

_KEPT = "_dg_children"


def children(node: ast.AST) -> list[ast.AST]:
    """`ast.iter_child_nodes(node)` as a list, listed once per node."""
    kept = node.__dict__.get(_KEPT)
    if kept is None:
        kept = []
        for name in node._fields:
            value = getattr(node, name, None)
            if isinstance(value, ast.AST):
                kept.append(value)
            elif isinstance(value, list):
                kept.extend(item for item in value if isinstance(item, ast.AST))
        setattr(node, _KEPT, kept)
    return kept


def walk(node: ast.AST) -> Iterator[ast.AST]:
    """`ast.walk`: `node` and everything below it, breadth first."""
    todo = deque([node])
    while todo:
        node = todo.popleft()
        todo.extend(children(node))
        yield node
