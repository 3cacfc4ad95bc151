"""Language ids -> tree-sitter grammars, the per-language facts, and the syntax questions asked of a document.

Grammars come from the per-language PyPI wheels (`tree-sitter-python`, ...), which ship compiled parsers. The
`tree-sitter-language-pack` 1.x wheel fetches grammars from the network on first use, which an offline editor
cannot rely on, so it is not used here. A grammar that is missing or fails to load makes its language plain text:
nothing in this module raises for a bad or unknown language id or document.
"""

from __future__ import annotations

import bisect
import functools
import importlib
import posixpath
import threading
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from itertools import accumulate
from urllib.parse import unquote, urlparse

from tree_sitter import Language, Node, Parser, Tree

FULL_PARSE_CHARS = 60_000  # above this, parse only the top-level statement at the cursor (5k lines parse in ~20 ms)
MAX_PARSE_CHARS = 300_000  # a region bigger than this (one giant minified line) is treated as plain text
HEAD_LINES = 400  # where imports are looked for when the file is not parsed whole
HUGE_CHARS = 2_000_000  # documents beyond this are cut to a window around the cursor before anything else
MAX_HEADER_ROWS = 12  # a scope header longer than this (giant signatures) is kept only in part


def _types(names: str) -> frozenset[str]:
    return frozenset(names.split())


# Statement bodies of the supported grammars. A node of one of these types is a statement list: a line starting
# directly inside it starts a statement, and a scope's header ends where its body begins.
BODY_TYPES = _types(
    "module program source_file translation_unit block statement_block compound_statement statement_list class_body "
    "interface_body enum_body constructor_body declaration_list field_declaration_list enum_variant_list switch_body "
    "switch_block match_block object_type enum_declaration_list annotation_type_body record_body"
)
_C_BLOCKS = _types(
    "function_definition struct_specifier union_specifier enum_specifier if_statement for_statement while_statement "
    "do_statement switch_statement case_statement"
)
_JS_BLOCKS = _types(
    "function_declaration generator_function_declaration class_declaration method_definition if_statement "
    "else_clause for_statement for_in_statement while_statement do_statement try_statement catch_clause "
    "finally_clause switch_statement arrow_function function_expression class"
)
_TS_BLOCKS = _JS_BLOCKS | _types(
    "interface_declaration enum_declaration abstract_class_declaration internal_module module"
)


@dataclass(frozen=True)
class LanguageSpec:
    name: str  # normalized name, also the grammar's name
    module: str  # importable grammar package
    factory: str  # function in `module` returning the grammar pointer
    ids: tuple[str, ...]  # LSP languageIds that map here
    extensions: tuple[str, ...]  # without the dot
    family: str  # languages whose files are useful context for each other
    line_comment: str
    trigger_characters: tuple[str, ...]
    block_types: frozenset[str]  # scopes: their header lines are kept, and "Rewrite this block" picks one
    import_types: frozenset[str]  # top-level nodes kept at the head of every prompt
    indent_scoped: bool = False  # blocks end by dedent (Python), not by a closing brace


_C_TRIGGERS = (".", "(", "[", "{", ",", "=", ">", ":")
_JS_TRIGGERS = (".", "(", "[", "{", ",", "=", ":", "<")
_JS_IMPORTS = _types("import_statement")
_PY_BLOCKS = _types(
    "function_definition class_definition if_statement elif_clause else_clause for_statement while_statement "
    "with_statement try_statement except_clause finally_clause match_statement case_clause"
)
_GO_BLOCKS = _types(
    "function_declaration method_declaration func_literal type_declaration if_statement for_statement "
    "expression_switch_statement type_switch_statement select_statement expression_case type_case "
    "communication_case default_case"
)
_RUST_BLOCKS = _types(
    "function_item impl_item trait_item struct_item enum_item mod_item if_expression else_clause for_expression "
    "while_expression loop_expression match_expression match_arm closure_expression"
)
_CPP_BLOCKS = _C_BLOCKS | _types(
    "class_specifier namespace_definition lambda_expression for_range_loop try_statement catch_clause"
)
_JAVA_BLOCKS = _types(
    "class_declaration interface_declaration enum_declaration record_declaration method_declaration "
    "constructor_declaration if_statement for_statement enhanced_for_statement while_statement do_statement "
    "try_statement catch_clause finally_clause switch_expression lambda_expression static_initializer"
)

# fmt: off
SPECS: tuple[LanguageSpec, ...] = (
    LanguageSpec("python", "tree_sitter_python", "language", ("python",), ("py", "pyi", "pyw"), "python", "#",
                 (".", "(", "[", "{", ",", ":", "="), _PY_BLOCKS,
                 _types("import_statement import_from_statement future_import_statement"), indent_scoped=True),
    LanguageSpec("javascript", "tree_sitter_javascript", "language", ("javascript", "javascriptreact", "js", "jsx"),
                 ("js", "mjs", "cjs", "jsx"), "ecmascript", "//", _JS_TRIGGERS, _JS_BLOCKS, _JS_IMPORTS),
    LanguageSpec("typescript", "tree_sitter_typescript", "language_typescript", ("typescript", "ts"),
                 ("ts", "mts", "cts"), "ecmascript", "//", _JS_TRIGGERS, _TS_BLOCKS, _JS_IMPORTS),
    LanguageSpec("tsx", "tree_sitter_typescript", "language_tsx", ("typescriptreact", "tsx"), ("tsx",), "ecmascript",
                 "//", _JS_TRIGGERS, _TS_BLOCKS, _JS_IMPORTS),
    LanguageSpec("go", "tree_sitter_go", "language", ("go", "golang"), ("go",), "go", "//",
                 (".", "(", "[", "{", ",", "="), _GO_BLOCKS, _types("package_clause import_declaration")),
    LanguageSpec("rust", "tree_sitter_rust", "language", ("rust", "rs"), ("rs",), "rust", "//", _C_TRIGGERS,
                 _RUST_BLOCKS, _types("use_declaration extern_crate_declaration")),
    LanguageSpec("c", "tree_sitter_c", "language", ("c",), ("c", "h"), "c", "//", _C_TRIGGERS, _C_BLOCKS,
                 _types("preproc_include")),
    LanguageSpec("cpp", "tree_sitter_cpp", "language", ("cpp", "c++", "cuda-cpp", "objective-cpp"),
                 ("cc", "cpp", "cxx", "c++", "hpp", "hh", "hxx", "h++", "ipp", "cu"), "c", "//", _C_TRIGGERS,
                 _CPP_BLOCKS, _types("preproc_include using_declaration alias_declaration")),
    LanguageSpec("java", "tree_sitter_java", "language", ("java",), ("java",), "java", "//",
                 (".", "(", "[", "{", ",", "=", "@"), _JAVA_BLOCKS, _types("package_declaration import_declaration")),
)
# fmt: on

_BY_ID: dict[str, LanguageSpec] = {}
for _spec in SPECS:
    for _key in (_spec.name, *_spec.ids):
        _BY_ID.setdefault(_key, _spec)
_BY_EXT: dict[str, LanguageSpec] = {ext: s for s in SPECS for ext in s.extensions}

DEFAULT_TRIGGERS = (".", "(", "[", "{", ",")


def spec_for(language_id: str | None) -> LanguageSpec | None:
    """The spec for an LSP languageId, a file extension ("py", ".py") or a path/URI; None when unknown."""
    if not language_id or not isinstance(language_id, str):
        return None
    key = language_id.strip().lower()
    if key in _BY_ID:
        return _BY_ID[key]
    if "/" in key or "\\" in key or ":" in key:
        key = posixpath.basename(unquote(urlparse(key).path) if "://" in key else key.replace("\\", "/"))
    ext = key.rsplit(".", 1)[-1] if "." in key else key
    return _BY_EXT.get(ext)


def normalize(language_id: str | None) -> str | None:
    spec = spec_for(language_id)
    return spec.name if spec else None


def trigger_characters(language_id: str | None) -> tuple[str, ...]:
    spec = spec_for(language_id)
    return spec.trigger_characters if spec else DEFAULT_TRIGGERS


def all_trigger_characters() -> tuple[str, ...]:
    """Union over languages, for `initialize`, which advertises one list for every document."""
    seen: dict[str, None] = {}
    for spec in SPECS:
        seen.update(dict.fromkeys(spec.trigger_characters))
    return tuple(seen)


@functools.cache
def _load(name: str) -> Language | None:
    # Cached per process, failures included: a broken grammar is reported once by `grammar_status`, not per keystroke.
    spec = _BY_ID.get(name)
    if spec is None:
        return None
    try:
        return Language(getattr(importlib.import_module(spec.module), spec.factory)())
    except Exception:  # noqa: BLE001 - ImportError, a missing factory, an ABI the bindings reject: all mean "plain text"
        return None


def get_language(language_id: str | None) -> Language | None:
    spec = spec_for(language_id)
    return _load(spec.name) if spec else None


# Parsers hold mutable state and are not safe to share between threads; the server's handlers and its job worker
# may both parse, so each thread gets its own.
_local = threading.local()


def get_parser(language_id: str | None) -> Parser | None:
    spec = spec_for(language_id)
    language = _load(spec.name) if spec else None
    if spec is None or language is None:
        return None
    parsers: dict[str, Parser] = _local.__dict__.setdefault("parsers", {})
    if spec.name not in parsers:
        parsers[spec.name] = Parser(language)
    return parsers[spec.name]


def parse(source: bytes, language_id: str | None) -> Tree | None:
    parser = get_parser(language_id)
    if parser is None:
        return None
    try:
        return parser.parse(source)
    except Exception:  # noqa: BLE001 - the bindings raise on pathological input (e.g. a timeout); treat as "no syntax"
        return None


def has_compiler(language_id: str | None) -> bool:
    return normalize(language_id) == "python"


def compiles(source: str, language_id: str | None) -> bool | None:
    """A compiler-grade syntax verdict where the standard library has one, else None.

    Python only: tree-sitter's Python grammar accepts what Python refuses (an unexpected indent, a header with no
    body), which are the commonest ways a generated line breaks a file (HumanEval single-line: 40% of the embedded
    model's wrong lines). The compiler proper, not only its parser: `break` outside a loop, `return` outside a
    function parse, and fail the moment the module is imported (no slower: ~1 ms for a 4,000-character function).
    """
    if not has_compiler(language_id):
        return None
    try:
        with warnings.catch_warnings():  # `"\d"` and the like: the code compiles, the warning is the linter's business
            warnings.simplefilter("ignore")
            compile(source, "<edit>", "exec", dont_inherit=True)
    except (SyntaxError, ValueError, RecursionError, MemoryError):  # ValueError: NUL bytes
        return False
    return True


def count_errors(node: Node) -> int:
    """ERROR and MISSING nodes under `node`: how broken tree-sitter finds the text."""
    count, stack = 0, [node]
    while stack:
        n = stack.pop()
        if n.is_error or n.is_missing:
            count += 1
        stack.extend(c for c in n.children if c.has_error or c.is_missing)
    return count


def grammar_status() -> dict[str, bool]:
    """Which grammars load here, for `dg-lsp doctor`."""
    return {spec.name: _load(spec.name) is not None for spec in SPECS}


def required_packages() -> tuple[str, ...]:
    """PyPI distributions that provide the grammars (module names with dashes)."""
    return tuple(dict.fromkeys(spec.module.replace("_", "-") for spec in SPECS))


# ---- documents and their syntax ----------------------------------------------------------------------------------


class Doc:
    """A document split once into lines (without "\\r"), with the cursor as (row, col)."""

    def __init__(self, text: str, offset: int) -> None:
        text = text if isinstance(text, str) else ""
        offset = min(max(offset, 0), len(text)) if isinstance(offset, int) else 0
        self.shift = 0  # documents beyond HUGE_CHARS keep whole lines around the cursor; offsets move by this
        if len(text) > HUGE_CHARS:  # cut at line breaks when there are some, else anyway
            lo, hi = max(0, offset - HUGE_CHARS * 3 // 4), offset + HUGE_CHARS // 4
            self.shift = max(text.rfind("\n", 0, lo) + 1, lo - HUGE_CHARS // 4)
            end = text.find("\n", hi)
            text = text[self.shift : end if 0 <= end < hi + HUGE_CHARS // 4 else hi + HUGE_CHARS // 4]
        self.text = text
        raw = text.split("\n")
        self.starts = list(accumulate((len(line) + 1 for line in raw[:-1]), initial=0))
        self.lines = [line[:-1] if line.endswith("\r") else line for line in raw] if "\r" in text else raw
        self.row, self.col = self.locate(offset)
        near = max(0, self.starts[self.row] - 4096)
        self.binary = "\x00" in text[:8192] or "\x00" in text[near : near + 8192]

    def locate(self, offset: int) -> tuple[int, int]:
        """(row, col) of a character offset into the original text, clamped into the document."""
        offset = min(max(offset - self.shift, 0), len(self.text)) if isinstance(offset, int) else 0
        row = bisect.bisect_right(self.starts, offset) - 1
        return row, min(offset - self.starts[row], len(self.lines[row]))

    @property
    def before(self) -> str:
        return self.lines[self.row][: self.col]

    @property
    def after(self) -> str:
        return self.lines[self.row][self.col :]

    def offset_of(self, row: int, col: int) -> int:
        """Offset into the original text."""
        return self.starts[row] + col + self.shift


def indent_width(line: str) -> int:
    return len(line[: len(line) - len(line.lstrip(" \t"))].expandtabs(4))


def _starts_top_level(line: str) -> bool:
    return bool(line) and not line[0].isspace() and line[0] not in ")]}#/*\"'`" and not line.startswith("@")


def top_level_region(lines: Sequence[str], row: int, stop: int) -> tuple[int, int]:
    """Rows [lo, hi) of the top-level statement(s) holding rows row..stop: what a local parse needs to be right."""
    lo = next((r for r in range(min(row, len(lines) - 1), -1, -1) if _starts_top_level(lines[r])), 0)
    while lo > 0 and lines[lo - 1].startswith("@"):  # decorators belong to the definition below them
        lo -= 1
    hi = next((r for r in range(max(stop, row + 1), len(lines)) if _starts_top_level(lines[r])), len(lines))
    return lo, hi


class Syntax:
    """A tree over rows [row0, row1) of a Doc, with the few questions the context and post-processing ask."""

    def __init__(self, doc: Doc, spec: LanguageSpec, tree: Tree, source: bytes, row0: int, row1: int) -> None:
        self.doc, self.spec, self.tree, self.source, self.row0, self.row1 = doc, spec, tree, source, row0, row1
        self.head: Tree | None = None

    @classmethod
    def build(cls, doc: Doc, spec: LanguageSpec | None, last_row: int) -> Syntax | None:
        if spec is None or doc.binary or get_parser(spec.name) is None:
            return None
        if len(doc.text) <= FULL_PARSE_CHARS:
            row0, row1 = 0, len(doc.lines)
            source = (doc.text if "\r" not in doc.text else "\n".join(doc.lines)).encode("utf-8", "surrogatepass")
        else:
            row0, _ = top_level_region(doc.lines, doc.row, doc.row)
            row0 = 0 if row0 < HEAD_LINES else row0
            row1 = min(len(doc.lines), max(last_row, doc.row) + 1)
            source = "\n".join(doc.lines[row0:row1]).encode("utf-8", "surrogatepass")
        if len(source) > MAX_PARSE_CHARS:
            return None
        tree = parse(source, spec.name)
        if tree is None:
            return None
        syntax = cls(doc, spec, tree, source, row0, row1)
        if row0 > 0:  # imports live at the top; parse that part on its own
            syntax.head = parse("\n".join(doc.lines[:HEAD_LINES]).encode("utf-8", "surrogatepass"), spec.name)
        return syntax

    def point(self, row: int, col: int) -> tuple[int, int]:
        return row - self.row0, len(self.doc.lines[row][:col].encode("utf-8", "surrogatepass"))

    def covers(self, row: int) -> bool:
        return self.row0 <= row < self.row1

    def node_at(self, row: int, col: int, width: int = 1) -> Node:
        """Smallest node holding the `width` characters from (row, col); width -1 means the character before."""
        a, b = (col + width, col) if width < 0 else (col, col + width)
        line = self.doc.lines[row]
        root = self.tree.root_node
        found = root.descendant_for_point_range(self.point(row, max(0, a)), self.point(row, min(len(line), b)))
        return root if found is None else found  # None only for a range outside the tree: the root holds it

    def in_string_or_comment(self, row: int, col: int, line_comment_only: bool = False) -> bool:
        if not self.covers(row) or (row, col) == (self.row0, 0):
            return False
        here = self.point(row, col)  # the character before the cursor is the line break when col is 0
        prev = self.point(row, col - 1) if col else self.point(row - 1, len(self.doc.lines[row - 1]))
        node: Node | None = self.tree.root_node.descendant_for_point_range(prev, here)
        while node is not None:
            t = node.type
            if "comment" in t:
                one_line = node.start_point.row == node.end_point.row
                closed = node.text is not None and node.text.rstrip().endswith((b"*/", b"-->"))
                return (one_line or not line_comment_only) and (here < node.end_point or not closed)
            if not line_comment_only and ("string" in t or t in ("char_literal", "character_literal", "text_block")):
                if node.parent is None or "string" not in node.parent.type:
                    return node.start_point < here < node.end_point
            node = node.parent
        return False

    def scopes(self, row: int, col: int) -> list[Node]:
        """Enclosing nodes of the spec's block types, innermost first."""
        if not self.covers(row):
            return []
        line = self.doc.lines[row]
        anchor_row, anchor_col, limit = row, col, None
        if self.spec.indent_scoped and not line[:col].strip():
            # A blank line after a Python block's last statement lies outside the block's node; the block is the one
            # the indentation says, so anchor on the last code above and keep scopes indented less than the cursor.
            below = (indent_width(x) for x in self.doc.lines[row + 1 : row + 50] if x.strip())
            limit = len(line[:col].expandtabs(4)) if col else next(below, 0)
            anchor_row = next((r for r in range(row - 1, self.row0 - 1, -1) if self.doc.lines[r].strip()), -1)
            if anchor_row < 0:
                return []
            anchor_col = len(self.doc.lines[anchor_row].rstrip())
        found = self.blocks(self.node_at(anchor_row, anchor_col, -1 if anchor_col else 1))
        return [
            n for n in found if limit is None or indent_width(self.doc.lines[n.start_point.row + self.row0]) < limit
        ]

    def blocks(self, node: Node | None) -> list[Node]:
        return [n for n in _ancestors(node) if n.type in self.spec.block_types]

    def header_rows(self, node: Node) -> range:
        body = node.child_by_field_name("body") or node.child_by_field_name("consequence")
        if body is None:
            body = next((c for c in node.named_children if c.type in BODY_TYPES), None)
        start = node.start_point.row
        if body is None or body.start_point.row == start:
            end = start
        else:  # a brace on its own line belongs to the header; a Python body's first statement does not
            end = body.start_point.row - (0 if self.source[body.start_byte : body.start_byte + 1] == b"{" else 1)
        end = min(max(start, end), start + MAX_HEADER_ROWS - 1)
        return range(start + self.row0, end + self.row0 + 1)

    def is_boundary(self, row: int) -> bool:
        """True when a window may start at `row`: the line starts a statement, not the middle of an expression."""
        line = self.doc.lines[row]
        col = len(line) - len(line.lstrip())
        if col == len(line) or not self.covers(row):
            return True
        outer = next((n for n in _ancestors(self.node_at(row, col)) if n.start_point.row + self.row0 < row), None)
        return outer is None or outer.type in BODY_TYPES or outer.parent is None

    def import_rows(self) -> list[range]:
        tree, offset = (self.head, 0) if self.head is not None else (self.tree, self.row0)
        return [
            range(c.start_point.row + offset, c.end_point.row + offset + 1)
            for c in (tree.root_node.children if tree is not None else ())
            if c.type in self.spec.import_types
        ]


def _ancestors(node: Node | None) -> Iterator[Node]:
    while node is not None:
        yield node
        node = node.parent
