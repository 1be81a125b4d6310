"""Expressions: compiled once into Python closures, then evaluated many times.

Lowering evaluates the same few expressions tens of thousands of times (an op time per stage, a
dependency rule per op, an index per emitted op), so each syntax tree is compiled into nested
closures over a flat environment dict. Names are assumed resolved (``check`` ran first); errors
that depend on values (a list index out of range, a division by zero, a type mismatch) are raised
as located :class:`~schedlang.source.SchedlangError`s by the node that failed.

Work is bounded (see :mod:`schedlang.limits`): an integer result larger than ``max_int_bits`` is
refused (a ``**`` before it is computed), ``range()`` builds at most ``max_list_len`` items, and a
float operation on finite numbers that overflows to infinity is an error.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable
from typing import Any

from schedlang import limits
from schedlang import syntax as S
from schedlang.ir import Value
from schedlang.source import SchedlangError, Span

Env = dict[str, Any]
Fn = Callable[[Env], Any]


def type_name(v: object) -> str:
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, int):
        return "int"
    if isinstance(v, float):
        return "float"
    if isinstance(v, tuple):
        return "list"
    if isinstance(v, str):
        return "string"
    return type(v).__name__


def _is_num(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _num(v: object, span: Span | None, what: str) -> float | int:
    if not _is_num(v):
        raise SchedlangError(f"{what} must be a number, got {type_name(v)} {format_value(v)}", span)
    return v  # type: ignore[return-value]


def format_value(v: object) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, tuple):
        return "[" + ", ".join(format_value(x) for x in v) + "]"
    if isinstance(v, str):
        return f'"{v}"'
    if isinstance(v, float) and v.is_integer() and abs(v) < 1e15:
        return f"{v:.1f}"
    return str(v)


# ------------------------------------------------------------------ builtin functions


def _at(args: list[Value], span: Span | None) -> Value:
    x, i = args
    if isinstance(x, tuple):
        if not isinstance(i, int) or isinstance(i, bool):
            raise SchedlangError(f"at(): index must be an int, got {type_name(i)}", span)
        if not 0 <= i < len(x):
            raise SchedlangError(f"at(): index {i} out of range for a list of {len(x)}", span)
        return x[i]  # type: ignore[no-any-return]
    return x


def _minmax(fn: Callable[..., Any], name: str) -> Callable[[list[Value], Span | None], Value]:
    def impl(args: list[Value], span: Span | None) -> Value:
        items = list(args[0]) if len(args) == 1 and isinstance(args[0], tuple) else args
        if not items:
            raise SchedlangError(f"{name}() of nothing", span)
        for v in items:
            _num(v, span, f"argument of {name}()")
        return fn(items)  # type: ignore[no-any-return]

    return impl


def _unary_num(fn: Callable[[Any], Any], name: str) -> Callable[[list[Value], Span | None], Value]:
    def impl(args: list[Value], span: Span | None) -> Value:
        return fn(_num(args[0], span, f"argument of {name}()"))  # type: ignore[no-any-return]

    return impl


def _len(args: list[Value], span: Span | None) -> Value:
    if not isinstance(args[0], tuple):
        raise SchedlangError(f"len() takes a list, got {type_name(args[0])}", span)
    return len(args[0])


def _sum(args: list[Value], span: Span | None) -> Value:
    """``sum(list)``; a list that holds lists adds them element by element, a number counting
    for every element (``sum([tb, tw])`` is a per-stage list when ``tb`` is one)."""
    if not isinstance(args[0], tuple):
        raise SchedlangError(f"sum() takes a list, got {type_name(args[0])}", span)
    lists = [x for x in args[0] if isinstance(x, tuple)]
    try:
        if not lists:
            total = sum(_num(v, span, "element of sum()") for v in args[0])
            return _checked(total, args[0], span, "sum()")
        n = len(lists[0])
        if any(len(x) != n for x in lists):
            raise SchedlangError(f"sum() of lists of different lengths ({', '.join(str(len(x)) for x in lists)})", span)
        return tuple(_checked(sum(_num(x[k] if isinstance(x, tuple) else x, span, "element of sum()") for x in args[0]),
                              args[0], span, "sum()")
                     for k in range(n))
    except OverflowError as exc:  # an int too large for a float, under a raised max_int_bits
        raise SchedlangError(f"sum() overflows: {exc}", span) from None


def _checked(r: Any, operands: Any, span: Span | None, what: str) -> Any:
    """A result, unless it is an integer over the limit or an overflow of finite floats."""
    if type(r) is int:
        return check_int(r, span)
    if isinstance(r, float) and math.isnan(r):
        raise SchedlangError(f"{what} has no numeric result (infinity minus infinity, or zero times infinity)", span)
    if isinstance(r, float) and not math.isfinite(r) and all(not isinstance(x, float) or math.isfinite(x)
                                                             for x in operands):
        raise SchedlangError(f"{what} overflows: the result is too large for a float", span)
    return r


def _to_int(args: list[Value], span: Span | None) -> Value:
    v = _num(args[0], span, "argument of int()")
    if isinstance(v, float) and not math.isfinite(v):
        raise SchedlangError(f"int() of {v}", span)
    return check_int(int(v), span)


def check_int(v: int, span: Span | None) -> int:
    """``v``, or a located error if it is larger than the ``max_int_bits`` limit."""
    if v.bit_length() > limits.current().max_int_bits:
        raise limits.exceeded(f"an integer result of {v.bit_length():,} bits is too large", "max_int_bits", span)
    return v


def _rounding(fn: Callable[[Any], Any], name: str) -> Callable[[list[Value], Span | None], Value]:
    def impl(args: list[Value], span: Span | None) -> Value:
        v = _num(args[0], span, f"argument of {name}()")
        if isinstance(v, float) and not math.isfinite(v):
            raise SchedlangError(f"{name}() of {v}", span)
        return check_int(fn(v), span)

    return impl


def _to_float(args: list[Value], span: Span | None) -> Value:
    return _float(_num(args[0], span, "argument of float()"), span)


def _float(v: float | int, span: Span | None) -> float:
    try:
        return float(v)
    except OverflowError:  # an int too large for a float, under a raised max_int_bits
        raise SchedlangError(f"an integer of {int(v).bit_length():,} bits is too large for a float", span) from None


def _range_list(args: list[Value], span: Span | None) -> Value:
    lo, hi = (_num(a, span, "bound of range()") for a in args)
    if not isinstance(lo, int) or not isinstance(hi, int):
        raise SchedlangError("range() bounds must be ints", span)
    if hi - lo > limits.current().max_list_len:
        raise limits.exceeded(f"range({lo}, {hi}) would hold {hi - lo:,} items", "max_list_len", span)
    return tuple(range(lo, hi))


def _require(args: list[Value], span: Span | None) -> Value:
    """``require(cond, "message")``: true, or a located error with the message (for programs
    that exist only for some shapes, e.g. ZB-V needs two stages per rank)."""
    cond, msg = args
    if not isinstance(cond, bool):
        raise SchedlangError(f"require() takes a condition first, got {type_name(cond)}", span)
    if not cond:
        raise SchedlangError(str(msg) if isinstance(msg, str) else format_value(msg), span)
    return True


# name -> (min args, max args, implementation); max -1 = any number
BUILTINS: dict[str, tuple[int, int, Callable[[list[Value], Span | None], Value]]] = {
    "at": (2, 2, _at),
    "min": (1, -1, _minmax(min, "min")),
    "max": (1, -1, _minmax(max, "max")),
    "abs": (1, 1, _unary_num(abs, "abs")),
    "floor": (1, 1, _rounding(math.floor, "floor")),
    "ceil": (1, 1, _rounding(math.ceil, "ceil")),
    "int": (1, 1, _to_int),
    "float": (1, 1, _to_float),
    "len": (1, 1, _len),
    "sum": (1, 1, _sum),
    "range": (2, 2, _range_list),
    "require": (2, 2, _require),
}

# Functions that need the pipeline's placement; bound by lowering once the placement is known.
PIPELINE_FUNCTIONS = {"rank_of": (1, 1), "stage_of": (2, 2), "num_stages_on": (1, 1), "stage_cost": (3, 4)}
# Constants always in scope.
CONSTANTS: dict[str, Value] = {"inf": math.inf}
# Names bound from the pipeline's shape.
SHAPE_NAMES = ("num_ranks", "num_stages", "num_microbatches")


# ------------------------------------------------------------------ compiler

_ARITH = {"+": operator.add, "-": operator.sub, "*": operator.mul, "/": operator.truediv,
          "//": operator.floordiv, "%": operator.mod, "**": operator.pow}
_CMP = {"==": operator.eq, "!=": operator.ne, "<": operator.lt, "<=": operator.le,
        ">": operator.gt, ">=": operator.ge}


def _arith(op: str, a: Any, b: Any, span: Span | None) -> Any:
    _num(a, span, f"left operand of '{op}'")
    _num(b, span, f"right operand of '{op}'")
    if op in ("/", "//", "%") and b == 0:
        raise SchedlangError(f"division by zero in '{op}'", span)
    if op == "**" and type(a) is int and type(b) is int and b > 0 and abs(a) > 1:
        # estimate the size before computing: 2**2**40 must not run for hours
        bits = b * math.log2(abs(a))
        if bits > limits.current().max_int_bits + 1:
            raise limits.exceeded(f"{a}**{b} would have about {bits:,.0f} bits", "max_int_bits", span)
    try:
        r = _ARITH[op](a, b)
    except (OverflowError, ValueError, ZeroDivisionError) as exc:
        raise SchedlangError(f"arithmetic error in '{op}': {exc}", span) from None
    if isinstance(r, complex):  # a negative number to a fractional power
        raise SchedlangError(f"arithmetic error in '{op}': {format_value(a)} ** {format_value(b)} is not a real number", span)
    return _checked(r, (a, b), span, f"'{op}'")


def compile_expr(e: S.Expr, functions: dict[str, Callable[[list[Value], Span | None], Value]] | None = None) -> Fn:  # noqa: C901
    """Compile an expression to ``fn(env) -> value``. ``functions`` adds pipeline functions."""
    funcs = functions or {}
    if isinstance(e, (S.IntLit, S.FloatLit, S.BoolLit, S.StrLit)):
        value = e.value
        return lambda env: value
    if isinstance(e, S.Name):
        name, span = e.id, e.span

        def load(env: Env) -> Any:
            try:
                return env[name]
            except KeyError:
                raise SchedlangError(f"'{name}' has no value here", span) from None

        return load
    if isinstance(e, S.ListLit):
        items = [compile_expr(x, funcs) for x in e.items]
        return lambda env: tuple(f(env) for f in items)
    if isinstance(e, S.Unary):
        operand, span, neg = compile_expr(e.operand, funcs), e.span, e.op == "-"

        def unary(env: Env) -> Any:
            v = _num(operand(env), span, f"operand of unary '{'-' if neg else '+'}'")
            return -v if neg else v

        return unary
    if isinstance(e, S.Binary):
        left, right, op, span = compile_expr(e.left, funcs), compile_expr(e.right, funcs), e.op, e.span
        fast = _ARITH[op]
        if op in ("+", "-", "*"):
            top = (1 << limits.current().max_int_bits) - 1

            def binary_fast(env: Env) -> Any:
                a, b = left(env), right(env)
                if type(a) is int and type(b) is int:  # the common case: index arithmetic
                    r = fast(a, b)
                    if -top <= r <= top:
                        return r
                return _arith(op, a, b, span)

            return binary_fast
        return lambda env: _arith(op, left(env), right(env), span)
    if isinstance(e, S.Compare):
        operands = [compile_expr(x, funcs) for x in e.operands]
        ops = [_CMP[o] for o in e.ops]
        names, span = e.ops, e.span

        def compare(env: Env) -> bool:
            a = operands[0](env)
            for name, fn, rhs in zip(names, ops, operands[1:], strict=True):
                b = rhs(env)
                if name not in ("==", "!="):
                    _num(a, span, f"left operand of '{name}'")
                    _num(b, span, f"right operand of '{name}'")
                if not fn(a, b):
                    return False
                a = b
            return True

        return compare
    if isinstance(e, S.BoolOp):
        left, right = compile_expr(e.left, funcs), compile_expr(e.right, funcs)
        if e.op == "and":
            return lambda env: bool(left(env)) and bool(right(env))
        return lambda env: bool(left(env)) or bool(right(env))
    if isinstance(e, S.Not):
        operand = compile_expr(e.operand, funcs)
        return lambda env: not operand(env)
    if isinstance(e, S.Cond):
        test, then, orelse = (compile_expr(x, funcs) for x in (e.test, e.then, e.orelse))
        return lambda env: then(env) if test(env) else orelse(env)
    if isinstance(e, S.Index):
        target, index, span = compile_expr(e.target, funcs), compile_expr(e.index, funcs), e.span

        def subscript(env: Env) -> Any:
            xs, i = target(env), index(env)
            if not isinstance(xs, tuple):
                raise SchedlangError(f"cannot index a {type_name(xs)}", span)
            if type(i) is not int:
                raise SchedlangError(f"list index must be an int, got {type_name(i)}", span)
            if not 0 <= i < len(xs):
                raise SchedlangError(f"index {i} out of range for a list of {len(xs)}", span)
            return xs[i]

        return subscript
    if isinstance(e, S.Call):
        args = [compile_expr(x, funcs) for x in e.args]
        span = e.span
        impl = funcs.get(e.func) or BUILTINS[e.func][2]
        return lambda env: impl([a(env) for a in args], span)
    raise AssertionError(f"unknown expression node {e!r}")


def free_names(e: S.Expr) -> set[str]:
    """Names an expression reads (not function names)."""
    out: set[str] = set()
    stack: list[Any] = [e]
    while stack:
        x = stack.pop()
        if isinstance(x, S.Name):
            out.add(x.id)
        stack.extend(S.subexpressions(x))
    return out


def expect_int(v: Any, span: Span | None, what: str) -> int:
    if type(v) is int:
        return v
    if isinstance(v, float) and v.is_integer():
        raise SchedlangError(f"{what} must be an int, got float {format_value(v)} (use int(...))", span)
    raise SchedlangError(f"{what} must be an int, got {type_name(v)} {format_value(v)}", span)


def expect_num(v: Any, span: Span | None, what: str) -> float:
    return _float(_num(v, span, what), span)
