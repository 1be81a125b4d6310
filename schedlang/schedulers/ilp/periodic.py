"""Periodic schedules: the steady state of a long pipeline, searched directly.

With many microbatches and a tight memory limit the span is mostly steady state, and the greedy
heuristics (and the time-window search that starts from them) settle into a poor rhythm. Here the
rhythm itself is the unknown: ``K`` *templates* (start times of one microbatch's ops) and a period
``P``; microbatch ``q*K + k`` runs template ``k`` shifted by ``q*P``. For a fixed ``P`` that is a
small CP-SAT model (``K`` times the ops of one microbatch as variables), so the search bisects on
``P`` for ``K = 1, 2, 3, ...`` within a time budget (the optimizer's) and keeps the unrolled schedule
whose exact simulation is best. It is a warm start for :mod:`.lns`, which then polishes the ramps
at both ends (a periodic schedule fills and drains the pipeline at the steady-state rate).

The model, for fixed ``K``, ``P`` and integer times:

- per template, the program's edges between one microbatch's ops (with latency);
- FIFO per (kind, stage): template ``k+1`` after template ``k``, and template 0 of the next copy
  after template ``K-1`` (lossless for interchangeable microbatches, see model.py);
- no-overlap per rank and the memory reservoir per rank over ``Q`` copies of the templates: every
  pair of copies that can meet, and every set of copies alive at one time, within the templates'
  extent. The unrolled first ``m`` microbatches are then checked by the verifier, and a ``P`` whose
  unrolled schedule fails is treated as infeasible after one retry with twice the copies.

Times: a schedule valid with durations and latencies rounded *up* to a grid is valid with the
exact ones (ops only get shorter), so long op times are mapped to a coarse grid of about
:data:`GRID_STEPS` steps for the longest op (CP-SAT finds periodic solutions at that resolution
quickly and often none at microsecond resolution); the exact simulator re-times the orders.

The bisection keeps ``lo`` (a period shown not to work) below ``hi`` (a period with a verified
schedule). A fixed-period solve ends in one of three ways: a schedule (``hi`` moves down), proved
infeasible (``lo`` moves up), or unknown (its time share ran out first). Unknown says nothing about
the period, so it never moves ``lo``: the bisection of that ``K`` stops there and keeps its best
schedule, and the rest of the budget goes to the next ``K``. (Periods between the unknown one and
``hi`` are easier, but every try there can cost a whole :data:`SOLVE_TIME` again.) An unrolled
schedule that fails the verifier even with twice the copies counts as not working (``lo``).

Only for interchangeable microbatches (:func:`~schedlang.schedulers.ilp.model.fifo_is_safe`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from enum import Enum

from schedlang.ir import Orders, Program
from schedlang.schedulers.ilp.apply import orders_from_starts
from schedlang.schedulers.ilp.cpsat import (
    Budget,
    SolveLimit,
    objective_value,
    run_solver,
    solver_params,
)
from schedlang.schedulers.ilp.model import Scaled
from schedlang.simulate import simulate
from schedlang.source import SchedlangError
from schedlang.verify import verify

# Grid steps for the longest op when the exact times are finer. Rounding a time up to the grid
# lengthens an op by less than one step (1/GRID_STEPS of the longest op), which is what a period
# found on the grid can lose per op; the exact simulator re-times the orders afterwards. The model's
# own times are used instead when they are exact and the longest op is at most 4 * GRID_STEPS units
# (fine enough, and no rounding at all).
GRID_STEPS = 20
# Templates tried, in order. K templates express any rhythm that repeats every K microbatches; the
# model has K times the variables. An even K starts from K/2's templates twice over (a hint), so
# the list is 1, 2, 3, 4 and the doubles of 3 and 4; a K is tried only when the pipeline holds at
# least two periods of it (see _ks).
KS = (1, 2, 3, 4, 6, 8)
# Seconds (the budget's unit: deterministic or wall) per fixed-period solve (at most): the whole
# search gets a quarter of what is left of the optimizer's time limit (15 s of the default 60 s),
# which holds a few bisection steps for each of several K.
SOLVE_TIME = 2.0
# The bisection stops when hi - lo is within this fraction of the period: half a percent of the
# steady-state rate. The first bracket is about GROWTH - 1 = 15% of the period wide, so that takes
# about log2(0.15 / 0.005) ~ 5 steps.
TOLERANCE = 0.005
# The first period tried is GROWTH times the busiest rank's work per K microbatches (no period can
# be below that work) and each try that fails grows it by GROWTH again: a bracket 15% wide, and
# about 14 tries up to MAX_PERIOD.
GROWTH = 1.15
# Give up on a K past this many times the busiest rank's work per K microbatches: that rank would
# idle 7/8 of the steady state, far worse than the heuristics this search is meant to beat.
MAX_PERIOD = 8


class Outcome(Enum):
    """How one fixed-period try ended."""

    FOUND = "found"  # a verified schedule with this period
    INFEASIBLE = "infeasible"  # proved impossible (or failing the verifier with twice the copies)
    UNKNOWN = "unknown"  # the solve ran out of time (or the budget was spent): nothing is known


@dataclass(frozen=True)
class Periodic:
    """The best periodic schedule found: orders, its templates and period, the exact objective."""

    orders: Orders
    k: int
    period: float  # program time per K microbatches (on the grid)
    value: float  # the objective of the orders, from the exact simulator
    used: float  # budget spent when it was found (the budget's unit)


@dataclass(frozen=True)
class _Template:
    ids: tuple[int, ...]  # op ids of microbatch 0, in template order
    dur: tuple[int, ...]  # grid durations
    edges: tuple[tuple[int, int, int], ...]  # (template index, template index, grid latency)
    index: dict[tuple[str, int], int]  # (kind, stage) -> template index
    mem: tuple[int, ...]
    limits: tuple[int | None, ...]
    unit: float  # program time per grid step

    @property
    def reach(self) -> int:
        """An upper bound on one template's critical path: every duration and latency."""
        return sum(self.dur) + sum(w for _, _, w in self.edges)


def _template(program: Program, sc: Scaled) -> _Template:
    ids = tuple(o.id for o in program.ops if o.mb == 0)
    pos = {k: i for i, k in enumerate(ids)}
    if sc.exact and max(sc.dur[k] for k in ids) <= 4 * GRID_STEPS:  # the model's own times will do
        unit = 1.0 / sc.scale
        dur = tuple(sc.dur[k] for k in ids)
        raw = list(sc.edges)
    else:
        unit = max(program.ops[k].time for k in ids) / GRID_STEPS or 1.0
        dur = tuple(math.ceil(program.ops[k].time / unit - 1e-9) for k in ids)
        raw = [(e.src, e.dst, math.ceil(e.latency / unit - 1e-9)) for e in program.edges]
    lat: dict[tuple[int, int], int] = {}
    for a, b, w in raw:
        lat[(a, b)] = max(w, lat.get((a, b), w))
    edges = tuple((pos[s], pos[d], w) for (s, d), w in lat.items() if s in pos and d in pos)
    index = {(program.ops[k].kind, program.ops[k].stage): i for i, k in enumerate(ids)}
    return _Template(ids, dur, edges, index, tuple(sc.mem[k] for k in ids), sc.limits, unit)


def _solve(program: Program, t: _Template, P: int, K: int, Q: int, solve_limit: SolveLimit, seed: int,
           hint: Sequence[Sequence[int]] | None = None,
           shorten: bool = False) -> tuple[list[list[int]] | None, str, float]:
    """Templates for period ``P`` over ``Q`` copies, within ``solve_limit``: (starts per template or None,
    CP-SAT's status name, deterministic time). Without ``shorten`` any solution will do (the
    bisection); with it, the templates are made short (less memory held, shorter ramps)."""
    from ortools.sat.python import cp_model

    n = len(t.ids)
    hs = t.reach + K * P
    m = cp_model.CpModel()
    s = [[m.new_int_var(0, hs, f"s{k}_{i}") for i in range(n)] for k in range(K)]
    for a, b, w in t.edges:
        for k in range(K):
            m.add(s[k][b] >= s[k][a] + t.dur[a] + w)
    for i in range(n):
        for k in range(K - 1):
            m.add(s[k + 1][i] >= s[k][i] + t.dur[i])
        m.add(s[0][i] + P >= s[K - 1][i] + t.dur[i])
    ops = program.ops
    for r in range(program.num_ranks):
        on = [i for i, k in enumerate(t.ids) if ops[k].rank == r]
        if not on:
            continue
        m.add_no_overlap([m.new_fixed_size_interval_var(s[k][i] + q * P, t.dur[i], f"i{q}_{k}_{i}")
                          for q in range(Q) for k in range(K) for i in on])
        limit = t.limits[r]
        ev = [i for i in on if t.mem[i] != 0]
        if limit is None or not ev:
            continue
        times = [s[k][i] + q * P for q in range(Q) for k in range(K) for i in ev]
        deltas = [t.mem[i] for _ in range(Q) for _ in range(K) for i in ev]
        m.add_reservoir_constraint(times, deltas, min(0, sum(d for d in deltas if d < 0)), limit)
    if shorten:
        m.minimize(sum(v for row in s for v in row))
    if hint is not None:
        for row, got in zip(s, hint, strict=True):
            for v, x in zip(row, got, strict=True):
                m.add_hint(v, min(int(x), hs))
    solver = cp_model.CpSolver()
    solver_params(solver, limit=solve_limit, seed=seed, workers=1)  # the wall seconds left now
    status = run_solver(solver, m, solve_limit)
    name = solver.status_name(status)
    if status in (cp_model.OPTIMAL, cp_model.FEASIBLE):
        return [[int(solver.value(v)) for v in row] for row in s], name, solver.deterministic_time
    return None, name, solver.deterministic_time


def unroll(program: Program, t: _Template, starts: Sequence[Sequence[int]], P: int, K: int) -> list[int]:
    """Grid start times of every op: microbatch ``q*K + k`` runs template ``k`` shifted by ``q*P``."""
    out = [0] * len(program.ops)
    for o in program.ops:
        out[o.id] = starts[o.mb % K][t.index[(o.kind, o.stage)]] + (o.mb // K) * P
    return out


def search(program: Program, sc: Scaled, objective: str, topo: Sequence[int], *, budget: Budget,
           seed: int = 0, progress: Callable[[str, float], None] | None = None) -> Periodic | None:
    """The best periodic schedule found within ``budget`` (or None); every solve's time is charged
    to it (see :class:`~.cpsat.Budget`: wall-clock or deterministic).

    ``program`` carries the effective memory limits; ``sc`` is its :class:`~.model.Scaled` view
    (memory units, and the time scale when it is coarse enough to use directly). ``progress`` is
    called with a label and the objective of each K's best schedule."""
    run = _Search(program, _template(program, sc), objective, topo, budget, seed)
    best: Periodic | None = None
    for K in _ks(program.num_microbatches):
        if run.left() <= 0.01:
            break
        found = run.best_for(K)
        if found is None:
            continue
        if progress is not None:
            progress(f"periodic:K={K}", found.result.value)
        if best is None or found.result.value < best.value:
            best = found.result
    return None if best is None else Periodic(best.orders, best.k, best.period, best.value, budget.used())


@dataclass(frozen=True)
class _Found:
    result: Periodic
    starts: list[list[int]]  # per template, on the grid
    period: int  # on the grid


class _Search:
    """Bisection on the period for each K, sharing one time budget."""

    def __init__(self, program: Program, t: _Template, objective: str, topo: Sequence[int],
                 budget: Budget, seed: int) -> None:
        self.program, self.t, self.objective, self.topo = program, t, objective, topo
        self.budget, self.seed = budget, seed
        self.work = max(sum(t.dur[i] for i, k in enumerate(t.ids) if program.ops[k].rank == r)
                        for r in range(program.num_ranks))
        self.rate: float | None = None  # best period per microbatch so far
        self.found: dict[int, _Found] = {}

    def left(self) -> float:
        return self.budget.left()

    def attempt(self, P: int, K: int, hint: Sequence[Sequence[int]] | None = None,
                shorten: bool = False) -> tuple[_Found | None, Outcome]:
        """A verified periodic schedule with period ``P`` and ``K`` templates (or None), and how
        the try ended (see :class:`Outcome`)."""
        m, prog = self.program.num_microbatches, self.program
        # Copies of the templates that can meet: a template spans at most ``reach``, so copies
        # more than ceil(reach / P) periods apart never overlap; twice that (both sides) plus two
        # covers every copy alive at one time. More than ceil(m / K) copies never run.
        copies = min(-(-m // K), 2 * (-(-self.t.reach // P)) + 2)
        for q in (copies, min(-(-m // K), 2 * copies)):
            if self.left() <= 0.01:
                return None, Outcome.UNKNOWN
            got, status, dt = _solve(prog, self.t, P, K, q, self.budget.solve_limit(SOLVE_TIME), self.seed, hint,
                                     shorten)
            self.budget.charge(dt)
            if got is None:
                return None, Outcome.INFEASIBLE if status == "INFEASIBLE" else Outcome.UNKNOWN
            orders = orders_from_starts(prog, unroll(prog, self.t, got, P, K), self.topo,
                                        origin=f"periodic(K={K})")
            sched = prog.with_orders(orders)
            try:
                verify(sched)
            except SchedlangError:
                continue  # a conflict beyond the copies modelled: retry with more
            value = objective_value(simulate(sched), self.objective)
            return _Found(Periodic(orders, K, P * self.t.unit, value, self.budget.used()), got, P), Outcome.FOUND
        return None, Outcome.INFEASIBLE

    def first(self, K: int) -> tuple[_Found | None, int, int]:
        """The first feasible period: (found, the largest period shown not to work, the found
        period)."""
        lo, found = K * self.work - 1, None  # a period below the busiest rank's work is impossible
        if self.rate is None:
            P = math.ceil(GROWTH * K * self.work)
            while found is None and self.left() > 0.01 and P <= MAX_PERIOD * K * self.work:
                found, outcome = self.attempt(P, K)
                if found is None:
                    if outcome is Outcome.INFEASIBLE:
                        lo = P
                    P = math.ceil(GROWTH * P) + 1
            return found, lo, P
        P = math.ceil(K * self.rate) - 1  # only a better rate is worth the time
        if P <= lo:
            return None, lo, P
        base = self.found.get(K // 2) if K % 2 == 0 else None
        # K = 2j: j's templates twice over are a solution at twice j's period (a hint)
        hint = None if base is None else [*base.starts, *([x + base.period for x in row] for row in base.starts)]
        return self.attempt(P, K, hint)[0], lo, P

    def best_for(self, K: int) -> _Found | None:
        found, lo, hi = self.first(K)
        if found is None:
            return None
        while hi - lo > max(1, int(TOLERANCE * hi)) and self.left() > 0.01:
            mid = (lo + hi) // 2
            got, outcome = self.attempt(mid, K, found.starts)
            if got is not None:
                hi, found = mid, got
            elif outcome is Outcome.INFEASIBLE:
                lo = mid
            else:
                break  # unknown: nothing learnt about mid, so the bracket cannot move (see above)
        found = self.attempt(found.period, K, found.starts, shorten=True)[0] or found
        self.found[K] = found
        self.rate = hi / K if self.rate is None else min(self.rate, hi / K)
        return found


def _ks(m: int) -> Iterator[int]:
    for K in KS:
        if K == 1 or 2 * K <= m:
            yield K
