"""`while` loops that can never end (dg_lsp.loops), checked against what Python does when the loop is entered."""

from __future__ import annotations

import sys
import textwrap

import pytest

from dg_lsp.diagnose import run_faults


class _Hung(Exception):
    pass


def hangs(source: str, *args, limit: int = 20_000) -> bool:
    """Whether `f(*args)` from `source` is still running after `limit` line events."""
    scope: dict = {}
    exec(textwrap.dedent(source), scope)
    seen = [0]

    def trace(frame, event, arg):
        seen[0] += event == "line"
        if seen[0] > limit:
            raise _Hung
        return trace

    sys.settrace(trace)
    try:
        scope["f"](*args)
    except _Hung:
        return True
    finally:
        sys.settrace(None)
    return False


def faults(source: str, line: str) -> int:
    """`run_faults` of the source's line `line` (its text, stripped), as if the editor had just written it there."""
    source = textwrap.dedent(source)
    start = source.index(line)
    end = start + len(line)
    fault = run_faults(source, start, end, line, "python")
    assert fault is not None
    return fault


ENDLESS = [
    # the line that advanced the loop replaced by one that does not (`x //= base` is missing)
    (
        "def f(x, base=2):\n    ret = ''\n    while x > 0:\n        ret += str(x % base)\n    return ret\n",
        "ret +=",
        (5,),
    ),
    # a header whose body never touches its test
    ("def f(div):\n    i = 0\n    while div:\n        i += 1\n    return i\n", "while div:", (3,)),
    ("def f(n):\n    while True:\n        n = n + 1\n    return n\n", "while True:", (1,)),
    # the body reads the list and appends it elsewhere, but never shrinks it
    ("def f(lst):\n    res = []\n    while lst:\n        res.append(min(lst))\n    return res\n", "res.append", ([3],)),
]

ENDS = [
    (
        "def f(x, base=2):\n    ret = ''\n    while x > 0:\n        ret += str(x % base)\n        x //= base\n"
        "    return ret\n",
        "ret +=",
        (5,),
    ),
    (
        "def f(stack):\n    n = 0\n    while stack:\n        stack.pop()\n        n += 1\n    return n\n",
        "n += 1",
        ([1, 2],),
    ),
    (
        "def f(n):\n    while True:\n        n += 1\n        if n > 9:\n            break\n    return n\n",
        "n += 1",
        (1,),
    ),
    ("def f(xs):\n    i = 0\n    while xs[i] < 5:\n        xs[i] = 9\n    return i\n", "xs[i] = 9", ([1],)),
    ("def f(n):\n    while n > 0:\n        n = n - 1\n    return n\n", "n = n - 1", (4,)),
]


@pytest.mark.parametrize(("source", "line", "args"), ENDLESS)
def test_a_loop_nothing_in_its_body_can_end_is_a_fault(source, line, args) -> None:
    assert hangs(source, *args)
    assert faults(source, line) == 1


@pytest.mark.parametrize(("source", "line", "args"), ENDS)
def test_a_loop_whose_body_moves_its_test_or_leaves_is_not(source, line, args) -> None:
    assert not hangs(source, *args)
    assert faults(source, line) == 0


@pytest.mark.parametrize(
    "source",
    [
        # what the condition reads may change out of sight: a call in the test, a function of the program's own, a
        # method on anything, a helper handed the list
        "def f(q):\n    while not q.empty():\n        x = 1\n    return x\n",
        "def f(n):\n    while RUNNING:\n        step()\n    return n\n",
        "def f(n):\n    while RUNNING:\n        worker.run()\n    return n\n",
        "def f(q):\n    while q:\n        drain(q)\n    return q\n",
        "async def f(n):\n    while n:\n        await tick()\n    return n\n",
    ],
)
def test_a_loop_whose_test_may_change_out_of_sight_is_not_judged(source) -> None:
    source = "from elsewhere import RUNNING, drain, step, tick, worker\n" + source
    line = next(x.strip() for x in source.split("\n") if x.strip().startswith("while"))
    assert faults(source, line) == 0
