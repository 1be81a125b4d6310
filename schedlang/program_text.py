"""A scheduled program written back as schedlang text (``--emit sched``).

:func:`program_text` writes a self-contained program (no imports, no parameters) whose lowering
gives back the same pipeline: the same op kinds and roles, the same ops with their ranks, times
and memory deltas, the same dependencies with their latencies, the same placement, memory limit,
overlap mode, all-reduce times and weight-update policy, and the program's per-rank orders as an explicit ``schedule { rank R { ... } }``
clause. :func:`same_program` checks exactly that, and is what the round-trip tests use.

The text stays readable where the IR allows: a time or memory that is one number for every op
of a kind is written as that number, one that varies by stage only as a per-stage list; the
dependencies are grouped into one rule per (source kind, target kind, stage offset, microbatch
offset), with a ``where`` only where the rule does not apply to every op it could, and a
``latency`` only where it is not the default (``comm`` across ranks, 0 within one). The
parameters the program was lowered with are listed in the header comment, not declared: the
values are baked in, so a ``--set`` on the emitted program is an error rather than silently
ignored.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Iterable

from schedlang.ir import Edge, Op, Orders, Program

_Key = tuple[int, int]  # (stage, microbatch)


def _num(x: float) -> str:
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    if float(x).is_integer() and abs(x) < 1e15:
        return repr(int(x))
    return repr(float(x))


def _value(v: object) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return _num(v)
    if isinstance(v, tuple):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    return f'"{v}"'


def _bools(xs: Iterable[bool]) -> str:
    return "[" + ", ".join("true" if x else "false" for x in xs) + "]"


class _Writer:
    """Collects the ``let`` tables the declarations need, named uniquely."""

    def __init__(self, program: Program) -> None:
        self.p = program
        self.lets: list[str] = []

    def table(self, name: str, rows: list[str]) -> str:
        """A ``let NAME = [row, ...]`` table, one row per stage (a 2-D list)."""
        self.lets.append(f"let {name} = [\n" + ",\n".join(f"  {r}" for r in rows) + "\n]")
        return name

    def field(self, name: str, values: dict[_Key, float]) -> str:
        """An expression over ``s`` and ``i`` giving ``values[(s, i)]`` for every key present."""
        distinct = set(values.values())
        if len(distinct) <= 1:
            return _num(next(iter(distinct), 0.0))
        S, M = self.p.num_stages, self.p.num_microbatches
        by_stage: dict[int, set[float]] = {}
        for (s, _), v in values.items():
            by_stage.setdefault(s, set()).add(v)
        if all(len(vs) == 1 for vs in by_stage.values()):
            row = [_num(next(iter(by_stage[s]))) if s in by_stage else "0" for s in range(S)]
            return f"[{', '.join(row)}][s]"
        rows = ["[" + ", ".join(_num(values.get((s, i), 0.0)) for i in range(M)) + "]" for s in range(S)]
        return f"{self.table(name, rows)}[s][i]"

    def condition(self, name: str, keep: set[_Key], domain: set[_Key]) -> str | None:
        """A ``where`` expression over ``s`` and ``i`` true on ``keep`` and false on the rest of
        ``domain``; None when ``keep`` is all of ``domain``."""
        if keep == domain:
            return None
        S, M = self.p.num_stages, self.p.num_microbatches
        stages = {s for s, _ in keep}
        if all(((s, i) in keep) == (s in stages) for s, i in domain):  # whole stages
            if len(stages) == 1:
                return f"s == {next(iter(stages))}"
            return f"{_bools(s in stages for s in range(S))}[s]"
        mbs = {i for _, i in keep}
        if all(((s, i) in keep) == (i in mbs) for s, i in domain):  # whole microbatches
            if len(mbs) == 1:
                return f"i == {next(iter(mbs))}"
            return f"{_bools(i in mbs for i in range(M))}[i]"
        rows = [_bools((s, i) in keep for i in range(M)) for s in range(S)]
        return f"{self.table(name, rows)}[s][i]"


def _offset(var: str, d: int) -> str:
    return var if d == 0 else f"{var} + {d}" if d > 0 else f"{var} - {-d}"


def _op_decls(w: _Writer) -> list[str]:
    p = w.p
    S, M = p.num_stages, p.num_microbatches
    out = []
    for kind in p.kinds:
        ops = [o for o in p.ops if o.kind == kind.name]
        keys = {(o.stage, o.mb) for o in ops}
        line = f"op {kind.name}[s, i] role {kind.role.value}"
        line += f" time {w.field(f'time_{kind.name}', {(o.stage, o.mb): o.time for o in ops})}"
        mem = w.field(f"mem_{kind.name}", {(o.stage, o.mb): o.mem for o in ops})
        if mem != "0":
            line += f" mem {mem}"
        cond = w.condition(f"has_{kind.name}", keys, {(s, i) for s in range(S) for i in range(M)})
        if cond is not None:
            line += f" where {cond}"
        out.append(line)
    return out


def _comm(p: Program) -> float:
    """The most common latency of the dependencies that cross ranks (0 without any)."""
    counts = Counter(e.latency for e in p.edges if p.ops[e.src].rank != p.ops[e.dst].rank)
    return counts.most_common(1)[0][0] if counts else 0.0


def _dep_decls(w: _Writer, comm: float) -> list[str]:
    p = w.p
    index = p.op_index()
    groups: dict[tuple[str, str, int, int], list[Edge]] = {}
    for e in p.edges:
        a, b = p.ops[e.src], p.ops[e.dst]
        groups.setdefault((a.kind, b.kind, b.stage - a.stage, b.mb - a.mb), []).append(e)
    out = []
    for n, ((ka, kb, ds, di), edges) in enumerate(groups.items()):
        # every source op of kind ka whose target exists: what the rule matches without a where
        domain = {(o.stage, o.mb) for o in p.ops
                  if o.kind == ka and (kb, o.stage + ds, o.mb + di) in index}
        keep = {(p.ops[e.src].stage, p.ops[e.src].mb) for e in edges}
        line = f"dep {ka}[s, i] -> {kb}[{_offset('s', ds)}, {_offset('i', di)}]"

        def default(e: Edge) -> float:
            return comm if p.ops[e.src].rank != p.ops[e.dst].rank else 0.0

        if any(e.latency != default(e) for e in edges):
            src: Callable[[Edge], Op] = lambda e: p.ops[e.src]  # noqa: E731
            lat = w.field(f"latency_{n}", {(src(e).stage, src(e).mb): e.latency for e in edges})
            line += f" latency {lat}"
        cond = w.condition(f"dep_{n}", keep, domain)
        if cond is not None:
            line += f" where {cond}"
        out.append(line)
    return out


def _schedule(p: Program, orders: Orders) -> list[str]:
    out = ["schedule {"]
    for r, slots in enumerate(orders.ranks):
        labels = ["&".join(f"{p.ops[k].kind}[{p.ops[k].stage}, {p.ops[k].mb}]" for k in slot)
                  for slot in slots]
        out.append(f"  rank {r} {{")
        for start in range(0, len(labels), 8):
            out.append("    " + " ".join(labels[start:start + 8]))
        out.append("  }")
    out.append("}")
    return out


def program_text(program: Program) -> str:
    """``program`` (scheduled) as self-contained schedlang text that lowers back to it (see the
    module docstring)."""
    p = program
    orders = p.orders
    w = _Writer(p)
    head = [f"# {p.name}, orders from {orders.origin}: written by schedlang --emit sched."]
    if p.params:
        head.append("# Lowered with " + ", ".join(f"{k} = {_value(v)}" for k, v in p.params) + ";")
        head.append("# the values are built in below (no parameters left to set).")
    comm = _comm(p)
    ops = _op_decls(w)
    deps = _dep_decls(w, comm)
    body = [f"ranks {p.num_ranks}", f"stages {p.num_stages}", f"microbatches {p.num_microbatches}",
            f"place [{', '.join(map(str, p.placement))}]"]
    if comm:
        body.append(f"comm {_num(comm)}")
    if p.mem_limit is not None:
        lim = set(p.mem_limit)
        body.append(f"mem_limit {_num(next(iter(lim)))}" if len(lim) == 1
                    else f"mem_limit [{', '.join(_num(x) for x in p.mem_limit)}]")
    if p.overlap != "sum":
        body.append(f"overlap {p.overlap}")
    if p.allreduce is not None:
        body.append(f"allreduce [{', '.join(_num(x) for x in p.allreduce)}]")
    if p.weights.asynchronous:
        every = f" every {p.weights.every}" if p.weights.policy == "2bw" else ""
        body.append(f"weights {p.weights.policy}{every} mem {_num(p.weights.mem)}")
    parts = [head, w.lets, body, ops, deps, _schedule(p, orders)]
    return "\n\n".join("\n".join(x) for x in parts if x) + "\n"


def program_differences(a: Program, b: Program) -> list[str]:
    """What differs between two scheduled programs in shape, ops (kind, stage, microbatch, rank,
    time, memory), kinds and roles, dependencies (with latency), placement, memory limit,
    overlap, all-reduce times, weight-update policy and orders; empty when they are the same pipeline with the same schedule. Names,
    parameters, source spans and which rule made a dependency are not compared."""
    diffs = []
    for f in ("num_ranks", "num_stages", "num_microbatches", "placement", "mem_limit", "overlap", "kinds",
              "allreduce", "weights"):
        if getattr(a, f) != getattr(b, f):
            diffs.append(f"{f}: {getattr(a, f)!r} != {getattr(b, f)!r}")
    if a.ops != b.ops:
        diffs.append(f"ops differ ({len(a.ops)} vs {len(b.ops)})")
    ea = sorted((e.src, e.dst, e.latency) for e in a.edges)
    eb = sorted((e.src, e.dst, e.latency) for e in b.edges)
    if ea != eb:
        diffs.append(f"dependencies differ ({len(ea)} vs {len(eb)})")
    if not (isinstance(a.schedule, Orders) and isinstance(b.schedule, Orders)) or a.orders.ranks != b.orders.ranks:
        diffs.append("orders differ")
    return diffs
