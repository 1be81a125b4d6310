"""Lowering: checked declarations to an IR :class:`~schedlang.ir.Program`.

Requires: ``check.check_items`` passed on the items. Evaluates parameters (with overrides),
``let``s, the shape and the placement; instantiates every op kind for every (stage, microbatch)
its ``where`` admits; expands dependency rules into edges; evaluates the memory limit; and runs
an explicit ``schedule { ... }`` block into per-rank orders (or keeps a scheduler call). Every
value-dependent error is located at the expression or statement that caused it.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from schedlang import limits
from schedlang import limits as _limits
from schedlang import syntax as S
from schedlang.check import check_items, pattern_binders
from schedlang.evaluate import (
    CONSTANTS,
    Env,
    Fn,
    check_int,
    compile_expr,
    expect_int,
    expect_num,
    format_value,
    free_names,
    type_name,
)
from schedlang.ir import (
    DEFAULT_ROLES,
    Edge,
    Op,
    OpKind,
    Orders,
    Program,
    Role,
    SchedulerCall,
    Value,
    Weights,
)
from schedlang.limits import Limits
from schedlang.load import Item, load_program_items
from schedlang.source import Note, SchedlangError, Source, Span
from schedlang.verify import verify_acyclic


class _Globals(dict[str, Any]):
    """Top-level names, evaluated on first use (so declaration order does not matter)."""

    def __init__(self, exprs: dict[str, tuple[S.Expr, Span | None]], funcs: dict[str, Any]) -> None:
        super().__init__(CONSTANTS)
        self.exprs = exprs
        self.funcs = funcs
        self.resolving: list[str] = []

    def __missing__(self, name: str) -> Any:
        if name not in self.exprs:
            raise KeyError(name)
        expr, span = self.exprs[name]
        if name in self.resolving:
            cycle = " -> ".join(self.resolving[self.resolving.index(name):] + [name])
            raise SchedlangError(f"'{name}' is defined in terms of itself: {cycle}", span)
        self.resolving.append(name)
        try:
            value = compile_expr(expr, self.funcs)(self)
        finally:
            self.resolving.pop()
        self[name] = value
        return value


@dataclass
class _State:
    items: list[Item]
    overrides: Mapping[str, Value]
    funcs: dict[str, Callable[[list[Value], Span | None], Value]] = field(default_factory=dict)
    placement: tuple[int, ...] | None = None
    placing: bool = False
    globals: Any = None
    place_decl: S.PlaceDecl | None = None
    stages_span: Span | None = None
    override_spans: Mapping[str, Span] = field(default_factory=dict)


def lower(items: list[Item], name: str, overrides: Mapping[str, Value] | None = None,
          override_spans: Mapping[str, Span] | None = None) -> Program:
    """Build the IR program (see the module docstring). ``override_spans`` says where each
    override was given (``--set``, a params file), for errors about its value."""
    st = _State(items, overrides or {}, override_spans=override_spans or {})
    decls = [it.decl for it in items]
    exprs: dict[str, tuple[S.Expr, Span | None]] = {}
    param_names: list[str] = []
    clause: dict[type, Any] = {}
    for d in decls:
        if isinstance(d, (S.ParamDecl, S.LetDecl)):
            exprs[d.name] = (d.value, d.span)
            if isinstance(d, S.ParamDecl):
                param_names.append(d.name)
        elif isinstance(d, (S.RanksDecl, S.StagesDecl, S.MicrobatchesDecl, S.PlaceDecl, S.CommDecl,
                            S.MemLimitDecl, S.AllreduceDecl, S.OverlapDecl, S.WeightsDecl,
                            S.ScheduleDecl)):
            clause[type(d)] = d
    exprs["num_ranks"] = (clause[S.RanksDecl].value, clause[S.RanksDecl].span)
    stages_decl = clause.get(S.StagesDecl) or clause[S.RanksDecl]
    exprs["num_stages"] = (stages_decl.value, stages_decl.span)
    exprs["num_microbatches"] = (clause[S.MicrobatchesDecl].value, clause[S.MicrobatchesDecl].span)

    _bind_pipeline_functions(st, clause.get(S.PlaceDecl))
    g = _Globals(exprs, st.funcs)
    for k, v in st.overrides.items():
        g[k] = v
    st.globals = g

    R = _positive(g["num_ranks"], clause[S.RanksDecl], "the number of ranks")
    Sn = _positive(g["num_stages"], stages_decl, "the number of stages")
    M = _positive(g["num_microbatches"], clause[S.MicrobatchesDecl], "the number of microbatches")
    # Sanity caps, before any op is built: a typo such as `microbatches 88888888` must give an
    # error, not exhaust the machine.
    lim = limits.current()
    n_kinds = len([d for d in decls if isinstance(d, S.OpDecl)])
    if n_kinds * Sn * M > lim.max_ops:
        raise limits.exceeded(f"{Sn:,} stages x {M:,} microbatches x {n_kinds} op kinds is over "
                              f"{lim.max_ops:,} ops; is a size parameter wrong?", "max_ops",
                              clause[S.MicrobatchesDecl].span)
    if R > lim.max_ops:
        raise limits.exceeded(f"{R:,} ranks is too many", "max_ops", clause[S.RanksDecl].span)
    for n in exprs:  # evaluate every global now, so an error in an unused one is still reported
        g[n]  # noqa: B018
    st.stages_span = stages_decl.span
    placement = _placement(st, R, Sn)
    env: Env = dict(g)

    kinds, ops = _instantiate(decls, env, placement, Sn, M, st.funcs)
    index = {(o.kind, o.stage, o.mb): o.id for o in ops}
    comm = 0.0
    if S.CommDecl in clause:
        c = clause[S.CommDecl]
        comm = _nonneg(compile_expr(c.value, st.funcs)(env), c.value.span, "the comm time")
    dep_decls = [d for d in decls if isinstance(d, S.DepDecl)]
    edges = _expand_rules(dep_decls, env, ops, index, comm, st)
    _check_finite_totals(decls, ops, edges)
    mem_limit, ml_span = _mem_limit(clause.get(S.MemLimitDecl), env, R, st)
    overlap = clause[S.OverlapDecl].mode if S.OverlapDecl in clause else "sum"
    allreduce = _allreduce(clause.get(S.AllreduceDecl), env, Sn, st)

    program = Program(
        name=os.path.splitext(os.path.basename(name.removeprefix("std:")))[0] or name,
        params=tuple((p, g[p]) for p in param_names),
        num_ranks=R,
        num_stages=Sn,
        num_microbatches=M,
        placement=placement,
        kinds=kinds,
        ops=tuple(ops),
        edges=tuple(edges),
        mem_limit=mem_limit,
        overlap=overlap,
        weights=_weights(clause.get(S.WeightsDecl), env, Sn, st),
        rule_spans=tuple(d.span for d in dep_decls),
        warnings=_rule_warnings(items, dep_decls, edges, name),
        mem_limit_span=ml_span,
        allreduce=allreduce,
    )
    verify_acyclic(program)
    sched = clause.get(S.ScheduleDecl)
    if sched is None:  # the error, if no scheduler is given later, points at the program's end
        own: list[Span | None] = [it.decl.span for it in items if it.module == name and it.decl.span is not None]
        return _replace(program, schedule_span=(own or [it.decl.span for it in items])[-1])
    if isinstance(sched.body, S.SchedulerClause):
        call = sched.body
        args = tuple((a.name, _value(compile_expr(a.value, st.funcs)(env), a.value.span)) for a in call.args)
        sc = SchedulerCall(call.name, args, call.span, tuple(a.span for a in call.args))
        return _replace(program, schedule=sc, schedule_span=sched.span)
    orders = _run_orders(sched.body, env, program, index, st)
    return _replace(program, schedule=orders, schedule_span=sched.span)


def _weights(d: S.WeightsDecl | None, env: Env, num_stages: int, st: _State) -> Weights:
    """The weights clause evaluated: policy, microbatches per 2bw update (default: the number of
    stages, the least that keeps two versions in a 1F1B order), memory of one version."""
    if d is None:
        return Weights()
    every, mem = (num_stages if d.policy == "2bw" else 0), 0.0
    for a in d.attrs:
        v = compile_expr(a.value, st.funcs)(env)
        if isinstance(a, S.EveryAttr):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise SchedlangError(f"'every' must be a positive integer (microbatches per update), "
                                     f"got {v!r}", a.value.span)
            every = v
        else:
            mem = _nonneg(v, a.value.span, "the memory of a weight version")
    return Weights(d.policy, every, mem, d.span)


def _replace(p: Program, **kw: Any) -> Program:
    from dataclasses import replace

    return replace(p, **kw)


def _value(v: Any, span: Span | None) -> Value:
    if isinstance(v, (bool, int, float, str, tuple)):
        return v  # type: ignore[no-any-return]
    raise SchedlangError(f"unsupported value {v!r}", span)


def _positive(v: Any, d: Any, what: str) -> int:
    n = expect_int(v, d.value.span, what)
    if n < 1:
        raise SchedlangError(f"{what} must be at least 1, got {n}", d.value.span)
    return n


def _nonneg(v: Any, span: Span | None, what: str) -> float:
    x = expect_num(v, span, what)
    if not x >= 0 or math.isinf(x):
        raise SchedlangError(f"{what} must be a finite number >= 0, got {format_value(v)}", span)
    return x


# ------------------------------------------------------------------ placement


def _bind_pipeline_functions(st: _State, place: S.PlaceDecl | None) -> None:
    def placement() -> tuple[int, ...]:
        if st.placement is None:
            if st.placing:
                span = place.span if place else None
                raise SchedlangError("the placement depends on itself (rank_of/stage_of inside place)", span)
            g = st.globals
            st.placing = True
            try:
                st.placement = _placement(st, g["num_ranks"], g["num_stages"])
            finally:
                st.placing = False
        return st.placement

    def rank_of(args: list[Value], span: Span | None) -> Value:
        pl = placement()
        s = expect_int(args[0], span, "the stage")
        if not 0 <= s < len(pl):
            raise SchedlangError(f"rank_of(): stage {s} out of range 0..{len(pl)}", span)
        return pl[s]

    def on_rank(r: int, span: Span | None) -> list[int]:
        pl = placement()
        if not 0 <= r < max(pl) + 1:
            raise SchedlangError(f"rank {r} out of range", span)
        return [s for s, x in enumerate(pl) if x == r]

    def stage_of(args: list[Value], span: Span | None) -> Value:
        r = expect_int(args[0], span, "the rank")
        c = expect_int(args[1], span, "the chunk")
        ss = on_rank(r, span)
        if not 0 <= c < len(ss):
            raise SchedlangError(f"stage_of(): rank {r} holds {len(ss)} stage(s), no chunk {c}", span)
        return ss[c]

    def num_stages_on(args: list[Value], span: Span | None) -> Value:
        return len(on_rank(expect_int(args[0], span, "the rank"), span))

    def stage_cost(args: list[Value], span: Span | None) -> Value:
        x, s, per = args[:3]
        if type(x) is not tuple and type(per) is str and per == "stage":
            return x  # the common case, kept cheap
        pl = placement()
        s = expect_int(s, span, "the stage")
        if not 0 <= s < len(pl):
            raise SchedlangError(f"stage_cost(): stage {s} out of range 0..{len(pl)}", span)
        return _stage_cost(st, x, s, per, pl, span, _slice_arg(args, pl, span))

    st.funcs.update(rank_of=rank_of, stage_of=stage_of, num_stages_on=num_stages_on, stage_cost=stage_cost)
    st.place_decl = place


COST_UNITS = ("slice", "stage")


def _slice_arg(args: list[Value], pl: tuple[int, ...], span: Span | None) -> int | None:
    """The model slice of ``stage_cost(x, s, per, k)`` (None for the three-argument form)."""
    if len(args) < 4:
        return None
    k = expect_int(args[3], span, "the model slice")
    if not 0 <= k <= max(pl):
        raise SchedlangError(f"stage_cost(): model slice {k} out of range 0..{max(pl) + 1}", span)
    return k


def _stage_cost(st: _State, x: Value, s: int, per: Value, pl: tuple[int, ...], span: Span | None,
                whole: int | None = None) -> Value:
    """``stage_cost(x, s, per)``: stage s's share of a cost figure ``x`` (a number or a list).

    ``per = "slice"``: ``x`` is one model slice's cost, what one rank holds when every rank has one
    stage (1F1B); a rank with v stages holds one slice cut in v, so each of them costs x / v. A
    list has one value per slice (p values: stage s is in slice s // v) or one per stage (taken
    as given). ``per = "stage"``: ``x`` is every stage's own cost, a number or one value per
    stage. Any other list length is an error at the place the list was given.

    ``stage_cost(x, s, per, k)``: stage s runs model slice k whole (a weight replica, as in
    Chimera and DualPipe): nothing is divided, and a list of p values is read at k."""
    if per not in COST_UNITS:
        raise SchedlangError(f"costs_per must be one of {', '.join(repr(u) for u in COST_UNITS)}, got "
                             f"{format_value(per)}", _origin(st, per, span)[1])
    S_, R = len(pl), max(pl) + 1
    counts = [0] * R
    for r in pl:
        counts[r] += 1
    v = counts[pl[s]] if whole is None else 1  # stages that share the rank's slice
    even = all(c == counts[0] for c in counts) or whole is not None
    if isinstance(x, tuple):
        if len(x) == S_:
            return x[s]
        if per == "slice" and len(x) == R and even:
            y = x[s // v if whole is None else whole]
            return y / v if isinstance(y, (int, float)) and not isinstance(y, bool) and v != 1 else y
        name, where = _origin(st, x, span)
        what = f"{name}: a" if name else "A"
        if per == "slice" and not even and len(x) == R:
            raise SchedlangError(f"{what} list of {len(x)} values per model slice needs the same number of "
                                 f"stages on every rank; give one value per stage ({S_})", where)
        want = f"one value per model slice ({R}) or per stage ({S_})" if per == "slice" and R != S_ else \
            f"one value per stage ({S_})"
        raise SchedlangError(f"{what} list of {len(x)} values for {R} rank(s) and {S_} stage(s); give {want}", where)
    if per == "slice" and v != 1 and isinstance(x, (int, float)) and not isinstance(x, bool):
        return x / v
    return x


def _origin(st: _State, value: Value, fallback: Span | None) -> tuple[str | None, Span | None]:
    """The parameter a value came from and where the user gave it: a ``--set`` or params-file
    override, else the parameter's declaration in the user's own file; ``fallback`` when the
    value was not given by the user (a default of the standard library, or a computed value)."""
    g = st.globals
    user_decls = {it.decl.name: it.decl for it in st.items
                  if isinstance(it.decl, S.ParamDecl) and not it.module.startswith("std:")}

    def given(name: str) -> bool:
        return name in st.overrides or name in user_decls

    def where(name: str) -> Span | None:
        # an override from Python has no text to point at: no location rather than the library's
        if name in st.overrides:
            return st.override_spans.get(name)
        return user_decls[name].value.span

    names = [it.decl.name for it in st.items if isinstance(it.decl, S.ParamDecl)]
    same = [n for n in names if n in g and (g[n] is value or (isinstance(value, str) and g[n] == value))]
    for n in same:
        if given(n):
            return n, where(n)
    if isinstance(value, tuple):
        # a list computed from a user's list (tbw = sum([tb, tw])): name the user's list of that length
        for n in names:
            if isinstance(g.get(n), tuple) and len(g[n]) == len(value) and given(n):
                return n, where(n)
    return (same[0] if same else None), fallback


def _placement(st: _State, R: int, Sn: int) -> tuple[int, ...]:
    if st.placement is not None:
        return st.placement
    place = st.place_decl
    g = st.globals
    if place is None:
        if Sn != R:
            raise SchedlangError(f"{Sn} stages on {R} ranks need a 'place' clause "
                                 "(e.g. 'place s => s % num_ranks')", st.stages_span)
        result = tuple(range(Sn))
    elif place.binder is None:
        value = compile_expr(place.value, st.funcs)(g)
        if not isinstance(value, tuple):
            raise SchedlangError(f"place without 's =>' takes a list of ranks, got {type_name(value)}", place.value.span)
        if len(value) != Sn:
            raise SchedlangError(f"placement lists {len(value)} ranks for {Sn} stages", place.value.span)
        result = tuple(expect_int(v, place.value.span, "a rank in the placement") for v in value)
    else:
        fn = compile_expr(place.value, st.funcs)
        env = dict(g)
        out = []
        for s in range(Sn):
            env[place.binder] = s
            out.append(expect_int(fn(env), place.value.span, f"the rank of stage {s}"))
        result = tuple(out)
    span = place.value.span if place else None
    for s, r in enumerate(result):
        if not 0 <= r < R:
            raise SchedlangError(f"stage {s} is placed on rank {r}, outside 0..{R - 1}", span)
    empty = sorted(set(range(R)) - set(result))
    if empty:
        raise SchedlangError(f"rank {empty[0]} holds no stage (placement {list(result)})", span)
    st.placement = result
    return result


# ------------------------------------------------------------------ ops


def _instantiate(decls: list[S.Decl], env: Env, placement: tuple[int, ...], Sn: int, M: int,
                 funcs: dict[str, Any]) -> tuple[tuple[OpKind, ...], list[Op]]:
    kinds: list[OpKind] = []
    ops: list[Op] = []
    for d in decls:
        if not isinstance(d, S.OpDecl):
            continue
        attrs: dict[type, Any] = {type(a): a for a in d.attrs}
        role_attr = attrs.get(S.RoleAttr)
        role = Role[role_attr.role] if role_attr else DEFAULT_ROLES.get(d.name, Role.USER)
        kinds.append(OpKind(d.name, role, d.span))
        bs = d.binders[0] if d.binders else None
        bm = d.binders[1] if len(d.binders) > 1 else None
        time_e: S.Expr = attrs[S.TimeAttr].value
        mem_e: S.Expr = attrs[S.MemAttr].value if S.MemAttr in attrs else S.IntLit(0)
        where_e: S.Expr | None = attrs[S.WhereAttr].value if S.WhereAttr in attrs else None
        time_f, mem_f = compile_expr(time_e, funcs), compile_expr(mem_e, funcs)
        where_f = compile_expr(where_e, funcs) if where_e is not None else None
        per_mb = bm is not None and (bm in free_names(time_e) or bm in free_names(mem_e))
        local = dict(env)
        for s in range(Sn):
            if bs:
                local[bs] = s
            t = m_ = 0.0
            if not per_mb:
                t = _nonneg(time_f(local), time_e.span, f"the time of {d.name} at stage {s}")
                m_ = expect_num(mem_f(local), mem_e.span, f"the memory of {d.name}")
            for i in range(M):
                if bm:
                    local[bm] = i
                if where_f is not None and not where_f(local):
                    continue
                if per_mb:
                    t = _nonneg(time_f(local), time_e.span, f"the time of {d.name}[{s},{i}]")
                    m_ = expect_num(mem_f(local), mem_e.span, f"the memory of {d.name}")
                ops.append(Op(len(ops), d.name, s, i, placement[s], t, m_))
    return tuple(kinds), ops


# ------------------------------------------------------------------ dependency rules


def _expand_rules(rules: list[S.DepDecl], env: Env, ops: list[Op], index: dict[tuple[str, int, int], int],
                  comm: float, st: _State) -> list[Edge]:
    glob = set(env)
    by_kind: dict[str, list[Op]] = {}
    for o in ops:
        by_kind.setdefault(o.kind, []).append(o)
    edges: list[Edge] = []
    seen: set[tuple[int, int]] = set()
    max_deps = limits.current().max_deps
    for ri, rule in enumerate(rules):
        bs, bm = pattern_binders(rule.src, glob)
        fixed_s = None if bs else expect_int(compile_expr(rule.src.stage, st.funcs)(env), rule.src.stage.span, "the stage")
        fixed_m = None if bm else expect_int(compile_expr(rule.src.mb, st.funcs)(env), rule.src.mb.span, "the microbatch")
        dst_s = compile_expr(rule.dst.stage, st.funcs)
        dst_m = compile_expr(rule.dst.mb, st.funcs)
        attrs = {type(a): a for a in rule.attrs}
        where = compile_expr(attrs[S.WhereAttr].value, st.funcs) if S.WhereAttr in attrs else None
        lat_a = attrs.get(S.LatencyAttr)
        lat = compile_expr(lat_a.value, st.funcs) if lat_a else None
        dkind = rule.dst.kind
        local = dict(env)
        for o in by_kind.get(rule.src.kind, ()):
            if fixed_s is not None and o.stage != fixed_s:
                continue
            if fixed_m is not None and o.mb != fixed_m:
                continue
            if bs:
                local[bs] = o.stage
            if bm:
                local[bm] = o.mb
            if where is not None and not where(local):
                continue
            s2, m2 = dst_s(local), dst_m(local)
            if type(s2) is not int:
                expect_int(s2, rule.dst.stage.span, "the stage")
            if type(m2) is not int:
                expect_int(m2, rule.dst.mb.span, "the microbatch")
            k = index.get((dkind, s2, m2))
            if k is None:
                continue  # the target does not exist (out of range or excluded by 'where')
            if lat is not None:
                latency = _nonneg(lat(local), lat_a.value.span, "a latency")  # type: ignore[union-attr]
            else:
                latency = comm if ops[k].rank != o.rank else 0.0
            if (o.id, k) in seen:
                continue
            seen.add((o.id, k))
            edges.append(Edge(o.id, k, latency, ri))
            if len(edges) > max_deps:
                raise limits.exceeded(f"the dependency rules make over {max_deps:,} dependencies", "max_deps",
                                      rule.span)
    return edges


def _check_finite_totals(decls: list[S.Decl], ops: list[Op], edges: list[Edge]) -> None:
    """Every op time is finite, but their sum (a bound on any step time) or the memory total
    may still overflow to infinity: refuse that here rather than print ``inf`` or ``nan``."""
    work = sum(o.time for o in ops) + sum(e.latency for e in edges)
    memory = sum(abs(o.mem) for o in ops)
    if math.isfinite(work) and math.isfinite(memory):
        return
    what = "time" if not math.isfinite(work) else "memory"
    biggest = max(ops, key=lambda o: o.time if what == "time" else abs(o.mem))
    span = None
    for d in decls:
        if isinstance(d, S.OpDecl) and d.name == biggest.kind:
            attr = next((a for a in d.attrs if isinstance(a, S.TimeAttr if what == "time" else S.MemAttr)), d)
            span = attr.span
    raise SchedlangError(f"the ops' total {what} overflows a float (the largest is {biggest.label}); "
                         f"is a {what} too large?", span)


def _rule_warnings(items: list[Item], rules: list[S.DepDecl], edges: list[Edge], main: str
                   ) -> tuple[SchedlangError, ...]:
    """A rule of the user's own file that adds no dependency is almost always a typo (a wrong
    guard or index); say so instead of silently dropping it. Library rules may legitimately be
    empty for some shapes (one stage has no F -> F edge)."""
    used = {e.rule for e in edges}
    main_rules = {id(it.decl) for it in items if it.module == main}
    return tuple(
        SchedlangError(f"this rule adds no dependency ({r.src.kind} -> {r.dst.kind} matched no pair of ops)", r.span)
        for i, r in enumerate(rules) if i not in used and id(r) in main_rules
    )


def _allreduce(d: S.AllreduceDecl | None, env: Env, Sn: int, st: _State) -> tuple[float, ...] | None:
    """Per-stage data-parallel reduction times; None when there are none (all zero)."""
    if d is None:
        return None
    v = compile_expr(d.value, st.funcs)(env)
    vals = v if isinstance(v, tuple) else (v,) * Sn
    if len(vals) != Sn:
        raise SchedlangError(f"allreduce lists {len(vals)} values for {Sn} stages", d.value.span)
    out = tuple(_nonneg(x, d.value.span, "the all-reduce time") for x in vals)
    return out if any(x > 0 for x in out) else None


def _mem_limit(d: S.MemLimitDecl | None, env: Env, R: int, st: _State) -> tuple[tuple[float, ...] | None, Span | None]:
    if d is None:
        return None, None
    v = compile_expr(d.value, st.funcs)(env)
    vals = v if isinstance(v, tuple) else (v,) * R
    if len(vals) != R:
        raise SchedlangError(f"mem_limit lists {len(vals)} values for {R} ranks", d.value.span)
    out = tuple(expect_num(x, d.value.span, "the memory limit") for x in vals)
    if all(math.isinf(x) for x in out):
        return None, d.span
    return out, d.span


# ------------------------------------------------------------------ explicit orders


@dataclass
class _OrderRun:
    program: Program
    index: dict[tuple[str, int, int], int]
    slots: list[list[tuple[int, ...]]]
    spans: list[list[Span | None]]
    where: dict[int, tuple[int, Span | None]]  # op id -> (rank, span) of its emission
    rank: int = 0
    steps: int = 0


def _run_orders(body: S.OrdersClause, env: Env, program: Program, index: dict[tuple[str, int, int], int],
                st: _State) -> Orders:
    R = program.num_ranks
    run = _OrderRun(program, index, [[] for _ in range(R)], [[] for _ in range(R)], {})
    given: dict[int, Span | None] = {}
    local = dict(env)
    for blk in body.blocks:
        if isinstance(blk, S.RankLoop):
            lo = expect_int(compile_expr(blk.lo, st.funcs)(local), blk.lo.span, "the first rank")
            hi = expect_int(compile_expr(blk.hi, st.funcs)(local), blk.hi.span, "the rank bound")
            if hi - lo > limits.current().max_ops:
                raise limits.exceeded(f"rank loop {lo}..{hi} is too long", "max_ops", blk.span)
            ranks = [(r, blk.span) for r in range(lo, hi)]
            var: str | None = blk.var
        else:
            ranks = [(expect_int(compile_expr(blk.rank, st.funcs)(local), blk.rank.span, "the rank"), blk.span)]
            var = None
        body_fn = _compile_block(blk.body, st, run)
        for r, span in ranks:
            if not 0 <= r < R:
                raise SchedlangError(f"rank {r} out of range 0..{R - 1}", span)
            if r in given:
                raise SchedlangError(f"the order of rank {r} is given twice", span,
                                     (Note(given[r], "first given here"),))
            given[r] = span
            run.rank = r
            if var:
                local[var] = r
            body_fn(local)
    missing = [o for o in program.ops if o.id not in run.where]
    if missing:
        by_rank: dict[int, list[str]] = {}
        for o in missing:
            by_rank.setdefault(o.rank, []).append(o.label)
        r, labels = min(by_rank.items())
        more = f" and {len(labels) - 6} more" if len(labels) > 6 else ""
        raise SchedlangError(f"the schedule leaves out {len(missing)} op(s); rank {r} misses "
                             f"{', '.join(labels[:6])}{more}", body.span)
    return Orders(tuple(tuple(x) for x in run.slots), tuple(tuple(x) for x in run.spans))


def _compile_block(b: S.Block, st: _State, run: _OrderRun) -> Callable[[Env], None]:
    stmts = [_compile_stmt(x, st, run) for x in b.stmts]

    def block(env: Env) -> None:
        for s in stmts:
            s(env)

    return block


def _compile_stmt(x: S.Stmt, st: _State, run: _OrderRun) -> Callable[[Env], None]:  # noqa: C901
    f = st.funcs
    if isinstance(x, S.LetStmt):
        name, value = x.name, compile_expr(x.value, f)

        def let(env: Env) -> None:
            env[name] = value(env)

        return let
    if isinstance(x, S.ForStmt):
        var, lo, hi, body = x.var, compile_expr(x.lo, f), compile_expr(x.hi, f), _compile_block(x.body, st, run)
        lo_span, hi_span = x.lo.span, x.hi.span
        max_steps = limits.current().max_loop_steps

        def loop(env: Env) -> None:
            a = expect_int(lo(env), lo_span, "a loop bound")
            b = expect_int(hi(env), hi_span, "a loop bound")
            run.steps += max(0, b - a)
            if run.steps > max_steps:
                raise limits.exceeded(f"the schedule block runs over {max_steps:,} loop steps; "
                                      f"is a loop bound wrong? (this loop: {a}..{b})", "max_loop_steps", x.span)
            for v in range(a, b):
                env[var] = v
                body(env)

        return loop
    if isinstance(x, S.IfStmt):
        arms = [(compile_expr(x.test, f), _compile_block(x.body, st, run))]
        arms += [(compile_expr(e.test, f), _compile_block(e.body, st, run)) for e in x.elifs]
        orelse = _compile_block(x.orelse, st, run) if x.orelse is not None else None

        def cond(env: Env) -> None:
            for test, body in arms:
                if test(env):
                    body(env)
                    return
            if orelse is not None:
                orelse(env)

        return cond
    assert isinstance(x, S.Emit)
    return _compile_emit(x, st, run)


def _compile_emit(x: S.Emit, st: _State, run: _OrderRun) -> Callable[[Env], None]:
    pats = [(p.kind, compile_expr(p.stage, st.funcs), compile_expr(p.mb, st.funcs), p) for p in x.ops]
    optional, span = x.optional, x.span
    index, program = run.index, run.program

    def emit(env: Env) -> None:
        slot: list[int] = []
        for kind, sf, mf, p in pats:
            s, i = sf(env), mf(env)
            if type(s) is not int:
                expect_int(s, p.stage.span, "the stage")
            if type(i) is not int:
                expect_int(i, p.mb.span, "the microbatch")
            k = index.get((kind, s, i))
            if k is None:
                if optional:
                    continue
                raise SchedlangError(_why_missing(program, kind, s, i), p.span)
            op = program.ops[k]
            if op.rank != run.rank:
                raise SchedlangError(f"{op.label} runs on rank {op.rank} (stage {s} is placed there), "
                                     f"not in the order of rank {run.rank}", p.span)
            prev = run.where.get(k)
            if prev is not None:
                raise SchedlangError(f"{op.label} is scheduled twice", p.span, (Note(prev[1], "first scheduled here"),))
            run.where[k] = (run.rank, p.span)
            slot.append(k)
        if slot:
            run.slots[run.rank].append(tuple(slot))
            run.spans[run.rank].append(span)

    return emit


def _why_missing(p: Program, kind: str, s: int, i: int) -> str:
    label = f"{kind}[{s},{i}]"
    if not 0 <= s < p.num_stages:
        return f"no op {label}: stage {s} out of range 0..{p.num_stages - 1} (add '?' to skip ops that do not exist)"
    if not 0 <= i < p.num_microbatches:
        return (f"no op {label}: microbatch {i} out of range 0..{p.num_microbatches - 1} "
                "(add '?' to skip ops that do not exist)")
    return f"no op {label}: its 'where' clause excludes it"


def compile_fn(e: S.Expr) -> Fn:
    """Compile a closed expression (for callers outside lowering)."""
    return compile_expr(e)


# ------------------------------------------------------------------ a source under parameter overrides


def _to_value(v: Any, name: str) -> Value:
    if isinstance(v, int) and not isinstance(v, bool):
        return check_int(v, None)
    if isinstance(v, float) and v != v:
        raise SchedlangError(f"parameter '{name}': NaN is not a value")
    if isinstance(v, (bool, float, str)):
        return v
    if isinstance(v, (list, tuple)):
        return tuple(_to_value(x, name) for x in v)
    raise SchedlangError(f"parameter '{name}': unsupported Python value {v!r} (use int, float, bool, str or a list)")


def _declared_params(items: list[Item]) -> dict[str, S.ParamDecl]:
    return {it.decl.name: it.decl for it in items if isinstance(it.decl, S.ParamDecl)}


def lower_source(source: Source, params: Mapping[str, Any] | None = None,
                 param_spans: Mapping[str, Span] | None = None, *, import_root: str | None = None,
                 limits: Limits | Mapping[str, int] | None = None) -> Program:
    """Parse, check and lower one source (with its imports) under parameter overrides. Imports
    resolve under ``import_root`` (default: the source's folder); ``limits`` raise or lower the
    work limits (:mod:`schedlang.limits`)."""
    with _limits.using(limits):
        items = load_program_items(source, import_root)
        check_items(items, source)
        declared = _declared_params(items)
        overrides: dict[str, Value] = {}
        for name, value in (params or {}).items():
            if name not in declared:
                known = ", ".join(declared) or "none"
                span = (param_spans or {}).get(name)
                raise SchedlangError(f"'{source.name}' has no parameter '{name}' (parameters: {known})", span)
            overrides[name] = _to_value(value, name)
        return lower(items, source.name, overrides, param_spans)
