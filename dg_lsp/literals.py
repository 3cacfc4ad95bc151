"""What a literal's type cannot do: the type errors a run would certainly hit once an edit binds a name to a literal.

A small model finishes `total =` with `[]` as readily as with `0`; the code below (`total += n`) settles which one
runs. Where the edit's line binds a local to a literal (`= 0`, `= []`, `= ""`, `= {}`, `= None`, `= -1`, or a
builtin whose result has one type: `= len(xs)`, `= str(n)`, `= sorted(xs)`) and nothing else in the function rebinds
it (augmented assignments keep it to the literal's type, for a list or a number alike), every use sees that type: an
attribute the type does not have (`count.append`), an item read from or stored into what holds none, a loop over a
number, or an augmented assignment whose operand the type rejects (`[] += 1`) is a TypeError or an AttributeError on
the path that reaches it; so is a loop over a number literal itself (`for i in 1:`). A parameter annotated with a
builtin type that the function never rebinds is held to that type the same way where the edit uses it (`for i in n:`
with `n: int`, `range(xs)` with `xs: List[int]`, `len(x)` for an item of a `List[float]` taken by `for x in xs` or
`for i, x in enumerate(xs)`), as is a name the builtins that iterate (`sum`, `sorted`, `enumerate`, ...) or measure
(`len`) are given. Python; `diagnose.check_run` counts these among the run faults.
"""

from __future__ import annotations

import ast
import operator
from collections.abc import Callable
from typing import Any

from dg_lsp import pytree

_OPERATORS = {
    ast.Add: operator.iadd,
    ast.Sub: operator.isub,
    ast.Mult: operator.imul,
    ast.Div: operator.itruediv,
    ast.FloorDiv: operator.ifloordiv,
    ast.Mod: operator.imod,
}


def number_loops(tree: ast.AST, first: int, last: int) -> int:
    """Loops and comprehensions on lines first..last over a number (`for i in 1:`): a TypeError whenever they run."""
    loops = (n for n in pytree.walk(tree) if isinstance(n, (ast.For, ast.AsyncFor, ast.comprehension)))
    return sum(
        isinstance(n.iter, ast.Constant) and not hasattr(n.iter.value, "__iter__") and first <= n.iter.lineno <= last
        for n in loops
    )


def bad_unpacking(tree: ast.AST, first: int, last: int) -> int:
    """Assignments and loops on lines first..last that unpack into more or fewer names than their value certainly has:
    a literal of another length or none (`a, b = []`, `lo, hi = 0`), a loop over `enumerate` (pairs), `zip` of k
    sequences (k-tuples) or `range` (numbers) into a tuple of another length. A ValueError or TypeError wherever they
    run."""
    count = 0
    for node in pytree.walk(tree):
        if isinstance(node, ast.Assign) and first <= node.lineno <= last:
            count += any(_unpacks_badly(target, _length(node.value)) for target in node.targets)
        elif isinstance(node, (ast.For, ast.AsyncFor, ast.comprehension)) and first <= node.iter.lineno <= last:
            count += _unpacks_badly(node.target, _item_length(node.iter))
    return count


_NOT_ITERABLE = -1


def _length(value: ast.expr) -> int | None:
    """How many items unpacking `value` certainly yields (_NOT_ITERABLE: it cannot be unpacked), or None."""
    if isinstance(value, (ast.List, ast.Tuple)):
        return None if any(isinstance(e, ast.Starred) for e in value.elts) else len(value.elts)
    if isinstance(value, ast.Constant):
        if isinstance(value.value, (str, bytes)):
            return len(value.value)
        return _NOT_ITERABLE
    return None


def _item_length(iterable: ast.expr) -> int | None:
    """`_length` of each item a loop over `iterable` takes, where a builtin settles it."""
    if not (isinstance(iterable, ast.Call) and isinstance(iterable.func, ast.Name)) or iterable.keywords:
        return None
    if any(isinstance(a, ast.Starred) for a in iterable.args):
        return None
    return {"enumerate": 2, "zip": len(iterable.args), "range": _NOT_ITERABLE}.get(iterable.func.id)


def _unpacks_badly(target: ast.expr, length: int | None) -> bool:
    if length is None or not isinstance(target, (ast.Tuple, ast.List)):
        return False
    if any(isinstance(e, ast.Starred) for e in target.elts):
        return length == _NOT_ITERABLE or length < len(target.elts) - 1
    return length != len(target.elts)


def misuses(fn: ast.FunctionDef | ast.AsyncFunctionDef, own: list[ast.AST], first: int, last: int) -> int:
    """Uses, in function `fn` (whose own-scope nodes are `own`), of names whose type is known which that type cannot
    serve: anywhere, of locals that lines first..last bind to a literal (or loop over an annotated parameter's items);
    on lines first..last, of locals other lines bind to a literal (`balance = 0` above `balance.append(op)`), of
    parameters annotated with a builtin type (`n: int` in `for i in n:`) and of the items other loops take from them
    (`for x in xs` over `xs: List[float]`, then `len(x)`). A local is held to its literal only where nothing else in
    the function binds it."""
    stores: dict[str, int] = {}
    augmented = {id(n.target) for n in own if isinstance(n, ast.AugAssign)}
    for node in own:
        if isinstance(node, ast.Name) and not isinstance(node.ctx, ast.Load) and id(node) not in augmented:
            stores[node.id] = stores.get(node.id, 0) + 1
        elif isinstance(node, (ast.Global, ast.Nonlocal)):
            stores.update((name, 2) for name in node.names)
    args = fn.args.posonlyargs + fn.args.args + fn.args.kwonlyargs
    params = {a.arg for a in args}
    declared = {a.arg: _annotated(a.annotation) for a in args if not stores.get(a.arg)}
    items = {name: _annotated(_element(a.annotation)) for a in args if not stores.get(name := a.arg)}
    declared = {name: value for name, value in declared.items() if value is not _UNKNOWN}
    bound: dict[str, object] = {}  # names the edit's lines give a type
    for node in own:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            value, name = _literal(node.value), node.targets[0].id
            if value is not _UNKNOWN and stores.get(name) == 1 and name not in params:
                # bound here, judged wherever it is used; bound elsewhere, where the edit uses it (`balance.append`)
                (bound if first <= node.lineno <= last else declared)[name] = value
        elif isinstance(node, ast.For):
            for name, item in _loop_items(node, items):
                if item is not _UNKNOWN and stores.get(name) == 1:
                    (bound if first <= node.lineno <= last else declared)[name] = item
    typed = {name: value for name, value in bound.items() if stores.get(name) == 1 and name not in params}
    count = sum(_fails(node, typed) for node in own) if typed else 0
    if declared:
        count += sum(_fails(node, declared) for node in own if first <= getattr(node, "lineno", 0) <= last)
    return count


def _names(node: ast.BinOp, typed: dict[str, object]) -> bool:
    """Whether a side of `node` is one of `typed`'s names (a sum of literals alone is not the edit's business)."""
    return any(isinstance(side, ast.Name) and side.id in typed for side in (node.left, node.right))


def _operand(node: ast.expr, typed: dict[str, object]) -> object:
    """What a binary operation's side certainly is, by type: a typed name's value or a literal's, else _UNKNOWN."""
    if isinstance(node, ast.Name):
        return typed.get(node.id, _UNKNOWN)
    return _literal(node)


def _loop_items(loop: ast.For, items: dict[str, object]) -> list[tuple[str, object]]:
    """(name, value) for the names a loop over a parameter binds to its items: `for x in xs`, and `for i, x in
    enumerate(xs)` (`i` a count)."""
    if isinstance(loop.iter, ast.Name) and isinstance(loop.target, ast.Name):
        return [(loop.target.id, items.get(loop.iter.id, _UNKNOWN))]
    call, target = loop.iter, loop.target
    if not (isinstance(call, ast.Call) and isinstance(call.func, ast.Name) and call.func.id == "enumerate"):
        return []
    if len(call.args) != 1 or call.keywords or not isinstance(call.args[0], ast.Name):
        return []
    if not (isinstance(target, ast.Tuple) and len(target.elts) == 2):
        return []
    count, item = target.elts
    found = [(count.id, 0)] if isinstance(count, ast.Name) else []
    return found + ([(item.id, items.get(call.args[0].id, _UNKNOWN))] if isinstance(item, ast.Name) else [])


def _fails(node: ast.AST, typed: dict[str, object]) -> bool:
    """Whether `node` is a use of one of `typed`'s names that its literal's type cannot serve."""
    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in typed:
        return not hasattr(typed[node.value.id], node.attr)
    if isinstance(node, ast.Subscript) and isinstance(node.value, ast.Name) and node.value.id in typed:
        method = {ast.Load: "__getitem__", ast.Store: "__setitem__"}.get(type(node.ctx), "__delitem__")
        return not hasattr(typed[node.value.id], method)
    if isinstance(node, (ast.For, ast.AsyncFor, ast.comprehension)) and isinstance(node.iter, ast.Name):
        return node.iter.id in typed and not hasattr(typed[node.iter.id], "__iter__")
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and not node.keywords:
        values = [typed[a.id] if isinstance(a, ast.Name) and a.id in typed else _UNKNOWN for a in node.args]
        if node.func.id == "range":  # `range(xs)`: a list cannot be interpreted as an integer
            return any(v is not _UNKNOWN and not isinstance(v, int) for v in values)
        needs = "__len__" if node.func.id == "len" else "__iter__" if node.func.id in _CONSUME else None
        single = node.func.id not in ("min", "max") or len(values) == 1  # `max(a, b)` compares, it does not iterate
        return needs is not None and single and any(v is not _UNKNOWN and not hasattr(v, needs) for v in values)
    if isinstance(node, ast.Compare) and any(isinstance(op, (ast.In, ast.NotIn)) for op in node.ops):
        return any(  # `x in n` for a number n
            isinstance(op, (ast.In, ast.NotIn))
            and isinstance(right, ast.Name)
            and right.id in typed
            and not hasattr(typed[right.id], "__contains__")
            and not hasattr(typed[right.id], "__iter__")
            for op, right in zip(node.ops, node.comparators)
        )
    if isinstance(node, ast.Compare) and any(isinstance(op, _ORDERS) for op in node.ops):
        sides = [_value(side, typed) for side in (node.left, *node.comparators)]
        return any(_refuses(op, a, b) for op, a, b in zip(node.ops, sides, sides[1:]) if isinstance(op, _ORDERS))
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY and _names(node, typed):
        left, right = _operand(node.left, typed), _operand(node.right, typed)
        if left is _UNKNOWN or right is _UNKNOWN or (isinstance(node.op, ast.Mod) and isinstance(left, str)):
            return False  # (a format string's `%` depends on its text, which the empty value does not keep)
        try:
            _BINARY[type(node.op)](_copy(left), _copy(right))
        except TypeError:
            return True  # `str(n) + []`, `[0] + 1`
        except (ArithmeticError, ValueError):
            return False
        return False
    if isinstance(node, ast.AugAssign) and isinstance(node.target, ast.Name) and node.target.id in typed:
        apply, operand = _OPERATORS.get(type(node.op)), _literal(node.value)
        if apply is None or operand is _UNKNOWN:
            return False
        try:
            apply(_copy(typed[node.target.id]), operand)
        except TypeError:
            return True
        except (ArithmeticError, ValueError):  # `0 /= 0`: the value's business, not the type's
            return False
    return False


_UNKNOWN = object()
_BINARY = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
}
# Builtins that iterate over their arguments.
_CONSUME = frozenset(
    ("enumerate", "sorted", "list", "tuple", "set", "sum", "reversed", "zip", "min", "max", "any", "all")
)
# Builtin annotations and an empty value of each: what the type can do is all that is asked of it.
_EMPTY: dict[str, object] = {"int": 0, "float": 0.0, "bool": False, "str": "", "bytes": b""}
_EMPTY |= {name: factory() for name, factory in (("list", list), ("dict", dict), ("tuple", tuple), ("set", set))}
_EMPTY |= {name.title(): _EMPTY[name] for name in ("list", "dict", "tuple", "set")}


def _annotated(annotation: ast.expr | None) -> object:
    """An empty value of the builtin type an annotation names (`int`, `str`, `List[int]`, `dict`), else _UNKNOWN
    (none, a union, Optional, a class of the program's own: nothing a value can stand for)."""
    head = annotation.value if isinstance(annotation, ast.Subscript) else annotation
    name = head.attr if isinstance(head, ast.Attribute) else head.id if isinstance(head, ast.Name) else None
    return _EMPTY.get(name or "", _UNKNOWN)


def _element(annotation: ast.expr | None) -> ast.expr | None:
    """The item type of a `List[X]` / `list[X]` annotation, else None."""
    if isinstance(annotation, ast.Subscript) and isinstance(annotation.value, ast.Name):
        if annotation.value.id in ("List", "list") and not isinstance(annotation.slice, ast.Tuple):
            return annotation.slice
    return None


def _literal(node: ast.expr) -> object:
    """An empty or constant literal's value (`0`, `-1`, `""`, `None`, `[]`, `{}`, `()`, `set()`), or an empty value
    of the one type a builtin returns (`len(xs)`: 0), else _UNKNOWN; a container literal with items stands for its
    empty self (its type is what counts)."""
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub) and isinstance(node.operand, ast.Constant):
        value = node.operand.value
        return value if isinstance(value, (int, float)) and not isinstance(value, bool) else _UNKNOWN
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in _RESULTS:
        return _RESULTS[node.func.id]  # a builtin whose result has one type, whatever it is given
    if isinstance(node, ast.List):
        return []
    if isinstance(node, ast.Dict):
        return {}
    if isinstance(node, ast.Tuple):
        return ()
    if isinstance(node, ast.Set) or (
        isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "set" and not node.args
    ):
        return set()
    return _UNKNOWN


# Builtins whose result's type is theirs alone (`len(xs)` is an int, `sorted(xs)` a list).
_RESULTS: dict[str, object] = {"len": 0, "int": 0, "float": 0.0, "str": "", "repr": "", "sorted": [], "list": []}
_RESULTS |= {"tuple": (), "dict": {}, "set": set()}

_ORDERS = (ast.Lt, ast.LtE, ast.Gt, ast.GtE)
_COMPARE = {ast.Lt: operator.lt, ast.LtE: operator.le, ast.Gt: operator.gt, ast.GtE: operator.ge}


def _value(node: ast.expr, typed: dict[str, object]) -> object:
    """What a comparison's side certainly is: a typed name's value, a number or string constant, else _UNKNOWN."""
    if isinstance(node, ast.Name):
        return typed.get(node.id, _UNKNOWN)
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float, str)):
        return node.value
    return _UNKNOWN


def _refuses(op: ast.cmpop, a: object, b: object) -> bool:
    """Whether ordering `a` and `b` is a TypeError (`{} > 0`, `'' < 1`, `None < 0`)."""
    if a is _UNKNOWN or b is _UNKNOWN:
        return False
    compare: Callable[[Any, Any], object] = _COMPARE[type(op)]
    try:
        compare(_copy(a), _copy(b))
    except TypeError:
        return True
    return False


def _copy(value: object) -> object:
    """A fresh value of `value`'s type to try an operation on: empty where it is a sequence, so `*=` by a large number
    costs nothing."""
    return type(value)() if isinstance(value, (str, bytes, list, tuple, dict, set)) else value
