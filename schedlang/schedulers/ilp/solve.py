"""Solve the scheduling problem with CP-SAT: warm start, structural bound, search, report.

:func:`optimize` is the whole pass: it picks the best registered heuristic (``warm_start=True``,
``applies(program)``, verifies under the limit) as the start, or the best periodic schedule
(periodic.py, a quarter of what is left of the time budget) when that is better, computes the structural lower bound
(bounds.py; with ``relax`` seconds, raised by relaxations keeping two ranks exact, relax.py), builds the model (model.py) with the heuristic's objective as an upper bound, its
times as hints and the structural bound as ``obj >= bound``, solves (a full solve, then
large-neighbourhood rounds, see :mod:`schedlang.schedulers.ilp.lns`), turns the best solution
into orders (apply.py) and re-simulates them with the exact float times. The result is never
worse than the warm start: if the re-simulated objective were worse, the start is returned.

Time: the time limit is wall-clock seconds for the whole run, a promise (see :func:`optimize`).
Reproducibility is a switch: with ``deterministic=True`` the limit is CP-SAT's *deterministic*
time (about seconds of work; it does not depend on machine load), with a fixed seed; with more
than one worker the subsolvers are interleaved deterministically (``interleave_search``). Same
program, arguments, seed and workers then give the same orders. The report says which clock ran.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any, TextIO

from schedlang.ir import Orders, Program
from schedlang.schedulers.ilp import lns as lns_search
from schedlang.schedulers.ilp import periodic as periodic_search
from schedlang.schedulers.ilp.apply import orders_from_starts
from schedlang.schedulers.ilp.bounds import Bound, lower_bound
from schedlang.schedulers.ilp.cpsat import (
    Budget,
    Problem,
    Progress,
    ProgressFn,
    fifo_relabel,
    model_value,
    objective_value,
    stream_progress,
)
from schedlang.schedulers.ilp.model import Scaled, fifo_is_safe, scale_program
from schedlang.schedulers.ilp.options import OBJECTIVES, ArgError, IlpOptions
from schedlang.simulate import memory_profile, simulate
from schedlang.source import SchedlangError
from schedlang.verify import verify

__all__ = ["OBJECTIVES", "ArgError", "IlpOptions", "Report", "optimize"]

PERIODIC_SHARE = 0.25  # of what is left of the time limit, for the periodic warm start (periodic.py) ...
PERIODIC_MIN_GAP = 0.01  # ... tried only when the best heuristic is further than this from the bound
# Wall seconds held back for the work after the last solve: CHECKS times what checking the warm
# start (verify and simulate) took, plus RESERVE. After the last solve come its compression
# (orders and a simulation), the final verify and two simulations, and the report: at p = 32,
# m = 128 twice the check (0.5 s) left the run 0.06 s over its 60 s.
CHECKS = 4
RESERVE = 0.1


@dataclass
class Report:
    """What the optimizer did: figures are in program time units, from the exact simulator."""

    status: str  # OPTIMAL (proved), FEASIBLE (gap left), WARM_START (no improvement found)
    objective_name: str
    objective: float
    bound: float
    gap: float  # (objective - bound) / objective
    time: float  # wall seconds, the whole run
    warm_start: str
    warm_objective: float
    model_objective: float  # the solver's own figure (times at the model's resolution)
    resolution: float
    exact_times: bool
    fifo: bool
    bound_detail: str = ""
    bubble_rate: float = 0.0
    makespan: float = 0.0
    cost: float = 0.0
    deterministic_time: float = 0.0  # CP-SAT's deterministic time, summed over the solves
    rounds: int = 0
    wall_capped: bool = False  # the wall-clock cap ended a deterministic run before its budget
    candidates: dict[str, float] = field(default_factory=dict)
    clock: str = "wall"  # what time_limit counted: "wall" seconds or "deterministic" time
    time_limit: float = 0.0
    phases: dict[str, float] = field(default_factory=dict)  # wall seconds per phase of the run

    def summary(self) -> str:
        limit = (f"deterministic time limit {self.time_limit:g}: reproducible" if self.clock == "deterministic"
                 else f"wall-clock limit {self.time_limit:g}s")
        if self.clock == "wall" and self.time > self.time_limit:
            fixed = sum(self.phases.get(k, 0.0) for k in ("setup", "heuristics", "bounds"))
            limit += f", over it: loading, heuristics and bounds, which cannot be cut short, took {fixed:.1f}s"
        return (f"ilp: {self.status} {self.objective_name} {self.objective:.6g} bound {self.bound:.6g} "
                f"gap {100 * self.gap:.2f}% bubble rate {self.bubble_rate:.4f} (warm start {self.warm_start} "
                f"{self.warm_objective:.6g}) in {self.time:.1f}s ({limit})"
                + (" (stopped by the wall-clock cap: may differ between runs)" if self.wall_capped else ""))

    def as_dict(self) -> dict[str, Any]:
        from dataclasses import asdict

        return asdict(self)


# --------------------------------------------------------------------------- inputs


def effective_limits(program: Program, mem_limit: float | None) -> tuple[float, ...]:
    """Per-rank limits: the argument if given (by the schedule pass's rule: it may only tighten
    the program's limit), else the program's, else unlimited."""
    R = program.num_ranks
    if mem_limit is not None:
        from schedlang.schedulers.base import scheduler_limits

        program = scheduler_limits(program, [float(mem_limit)] * R, None)
    if program.mem_limit is not None:
        return tuple(float(x) for x in program.mem_limit)
    return (math.inf,) * R


def sequential_orders(program: Program) -> Orders:
    """Microbatch by microbatch (a topological order by (microbatch, op id)): uses the least memory
    any simple order needs; the fallback start when no heuristic fits the limit."""
    import heapq

    n = len(program.ops)
    succs, preds = program.succs(), program.preds()
    missing = [len(preds[k]) for k in range(n)]
    heap = [(program.ops[k].mb, k) for k in range(n) if missing[k] == 0]
    heapq.heapify(heap)
    ranks: list[list[tuple[int, ...]]] = [[] for _ in range(program.num_ranks)]
    while heap:
        _, k = heapq.heappop(heap)
        ranks[program.ops[k].rank].append((k,))
        for d, _ in succs[k]:
            missing[d] -= 1
            if missing[d] == 0:
                heapq.heappush(heap, (program.ops[d].mb, d))
    return Orders(tuple(tuple(r) for r in ranks), origin="sequential")


def peaks(program: Program, orders: Orders) -> list[float]:
    """The peak memory of every rank when ``program`` runs ``orders``."""
    prog = program.with_orders(orders)
    return [max([0.0, *memory_profile(prog, r)]) for r in range(program.num_ranks)]


def check_limits(program: Program, limits: Sequence[float]) -> None:
    """Raise a clear error if a limit is below what a single op needs on its rank."""
    seq = peaks(program, sequential_orders(program))
    for r in range(program.num_ranks):
        on = [o for o in program.ops if o.rank == r]
        need = max([0.0] + [o.mem for o in on])
        lim = limits[r]
        if need > lim + 1e-9 * max(1.0, abs(lim)):
            op = max(on, key=lambda o: o.mem)
            least = max(seq) if _one_needs_all(program, seq) else None
            hint = (f"; the least feasible limit is {least:g}" if least is not None
                    else f"; the limit must be at least {need:g}")
            raise ArgError(f"ilp: memory limit {lim:g} on rank {r} is below what {op.label} alone "
                           f"needs ({need:g}): no schedule fits{hint}", "mem_limit")


def _one_needs_all(program: Program, seq: Sequence[float]) -> bool:
    """True if the sequential order's peak equals the largest single op's memory on every rank
    (then it is the least feasible limit)."""
    for r in range(program.num_ranks):
        need = max([0.0] + [o.mem for o in program.ops if o.rank == r])
        if seq[r] > need + 1e-9 * max(1.0, need):
            return False
    return True


@dataclass(frozen=True)
class Candidate:
    name: str
    orders: Orders
    value: float


def warm_starts(program: Program, objective: str) -> list[Candidate]:
    """Every registered warm-start heuristic that applies and verifies under ``program``'s limit,
    best first (ties by name), plus the sequential fallback."""
    from schedlang.schedulers.table import HEURISTICS

    out = []
    tried: list[tuple[str, Orders]] = []
    for name in sorted(HEURISTICS):
        s = HEURISTICS[name]
        if not s.warm_start:
            continue
        defaults = {a: spec.default for a, spec in s.args.items() if spec.default is not None}
        try:
            if s.applies(program):
                tried.append((name, s.fn(program, defaults)))
        except SchedlangError:
            pass  # the heuristic cannot schedule this program (e.g. under this limit)
        for variant in s.warm_variants:  # verified below like the others: one that does not fit drops out
            label = name + ":" + ",".join(f"{k}={v}" for k, v in variant.items())
            try:
                tried.append((label, s.fn(program, {**defaults, **variant})))
            except SchedlangError:
                continue
    tried.append(("sequential", sequential_orders(program)))
    for name, orders in tried:
        prog = program.with_orders(orders)
        try:
            verify(prog)
        except SchedlangError:
            continue
        out.append(Candidate(name, orders, objective_value(simulate(prog), objective)))
    out.sort(key=lambda c: (c.value, c.name))
    return out


def integer_program(program: Program, sc: Scaled) -> Program:
    """The program with times and latencies at the model's resolution (in model units)."""
    ops = tuple(replace(o, time=float(d)) for o, d in zip(program.ops, sc.dur, strict=True))
    edges = tuple(replace(e, latency=float(lat)) for e, (_, _, lat) in zip(program.edges, sc.edges, strict=True))
    out = replace(program, ops=ops, edges=edges, schedule=None)
    return out


# --------------------------------------------------------------------------- solving


def optimize(program: Program, options: IlpOptions | None = None, *,
             progress: ProgressFn | TextIO | None = None, **changes: Any) -> tuple[Orders, Report]:
    """Optimize the per-rank orders of ``program`` (see the module docstring).

    ``options`` (default :class:`IlpOptions`'s defaults) with ``changes`` applied (keyword names
    of its fields, e.g. ``optimize(p, time_limit=10)``) says what to do. ``progress`` receives a
    :class:`~.cpsat.ProgressEvent` at every phase and result as it happens (a text stream gets
    their lines; None: nothing).

    ``time_limit`` is wall-clock seconds for the whole run: the heuristics, the bounds, the
    periodic start, every model build and solve and the final checks; each CP-SAT call gets
    ``max_time_in_seconds`` from what is left, and a multiple of the time checking the warm
    start took is held back for the final checks. Only loading OR-Tools, the heuristics and the
    bounds cannot be cut short (at p = 32, m = 128 about 10 s together); the report's ``phases``
    say where the time went.
    ``deterministic=True`` makes it CP-SAT's deterministic time summed over the solves instead:
    the same input, seed and workers give the same schedule. On some models CP-SAT's
    deterministic clock runs far slower than the wall clock (measured: 2 deterministic seconds
    taking 4 minutes), so ``wall_limit`` (default ``4 * time_limit + 10`` seconds; 0 for none)
    caps such a run's wall time; when the cap ends it, the report says so (``wall_capped``): that
    result may differ between runs.
    """
    opts = replace(options or IlpOptions(), **changes)
    t0 = time.perf_counter()
    opts.check()
    budget = Budget(opts.time_limit, deterministic=opts.deterministic, wall_cap=opts.wall_seconds)
    with budget.phase("setup"):
        import ortools.sat.python.cp_model  # noqa: F401 - loading it takes a second or two: count it first
    shown = Progress(progress if progress is None or callable(progress) else stream_progress(progress), t0)
    objective, seed = opts.objective, opts.seed
    limits = effective_limits(program, opts.mem_limit)
    prog = replace(program, mem_limit=None if all(math.isinf(x) for x in limits) else limits, schedule=None)
    check_limits(prog, limits)
    shown.line("heuristics")
    with budget.phase("heuristics"):
        cands = warm_starts(prog, objective)
    if not cands:
        raise ArgError("ilp: no heuristic (not even one microbatch at a time) fits the memory limit "
                       f"{', '.join(f'{x:g}' for x in limits)}; raise mem_limit", "mem_limit")
    warm = cands[0]
    shown.line("bounds")
    with budget.phase("bounds"):
        sc = scale_program(prog, limits)
        use_fifo = opts.fifo and fifo_is_safe(prog)
        iprog = integer_program(prog, sc)
        topo = prog.topo()
        bound_f = lower_bound(prog, limits, objective)
        # At exact times the integer program is the program with every time scaled: so is its bound
        # (checked on the 120 bounds of the p <= 8 suite and the shapes); only inexact times need
        # their own.
        lower = (bound_f.value * sc.scale if sc.exact else lower_bound(iprog, limits, objective).value)
    if opts.relax > 0 and sc.exact and sc.mem_exact and budget.left() > 0.01:
        shown.line("relax")
        with budget.phase("relax"):
            bound_f = _relaxed(prog, limits, objective, bound_f, min(opts.relax, budget.left()), budget, warm.value)
            lower = max(lower, bound_f.value * sc.scale)
    problem = Problem(prog, iprog, sc, objective, use_fifo, topo, int(math.floor(lower + 1e-6)),
                      max((e[2] for e in sc.edges), default=0) * prog.num_ranks)
    with budget.phase("finish"):  # what the final checks cost, measured on the warm start
        t = time.perf_counter()
        _check_and_value(prog, warm.orders, objective)
        budget.hold_back(CHECKS * (time.perf_counter() - t) + RESERVE)
    if (use_fifo and opts.periodic and warm.value > bound_f.value * (1 + PERIODIC_MIN_GAP)
            and prog.num_microbatches > 1 and budget.left() > 0.01):
        shown.line("periodic")
        with budget.phase("periodic"):
            found = periodic_search.search(prog, sc, objective, topo, budget=budget.share(PERIODIC_SHARE), seed=seed,
                                           progress=lambda what, v: shown.line(what, v, bound_f.value))
        if found is not None and found.value < warm.value - 1e-9 * max(1.0, warm.value):
            warm = Candidate(found.orders.origin or "periodic", found.orders, found.value)
            cands.insert(0, warm)
    with budget.phase("search"):
        warm_starts_i = simulate(iprog.with_orders(warm.orders)).start
        hint = fifo_relabel(prog, warm_starts_i) if use_fifo else [int(round(x)) for x in warm_starts_i]
    shown.line(f"start:{warm.name}", warm.value, bound_f.value)
    best_starts, cp_bound, rounds, status = lns_search.search(
        problem, hint, budget=budget, seed=seed, workers=opts.workers, lns=opts.lns, shown=shown)
    with budget.phase("finish"):
        orders = orders_from_starts(prog, best_starts, topo)
        chosen, rep = _finish(prog, problem, warm, orders, cands, bound_f, cp_bound, t0, budget.charged, rounds)
    rep.wall_capped = budget.capped and rep.status != "OPTIMAL"
    rep.clock = "deterministic" if opts.deterministic else "wall"
    rep.time_limit = opts.time_limit
    rep.model_objective = sc.to_time(model_value(problem, best_starts))
    rep.time = time.perf_counter() - t0
    rep.phases = {k: round(v, 4) for k, v in budget.phases.items()}
    shown.line(rep.status.lower(), rep.objective, rep.bound)
    return chosen, rep


def _relaxed(prog: Program, limits: Sequence[float], objective: str, bound: Bound, seconds: float,
             budget: Budget, best: float) -> Bound:
    """The structural bound with item 7 (relaxations keeping two ranks exact, relax.py) when that
    is higher: ``seconds`` of wall time, or of deterministic time charged to ``budget``, never
    past its wall-clock deadline, and no longer than it takes to reach ``best`` (the warm start's
    objective)."""
    from schedlang.schedulers.ilp import relax

    stats = relax.RelaxStats()
    found = relax.windows(prog, limits, seconds=seconds, partners=relax.every_other(prog),
                          deterministic=budget.deterministic, deadline=budget.deadline, stop_at=best,
                          objective=objective, stats=stats)
    if budget.deterministic:
        budget.charge(stats.deterministic_time)
    better = lower_bound(prog, limits, objective, found) if found else bound
    return better if better.value > bound.value else bound


def _check_and_value(prog: Program, orders: Orders, objective: str) -> float:
    """Verify ``orders`` and return their objective (inf if they fail the verifier)."""
    sched = prog.with_orders(orders)
    try:
        verify(sched)
    except SchedlangError:
        return math.inf
    return objective_value(simulate(sched), objective)


def _finish(prog: Program, problem: Problem, warm: Candidate, orders: Orders, cands: list[Candidate],
            bound_f: Bound, cp_bound: int, t0: float, dtime: float, rounds: int) -> tuple[Orders, Report]:
    chosen = orders
    # inf when rounding (inexact times or memory) broke the solution: then the start is kept
    value = _check_and_value(prog, orders, problem.objective)
    improved = value < warm.value - 1e-9 * max(1.0, warm.value)
    if not improved:
        chosen, value = warm.orders, warm.value
    sim = simulate(prog.with_orders(chosen))
    tol = 1e-9 * max(1.0, value)
    assert bound_f.value <= value + 1e-6 * max(1.0, value), f"structural bound {bound_f.value} above {value}"
    bound = bound_f.value
    if problem.sc.exact and problem.sc.mem_exact:  # the solver's bound is rigorous only when exact
        bound = max(bound, problem.sc.to_time(cp_bound))
    assert bound <= value + 1e-6 * max(1.0, value), f"bound {bound} above the objective {value}"
    bound = min(bound, value)  # float noise only
    gap = (value - bound) / value if value > 0 else 0.0
    st = "OPTIMAL" if value - bound <= tol else ("FEASIBLE" if improved else "WARM_START")
    return chosen, Report(status=st, objective_name=problem.objective, objective=value, bound=bound,
                  gap=max(0.0, gap) if value - bound > tol else 0.0, time=time.perf_counter() - t0,
                  warm_start=warm.name, warm_objective=warm.value,
                  model_objective=value,
                  resolution=problem.sc.resolution, exact_times=problem.sc.exact, fifo=problem.fifo,
                  bound_detail=bound_f.describe(), bubble_rate=sim.bubble_rate, makespan=sim.makespan,
                  cost=sim.cost, deterministic_time=dtime, rounds=rounds,
                  candidates={c.name: c.value for c in cands})
