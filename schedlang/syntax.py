"""The schedlang syntax tree (AST) and its printer.

One class per grammar rule (the rule ``op_decl`` builds :class:`OpDecl`, and so on). Nodes are
frozen, slotted dataclasses with tuple fields; every node carries a ``span`` that is kept out of
equality, so ``parse(format_module(m)) == m`` holds for any module ``m``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from schedlang.source import Span


def _span() -> Span | None:
    return field(default=None, compare=False, repr=False, hash=False)  # type: ignore[return-value]


# ------------------------------------------------------------------ expressions


@dataclass(frozen=True, slots=True)
class IntLit:
    value: int
    span: Span | None = _span()


@dataclass(frozen=True, slots=True)
class FloatLit:
    value: float
    span: Span | None = _span()


@dataclass(frozen=True, slots=True)
class StrLit:
    value: str
    span: Span | None = _span()


@dataclass(frozen=True, slots=True)
class BoolLit:
    value: bool
    span: Span | None = _span()


@dataclass(frozen=True, slots=True)
class Name:
    id: str
    span: Span | None = _span()


@dataclass(frozen=True, slots=True)
class Call:
    func: str
    args: tuple[Expr, ...]
    span: Span | None = _span()


@dataclass(frozen=True, slots=True)
class Index:
    target: Expr
    index: Expr
    span: Span | None = _span()


@dataclass(frozen=True, slots=True)
class ListLit:
    items: tuple[Expr, ...]
    span: Span | None = _span()


@dataclass(frozen=True, slots=True)
class Unary:
    op: str  # "-" or "+"
    operand: Expr
    span: Span | None = _span()


@dataclass(frozen=True, slots=True)
class Binary:
    op: str  # + - * / // % **
    left: Expr
    right: Expr
    span: Span | None = _span()


@dataclass(frozen=True, slots=True)
class Compare:
    """A comparison chain ``a < b <= c`` (Python semantics)."""

    operands: tuple[Expr, ...]
    ops: tuple[str, ...]
    span: Span | None = _span()


@dataclass(frozen=True, slots=True)
class BoolOp:
    op: str  # "and" / "or"
    left: Expr
    right: Expr
    span: Span | None = _span()


@dataclass(frozen=True, slots=True)
class Not:
    operand: Expr
    span: Span | None = _span()


@dataclass(frozen=True, slots=True)
class Cond:
    test: Expr
    then: Expr
    orelse: Expr
    span: Span | None = _span()


Expr = (
    IntLit
    | FloatLit
    | StrLit
    | BoolLit
    | Name
    | Call
    | Index
    | ListLit
    | Unary
    | Binary
    | Compare
    | BoolOp
    | Not
    | Cond
)

def subexpressions(e: Expr) -> tuple[Expr, ...]:
    """The direct child expressions of ``e`` (a call's arguments, an operator's operands, ...)."""
    if isinstance(e, Call):
        return e.args
    if isinstance(e, ListLit):
        return e.items
    if isinstance(e, Compare):
        return e.operands
    if isinstance(e, (Unary, Not)):
        return (e.operand,)
    if isinstance(e, (Binary, BoolOp)):
        return (e.left, e.right)
    if isinstance(e, Index):
        return (e.target, e.index)
    if isinstance(e, Cond):
        return (e.test, e.then, e.orelse)
    return ()


# ------------------------------------------------------------------ op patterns and orders


@dataclass(frozen=True, slots=True)
class OpPattern:
    """``KIND[stage, microbatch]``: in a dependency rule or an order."""

    kind: str
    stage: Expr
    mb: Expr
    span: Span | None = _span()


@dataclass(frozen=True, slots=True)
class Block:
    stmts: tuple[Stmt, ...]
    span: Span | None = _span()


@dataclass(frozen=True, slots=True)
class ForStmt:
    var: str
    lo: Expr
    hi: Expr
    body: Block
    span: Span | None = _span()


@dataclass(frozen=True, slots=True)
class ElifClause:
    test: Expr
    body: Block
    span: Span | None = _span()


@dataclass(frozen=True, slots=True)
class IfStmt:
    test: Expr
    body: Block
    elifs: tuple[ElifClause, ...]
    orelse: Block | None
    span: Span | None = _span()


@dataclass(frozen=True, slots=True)
class LetStmt:
    name: str
    value: Expr
    span: Span | None = _span()


@dataclass(frozen=True, slots=True)
class Emit:
    """Emit one op, or several overlapped in one slot (``F[r,i] & B[r,j]``)."""

    ops: tuple[OpPattern, ...]
    optional: bool = False
    span: Span | None = _span()


Stmt = ForStmt | IfStmt | LetStmt | Emit


@dataclass(frozen=True, slots=True)
class RankLoop:
    """``rank r in lo..hi { ... }``: the body runs once per rank, building that rank's order."""

    var: str
    lo: Expr
    hi: Expr
    body: Block
    span: Span | None = _span()


@dataclass(frozen=True, slots=True)
class RankOne:
    rank: Expr
    body: Block
    span: Span | None = _span()


@dataclass(frozen=True, slots=True)
class OrdersClause:
    """``schedule { rank ... }``: explicit per-rank orders as written (lowered to
    :class:`schedlang.ir.Orders`)."""

    blocks: tuple[RankLoop | RankOne, ...]
    span: Span | None = _span()


@dataclass(frozen=True, slots=True)
class Arg:
    name: str
    value: Expr
    span: Span | None = _span()


@dataclass(frozen=True, slots=True)
class SchedulerClause:
    """``schedule "NAME"(ARG = EXPR, ...)``: a named scheduler as written (lowered to
    :class:`schedlang.ir.SchedulerCall`, whose arguments are evaluated)."""

    name: str
    args: tuple[Arg, ...]
    span: Span | None = _span()


# ------------------------------------------------------------------ declarations


@dataclass(frozen=True, slots=True)
class ImportDecl:
    path: str
    span: Span | None = _span()


@dataclass(frozen=True, slots=True)
class ParamDecl:
    name: str
    value: Expr
    span: Span | None = _span()


@dataclass(frozen=True, slots=True)
class LetDecl:
    name: str
    value: Expr
    span: Span | None = _span()


@dataclass(frozen=True, slots=True)
class RanksDecl:
    value: Expr
    span: Span | None = _span()


@dataclass(frozen=True, slots=True)
class StagesDecl:
    value: Expr
    span: Span | None = _span()


@dataclass(frozen=True, slots=True)
class MicrobatchesDecl:
    value: Expr
    span: Span | None = _span()


@dataclass(frozen=True, slots=True)
class PlaceDecl:
    """``place s => expr`` (a function of the stage) or ``place [r0, r1, ...]``."""

    binder: str | None
    value: Expr
    span: Span | None = _span()


@dataclass(frozen=True, slots=True)
class CommDecl:
    value: Expr
    span: Span | None = _span()


@dataclass(frozen=True, slots=True)
class MemLimitDecl:
    value: Expr
    span: Span | None = _span()


@dataclass(frozen=True, slots=True)
class AllreduceDecl:
    """``allreduce EXPR``: time of one stage's data-parallel gradient all-reduce (a number, or a
    list with one value per stage)."""

    value: Expr
    span: Span | None = _span()


@dataclass(frozen=True, slots=True)
class OverlapDecl:
    mode: str
    span: Span | None = _span()


@dataclass(frozen=True, slots=True)
class EveryAttr:
    value: Expr
    span: Span | None = _span()


@dataclass(frozen=True, slots=True)
class WeightsDecl:
    """``weights POLICY [every N] [mem M]``: the weight-update policy (flush, stash, stash+vsync,
    2bw), how many microbatches a 2bw update accumulates, and the memory of one weight version."""

    policy: str
    attrs: tuple[EveryAttr | MemAttr, ...]
    span: Span | None = _span()


@dataclass(frozen=True, slots=True)
class RoleAttr:
    role: str
    span: Span | None = _span()


@dataclass(frozen=True, slots=True)
class TimeAttr:
    value: Expr
    span: Span | None = _span()


@dataclass(frozen=True, slots=True)
class MemAttr:
    value: Expr
    span: Span | None = _span()


@dataclass(frozen=True, slots=True)
class WhereAttr:
    value: Expr
    span: Span | None = _span()


@dataclass(frozen=True, slots=True)
class LatencyAttr:
    value: Expr
    span: Span | None = _span()


@dataclass(frozen=True, slots=True)
class OpDecl:
    name: str
    binders: tuple[str, ...]
    attrs: tuple[RoleAttr | TimeAttr | MemAttr | WhereAttr, ...]
    span: Span | None = _span()


@dataclass(frozen=True, slots=True)
class DepDecl:
    src: OpPattern
    dst: OpPattern
    attrs: tuple[LatencyAttr | WhereAttr, ...]
    span: Span | None = _span()


@dataclass(frozen=True, slots=True)
class ScheduleDecl:
    body: OrdersClause | SchedulerClause
    span: Span | None = _span()


Decl = (
    ImportDecl
    | ParamDecl
    | LetDecl
    | RanksDecl
    | StagesDecl
    | MicrobatchesDecl
    | PlaceDecl
    | CommDecl
    | MemLimitDecl
    | AllreduceDecl
    | OverlapDecl
    | WeightsDecl
    | OpDecl
    | DepDecl
    | ScheduleDecl
)


@dataclass(frozen=True, slots=True)
class Module:
    """One parsed source file."""

    items: tuple[Decl, ...]
    name: str = field(default="", compare=False)


# ------------------------------------------------------------------ printer

_PREC = {"or": 1, "and": 2, "not": 3, "cmp": 4, "+": 5, "-": 5, "*": 6, "/": 6, "//": 6, "%": 6,
         "unary": 7, "**": 8, "atom": 9}


def _prec(e: Expr) -> int:
    if isinstance(e, Cond):
        return 0
    if isinstance(e, BoolOp):
        return _PREC[e.op]
    if isinstance(e, Not):
        return _PREC["not"]
    if isinstance(e, Compare):
        return _PREC["cmp"]
    if isinstance(e, Binary):
        return _PREC[e.op]
    if isinstance(e, Unary):
        return _PREC["unary"]
    return _PREC["atom"]


def _wrap(e: Expr, min_prec: int) -> str:
    text = format_expr(e)
    return f"({text})" if _prec(e) < min_prec else text


def format_expr(e: Expr) -> str:  # noqa: C901 - one case per node kind
    """Print an expression with the fewest parentheses that parse back to the same tree."""
    if isinstance(e, IntLit):
        return str(e.value)
    if isinstance(e, FloatLit):
        text = repr(float(e.value))
        return text if ("." in text or "e" in text) else text + ".0"
    if isinstance(e, BoolLit):
        return "true" if e.value else "false"
    if isinstance(e, StrLit):
        return f'"{e.value}"'
    if isinstance(e, Name):
        return e.id
    if isinstance(e, Call):
        return f"{e.func}({', '.join(format_expr(a) for a in e.args)})"
    if isinstance(e, Index):
        return f"{_wrap(e.target, _PREC['atom'])}[{format_expr(e.index)}]"
    if isinstance(e, ListLit):
        return f"[{', '.join(format_expr(a) for a in e.items)}]"
    if isinstance(e, Unary):
        return f"{e.op}{_wrap(e.operand, _PREC['unary'])}"
    if isinstance(e, Binary):
        p = _PREC[e.op]
        if e.op == "**":  # right-associative; the exponent is a factor
            return f"{_wrap(e.left, _PREC['atom'])} ** {_wrap(e.right, _PREC['unary'])}"
        return f"{_wrap(e.left, p)} {e.op} {_wrap(e.right, p + 1)}"
    if isinstance(e, Compare):
        p = _PREC["cmp"] + 1
        out = _wrap(e.operands[0], p)
        for op, rhs in zip(e.ops, e.operands[1:], strict=True):
            out += f" {op} {_wrap(rhs, p)}"
        return out
    if isinstance(e, BoolOp):
        p = _PREC[e.op]
        return f"{_wrap(e.left, p)} {e.op} {_wrap(e.right, p + 1)}"
    if isinstance(e, Not):
        return f"not {_wrap(e.operand, _PREC['not'])}"
    if isinstance(e, Cond):
        return f"{_wrap(e.test, 1)} ? {format_expr(e.then)} : {format_expr(e.orelse)}"
    raise AssertionError(f"unknown expression node {e!r}")


def _fmt_pattern(p: OpPattern) -> str:
    return f"{p.kind}[{format_expr(p.stage)}, {format_expr(p.mb)}]"


def _fmt_block(b: Block, indent: int) -> list[str]:
    pad = "  " * indent
    out: list[str] = []
    for st in b.stmts:
        if isinstance(st, Emit):
            out.append(pad + " & ".join(_fmt_pattern(p) for p in st.ops) + ("?" if st.optional else ""))
        elif isinstance(st, LetStmt):
            out.append(f"{pad}let {st.name} = {format_expr(st.value)}")
        elif isinstance(st, ForStmt):
            out.append(f"{pad}for {st.var} in {format_expr(st.lo)}..{format_expr(st.hi)} {{")
            out += _fmt_block(st.body, indent + 1) + [pad + "}"]
        elif isinstance(st, IfStmt):
            out.append(f"{pad}if {format_expr(st.test)} {{")
            out += _fmt_block(st.body, indent + 1)
            for el in st.elifs:
                out.append(f"{pad}}} elif {format_expr(el.test)} {{")
                out += _fmt_block(el.body, indent + 1)
            if st.orelse is not None:
                out.append(f"{pad}}} else {{")
                out += _fmt_block(st.orelse, indent + 1)
            out.append(pad + "}")
        else:
            raise AssertionError(f"unknown statement {st!r}")
    return out


def _fmt_attr(a: RoleAttr | TimeAttr | MemAttr | WhereAttr | LatencyAttr | EveryAttr) -> str:
    if isinstance(a, RoleAttr):
        return f"role {a.role}"
    word = {TimeAttr: "time", MemAttr: "mem", WhereAttr: "where", LatencyAttr: "latency",
            EveryAttr: "every"}[type(a)]
    return f"{word} {format_expr(a.value)}"


def _fmt_schedule(d: ScheduleDecl) -> list[str]:
    body = d.body
    if isinstance(body, SchedulerClause):
        args = ", ".join(f"{a.name} = {format_expr(a.value)}" for a in body.args)
        return [f'schedule "{body.name}"({args})']
    out = ["schedule {"]
    for blk in body.blocks:
        if isinstance(blk, RankLoop):
            out.append(f"  rank {blk.var} in {format_expr(blk.lo)}..{format_expr(blk.hi)} {{")
        else:
            out.append(f"  rank {format_expr(blk.rank)} {{")
        out += _fmt_block(blk.body, 2) + ["  }"]
    out.append("}")
    return out


def format_decl(d: Decl) -> list[str]:  # noqa: C901 - one case per declaration kind
    """Print one declaration as source lines."""
    simple = {RanksDecl: "ranks", StagesDecl: "stages", MicrobatchesDecl: "microbatches",
              CommDecl: "comm", MemLimitDecl: "mem_limit", AllreduceDecl: "allreduce"}
    if type(d) in simple:
        return [f"{simple[type(d)]} {format_expr(d.value)}"]  # type: ignore[union-attr]
    if isinstance(d, ImportDecl):
        return [f'import "{d.path}"']
    if isinstance(d, ParamDecl):
        return [f"param {d.name} = {format_expr(d.value)}"]
    if isinstance(d, LetDecl):
        return [f"let {d.name} = {format_expr(d.value)}"]
    if isinstance(d, PlaceDecl):
        lhs = f"{d.binder} => " if d.binder else ""
        return [f"place {lhs}{format_expr(d.value)}"]
    if isinstance(d, OverlapDecl):
        return [f"overlap {d.mode}"]
    if isinstance(d, WeightsDecl):
        return [" ".join([f"weights {d.policy}"] + [_fmt_attr(a) for a in d.attrs])]
    if isinstance(d, OpDecl):
        binders = f"[{', '.join(d.binders)}]" if d.binders else ""
        return [" ".join([f"op {d.name}{binders}"] + [_fmt_attr(a) for a in d.attrs])]
    if isinstance(d, DepDecl):
        head = f"dep {_fmt_pattern(d.src)} -> {_fmt_pattern(d.dst)}"
        return [" ".join([head] + [_fmt_attr(a) for a in d.attrs])]
    if isinstance(d, ScheduleDecl):
        return _fmt_schedule(d)
    raise AssertionError(f"unknown declaration {d!r}")


def format_module(m: Module) -> str:
    """Print a module as schedlang source; parsing the result gives an equal module."""
    lines: list[str] = []
    for d in m.items:
        lines += format_decl(d)
    return "\n".join(lines) + "\n"
