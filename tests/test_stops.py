"""Where a middle may end: pure checks over the text decoded so far and the code around it."""

import pytest

from dg_model.stops import can_end

BODY = "    for x in xs:\n        total += x\n    return total\n"


@pytest.mark.parametrize(
    ("prefix", "text", "suffix", "ok"),
    [
        # a header with nothing under it: the code after the cursor is not its body
        ("def f(xs):\n    ", "for x in xs:", "\n    return 0\n", False),
        ("def f(xs):\n    ", "for x in xs:\n        if x:", "\n    return 0\n", False),
        # the suffix holds the header's body: the middle is the header line
        ("def f(xs):\n    ", "for x in xs:", "\n        total += x\n", True),
        # a complete statement, and a header followed by its body
        ("def f(xs):\n    ", "total = 0", "\n" + BODY, True),
        ("def f(xs):\n    ", "for x in xs:\n        total += x", "\n    return total\n", True),
        # a bracket opened and not closed, unless the suffix closes it
        ("def f(xs):\n    ", "return sum(x for x in xs", "\n\nprint(1)\n", False),
        ("def f(xs):\n    return g(\n        ", "xs,", "\n    )\n", True),
        # brackets and colons inside strings and comments do not count
        ("def f():\n    ", 'print("(:")', "\n", True),
        ("def f():\n    ", "x = 1  # see (below:", "\n", True),
        ("def f():\n    ", 's = """a ( b\n    c"""', "\n", True),
        # mid-line: the rest of the line follows the middle, so the middle may stop anywhere
        ("def f(xs):\n    if ", "xs and (", "):\n        pass\n", True),
        # end of file after a header: never complete
        ("class A:\n    ", "def m(self):", "\n", False),
        # the next line is deeper: the middle must open its block (a plain statement there does not run)
        ("def f(xs):\n    for x in xs:\n        ", "x.append(1)", "\n            return x\n", False),
        ("def f(xs):\n    for x in xs:\n        ", "if x > 1:", "\n            return x\n", True),
        # ...or go on to it (a continued expression, a brace-less header in a C-like language)
        ("def f(xs):\n    ", "total = x + \\", "\n        y\n", True),
        ("function f(x) {\n  ", "if (x)", "\n    return 1;\n}\n", True),
        ("function f(x) {\n  ", "return promise", "\n    .then(g);\n}\n", True),
    ],
)
def test_can_end(prefix, text, suffix, ok):
    assert can_end(prefix, text, suffix) is ok
