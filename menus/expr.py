"""Conditions in menu documents: a small, safe expression language compiled once per version.

    customer.registered
    not customer.registered
    loan_products_count == 1 and customer.status != "locked"

Allowed: names and dotted paths into the session variables, string/number/boolean/null literals,
comparisons (== != < <= > >= in, not in), `and`, `or`, `not`. Nothing else parses: no calls, no
subscripts, no attribute access on anything but a variable path, so an admin-authored menu can
never run code. A path that does not resolve is None.
"""

from __future__ import annotations

import ast
import operator
from collections.abc import Callable, Mapping
from typing import Any

MAX_EXPRESSION_CHARS = 200

Scope = Mapping[str, Any]
Condition = Callable[[Scope], bool]

_COMPARE: dict[type[ast.cmpop], Callable[[Any, Any], bool]] = {
    ast.Eq: operator.eq,
    ast.NotEq: operator.ne,
    ast.Lt: operator.lt,
    ast.LtE: operator.le,
    ast.Gt: operator.gt,
    ast.GtE: operator.ge,
    ast.In: lambda a, b: b is not None and a in b,
    ast.NotIn: lambda a, b: b is None or a not in b,
}


class ExpressionError(ValueError):
    """The condition text is not in the allowed language."""


def lookup(scope: Scope, path: str) -> Any:
    """`a.b.c` in nested mappings; None where any step is missing."""
    value: Any = scope
    for part in path.split("."):
        if not isinstance(value, Mapping):
            return None
        value = value.get(part)
    return value


def _path(node: ast.expr) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_path(node.value)}.{node.attr}"
    raise ExpressionError(f"unsupported syntax: {type(node).__name__}")


def _safe_compare(op: Callable[[Any, Any], bool], a: Any, b: Any) -> bool:
    try:
        return bool(op(a, b))
    except TypeError:
        # Comparing None with a number, say: the condition is simply false.
        return False


def _constant(node: ast.Constant) -> Callable[[Scope], Any]:
    if not isinstance(node.value, str | int | float | bool | type(None)):
        raise ExpressionError("unsupported literal")
    value = node.value
    return lambda scope: value


def _compare(node: ast.Compare) -> Callable[[Scope], Any]:
    left = _compile(node.left)
    pairs = []
    for op, right in zip(node.ops, node.comparators, strict=True):
        fn = _COMPARE.get(type(op))
        if fn is None:
            raise ExpressionError(f"unsupported comparison: {type(op).__name__}")
        pairs.append((fn, _compile(right)))

    def compare(scope: Scope) -> bool:
        current = left(scope)
        for fn, right_fn in pairs:
            other = right_fn(scope)
            if not _safe_compare(fn, current, other):
                return False
            current = other
        return True

    return compare


def _bool_op(node: ast.BoolOp) -> Callable[[Scope], Any]:
    parts = [_compile(v) for v in node.values]
    if isinstance(node.op, ast.And):
        return lambda scope: all(p(scope) for p in parts)
    return lambda scope: any(p(scope) for p in parts)


def _compile(node: ast.expr) -> Callable[[Scope], Any]:
    if isinstance(node, ast.Constant):
        return _constant(node)
    if isinstance(node, ast.Name | ast.Attribute):
        path = _path(node)
        return lambda scope: lookup(scope, path)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
        inner = _compile(node.operand)
        return lambda scope: not inner(scope)
    if isinstance(node, ast.BoolOp):
        return _bool_op(node)
    if isinstance(node, ast.Compare):
        return _compare(node)
    if isinstance(node, ast.List | ast.Tuple):
        items = [_compile(e) for e in node.elts]
        return lambda scope: [i(scope) for i in items]
    raise ExpressionError(f"unsupported syntax: {type(node).__name__}")


def compile_condition(text: str) -> Condition:
    """Compile a condition; raise ExpressionError with a short reason when it is not allowed."""
    if not text.strip():
        raise ExpressionError("empty condition")
    if len(text) > MAX_EXPRESSION_CHARS:
        raise ExpressionError(f"longer than {MAX_EXPRESSION_CHARS} characters")
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError:
        raise ExpressionError("not a valid condition") from None
    fn = _compile(tree.body)
    return lambda scope: bool(fn(scope))


def paths(text: str) -> set[str]:
    """The variable paths a condition reads (for the validator)."""
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError:
        return set()
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name | ast.Attribute):
            try:
                found.add(_path(node))
            except ExpressionError:
                continue
    # `a.b` also walks `a`; keep the longest paths only.
    return {p for p in found if not any(o != p and o.startswith(p + ".") for o in found)}
