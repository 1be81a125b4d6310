"""Build the CP-SAT model of a scheduling problem (pure: no solving, no I/O).

The model (the exact optimizer of the zero-bubble paper, Qi et al., ICLR 2024, appendix G, in CP-SAT form):

- one fixed-size interval per op (start variable, integer duration);
- ``AddNoOverlap`` per rank: a rank runs one op at a time;
- ``start[dst] >= start[src] + dur[src] + latency`` per dependency edge;
- memory per rank: when every op of the rank is an F that allocates, or a B / BW / W that frees
  part of what its own microbatch's F allocated (after that F in the dependency graph), and the
  limit is loose (as many forwards fit as there are ranks), a ``AddCumulative`` over "holding"
  intervals ``[start F, start B)`` and ``[start F, start W)`` with the freed amounts as demands
  (the level at time t is exactly the verifier's prefix sum). Otherwise a reservoir: each op
  changes the level by its delta at its start, the level stays within ``[lowest possible,
  limit]``; with F -> B -> W lifetimes under FIFO, redundant precedences implied by the limit
  (see :func:`_memory_precedences`) help it propagate. Ops of one rank never
  overlap, so both match the verifier's order-based check; zero-length ops are the one corner
  where they could differ, and the applied orders are re-verified anyway.
- FIFO symmetry breaking: the microbatches of one op kind on one stage run in microbatch order.
  This loses nothing when microbatches are interchangeable (same time and memory per
  ``(kind, stage)``, every edge within one microbatch, the same edge pattern for each): sort the
  ops of each ``(kind, stage)`` by start and relabel; dependencies and memory still hold.
  :func:`fifo_is_safe` checks exactly that and the model drops FIFO otherwise.
- objective ``span``: ``obj >= end(b) - start(a)`` for every rank, every op ``a`` that can be the
  rank's first (no ancestor on the rank) and ``b`` that can be its last (no descendant on it);
  objective ``makespan``: ``obj >= end(o)`` for every sink;
- ``lower <= obj <= upper``: the structural lower bound (bounds.py) and the warm start's value.

Times are floats in the IR; :func:`scale_program` maps them to integers: every time and latency
is multiplied by ``scale`` (a power of ten, chosen as the least one that makes all of them
integers up to 1e-9 relative, at most 10**6; otherwise the one giving about 10**4 steps for the
longest op, and the result is flagged inexact). Memory deltas and limits get their own power of
ten (inexact deltas are rounded up: conservative). The applied orders are always re-simulated
with the exact float times; figures reported to users come from that simulation.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from schedlang.ir import Program, topological_order

MAX_DIGITS = 6


@dataclass(frozen=True)
class Scaled:
    """The integer view of a program: durations, latencies, memory deltas and limits."""

    scale: int  # model time units per unit of program time
    dur: tuple[int, ...]  # per op
    edges: tuple[tuple[int, int, int], ...]  # (src, dst, latency)
    exact: bool  # True if every time and latency is an exact multiple of 1/scale
    mem_scale: int
    mem: tuple[int, ...]  # per op
    limits: tuple[int | None, ...]  # per rank; None = unlimited
    mem_exact: bool = True  # memory deltas and limits are exact at mem_scale

    @property
    def resolution(self) -> float:
        """The program-time length of one model time unit."""
        return 1.0 / self.scale

    def to_time(self, units: int) -> float:
        return units / self.scale


def _power_of_ten(values: Sequence[float]) -> tuple[int, bool]:
    vals = [abs(v) for v in values if v and math.isfinite(v)]
    for k in range(MAX_DIGITS + 1):
        s = 10**k
        if all(abs(v * s - round(v * s)) <= 1e-9 * max(1.0, v * s) for v in vals):
            return s, True
    top = max(vals, default=1.0)
    k = max(0, min(MAX_DIGITS, math.ceil(math.log10(1e4 / top)))) if top > 0 else 0
    return 10**k, False


def scale_program(program: Program, limits: Sequence[float]) -> Scaled:
    """Integer durations, latencies and memory for ``program`` under per-rank ``limits``."""
    times = [o.time for o in program.ops] + [e.latency for e in program.edges]
    s, exact = _power_of_ten(times)
    dur = tuple(int(round(o.time * s)) for o in program.ops)
    edges = tuple((e.src, e.dst, int(round(e.latency * s))) for e in program.edges)
    mems = [o.mem for o in program.ops] + [x for x in limits if math.isfinite(x)]
    ms, mexact = _power_of_ten(mems)
    mem = tuple(int(round(o.mem * ms)) if mexact else math.ceil(o.mem * ms - 1e-9) for o in program.ops)
    lim = tuple(None if not math.isfinite(x) else math.floor(x * ms + 1e-9 * max(1.0, abs(x * ms)))
                for x in limits)
    return Scaled(s, dur, edges, exact, ms, mem, lim, mexact)


# --------------------------------------------------------------------------- structure


def fifo_is_safe(program: Program) -> bool:
    """True if the microbatches are interchangeable, so FIFO order per (kind, stage) loses nothing."""
    m = program.num_microbatches
    ref: dict[tuple[str, int], tuple[float, float]] = {}
    for o in program.ops:
        key = (o.kind, o.stage)
        if ref.setdefault(key, (o.time, o.mem)) != (o.time, o.mem):
            return False
    counts: dict[tuple[str, int], int] = {}
    for o in program.ops:
        counts[(o.kind, o.stage)] = counts.get((o.kind, o.stage), 0) + 1
    if any(c != m for c in counts.values()):
        return False
    patterns: list[set[tuple[str, int, str, int, float]]] = [set() for _ in range(m)]
    ops = program.ops
    for e in program.edges:
        a, b = ops[e.src], ops[e.dst]
        if a.mb != b.mb:
            return False
        patterns[a.mb].add((a.kind, a.stage, b.kind, b.stage, e.latency))
    per_mb = [0] * m
    for e in program.edges:
        per_mb[ops[e.src].mb] += 1
    return all(p == patterns[0] for p in patterns) and len(set(per_mb)) <= 1


def fifo_chains(program: Program) -> list[list[int]]:
    """Op ids of each (kind, stage), in microbatch order."""
    groups: dict[tuple[str, int], list[tuple[int, int]]] = {}
    for o in program.ops:
        groups.setdefault((o.kind, o.stage), []).append((o.mb, o.id))
    return [[k for _, k in sorted(v)] for _, v in sorted(groups.items())]


@dataclass(frozen=True)
class Precedence:
    """The precedence graph the model uses: program edges plus FIFO chains (with delays)."""

    arcs: tuple[tuple[int, int, int], ...]  # (src, dst, delay): start[dst] >= start[src] + delay
    head: tuple[int, ...]  # earliest start of each op
    tail: tuple[int, ...]  # least time from each op's start to the end of everything
    first: tuple[tuple[int, ...], ...]  # per rank: ops with no ancestor on that rank
    last: tuple[tuple[int, ...], ...]  # per rank: ops with no descendant on that rank
    sinks: tuple[int, ...]


def precedence(program: Program, sc: Scaled, fifo: bool) -> Precedence:
    """Longest-path heads and tails and first/last candidates per rank."""
    n = len(program.ops)
    arcs = [(s, d, sc.dur[s] + lat) for s, d, lat in sc.edges]
    if fifo:
        for chain in fifo_chains(program):
            arcs += [(a, b, sc.dur[a]) for a, b in zip(chain, chain[1:], strict=False)]
    succ: list[list[int]] = [[] for _ in range(n)]
    out_arcs: list[list[tuple[int, int]]] = [[] for _ in range(n)]
    in_arcs: list[list[tuple[int, int]]] = [[] for _ in range(n)]
    for s, d, w in arcs:
        succ[s].append(d)
        out_arcs[s].append((d, w))
        in_arcs[d].append((s, w))
    order = topological_order(succ)  # the program's edges plus the FIFO chains
    head = [0] * n
    anc = [0] * n  # bitmask of ranks holding an ancestor
    for k in order:
        for d, w in out_arcs[k]:
            head[d] = max(head[d], head[k] + w)
            anc[d] |= anc[k] | (1 << program.ops[k].rank)
    tail = [sc.dur[k] for k in range(n)]
    desc = [0] * n
    for k in reversed(order):
        for s, w in in_arcs[k]:
            tail[s] = max(tail[s], w + tail[k])
            desc[s] |= desc[k] | (1 << program.ops[k].rank)
    R = program.num_ranks
    first = [[] for _ in range(R)]  # type: list[list[int]]
    last = [[] for _ in range(R)]  # type: list[list[int]]
    for o in program.ops:
        bit = 1 << o.rank
        if not anc[o.id] & bit:
            first[o.rank].append(o.id)
        if not desc[o.id] & bit:
            last[o.rank].append(o.id)
    sinks = tuple(k for k in range(n) if not out_arcs[k])
    return Precedence(tuple(arcs), tuple(head), tuple(tail), tuple(map(tuple, first)),
                      tuple(map(tuple, last)), sinks)


# --------------------------------------------------------------------------- the model


@dataclass
class IlpModel:
    """A built CP-SAT model and the handles needed to read a solution back."""

    model: Any  # ortools.sat.python.cp_model.CpModel
    start: list[Any]  # IntVar per op
    obj: Any  # IntVar
    scaled: Scaled
    objective: str
    horizon: int
    fifo: bool
    prec: Precedence
    lower: int
    upper: int
    holds: tuple[tuple[Any, int, int], ...] = ()  # the cumulative's (size var, F op, freeing op)


def build_model(program: Program, sc: Scaled, *, objective: str, upper: int, lower: int, horizon: int,
                fifo: bool, hint: Sequence[int] | None = None,
                fixed_order: Mapping[int, Sequence[int]] | None = None) -> IlpModel:
    """Build the model (see the module docstring).

    ``upper``/``lower`` bound the objective (model units); ``horizon`` bounds every end time.
    ``hint`` gives start times to try first. For large-neighbourhood search, ``fixed_order`` maps
    a rank to a chain of its op ids that must keep that order (optional).
    """
    from ortools.sat.python import cp_model

    assert objective in ("span", "makespan")
    n = len(program.ops)
    prec = precedence(program, sc, fifo)
    m = cp_model.CpModel()
    start = [m.new_int_var(prec.head[k], max(prec.head[k], horizon - prec.tail[k]), f"s{k}") for k in range(n)]
    R = program.num_ranks
    lives: list[tuple[Any, int, int]] = []  # (size var, F op, freeing op) of cumulative intervals
    for r in range(R):
        on = [k for k in range(n) if program.ops[k].rank == r]
        m.add_no_overlap([m.new_fixed_size_interval_var(start[k], sc.dur[k], f"i{k}") for k in on])
        lives += _memory(m, program, sc, r, on, start, prec, horizon, fifo)
    for s, d, w in prec.arcs:
        m.add(start[d] >= start[s] + w)
    if fixed_order:
        for chain in fixed_order.values():
            for a, b in zip(chain, chain[1:], strict=False):
                m.add(start[b] >= start[a] + sc.dur[a])
    obj = m.new_int_var(lower, max(lower, upper), "obj")
    _objective(m, obj, objective, prec, sc, start, R)
    if hint is not None:
        _hint(m, start, lives, obj, hint, upper)
    return IlpModel(m, start, obj, sc, objective, horizon, fifo, prec, lower, upper, tuple(lives))


def _hint(m: Any, start: Sequence[Any], holds: Sequence[tuple[Any, int, int]], obj: Any, hint: Sequence[int],
          upper: int) -> None:
    for k, v in enumerate(start):
        m.add_hint(v, int(hint[k]))
    for size, f, k in holds:
        m.add_hint(size, int(hint[k]) - int(hint[f]))
    m.add_hint(obj, upper)  # a complete hint: CP-SAT takes it as the first solution at once


def restricted(base: IlpModel, *, upper: int, lower: int, hint: Sequence[int] | None = None,
               fixed_order: Mapping[int, Sequence[int]] | None = None) -> IlpModel:
    """``base`` (built without a hint) copied, with the objective within ``[lower, upper]``, the
    chains of ``fixed_order`` kept in order and ``hint``: the model :func:`build_model` would
    build with these arguments, but for the variables' wider domains (``base``'s horizon and
    bounds), without building it again (copying the model is C++; building it is Python: at
    p = 32, m = 128, 0.06 s against 3 s)."""
    m = base.model.clone()
    var = m.get_int_var_from_proto_index
    start = [var(v.index) for v in base.start]
    obj = var(base.obj.index)
    holds = tuple((var(size.index), f, k) for size, f, k in base.holds)
    m.add(obj <= max(lower, upper))
    m.add(obj >= lower)
    dur = base.scaled.dur
    for chain in (fixed_order or {}).values():
        for a, b in zip(chain, chain[1:], strict=False):
            m.add(start[b] >= start[a] + dur[a])
    if hint is not None:
        _hint(m, start, holds, obj, hint, upper)
    return IlpModel(m, start, obj, base.scaled, base.objective, base.horizon, base.fifo, base.prec, lower, upper,
                    holds)


def _objective(m: Any, obj: Any, objective: str, prec: Precedence, sc: Scaled, start: Sequence[Any],
               R: int) -> None:
    if objective == "span":
        for r in range(R):
            for b in prec.last[r]:
                for a in prec.first[r]:
                    m.add(obj >= start[b] + sc.dur[b] - start[a])
    else:
        for k in prec.sinks:
            m.add(obj >= start[k] + sc.dur[k])
    m.minimize(obj)


def _memory(m: Any, program: Program, sc: Scaled, r: int, on: Sequence[int], start: Sequence[Any],
            prec: Precedence, horizon: int, fifo: bool) -> list[tuple[Any, int, int]]:
    """Memory on rank ``r``: a cumulative when the rank's ops form F -> B -> W lifetimes and the
    limit is loose, else a reservoir (plus, under FIFO and F -> B -> W lifetimes, the redundant
    precedences). Measured here: with a tight limit the cumulative's wall time per unit of
    deterministic time blew up 60x on the 1.5B profile (p = 4, m = 8, 0.75 p*M_B) while the
    reservoir found the same schedule in 5 s; with a loose limit the cumulative found better
    schedules. Returns the cumulative's (size variable, F, freeing op) triples, for hints."""
    limit = sc.limits[r]
    if limit is None:
        return []
    if sum(sc.mem[k] for k in on if sc.mem[k] > 0) <= limit:
        return []  # can never exceed
    lifetimes = _lifetimes(program, sc, on)
    if lifetimes is not None and not _tight(program, sc, limit, lifetimes):
        # The level at time t is the sum over microbatches whose F has started and whose B (W)
        # has not of the part B (W) frees: intervals [start F, start B) and [start F, start W).
        ivs, dem, sizes = [], [], []
        for f, frees in lifetimes:
            for k, amount in frees:
                size = m.new_int_var(0, horizon, f"life{f}_{k}")
                ivs.append(m.new_interval_var(start[f], size, start[k], f"hold{f}_{k}"))
                dem.append(amount)
                sizes.append((size, f, k))
        m.add_cumulative(ivs, dem, limit)
        return sizes
    neg = sum(sc.mem[k] for k in on if sc.mem[k] < 0)
    ev = [k for k in on if sc.mem[k] != 0]
    m.add_reservoir_constraint([start[k] for k in ev], [sc.mem[k] for k in ev], min(0, neg), limit)
    if lifetimes is not None and fifo:
        _memory_precedences(m, program, sc, limit, lifetimes, start)
    return []


def _tight(program: Program, sc: Scaled, limit: int, lifetimes: list[tuple[int, list[tuple[int, int]]]]) -> bool:
    """Fewer forwards of some stage fit in the limit than there are ranks."""
    return any(sc.mem[f] > 0 and limit // sc.mem[f] < program.num_ranks for f, _ in lifetimes)


def _memory_precedences(m: Any, program: Program, sc: Scaled, limit: int,
                        lifetimes: list[tuple[int, list[tuple[int, int]]]], start: Sequence[Any]) -> None:
    """Redundant precedences implied by memory under FIFO (they propagate far better than the
    cumulative). A microbatch whose freeing op K has not run still holds at least ``hold_K`` (K's
    amount plus that of every free after K); F[s, i] allocates A; so when F[s, i] starts at most
    ``c = (limit - A) // hold_K`` of the microbatches before it can still wait for K, and, K running
    in microbatch order, K[s, i - c - 1] has finished."""
    reaches = _reach(program)
    for f, frees in lifetimes:
        fo = program.ops[f]
        if fo.mb != 0:
            continue  # one pass per stage, from its first microbatch's ops
        alloc = sc.mem[f]
        if alloc <= 0:
            continue
        for k, _ in frees:
            hold = sum(a for k2, a in frees if k2 == k or reaches(k, k2))
            if hold <= 0:
                continue
            c = (limit - alloc) // hold
            kind = program.ops[k].kind
            for i in range(c + 1, program.num_microbatches):
                fi = program.find(fo.kind, fo.stage, i)
                ki = program.find(kind, fo.stage, i - c - 1)
                if fi is not None and ki is not None:
                    m.add(start[fi.id] >= start[ki.id] + sc.dur[ki.id])


def _lifetimes(program: Program, sc: Scaled, on: Sequence[int]) -> list[tuple[int, list[tuple[int, int]]]] | None:
    """Per (stage, microbatch) on the rank: its allocating F and the ops that free (op, amount),
    if every op is an F (allocates), B/BW or W (frees) of one (stage, microbatch), the frees sum
    to the allocation and follow the F in the precedence graph. None otherwise."""
    from schedlang.ir import Role

    groups: dict[tuple[int, int], list[int]] = {}
    for k in on:
        o = program.ops[k]
        groups.setdefault((o.stage, o.mb), []).append(k)
    reaches = _reach(program)
    out = []
    for ids in groups.values():
        fs = [k for k in ids if program.role(program.ops[k]) is Role.F]
        rest = [k for k in ids if k not in fs]
        if len(fs) != 1 or any(program.role(program.ops[k]) is Role.USER for k in rest):
            return None
        f = fs[0]
        if sc.mem[f] < 0 or any(sc.mem[k] > 0 for k in rest) or sc.mem[f] + sum(sc.mem[k] for k in rest) != 0:
            return None
        if any(not reaches(f, k) for k in rest):
            return None
        out.append((f, [(k, -sc.mem[k]) for k in rest if sc.mem[k] < 0]))
    return out


def _reach(program: Program) -> Callable[[int, int], bool]:
    """A query ``reaches(a, b)``: is there a path of the program's edges from op ``a`` to op ``b``?

    The memory model asks it only about ops of one microbatch (an F and the ops that free what it
    allocated), and for those the program's edges answer the same as the model's precedence arcs:
    FIFO arcs (added only when every edge stays within one microbatch) lead from a microbatch to
    later ones and never back. A depth-first search from ``a`` that skips ops after ``b`` in a
    topological order visits only ``a``'s descendants up to ``b`` (within one microbatch: about
    the ops of one microbatch), where the full descendant sets over the FIFO arcs cost quadratic
    time and memory (measured: 100 s at p = 32, m = 128)."""
    succs = program.succs()
    pos = {k: i for i, k in enumerate(program.topo())}

    def reaches(a: int, b: int) -> bool:
        limit = pos[b]
        seen = {a}
        stack = [a]
        while stack:
            x = stack.pop()
            for y, _ in succs[x]:
                if y == b:
                    return True
                if y not in seen and pos[y] < limit:
                    seen.add(y)
                    stack.append(y)
        return False

    return reaches
