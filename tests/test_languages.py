"""Language ids -> grammars: every supported grammar loads offline, parses real code, and knows its node types."""

from __future__ import annotations

import threading

import pytest

from dg_lsp import languages
from dg_lsp.context import build_context, enclosing_block, should_complete
from dg_lsp.pipeline import budget_of
from dg_lsp.postprocess import Edit, postprocess
from dg_lsp.settings import Settings

SAMPLES = {
    "python": (
        "import os\n\n\ndef main(argv: list[str]) -> int:\n    for arg in argv:\n        print(arg)\n    return 0\n"
    ),
    "javascript": (
        "import fs from 'fs';\n\nexport function read(p) {\n  const s = fs.readFileSync(p, 'utf8');\n"
        "  return s.split('\\n');\n}\n"
    ),
    "typescript": (
        "import { x } from './x';\n\ninterface P { name: string }\n\nexport class A {\n  greet(p: P): string {\n"
        "    return `hi ${p.name}`;\n  }\n}\n"
    ),
    "tsx": "import React from 'react';\n\nexport const App = (p: { n: number }) => <div>{p.n}</div>;\n",
    "go": 'package main\n\nimport "fmt"\n\nfunc main() {\n\tfor i := 0; i < 3; i++ {\n\t\tfmt.Println(i)\n\t}\n}\n',
    "rust": (
        "use std::io;\n\nfn main() -> io::Result<()> {\n    let v: Vec<i32> = (0..3).collect();\n"
        '    for x in &v {\n        println!("{}", x);\n    }\n    Ok(())\n}\n'
    ),
    "c": (
        "#include <stdio.h>\n\nint main(void)\n{\n    for (int i = 0; i < 3; i++) {\n"
        '        printf("%d\\n", i);\n    }\n    return 0;\n}\n'
    ),
    "cpp": (
        "#include <vector>\n\nnamespace a {\nclass B {\n public:\n  int f(std::vector<int> v) { return v.size(); }\n"
        "};\n}  // namespace a\n"
    ),
    "java": (
        "package p;\n\nimport java.util.List;\n\npublic class A {\n    public int sum(List<Integer> xs) {\n"
        "        int s = 0;\n        for (int x : xs) { s += x; }\n        return s;\n    }\n}\n"
    ),
}


@pytest.mark.parametrize(
    "language_id, expected",
    [
        ("python", "python"),
        ("PYTHON", "python"),
        ("py", "python"),
        (".pyi", "python"),
        ("javascriptreact", "javascript"),
        ("typescriptreact", "tsx"),
        ("ts", "typescript"),
        ("golang", "go"),
        ("rust", "rust"),
        ("c", "c"),
        ("h", "c"),
        ("cpp", "cpp"),
        ("hpp", "cpp"),
        ("java", "java"),
        ("/home/me/src/main.rs", "rust"),
        ("file:///home/me/My%20Project/app.tsx", "tsx"),
        ("C:\\work\\x.java", "java"),
        ("cobol", None),
        ("", None),
        ("plaintext", None),
        ("file:///notes/README", None),
    ],
)
def test_normalize_ids_extensions_and_paths(language_id: str, expected: str | None) -> None:
    assert languages.normalize(language_id) == expected


@pytest.mark.parametrize("bad", [None, 42, b"python", ["python"]])
def test_normalize_never_raises_on_garbage(bad: object) -> None:
    assert languages.normalize(bad) is None  # type: ignore[arg-type]
    assert languages.get_parser(bad) is None  # type: ignore[arg-type]


def test_every_grammar_loads_offline() -> None:
    assert languages.grammar_status() == {spec.name: True for spec in languages.SPECS}
    assert set(languages.required_packages()) == {
        "tree-sitter-python",
        "tree-sitter-javascript",
        "tree-sitter-typescript",
        "tree-sitter-go",
        "tree-sitter-rust",
        "tree-sitter-c",
        "tree-sitter-cpp",
        "tree-sitter-java",
    }


@pytest.mark.parametrize("spec", languages.SPECS, ids=lambda s: s.name)
def test_configured_node_types_exist_in_grammar(spec: languages.LanguageSpec) -> None:
    language = languages.get_language(spec.name)
    assert language is not None
    unknown = [t for t in spec.block_types | spec.import_types if not language.id_for_node_kind(t, True)]
    assert unknown == []


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_real_snippets_parse_without_errors(name: str) -> None:
    tree = languages.parse(SAMPLES[name].encode(), name)
    assert tree is not None
    assert not tree.root_node.has_error, str(tree.root_node)
    imports = [c.type for c in tree.root_node.children if c.type in languages.spec_for(name).import_types]
    assert imports, "each sample starts with an import the context builder must recognise"


def test_parsers_are_cached_per_thread() -> None:
    first = languages.get_parser("python")
    assert first is languages.get_parser("py")
    other: list[object] = []
    thread = threading.Thread(target=lambda: other.append(languages.get_parser("python")))
    thread.start()
    thread.join()
    assert other[0] is not None and other[0] is not first


def test_trigger_characters() -> None:
    assert "." in languages.trigger_characters("python") and ":" in languages.trigger_characters("python")
    assert languages.trigger_characters("nonsense") == languages.DEFAULT_TRIGGERS
    union = languages.all_trigger_characters()
    assert len(union) == len(set(union)) and {".", "(", "{"} <= set(union)


def test_missing_grammar_degrades_to_plain_text(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(languages, "_load", lambda name: None)
    assert languages.get_parser("python") is None and languages.parse(b"x = 1", "python") is None
    text = SAMPLES["python"]
    offset = text.index("print(arg)") + len("print(arg")
    ctx = build_context(text, offset, "python", lambda s: len(s) // 3 + 1, budget_of(Settings()))
    assert ctx.prefix.endswith("print(arg") and ctx.suffix.startswith(")")
    assert should_complete(text, offset, "python") is True
    start, end = enclosing_block(text, offset, offset, "python")
    assert start <= offset <= end
    edit = postprocess(", end='')", text, offset, "python", "line")
    assert edit == Edit(offset, offset + 1, ", end='')")


def test_broken_grammar_module_is_reported_not_raised(monkeypatch: pytest.MonkeyPatch) -> None:
    broken = languages.LanguageSpec(
        "python",
        "tree_sitter_does_not_exist",
        "language",
        ("python",),
        ("py",),
        "python",
        "#",
        (".",),
        frozenset(),
        frozenset(),
    )
    monkeypatch.setattr(languages, "_BY_ID", {**languages._BY_ID, "python": broken})
    languages._load.cache_clear()
    try:
        assert languages.get_language("python") is None
        assert languages.grammar_status()["python"] is False
    finally:
        languages._load.cache_clear()
