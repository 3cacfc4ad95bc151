"""The cached tree walk visits what `ast` visits, in the same order, however often it is walked."""

import ast
from pathlib import Path

from dg_lsp import diagnose, pytree


def test_walks_and_children_match_ast_every_time():
    tree = ast.parse(Path(diagnose.__file__).read_text())
    for _ in range(2):  # the second walk reads the kept children
        assert list(pytree.walk(tree)) == list(ast.walk(tree))
        for node in ast.walk(tree):
            assert pytree.children(node) == list(ast.iter_child_nodes(node))
    fn = next(n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef))
    assert list(pytree.walk(fn)) == list(ast.walk(fn))
