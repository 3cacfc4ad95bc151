"""build_context / enclosing_block / should_complete on real code in several languages, with a fake tokenizer."""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import typing
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dg_lsp.context import Context, ContextBudget, build_context, enclosing_block, should_complete
from dg_lsp.pipeline import budget_of
from dg_lsp.settings import Settings

CURSOR = "<CURSOR>"
BUDGET = budget_of(Settings())  # what the server uses with default settings


def budget_with(**changes: float) -> ContextBudget:
    return dataclasses.replace(BUDGET, **changes)


def tokens(s: str) -> int:
    return len(s) // 3 + 1 if s else 0


def at(marked: str) -> tuple[str, int]:
    return marked.replace(CURSOR, ""), marked.index(CURSOR)


def ctx(marked: str, language_id: str, budget: ContextBudget | None = None, **kw: object) -> Context:
    text, offset = at(marked)
    return build_context(text, offset, language_id, tokens, budget or BUDGET, **kw)  # type: ignore[arg-type]


def total(c: Context) -> int:
    return tokens(c.prefix) + tokens(c.suffix) + sum(tokens(s) for s in c.snippets)


def filler(n: int, indent: str, fmt: str = "x{i} = compute({i}, {i} + 1)") -> str:
    return "".join(f"{indent}{fmt.format(i=i)}\n" for i in range(n))


PY_LONG = (
    'import os\nfrom dataclasses import dataclass\n\n\nclass Store:\n    """Keeps things."""\n\n'
    "    def load(\n        self,\n        key: str,\n    ) -> bytes:\n"
    + filler(300, "        ")
    + "        for part in key.split('/'):\n            if part:\n                <CURSOR>\n        return b''\n\n"
    "    def save(self, key: str) -> None:\n        pass\n"
)


# ---- prefix / suffix windows -----------------------------------------------------------------------------------------


def test_python_headers_and_imports_kept_far_above() -> None:
    c = ctx(PY_LONG, "python", budget_with(max_prompt_tokens=300))
    lines = c.prefix.split("\n")
    assert lines[:2] == ["import os", "from dataclasses import dataclass"]
    for header in ["class Store:", "    def load(", "        self,", "        key: str,", "    ) -> bytes:"]:
        assert header in lines
    assert "        for part in key.split('/'):" in lines and "            if part:" in lines
    assert c.prefix.endswith("            if part:\n                ")
    assert "x0 = compute" not in c.prefix and "x299 = compute" in c.prefix  # the window is the lines nearest
    assert c.suffix.startswith("\n        return b''")
    assert c.kind == "block" and c.max_tokens == BUDGET.block_tokens and c.language == "python"
    assert total(c) <= 300


def test_kept_lines_are_whole_lines_in_document_order() -> None:
    text, offset = at(PY_LONG)
    c = build_context(text, offset, "python", tokens, budget_with(max_prompt_tokens=200))
    doc_lines = text[:offset].split("\n")
    kept = c.prefix.split("\n")
    positions = [doc_lines.index(line) for line in kept[:-1]]
    assert positions == sorted(positions)
    assert text[:offset].endswith(kept[-1])


def test_small_file_is_whole_and_suffix_gets_unused_budget() -> None:
    c = ctx("def f(x):\n    return <CURSOR>\n" + filler(150, ""), "python", budget_with(max_prompt_tokens=400))
    assert c.prefix == "def f(x):\n    return "
    assert c.kind == "line" and c.max_tokens == BUDGET.line_tokens
    assert tokens(c.suffix) > 400 * 0.25  # more than its share: the prefix left room
    assert total(c) <= 400


def test_suffix_share_respected_when_prefix_is_long() -> None:
    c = ctx(filler(400, "") + "y = <CURSOR>\n" + filler(400, "", "z{i} = {i}"), "python")
    assert tokens(c.suffix) <= BUDGET.max_prompt_tokens * 0.25
    assert c.suffix.startswith("\nz0 = 0\n")
    assert total(c) <= BUDGET.max_prompt_tokens


def test_prefix_window_starts_at_a_statement_not_inside_a_call() -> None:
    call = "result = combine(\n" + "".join(f"    argument_{i},\n" for i in range(8)) + ")\n"
    text = call * 6 + "value = <CURSOR>\n"
    starts = set()
    for budget in range(40, 400, 3):
        c = ctx(text, "python", budget_with(max_prompt_tokens=budget, suffix_share=0.0))
        first = c.prefix.split("\n")[0]
        starts.add(first)
        assert not first.startswith("    argument_"), (budget, first)
    assert "result = combine(" in starts


def test_crlf_document_gives_lf_prompt() -> None:
    c = ctx("def f():\r\n    x = 1\r\n    <CURSOR>\r\n    return x\r\n", "python")
    assert "\r" not in c.prefix + c.suffix
    assert c.prefix == "def f():\n    x = 1\n    " and c.suffix == "\n    return x\n"


JS = (
    "import { readFile } from 'fs/promises';\nimport path from 'path';\n\n"
    "export class Loader {\n  constructor(root) {\n    this.root = root;\n  }\n\n  async load(name) {\n"
    + filler(200, "    ", "const v{i} = await this.step({i});")
    + "    if (name.endsWith('.json')) {\n      <CURSOR>\n    }\n    return null;\n  }\n}\n"
)
GO = (
    'package store\n\nimport (\n\t"fmt"\n\t"os"\n)\n\nfunc (s *Store) Load(key string) ([]byte, error) {\n'
    + filler(200, "\t", "v{i} := s.step({i})")
    + "\tfor _, p := range s.parts {\n\t\tfmt.Println(p<CURSOR>)\n\t}\n\treturn nil, nil\n}\n"
)
RUST = (
    "use std::collections::HashMap;\nuse std::io;\n\nimpl Store {\n"
    "    pub fn load(&self, key: &str) -> io::Result<Vec<u8>> {\n"
    + filler(200, "        ", "let v{i} = self.step({i});")
    + "        match self.map.get(key) {\n            Some(v) => <CURSOR>\n            None => Ok(vec![]),\n"
    "        }\n    }\n}\n"
)
C = (
    "#include <stdio.h>\n#include <stdlib.h>\n\nstatic int\nload(const char *key)\n{\n"
    + filler(200, "    ", "int v{i} = step({i});")
    + "    while (*key) {\n        <CURSOR>\n    }\n    return 0;\n}\n"
)
JAVA = (
    "package store;\n\nimport java.util.List;\nimport java.util.Map;\n\npublic class Store {\n"
    "    public byte[] load(String key) {\n"
    + filler(200, "        ", "int v{i} = step({i});")
    + "        try {\n            return read(key<CURSOR>);\n        } catch (Exception e) {\n"
    "            return null;\n        }\n    }\n}\n"
)
TS = (
    "import type { Item } from './item';\n\nexport function total(items: Item[]): number {\n"
    + filler(200, "  ", "const v{i}: number = step({i});")
    + "  return items.reduce((acc, it) => {\n    <CURSOR>\n  }, 0);\n}\n"
)


def test_brace_languages_keep_headers_and_imports() -> None:
    cases = [
        (
            JS,
            "javascript",
            [
                "import { readFile } from 'fs/promises';",
                "import path from 'path';",
                "export class Loader {",
                "  async load(name) {",
                "    if (name.endsWith('.json')) {",
            ],
            "block",
        ),
        (
            GO,
            "go",
            [
                "package store",
                "import (",
                '\t"fmt"',
                ")",
                "func (s *Store) Load(key string) ([]byte, error) {",
                "\tfor _, p := range s.parts {",
            ],
            "line",
        ),
        (
            RUST,
            "rust",
            [
                "use std::collections::HashMap;",
                "impl Store {",
                "    pub fn load(&self, key: &str) -> io::Result<Vec<u8>> {",
                "        match self.map.get(key) {",
            ],
            "line",
        ),
        (C, "c", ["#include <stdio.h>", "static int", "load(const char *key)", "{", "    while (*key) {"], "block"),
        (
            JAVA,
            "java",
            [
                "package store;",
                "import java.util.List;",
                "public class Store {",
                "    public byte[] load(String key) {",
                "        try {",
            ],
            "line",
        ),
        (
            TS,
            "typescript",
            [
                "import type { Item } from './item';",
                "export function total(items: Item[]): number {",
                "  return items.reduce((acc, it) => {",
            ],
            "block",
        ),
    ]
    for marked, language_id, headers, kind in cases:
        c = ctx(marked, language_id, budget_with(max_prompt_tokens=256))
        lines = c.prefix.split("\n")
        missing = [h for h in headers if h not in lines]
        assert not missing, (language_id, missing, c.prefix[:400])
        assert c.kind == kind, language_id
        assert total(c) <= 256, language_id


def test_kind_decisions() -> None:
    cases = [
        ("def f(x):<CURSOR>\n", "python", "block"),
        ("def f(x):\n    <CURSOR>\n", "python", "block"),
        ("def f(x):\n    return x +<CURSOR>\n", "python", "line"),
        ("d = {'a':<CURSOR>\n", "python", "line"),
        ("f = lambda x:<CURSOR>\n", "python", "line"),
        ("s = '''docstring\n<CURSOR>\n'''\n", "python", "line"),
        ("x = 1  # note<CURSOR>\n", "python", "line"),
        ("    <CURSOR>return x\n", "python", "line"),
        ("function f() {<CURSOR>}\n", "javascript", "block"),
        ("function f() {<CURSOR>\n}\n", "javascript", "block"),
        ("const s = `tpl {<CURSOR>`;\n", "javascript", "line"),
        ("switch (x) {\ncase 1:<CURSOR>\n}\n", "c", "block"),
        ("fn main() {\n    let v = vec![<CURSOR>];\n}\n", "rust", "line"),
        ("some text {<CURSOR>\n", "plaintext", "block"),
        ("some text<CURSOR>\n", "plaintext", "line"),
    ]
    for marked, language_id, kind in cases:
        assert ctx(marked, language_id).kind == kind, marked


# ---- snippets --------------------------------------------------------------------------------------------------------


def test_snippets_ranked_by_similarity_most_relevant_last() -> None:
    here = "def handle(request):\n    user = load_user(request.session_token)\n    <CURSOR>\n"
    related = "def load_user(session_token):\n    record = database.fetch_user(session_token)\n    return record\n"
    weaker = "def unrelated_helper():\n    return request_count\n\n" + "\n" * 40 + "def request(x):\n    pass\n"
    other_lang = "function load_user(session_token) { return database.fetch_user(session_token); }\n"
    docs = [
        ("file:///p/weak.py", "python", weaker),
        ("file:///p/users/auth.py", "python", related),
        ("file:///p/web/x.js", "javascript", other_lang),
    ]
    c = ctx(here, "python", other_docs=docs)
    assert len(c.snippets) == 2
    assert c.snippets[-1].startswith("# users/auth.py\ndef load_user(session_token):")
    assert c.snippets[0].startswith("# p/weak.py\n")
    assert not any("function load_user" in s for s in c.snippets)
    assert total(c) <= BUDGET.max_prompt_tokens


def test_snippets_respect_share_and_count() -> None:
    here = "import numpy\n\ndef train(model, batch):\n    loss = model.forward(batch)\n    <CURSOR>\n"
    doc = "".join(
        f"def step_{i}(model, batch):\n    loss = model.forward(batch)\n    loss.backward()\n\n" for i in range(60)
    )
    docs = [(f"file:///p/m{i}.py", "python", doc) for i in range(4)]
    budget = budget_with(max_prompt_tokens=600, snippet_share=0.2, max_snippets=2)
    c = ctx(here, "python", budget, other_docs=docs)
    assert 1 <= len(c.snippets) <= 2
    assert sum(tokens(s) for s in c.snippets) <= 120
    assert ctx(here, "python", budget_with(max_snippets=0), other_docs=docs).snippets == ()
    assert ctx(here, "plaintext", other_docs=docs).snippets == ()
    assert ctx(here, "python", other_docs=[("file:///same.py", "python", at(here)[0])]).snippets == ()
    assert ctx(here, "python", other_docs=[("bad",), None, ("u", "python", 3)]).snippets == ()  # type: ignore[list-item]


# ---- enclosing_block -------------------------------------------------------------------------------------------------


def block_of(marked: str, language_id: str, selection: str = "") -> str:
    text, offset = at(marked)
    end = offset + len(selection)
    start, stop = enclosing_block(text, offset, end, language_id)
    assert 0 <= start <= offset <= end <= max(stop, end) <= len(text)
    return text[start:stop]


def test_enclosing_block_python() -> None:
    src = "import os\n\n@cache\ndef f(x):\n    y = x + 1\n    <CURSOR>\n    return y\n\n\nz = 3\n"
    assert block_of(src, "python") == "@cache\ndef f(x):\n    y = x + 1\n    \n    return y"
    src = "def f(x):\n    for i in range(x):\n        print(<CURSOR>i)\n    return x\n"
    assert block_of(src, "python") == "    for i in range(x):\n        print(i)"
    src = "def f(x):\n    a = 1\n    b = 2\n    <CURSOR>\n\nq = 1\n"  # blank line after the body's last statement
    assert block_of(src, "python") == "def f(x):\n    a = 1\n    b = 2"


def test_enclosing_block_partial_selection_spans_two_statements() -> None:
    src = "def f(x):\n    if x:\n        a = <CURSOR>1\n    b = 2\n    return a + b\n"
    assert (
        block_of(src, "python", selection="1\n    b")
        == "def f(x):\n    if x:\n        a = 1\n    b = 2\n    return a + b"
    )


def test_enclosing_block_brace_languages() -> None:
    assert block_of(JS, "javascript") == "    if (name.endsWith('.json')) {\n      \n    }"
    assert block_of(GO, "go").startswith("\tfor _, p := range s.parts {") and block_of(GO, "go").endswith("\t}")
    assert block_of(C, "c") == "    while (*key) {\n        \n    }"
    java = block_of(JAVA, "java")
    assert java.startswith("        try {") and java.endswith("        }")
    assert block_of(RUST, "rust").startswith("            Some(v) => ")  # the unfinished arm, as the parser sees it


def test_enclosing_block_falls_back_to_paragraph() -> None:
    src = "first line\nsecond <CURSOR>line\n\nthird\n"
    assert block_of(src, "plaintext") == "first line\nsecond line"
    src = "a = 1\nb = 2\n\n<CURSOR>\n\nc = 3\n"
    assert block_of(src, "python") == "a = 1\nb = 2"
    assert enclosing_block("", 5, 9, "python") == (0, 0)
    assert enclosing_block("\n\n\n", 1, 1, "python") == (1, 1)


# ---- should_complete -------------------------------------------------------------------------------------------------


def test_should_complete() -> None:
    def sc(marked: str, language_id: str = "python") -> bool:
        text, offset = at(marked)
        return should_complete(text, offset, language_id)

    assert sc("x = foo(<CURSOR>)\n")
    assert sc("x = <CURSOR>foo(bar)\n")  # exactly 8 non-space characters follow
    assert not sc("x = <CURSOR>foo(bar, baz)\n")
    assert not sc("x = 1  # explain <CURSOR>\n")
    assert not sc("int x; // why <CURSOR>\n", "c")
    assert not sc("int x; /* why <CURSOR> */\n", "c")
    assert sc("int x; /* done */ <CURSOR>\n", "c")
    assert sc("s = '#' + <CURSOR>\n")
    assert sc("url = 'http://x' + <CURSOR>\n", "javascript")
    assert sc("# heading\n<CURSOR>\n", "plaintext")
    assert not sc("\x00\x01\x02<CURSOR>")


# ---- bad input -------------------------------------------------------------------------------------------------------


def test_bad_input_never_raises() -> None:
    text, _ = at(PY_LONG)
    for offset in (-10, 0, len(text), len(text) + 100):
        c = build_context(text, offset, "python", tokens, BUDGET)
        assert total(c) <= BUDGET.max_prompt_tokens
    empty = build_context("", 3, "python", tokens, BUDGET)
    assert (empty.prefix, empty.suffix, empty.kind) == ("", "", "block")
    binary = build_context("\x00\x01ELF\x02" * 1000, 50, "python", tokens, BUDGET)
    assert binary.language is None and total(binary) <= BUDGET.max_prompt_tokens
    c = build_context("x = 1\ny = ", 11, None, tokens, BUDGET)  # type: ignore[arg-type]
    assert c.language is None and c.prefix == "x = 1\ny = "
    minified = "var a=" + ",".join(f"b{i}" for i in range(20000)) + ";"
    c = build_context(minified, len(minified) // 2, "javascript", tokens, BUDGET)
    assert total(c) <= BUDGET.max_prompt_tokens and c.prefix and c.suffix
    cut = build_context("x = 1\r\ny", 6, "python", tokens, BUDGET)  # offset between "\r" and "\n"
    assert cut.prefix == "x = 1" and cut.suffix == "\ny"
    surrogate = build_context("s = '\ud800'\nx = ", 15, "python", tokens, BUDGET)
    assert surrogate.prefix.endswith("x = ")


def test_giant_single_line_is_plain_text_and_bounded() -> None:
    line = "var a=" + ",".join(f"b{i}" for i in range(400_000)) + ";"
    calls: list[int] = []

    def counting(s: str) -> int:
        calls.append(len(s))
        return tokens(s)

    c = build_context(line, len(line) // 2, "javascript", counting, BUDGET)
    assert total(c) <= BUDGET.max_prompt_tokens and line[: len(line) // 2].endswith(c.prefix)
    assert sum(calls) < 200_000  # never tokenizes the whole megabyte line
    start, end = enclosing_block(line, 10, 10, "javascript")  # the window kept around the cursor, at most
    assert start == 0 and 10 < end <= len(line)


def test_huge_document() -> None:
    text = filler(120_000, "", "value_{i} = transform(value_{i}, factor={i})")
    assert len(text) > 2_000_000
    offset = len(text) // 2
    c = build_context(text, offset, "python", tokens, BUDGET)
    assert total(c) <= BUDGET.max_prompt_tokens and c.prefix.endswith(text[:offset].split("\n")[-1])
    start, end = enclosing_block(text, offset, offset, "python")
    assert start <= offset <= end


# ---- cost: few real token counts, not proportional to the file -------------------------------------------------------


def test_token_counting_is_bounded_not_quadratic() -> None:
    source = "".join(Path(m.__file__).read_text() for m in (typing, inspect, argparse))  # real code, always present
    assert source.count("\n") > 5000
    calls: list[int] = []

    def counting(s: str) -> int:
        calls.append(len(s))
        return tokens(s)

    for size in (2_000, 20_000, len(source)):
        text = source[:size]
        for frac in (0.3, 0.7, 1.0):
            calls.clear()
            c = build_context(text, int(size * frac), "python", counting, BUDGET)
            cost = (size, frac, len(calls), sum(calls))
            assert len(calls) <= 40 and sum(calls) <= 30 * BUDGET.max_prompt_tokens * 3, cost
            assert total(c) <= BUDGET.max_prompt_tokens


# ---- properties ------------------------------------------------------------------------------------------------------

CODE_LINES = [
    "import os",
    "def f(a, b):",
    "    return a + b",
    "class K:",
    "    x: int = 0",
    "        if x:",
    "",
    "    ",
    "for i in range(10):",
    "print('(')",
    "}",
    "{",
    "  # comment",
    "\tpass",
    "x = [1, 2,",
    "]",
    'y = """',
    '"""',
    "é" * 30,
    "a_really_long_identifier_name = another_really_long_identifier_name(argument)" * 3,
]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    lines=st.lists(st.sampled_from(CODE_LINES), min_size=0, max_size=120),
    where=st.floats(0, 1),
    max_prompt=st.integers(0, 900),
    suffix_share=st.floats(0, 0.9),
    language_id=st.sampled_from(["python", "javascript", "go", "c", "unknown"]),
    crlf=st.booleans(),
)
def test_budget_never_exceeded_by_more_than_a_line(
    lines: list[str], where: float, max_prompt: int, suffix_share: float, language_id: str, crlf: bool
) -> None:
    text = ("\r\n" if crlf else "\n").join(lines)
    offset = int(len(text) * where)
    budget = budget_with(max_prompt_tokens=max_prompt, suffix_share=suffix_share)
    c = build_context(text, offset, language_id, tokens, budget)
    longest = max((tokens(line) for line in lines), default=0)
    assert total(c) <= max_prompt + longest + 1
    assert text.replace("\r\n", "\n").find(c.prefix.split("\n")[-1]) >= 0
    assert c.kind in ("line", "block") and c.max_tokens in (BUDGET.line_tokens, BUDGET.block_tokens)


def test_the_job_carries_the_contexts_kind_and_its_middle_budget() -> None:
    from fake_engine import FakeEngine

    from dg_lsp.pipeline import complete

    settings = Settings(max_line_tokens=7, max_block_tokens=70)
    for marked, kind, max_tokens in (
        ("def f(x):\n    return <CURSOR>\n", "line", 7),
        ("def f(x):\n    <CURSOR>\n", "block", 70),
    ):
        engine = FakeEngine(texts=["x"])
        text, offset = at(marked)
        complete(engine, text, offset, "python", settings)
        c = build_context(text, offset, "python", engine.count_tokens, budget_of(settings))
        ((_, job),) = engine.calls
        assert (job.kind, job.max_tokens) == (c.kind, c.max_tokens) == (kind, max_tokens)


def test_within_a_line_only_an_explicit_request_asks_the_engine_to_try_harder() -> None:
    from fake_engine import FakeEngine

    from dg_lsp.pipeline import complete

    text, offset = at("def f(x):\n    return <CURSOR>\n")
    for automatic in (True, False):
        engine = FakeEngine(texts=["x"])
        complete(engine, text, offset, "python", Settings(), automatic=automatic)
        ((_, job),) = engine.calls
        assert job.invoked is not automatic


def test_thorough_blocks_asks_for_a_block_while_typing_as_an_explicit_request_does() -> None:
    from fake_engine import FakeEngine

    from dg_lsp.pipeline import complete

    thorough = Settings()
    for marked, kind, invoked in (
        ("def f(x):\n    <CURSOR>\n", "block", True),  # an empty body: the user waits for a block
        ("def f(x):\n    return <CURSOR>\n", "line", False),  # mid-line typing keeps the fast path
    ):
        engine = FakeEngine(texts=["x"])
        complete(engine, *at(marked), "python", thorough, automatic=True)
        complete(engine, *at(marked), "python", Settings(thorough_blocks=False), automatic=True)
        (_, job), (_, fast) = engine.calls
        assert (job.kind, job.invoked, fast.invoked) == (kind, invoked, False)
    assert Settings().thorough_blocks  # the default: the user waits at a line's start


def test_a_block_asked_for_while_typing_gets_the_typing_budget() -> None:
    from fake_engine import FakeEngine

    from dg_lsp.pipeline import complete

    settings = Settings(max_block_tokens=192, typing_block_tokens=64)
    for marked, kind, while_typing, explicit in (
        ("def f(x):\n    <CURSOR>\n", "block", 64, 192),
        ("def f(x):\n    return <CURSOR>\n", "line", settings.max_line_tokens, settings.max_line_tokens),
    ):
        engine = FakeEngine(texts=["x"])
        complete(engine, *at(marked), "python", settings, automatic=True)
        complete(engine, *at(marked), "python", settings, automatic=False)
        (_, typed), (_, asked) = engine.calls
        assert (typed.kind, typed.max_tokens, asked.max_tokens) == (kind, while_typing, explicit)
    engine = FakeEngine(texts=["x"])  # maxBlockTokens caps the typing budget too
    complete(engine, *at("def f(x):\n    <CURSOR>\n"), "python", Settings(max_block_tokens=32), automatic=True)
    assert engine.calls[0][1].max_tokens == 32
