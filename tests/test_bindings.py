"""bindings.openings: what the line at the cursor must bind, read from the code below it."""

from __future__ import annotations

import pytest

from dg_lsp.bindings import Opening, openings


def at(code: str) -> tuple[str, int]:
    return code.replace("<CURSOR>", ""), code.index("<CURSOR>")


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        # a name the code below adds to and returns, bound nowhere
        ("def f(xs):\n    <CURSOR>\n    for x in xs:\n        total += x\n    return total\n", ["total ="]),
        # several names, in the order the code reads them
        ("def f(p):\n    <CURSOR>\n    return hi - lo\n", ["hi, lo ="]),
        # the next line is indented deeper: the line opens a block, whose names a loop binds
        ("def f(xs):\n    <CURSOR>\n        if idx:\n            print(elem)\n", ["for idx, elem in"]),
        # a standard module, read only as `module.attribute`: the line is its import
        ("def f(x):\n    <CURSOR>\n    return math.sqrt(x)\n", [Opening("import math", whole=True)]),
        (
            "def f(p):\n    <CURSOR>\n    return os.path.join(p, str(math.pi))\n",
            [Opening("import os, math", whole=True)],
        ),
        # a local that happens to share a module's name is assigned, not imported
        ("def f(x):\n    <CURSOR>\n    return string + x\n", ["string ="]),
        # a name the code below binds on some paths only (in a branch of a loop) and then reads
        (
            "def f(s):\n    <CURSOR>\n    for c in s:\n        if c == 'x':\n            flag = 1\n    return flag\n",
            ["flag ="],
        ),
        # within a class's method, a blank line with trailing spaces
        ("class A:\n    def f(self):\n        <CURSOR>   \n        return self.k * n\n", ["n ="]),
    ],
)
def test_names_read_below_and_bound_nowhere_open_the_line(code: str, expected: list) -> None:
    text, offset = at(code)
    want = [e if isinstance(e, Opening) else Opening(e) for e in expected]
    assert openings(text, offset, "python") == want


@pytest.mark.parametrize(
    "code",
    [
        "def f(x):\n    <CURSOR>\n    return x\n",  # everything below is bound
        # bound on every path before it is read, though in branches
        "def f(x):\n    <CURSOR>\n    if x:\n        y = 1\n    else:\n        y = 2\n    return y\n",
        # the line opens a block: what only some paths bind is not what its header binds
        "def f(s):\n    <CURSOR>\n        if s:\n            flag = 1\n    return flag\n",
        "def f(x):\n    y = <CURSOR>1\n    return z\n",  # not an empty line
        "def f(x):\n    return x\n    <CURSOR>\n",  # nothing below reads anything
        # an unbound name in the next function is not this line's business
        "def f(x):\n    <CURSOR>\n    return x\n\ndef g():\n    return w\n",
        "def f(x):\n    <CURSOR>\n    return a + b + c + d\n",  # more names than one line binds
        "def f(x:\n    <CURSOR>\n    return q\n",  # the code around does not parse
    ],
)
def test_no_opening_where_nothing_needs_binding_or_the_code_cannot_be_read(code: str) -> None:
    text, offset = at(code)
    assert openings(text, offset, "python") == []


def test_other_languages_get_no_openings() -> None:
    text, offset = at("function f() {\n  <CURSOR>\n  return total;\n}\n")
    assert openings(text, offset, "javascript") == []
