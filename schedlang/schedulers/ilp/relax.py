"""Item 7 of the bounds (bounds.py): relaxations that keep a few ranks exact, on a few microbatches.

**The relaxation.** Take the program and a set ``E`` of ranks (rank ``r`` and, say, one other).
Keep every op, its duration and every dependency edge with its latency; keep the ranks of ``E``
running one op at a time under their memory limit; let the ops of every other rank overlap
freely (no capacity, no memory). Every valid schedule is a schedule of this relaxation, so its
least objective, and CP-SAT's proven bound on it after any solve (``best_objective_bound``), is at
most the objective of every valid schedule. With the other ranks free, the forwards of one
microbatch reach the last rank and its backwards return exactly along the longest path, which is
what items 2, 3, 5 and 6 assume; what the relaxation adds is the exact interleaving of the F, B and
W slots of rank ``r`` (and of the other exact rank) under the memory limit, where items 5 and 6
count states of a dynamic programme that no schedule may reach.

**Windows.** Solved on all ``m`` microbatches the relaxation is as hard as the problem. It is
solved on the first ``n`` microbatches instead (the program with the ops of microbatches
``>= n`` left out), which bounds every window of ``n`` consecutive microbatches of a valid schedule:
when microbatches are interchangeable (``fifo_is_safe``: same times and memory per op kind and
stage, every edge within one microbatch with the same pattern) a schedule can be relabelled so that
the microbatches of each op kind and stage run in order (FIFO), and the microbatches ``j .. j+n-1``
of it, alone, with the start times they have, are a schedule of ``n`` microbatches: edges stay
within microbatches, a rank runs fewer ops, and leaving out a microbatch never adds memory on a
rank whose ops are F's that allocate and B / BW / W's of the same microbatch that free what that F
allocated after it (then every microbatch holds zero or more at every moment; the memory of any
other rank is left out of the relaxation). Two figures per rank ``r`` (the first chunk's forwards,
see bounds.py): ``gaps[k]``, the least ``F[r, k] - F[r, 0]`` over ``k + 1`` microbatches (so
``F[j + k] - F[j] >= gaps[k]`` for every ``j``: it enters item 5's DP), and ``spans[n]``, the
least span of rank ``r`` over ``n`` microbatches (item 6's block bounds). FIFO is imposed in the
relaxation too (relabelling keeps it valid: no edge, rank order or memory level changes).

**Horizon.** A relaxed schedule in which no op runs during an interval longer than the largest
latency can be shifted left across it (everything after it moves together: edges keep their
latency, the order on every rank and so every memory level is unchanged, and the objective, a
difference of two starts or a span, only shrinks), so the least objective is reached within
``sum of durations + (ops) x largest latency`` of the first start: the model's horizon.

Times and memory must be exact at the model's integer scale (model.py): otherwise no figure is
given. Each solve gets a share of a wall-clock budget; where it ends before a proof, its proven
bound still counts.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from schedlang.ir import Program
from schedlang.schedulers.ilp.bounds import EPS, Windows, _rank_shape, lower_bound, rank_bound
from schedlang.schedulers.ilp.model import (
    _lifetimes,
    _memory,
    fifo_is_safe,
    precedence,
    scale_program,
)


@dataclass
class RelaxStats:
    """What the relaxations cost: solves run, proved optimal, and wall seconds."""

    solves: int = 0
    proved: int = 0
    seconds: float = 0.0
    deterministic_time: float = 0.0
    log: list[tuple[int, tuple[int, ...], str, int, float, float]] = field(default_factory=list)
    # (rank, exact ranks, "gap" or "span", k or n, figure, seconds)


def first_microbatches(p: Program, n: int) -> Program:
    """``p`` with the ops of microbatches ``>= n`` left out (and their edges), renumbered."""
    keep = [o for o in p.ops if o.mb < n]
    new = {o.id: i for i, o in enumerate(keep)}
    ops = tuple(replace(o, id=new[o.id]) for o in keep)
    edges = tuple(replace(e, src=new[e.src], dst=new[e.dst]) for e in p.edges if e.src in new and e.dst in new)
    return replace(p, ops=ops, edges=edges, num_microbatches=n, schedule=None)


def applies(p: Program) -> bool:
    """Item 7 needs interchangeable microbatches (the window argument) and ops of one rank that
    never overlap (``overlap sum``)."""
    return p.overlap == "sum" and p.num_microbatches >= 1 and fifo_is_safe(p)


def _solve(p: Program, limits: Sequence[float], exact: frozenset[int], goal: tuple[str, int, int],
           lower: float, seconds: float, deterministic: bool = False,
           wall: float | None = None) -> tuple[float, bool, float] | None:
    """The least ``goal`` over the relaxation of ``p`` keeping ``exact``: ``("gap", a, b)``,
    ``start[b] - start[a]``; ``("span", r, 0)``, rank ``r``'s span; at least ``lower`` (a bound
    every valid schedule meets: adding it keeps the relaxation's least at most theirs). Within
    ``seconds`` (wall, or CP-SAT's deterministic time; ``wall``: wall seconds at most in either
    case), on one worker. Returns (a lower bound in program time, proved optimal, the
    deterministic time used), or None when times or memory are inexact at the integer scale or
    the window has no schedule."""
    from ortools.sat.python import cp_model

    sc = scale_program(p, limits)
    if not (sc.exact and sc.mem_exact):
        return None
    prec = precedence(p, sc, True)
    n = len(p.ops)
    horizon = sum(sc.dur) + n * max((e[2] for e in sc.edges), default=0) + 1
    m = cp_model.CpModel()
    start = [m.new_int_var(prec.head[k], max(prec.head[k], horizon - prec.tail[k]), f"s{k}") for k in range(n)]
    for r in sorted(exact):
        on = [k for k in range(n) if p.ops[k].rank == r]
        m.add_no_overlap([m.new_fixed_size_interval_var(start[k], sc.dur[k], f"i{k}") for k in on])
        if _lifetimes(p, sc, on) is not None:  # else its memory is left out (a relaxation still)
            _memory(m, p, sc, r, on, start, prec, horizon, True)
    for s, d, w in prec.arcs:
        m.add(start[d] >= start[s] + w)
    low = max(0, math.floor(lower * sc.scale + 1e-6))
    obj = m.new_int_var(low, max(low, horizon), "obj")
    kind, a, b = goal
    if kind == "gap":
        m.add(obj >= start[b] - start[a])
    else:
        for y in prec.last[a]:
            for x in prec.first[a]:
                m.add(obj >= start[y] + sc.dur[y] - start[x])
    m.minimize(obj)
    solver = cp_model.CpSolver()
    solver.parameters.num_workers = 1
    if deterministic:
        solver.parameters.max_deterministic_time = max(0.01, seconds)
        if wall is not None:
            solver.parameters.max_time_in_seconds = max(0.01, wall)
    else:
        solver.parameters.max_time_in_seconds = max(0.01, seconds if wall is None else min(seconds, wall))
    solver.parameters.random_seed = 0
    status = solver.solve(m)
    if status == cp_model.INFEASIBLE:  # no schedule of the window fits: nothing to bound with
        return None
    # the proven bound holds whether or not a solution was found (UNKNOWN: only the given lower)
    best = max(low, solver.best_objective_bound) if status != cp_model.MODEL_INVALID else low
    return math.ceil(best - 1e-6) / sc.scale, status == cp_model.OPTIMAL, solver.deterministic_time


def every_other(p: Program) -> Callable[[int], Sequence[int]]:
    """Partners: every other rank, nearest first."""
    return lambda r: sorted((q for q in range(p.num_ranks) if q != r), key=lambda q: (abs(q - r), q))


def windows(p: Program, limits: Sequence[float], *, seconds: float, ranks: Sequence[int] | None = None,
            partners: Callable[[int], Sequence[int]] | None = None, max_window: int = 12,
            deterministic: bool = False, deadline: float | None = None, stop_at: float = math.inf,
            objective: str = "span", stats: RelaxStats | None = None,
            clock: Callable[[], float] = time.perf_counter) -> dict[int, Windows]:
    """Item 7's figures per rank, within ``seconds`` of wall time, or of CP-SAT's deterministic
    time summed over the solves when ``deterministic`` (reproducible), see the module docstring.

    ``ranks`` (default: all, those whose span bound is largest first) are the ranks bounded;
    ``partners(r)`` (default: none) the other ranks kept exact with ``r``, one at a time, after
    ``r`` alone. For each, ``gaps[k]`` and ``spans[n]`` grow with ``k`` and ``n`` up to
    ``max_window`` microbatches (at most ``m``), size by size over the exact sets, until a set's
    solve ends without a proof. Every solve runs on one worker; none runs past ``deadline`` (a
    ``clock()`` value; None: none). It stops once the bound on ``objective`` reaches ``stop_at``
    (a schedule's objective: no bound can pass it)."""
    t0 = clock()
    st = stats if stats is not None else RelaxStats()
    used = [0.0]  # deterministic time of the solves
    out: dict[int, Windows] = {}
    if not applies(p) or seconds <= 0:
        return out
    m = p.num_microbatches
    base = lower_bound(p, limits, objective)
    if base.value >= stop_at - EPS * max(1.0, abs(stop_at)):
        return out
    order = list(ranks) if ranks is not None else [b.rank for b in sorted(base.ranks, key=lambda b: -b.span)]
    subs: dict[int, Program] = {}

    def sub(n: int) -> Program:
        if n not in subs:
            subs[n] = first_microbatches(p, n)
        return subs[n]

    def wall() -> float | None:
        return None if deadline is None else deadline - clock()

    def left() -> float:
        w = wall()
        if w is not None and w <= 0.01:
            return 0.0
        return seconds - (used[0] if deterministic else clock() - t0)

    def solve(r: int, q: Program, exact: frozenset[int], goal: tuple[str, int, int],
              lower: float) -> tuple[float, bool] | None:
        """One solve within what is left (None: none given, or no figure); records it."""
        if left() <= 0:
            return None
        t = clock()
        got = _solve(q, limits, exact, goal, lower, min(left(), max(0.05, left() / 4)), deterministic, wall())
        st.solves += 1
        if got is None:
            return None
        value, proved, dtime = got
        used[0] += dtime
        st.deterministic_time += dtime
        st.proved += proved
        size = q.num_microbatches - (goal[0] == "gap")
        st.log.append((r, tuple(sorted(exact)), goal[0], size, value, clock() - t))
        return value, proved

    for r in order:
        if left() <= 0:
            break
        sets = [frozenset({r})] + [frozenset({r, q}) for q in (partners(r) if partners else ()) if q != r]
        got = _rank_windows(p, r, limits[r], sets, min(max_window, m), sub, solve)
        if got is not None:
            out[r] = got
            if lower_bound(p, limits, objective, out).value >= stop_at - EPS * max(1.0, abs(stop_at)):
                break
    st.seconds += clock() - t0
    return out


def _rank_windows(p: Program, r: int, limit: float, sets: Sequence[frozenset[int]], top: int,
                  sub: Callable[[int], Program],
                  solve: Callable[[int, Program, frozenset[int], tuple[str, int, int], float],
                                  tuple[float, bool] | None],
                  ) -> Windows | None:
    """Rank ``r``'s figures: gaps over windows of 2 .. ``top`` microbatches, then spans over 1 ..
    ``top``, size by size over every exact set in ``sets`` (what one set proves raises the
    starting bound of the others); a set whose solve ends without a proof stops growing."""
    shapes = _rank_shape(p, r, True)
    if shapes is None:
        return None
    f = p.ops[shapes[0].f]
    gaps: dict[int, float] = {}
    spans: dict[int, float] = {}
    for kind in ("gap", "span"):
        active = list(sets)
        for size in range(1, (top - 1 if kind == "gap" else top) + 1):
            q = sub(size + 1 if kind == "gap" else size)
            f0, fk = q.find(f.kind, f.stage, 0), q.find(f.kind, f.stage, size)
            assert f0 is not None
            for exact in list(active):
                if kind == "gap":
                    assert fk is not None
                    goal, lower = ("gap", f0.id, fk.id), _lb(q, r, limit, gaps, size)
                else:  # items 1 to 6 on the window, with what item 7 found so far
                    goal, lower = ("span", r, 0), rank_bound(q, r, limit, True, Windows(gaps, spans)).span
                got = solve(r, q, exact, goal, lower)
                if got is None or not got[1]:
                    active.remove(exact)
                if got is not None:
                    table = gaps if kind == "gap" else spans
                    if got[0] > table.get(size, 0.0) + EPS * max(1.0, got[0]):
                        table[size] = got[0]
            if not active:
                break
    return Windows(gaps, spans) if gaps or spans else None


def _lb(q: Program, r: int, limit: float, gaps: dict[int, float], k: int) -> float:
    """Items 5 and 7's bound on ``F[k] - F[0]`` of rank ``r`` on the window ``q``."""
    from schedlang.schedulers.ilp.bounds import _pacing

    shapes = _rank_shape(q, r, True)
    assert shapes is not None
    sh = shapes[0]
    rt = q.longest_from(sh.f)[sh.b]
    if rt == -math.inf:
        return 0.0
    lb, _ = _pacing(sh, rt, q.num_microbatches, limit, gaps)
    return lb[k] if k < len(lb) else 0.0


def relaxed_bound(p: Program, limits: Sequence[float], objective: str = "span", *, seconds: float,
                  **kwargs: Any) -> tuple[Any, dict[int, Windows]]:
    """:func:`~.bounds.lower_bound` with item 7's figures found within ``seconds``: (the bound,
    the figures)."""
    got = windows(p, limits, seconds=seconds, **kwargs)
    return lower_bound(p, limits, objective, got), got
