"""Reads of a function's locals judged on the paths that reach them (dg_lsp.flow), checked against what Python does."""

from __future__ import annotations

import ast
import textwrap

import pytest

from dg_lsp import flow


def judged(source: str) -> dict[tuple[str, int], tuple[bool, bool]]:
    """(name, line) -> (may, must) for every read of a local in the source's first function."""
    fn = ast.parse(textwrap.dedent(source)).body[0]
    assert isinstance(fn, ast.FunctionDef)
    return {(r.node.id, r.node.lineno): (r.may, r.must) for r in flow.reads(fn)}


def unbound_error(source: str, *args) -> bool:
    scope: dict = {}
    exec(textwrap.dedent(source), scope)
    try:
        scope["f"](*args)
    except UnboundLocalError:
        return True
    return False


BRANCHES = """
def f(v):
    if v > 0:
        res = 1
    else:
        return res
    return res
"""


def test_a_read_in_the_branch_that_binds_nothing_finds_the_name_unbound() -> None:
    # reading order sees `res = 1` above `return res`; the path through `else` never bound it
    assert judged(BRANCHES) == {("res", 6): (False, False), ("res", 7): (True, True)}
    assert unbound_error(BRANCHES, -1) and not unbound_error(BRANCHES, 1)


LOOPS = """
def f(xs):
    for x in xs:
        if x > best:
            best = x
    for i in range(3):
        pass
    while True:
        found = 1
        break
    return best, i, found
"""


def test_loops_are_read_once_in_order_and_may_not_run() -> None:
    got = judged(LOOPS)
    assert got[("best", 4)] == (False, False)  # the first pass meets the read before the binding
    assert got[("best", 11)] == (True, False)  # the loop may not run
    assert got[("i", 11)] == (True, False)
    assert got[("found", 11)] == (True, True)  # `while True` leaves only by its break, after the binding
    assert unbound_error(LOOPS, [1])


def test_continue_break_try_with_and_walrus_bind_on_their_own_paths() -> None:
    got = judged(
        """
        def f(xs):
            for x in xs:
                if x:
                    y = 1
                    continue
                z = 2
            print(y, z)
            try:
                a = int(xs)
            except ValueError:
                print(a)
            with open(xs) as fh:
                data = fh.read()
            if (n := len(data)) > 1:
                pass
            total += n
            return data
        """
    )
    assert got[("y", 8)] == (True, False)  # bound on the path through `continue`
    assert got[("z", 8)] == (True, False)
    assert got[("a", 12)] == (True, False)  # the handler may run before the binding
    assert got[("fh", 14)] == (True, True) and got[("data", 18)] == (True, True)
    assert got[("n", 17)] == (True, True)
    assert got[("total", 17)] == (False, False)  # `+=` reads first


def test_nested_scopes_parameters_and_globals_are_not_judged() -> None:
    got = judged(
        """
        def f(p, *args, **kw):
            global g
            out = [q for q in p]
            later = lambda: missing
            g = 1
            def inner():
                return out
            return p, args, kw, g, out, later, inner
        """
    )
    assert set(got) == {("out", 9), ("later", 9), ("inner", 9)}
    assert all(may and must for may, must in got.values())


def test_what_it_does_not_model_counts_as_bound() -> None:
    got = judged(
        """
        def f(v):
            match v:
                case [x]:
                    y = x
            return y
        """
    )
    assert got[("y", 6)] == (True, True)


@pytest.mark.parametrize(
    ("new", "unsure"),
    [
        ("return i", 1),  # after a loop that may not run
        ("return times", 0),
    ],
)
def test_a_read_some_path_leaves_unbound_ranks_between_faults_and_hints(new: str, unsure: int) -> None:
    from dg_lsp.diagnose import check_run

    code = "def count(s, sub):\n    times = 0\n    for i in range(len(s)):\n        times += s[i] == sub\n    "
    text = code + "\n"
    check = check_run(text, len(code), len(code), new, "python")
    assert check is not None and check.faults == 0 and check.unsure == unsure


def test_a_comprehension_assigned_whole_is_a_scope_of_its_own() -> None:
    # `i` is bound by the loop below and by the comprehension for itself: no read of the function's `i` here
    got = judged(
        "def f(n):\n    a = [i * i for i in range(n)]\n    for i in range(n):\n        a[i] += 1\n    return a\n"
    )
    assert ("i", 2) not in got and got[("i", 4)] == (True, True)
