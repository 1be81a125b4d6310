"""Static checks on the merged declarations, before anything is evaluated.

Guarantees, when it returns: every name an expression reads is in scope (a parameter, a ``let``,
a constant, a binder of the enclosing op, rule, placement or loop); every function exists and is
called with the right number of arguments; every op pattern names a declared op kind; no name is
bound twice in one scope; attributes appear at most once; the required clauses are present.
Value-dependent errors (ranges, types, a missing op) are left to :mod:`schedlang.lower`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from schedlang import syntax as S
from schedlang.evaluate import BUILTINS, CONSTANTS, PIPELINE_FUNCTIONS, SHAPE_NAMES
from schedlang.ir import WEIGHT_POLICIES, Role
from schedlang.load import Item
from schedlang.source import Note, SchedlangError, Source, Span

OVERLAP_MODES = ("sum", "max")


def _arity(name: str) -> tuple[int, int] | None:
    if name in BUILTINS:
        lo, hi, _ = BUILTINS[name]
        return lo, hi
    return PIPELINE_FUNCTIONS.get(name)


def _closest(name: str, candidates: Iterable[str]) -> str:
    import difflib

    best = difflib.get_close_matches(name, list(candidates), n=1)
    return f" (did you mean '{best[0]}'?)" if best else ""


def check_expr(e: S.Expr, scope: frozenset[str] | set[str], what: str = "") -> None:
    """Raise a located error for the first unknown name or bad call in ``e``."""
    stack: list[Any] = [e]
    while stack:
        x = stack.pop()
        if isinstance(x, S.Name):
            if x.id not in scope:
                hint = _closest(x.id, scope)
                raise SchedlangError(f"unknown name '{x.id}'{what}{hint}", x.span)
        elif isinstance(x, S.Call):
            ar = _arity(x.func)
            if ar is None:
                known = list(BUILTINS) + list(PIPELINE_FUNCTIONS)
                raise SchedlangError(f"unknown function '{x.func}'{_closest(x.func, known)}", x.span)
            lo, hi = ar
            n = len(x.args)
            if n < lo or (hi >= 0 and n > hi):
                want = str(lo) if lo == hi else (f"at least {lo}" if hi < 0 else f"{lo} to {hi}")
                raise SchedlangError(f"{x.func}() takes {want} argument{'s' if want != '1' else ''}, got {n}", x.span)
        stack.extend(S.subexpressions(x))


def _bind(name: str, scope: set[str] | frozenset[str], span: Span | None, what: str) -> None:
    if name in scope:
        raise SchedlangError(f"{what} '{name}' shadows a name already in scope; pick another name", span)


def _once(attrs: tuple[Any, ...], owner: str) -> dict[type, Any]:
    seen: dict[type, Any] = {}
    for a in attrs:
        if type(a) in seen:
            word = type(a).__name__.removesuffix("Attr").lower()
            raise SchedlangError(f"'{word}' given twice for {owner}", a.span,
                                 (Note(seen[type(a)].span, "first given here"),))
        seen[type(a)] = a
    return seen


def _check_weights(d: S.WeightsDecl, glob: frozenset[str]) -> None:
    if d.policy not in WEIGHT_POLICIES:
        raise SchedlangError(f"unknown weight-update policy '{d.policy}' (use "
                             + ", ".join(WEIGHT_POLICIES) + ")", d.span)
    attrs = _once(d.attrs, "the weights clause")
    every = attrs.get(S.EveryAttr)
    if every is not None and d.policy != "2bw":
        raise SchedlangError(f"'every' sets how many microbatches a 2bw update accumulates; policy "
                             f"'{d.policy}' updates " + ("once per step" if d.policy == "flush"
                                                         else "after every backward"), every.span)
    for a in d.attrs:
        check_expr(a.value, glob)


def global_names(items: list[Item]) -> frozenset[str]:
    names = {d.name for it in items if isinstance((d := it.decl), (S.ParamDecl, S.LetDecl))}
    return frozenset(names | set(CONSTANTS) | set(SHAPE_NAMES))


def check_items(items: list[Item], main: Source | None = None) -> None:
    """Run every static check (see the module docstring); raise the first error found.

    ``main`` is the program's own source: a clause missing from the whole program is reported
    at its last declaration, or at its first line if all its declarations come from imports."""
    glob = global_names(items)
    kinds = {it.decl.name: it.decl for it in items if isinstance(it.decl, S.OpDecl)}
    for it in items:
        d = it.decl
        if isinstance(d, S.OpDecl) and d.name in glob:
            raise SchedlangError(f"op kind '{d.name}' has the name of a parameter or constant", d.span)
    seen_clauses = {type(it.decl) for it in items}
    last_span = _end_of_program(items, main)
    for cls, word in ((S.RanksDecl, "ranks"), (S.MicrobatchesDecl, "microbatches")):
        if cls not in seen_clauses:
            raise SchedlangError(f"the program has no '{word}' clause", last_span)
    if not kinds:
        raise SchedlangError("the program declares no op kinds ('op F[s, i] time ...')", last_span)
    for it in items:
        _check_decl(it.decl, glob, kinds)


def _end_of_program(items: list[Item], main: Source | None) -> Span | None:
    own = [it.decl.span for it in items if main is not None and it.module == main.name and it.decl.span]
    if own:
        return own[-1]
    if main is not None:
        return Span(main, 1, 1)
    return items[-1].decl.span if items else None


def _check_decl(d: S.Decl, glob: frozenset[str], kinds: dict[str, S.OpDecl]) -> None:  # noqa: C901
    if isinstance(d, (S.ParamDecl, S.LetDecl)):
        check_expr(d.value, glob)
        if isinstance(d, S.ParamDecl) and d.name in set(SHAPE_NAMES) | set(CONSTANTS):
            raise SchedlangError(f"'{d.name}' is a built-in name", d.span)
    elif isinstance(d, (S.RanksDecl, S.StagesDecl, S.MicrobatchesDecl, S.CommDecl, S.MemLimitDecl,
                        S.AllreduceDecl)):
        check_expr(d.value, glob)
    elif isinstance(d, S.PlaceDecl):
        scope = set(glob)
        if d.binder:
            _bind(d.binder, scope, d.span, "placement variable")
            scope.add(d.binder)
        check_expr(d.value, scope)
    elif isinstance(d, S.OverlapDecl):
        if d.mode not in OVERLAP_MODES:
            raise SchedlangError(f"unknown overlap mode '{d.mode}' (use sum or max)", d.span)
    elif isinstance(d, S.WeightsDecl):
        _check_weights(d, glob)
    elif isinstance(d, S.OpDecl):
        _check_op(d, glob)
    elif isinstance(d, S.DepDecl):
        _check_dep(d, glob, kinds)
    elif isinstance(d, S.ScheduleDecl):
        if isinstance(d.body, S.SchedulerClause):
            names: dict[str, S.Arg] = {}
            for a in d.body.args:
                if a.name in names:
                    raise SchedlangError(f"argument '{a.name}' given twice", a.span,
                                         (Note(names[a.name].span, "first given here"),))
                names[a.name] = a
                check_expr(a.value, glob)
        else:
            for blk in d.body.blocks:
                scope = set(glob)
                if isinstance(blk, S.RankLoop):
                    check_expr(blk.lo, scope)
                    check_expr(blk.hi, scope)
                    _bind(blk.var, scope, blk.span, "rank variable")
                    scope.add(blk.var)
                else:
                    check_expr(blk.rank, scope)
                _check_block(blk.body, scope, kinds)


def _check_op(d: S.OpDecl, glob: frozenset[str]) -> None:
    if len(d.binders) > 2:
        raise SchedlangError(f"op '{d.name}' takes at most two index names [stage, microbatch]", d.span)
    if len(set(d.binders)) != len(d.binders):
        raise SchedlangError(f"op '{d.name}' binds the same index name twice", d.span)
    scope = set(glob)
    for b in d.binders:
        _bind(b, scope, d.span, "index name")
        scope.add(b)
    attrs = _once(d.attrs, f"op '{d.name}'")
    if S.TimeAttr not in attrs:
        raise SchedlangError(f"op '{d.name}' has no 'time'", d.span)
    role = attrs.get(S.RoleAttr)
    if role is not None and role.role not in Role.__members__:
        raise SchedlangError(f"unknown role '{role.role}' (roles: {', '.join(Role.__members__)})", role.span)
    for a in d.attrs:
        if not isinstance(a, S.RoleAttr):
            check_expr(a.value, scope)


def pattern_binders(p: S.OpPattern, glob: frozenset[str] | set[str]) -> tuple[str | None, str | None]:
    """The names a source pattern binds: a bare name that is not a global binds that index."""
    out: list[str | None] = []
    for e in (p.stage, p.mb):
        out.append(e.id if isinstance(e, S.Name) and e.id not in glob else None)
    return out[0], out[1]


def _check_pattern_kind(p: S.OpPattern, kinds: dict[str, S.OpDecl]) -> None:
    if p.kind not in kinds:
        raise SchedlangError(f"unknown op kind '{p.kind}'{_closest(p.kind, kinds)}", p.span)


def _check_dep(d: S.DepDecl, glob: frozenset[str], kinds: dict[str, S.OpDecl]) -> None:
    _check_pattern_kind(d.src, kinds)
    _check_pattern_kind(d.dst, kinds)
    bs, bm = pattern_binders(d.src, glob)
    if bs is not None and bs == bm:
        raise SchedlangError(f"'{bs}' binds both the stage and the microbatch", d.src.span)
    scope = set(glob)
    for b, e in ((bs, d.src.stage), (bm, d.src.mb)):
        if b is None:
            check_expr(e, glob, " (in a rule's source pattern, an index is a new name or uses only parameters)")
        else:
            scope.add(b)
    check_expr(d.dst.stage, scope)
    check_expr(d.dst.mb, scope)
    _once(d.attrs, "this rule")
    for a in d.attrs:
        check_expr(a.value, scope)


def _check_block(b: S.Block, scope: set[str], kinds: dict[str, S.OpDecl]) -> None:
    scope = set(scope)  # names bound in a block end with it
    for st in b.stmts:
        if isinstance(st, S.Emit):
            for p in st.ops:
                _check_pattern_kind(p, kinds)
                check_expr(p.stage, scope)
                check_expr(p.mb, scope)
        elif isinstance(st, S.LetStmt):
            check_expr(st.value, scope)
            _bind(st.name, scope, st.span, "name")
            scope.add(st.name)
        elif isinstance(st, S.ForStmt):
            check_expr(st.lo, scope)
            check_expr(st.hi, scope)
            _bind(st.var, scope, st.span, "loop variable")
            _check_block(st.body, scope | {st.var}, kinds)
        elif isinstance(st, S.IfStmt):
            check_expr(st.test, scope)
            _check_block(st.body, scope, kinds)
            for el in st.elifs:
                check_expr(el.test, scope)
                _check_block(el.body, scope, kinds)
            if st.orelse is not None:
                _check_block(st.orelse, scope, kinds)
