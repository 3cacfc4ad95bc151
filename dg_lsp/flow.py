"""Which reads of a function's locals find them bound: the paths through its statements, not its reading order.

`return res` written in an `else:` whose `if` binds `res` reads, in reading order, a name bound two lines up; on the
path that gets there nothing bound it, and the run stops with an UnboundLocalError (HumanEval single-line through the
editor's path: 11 of the shown answers that fail). Here every read of a local is judged on the paths that reach it:
`may`, some path binds the name first; `must`, every path does.

Loops are read once, in order: a read before the loop body's own binding of a name counts as unbound, as the first
pass through the loop meets it (`if x > best:` above `best = x`, with no `best = ...` before the loop). What this does
not model (a `match`) binds its names on every path, so it does not invent a fault there.

Python only; pure functions over `ast` nodes.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from dg_lsp import pytree

# Nodes whose names live in a scope of their own (diagnose.py skips them the same way).
SCOPES = (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)
COMPREHENSIONS = (ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp)
_DEFINITIONS = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)


@dataclass(frozen=True)
class Read:
    node: ast.Name
    may: bool  # some path from the function's start binds the name before this read
    must: bool  # every path does


@dataclass
class _State:
    may: frozenset[str]
    must: frozenset[str]

    def bind(self, names: set[str]) -> _State:
        return _State(self.may | names, self.must | names)


def _join(a: _State | None, b: _State | None) -> _State | None:
    """The state after either of two paths (None: a path that never gets there)."""
    if a is None or b is None:
        return a or b
    return _State(a.may | b.may, a.must & b.must)


@dataclass
class _Walk:
    local: frozenset[str]
    reads: list[Read] = field(default_factory=list)
    # per enclosing loop: the states at its `break`s, and at its `continue`s
    breaks: list[list[_State]] = field(default_factory=list)
    continues: list[list[_State]] = field(default_factory=list)

    def expr(self, node: ast.AST | None, state: _State) -> _State:
        """Record the reads of an expression evaluated in `state`; a walrus binds after it."""
        if node is None or isinstance(node, SCOPES + COMPREHENSIONS):  # they read later, or in a scope of their own
            return state
        bound: set[str] = set()
        for n in own_nodes([node]):
            if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load) and n.id in self.local:
                self.reads.append(Read(n, n.id in state.may, n.id in state.must))
            elif isinstance(n, ast.NamedExpr) and isinstance(n.target, ast.Name):
                bound.add(n.target.id)
        return state.bind(bound)

    def target(self, node: ast.expr, state: _State) -> _State:
        """Bind an assignment target: names bound, subscripts' and attributes' bases read."""
        for n in own_nodes([node]):
            if isinstance(n, (ast.Subscript, ast.Attribute)):
                state = self.expr(n.value, state)
                if isinstance(n, ast.Subscript):
                    state = self.expr(n.slice, state)
        return state.bind(stored(node))

    def block(self, stmts: list[ast.stmt], state: _State | None) -> _State | None:
        for stmt in stmts:
            if state is None:
                return None  # what follows a return, raise, break or continue never runs on this path
            state = self.stmt(stmt, state)
        return state

    def stmt(self, s: ast.stmt, state: _State) -> _State | None:
        if isinstance(s, ast.Assign):
            state = self.expr(s.value, state)
            for t in s.targets:
                state = self.target(t, state)
            return state
        if isinstance(s, ast.AugAssign):
            state = self.expr(s.value, state)
            if isinstance(s.target, ast.Name):
                load = ast.Name(s.target.id, ast.Load(), lineno=s.target.lineno, col_offset=s.target.col_offset)
                self.expr(load, state)  # `total += n` reads `total` first
            return self.target(s.target, state)
        if isinstance(s, ast.AnnAssign):
            return self.target(s.target, self.expr(s.value, state)) if s.value is not None else state
        if isinstance(s, (ast.Return, ast.Raise)):
            for child in pytree.children(s):
                state = self.expr(child, state)
            return None
        if isinstance(s, (ast.Break, ast.Continue)):
            jumps = self.breaks if isinstance(s, ast.Break) else self.continues
            if jumps:
                jumps[-1].append(state)
            return None
        if isinstance(s, ast.If):
            state = self.expr(s.test, state)
            return _join(self.block(s.body, state), self.block(s.orelse, state))
        if isinstance(s, (ast.For, ast.AsyncFor, ast.While)):
            return self.loop(s, state)
        if isinstance(s, (ast.With, ast.AsyncWith)):
            for item in s.items:
                state = self.expr(item.context_expr, state)
                if item.optional_vars is not None:
                    state = self.target(item.optional_vars, state)
            return self.block(s.body, state)
        if isinstance(s, (ast.Try, ast.TryStar)):
            return self.try_(s, state)
        if isinstance(s, _DEFINITIONS):
            for d in s.decorator_list:
                state = self.expr(d, state)
            return state.bind({s.name})
        if isinstance(s, (ast.Import, ast.ImportFrom)):
            return state.bind({(a.asname or a.name).split(".")[0] for a in s.names})
        if isinstance(s, ast.Delete):
            for t in s.targets:
                state = self.target(t, state)
            return state
        if isinstance(s, (ast.Expr, ast.Assert)):
            for child in pytree.children(s):
                state = self.expr(child, state)
            return state
        if isinstance(s, (ast.Pass, ast.Global, ast.Nonlocal)):
            return state
        # `match` and anything newer: its names count as bound on every path
        names = {n.name for n in pytree.walk(s) if isinstance(n, ast.MatchAs | ast.MatchStar) and n.name}
        return state.bind(names | _names_stored([s]))

    def loop(self, s: ast.For | ast.AsyncFor | ast.While, state: _State) -> _State | None:
        if isinstance(s, ast.While):
            state = self.expr(s.test, state)
            entry = state
            endless = isinstance(s.test, ast.Constant) and bool(s.test.value)
        else:
            state = self.expr(s.iter, state)
            entry, endless = self.target(s.target, state), False
        self.breaks.append([])
        self.continues.append([])
        end = self.block(s.body, entry)
        breaks, continues = self.breaks.pop(), self.continues.pop()
        # the loop ends without a break after zero or more passes (none for `while True`), then runs its `else`
        normal = None
        if not endless:
            for way in (state, end, *continues):
                normal = _join(normal, way)
        after = self.block(s.orelse, normal) if normal is not None else None
        for way in breaks:
            after = _join(after, way)
        return after

    def try_(self, s: ast.Try | ast.TryStar, state: _State) -> _State | None:
        body = self.block(s.body, state)
        # a handler may run before any of the body's bindings, or after all of them
        bound = {
            n.id for st in s.body for n in pytree.walk(st) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)
        }
        raised = _State(state.may | bound, state.must)
        out = self.block(s.orelse, body) if body is not None else None
        for h in s.handlers:
            entry = self.expr(h.type, raised).bind({h.name} if h.name else set())
            out = _join(out, self.block(h.body, entry))
        if s.finalbody:
            finished = self.block(s.finalbody, out if out is not None else raised)
            out = finished if out is not None else None
        return out


def reads(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> list[Read]:
    """Every read of one of `fn`'s locals in its own scope (not in functions, lambdas or comprehensions inside it),
    with whether the paths that reach it bind the name."""
    own = [fn, *own_nodes(pytree.children(fn))]
    declared = {name for n in own if isinstance(n, (ast.Global, ast.Nonlocal)) for name in n.names}
    args = fn.args
    params = {a.arg for a in args.posonlyargs + args.args + args.kwonlyargs}
    params |= {a.arg for a in (args.vararg, args.kwarg) if a is not None}
    local = {n.id for n in own if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)}
    local |= {c.name for n in own for c in pytree.children(n) if isinstance(c, _DEFINITIONS)}
    walk = _Walk(frozenset(local - declared - params))
    walk.block(fn.body, _State(frozenset(params), frozenset(params)))
    return walk.reads


def _names_stored(stmts: list[ast.stmt]) -> set[str]:
    """Every name the statements bind by assignment, nested scopes included (an over-estimate, on purpose)."""
    return {n.id for s in stmts for n in pytree.walk(s) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)}


def stored(target: ast.expr) -> set[str]:
    """The names an assignment target binds (`a, b[i], c.d` binds `a`)."""
    return {n.id for n in own_nodes([target]) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)}


def own_nodes(nodes: Iterable[ast.AST], skip: tuple[type, ...] = SCOPES + COMPREHENSIONS) -> Iterator[ast.AST]:
    """`nodes` and everything below them in the same scope: a node of a type in `skip` is left out with all below
    it (a nested definition, lambda or comprehension reads later, or in a scope of its own)."""
    stack = [n for n in nodes if not isinstance(n, skip)]
    while stack:
        n = stack.pop()
        yield n
        stack.extend(c for c in pytree.children(n) if not isinstance(c, skip))
