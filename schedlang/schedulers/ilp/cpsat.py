"""The CP-SAT plumbing the optimizer's searches share (a leaf: it imports no other search module).

:class:`Problem` (everything a search needs, computed once), the model-unit objective and horizon,
the run's time budget (:class:`Budget`: wall-clock or deterministic), solver parameters and one
solve, the FIFO relabelling of start times, and progress events.
:mod:`.solve` (the pass), :mod:`.lns` (the neighbourhood search) and :mod:`.periodic` (the
steady-state search) import it; it imports only the model and the IR. ortools is imported when a
solve runs.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TextIO

from schedlang.ir import Program
from schedlang.schedulers.ilp.model import IlpModel, Scaled, fifo_chains


def objective_value(sim: Any, objective: str) -> float:
    """The figure ``objective`` names (``span``: the cost; ``makespan``) of a simulation."""
    return float(sim.cost if objective == "span" else sim.makespan)


def fifo_relabel(program: Program, starts: Sequence[float]) -> list[int]:
    """Reassign start times within each (kind, stage) in microbatch order (valid when
    :func:`fifo_is_safe`; keeps the objective, see model.py)."""
    out = [int(round(x)) for x in starts]
    for chain in fifo_chains(program):
        for k, t in zip(chain, sorted(out[k] for k in chain), strict=True):
            out[k] = t
    return out


@dataclass(frozen=True)
class ProgressEvent:
    """One step of a run, as it happens: ``what`` happened ``elapsed`` wall seconds after the start.

    ``what`` is a phase starting (``heuristics``, ``bounds``, ``relax``, ``periodic``, ``model``, ``search``:
    no figures) or a result: ``start:NAME`` (the warm start), ``periodic:K=k``, ``solution``,
    ``lns#N`` (an improving neighbourhood round), and the final status in lower case. Figures
    are in program time units."""

    elapsed: float
    what: str
    objective: float | None = None
    bound: float | None = None

    @property
    def gap(self) -> float | None:
        if self.objective is None or self.bound is None:
            return None
        return (self.objective - self.bound) / self.objective if self.objective > 0 else 0.0

    def text(self) -> str:
        """The event as one line (what the command line prints on stderr)."""
        head = f"ilp: {self.elapsed:7.1f}s {self.what:<10}"
        if self.objective is None:
            return head.rstrip()
        out = f"{head} objective {self.objective:.6g}"
        if self.bound is not None:
            out += f" bound {self.bound:.6g} gap {100 * (self.gap or 0.0):.2f}%"
        return out


ProgressFn = Callable[[ProgressEvent], None]


class Progress:
    """Sends :class:`ProgressEvent` s to a callback (None: nowhere), timed from ``t0``."""

    def __init__(self, callback: ProgressFn | None, t0: float) -> None:
        self.callback = callback
        self.t0 = t0

    def line(self, what: str, obj: float | None = None, bound: float | None = None) -> None:
        if self.callback is not None:
            self.callback(ProgressEvent(time.perf_counter() - self.t0, what, obj, bound))


def stream_progress(stream: TextIO) -> ProgressFn:
    """A progress callback writing each event's line to ``stream`` as it happens."""

    def write(event: ProgressEvent) -> None:
        stream.write(event.text() + "\n")
        stream.flush()

    return write


@dataclass(frozen=True)
class SolveLimit:
    """What one CP-SAT call may spend: ``time`` in the run's unit (deterministic time, or wall
    seconds) and ``until``, the wall-clock deadline (a ``time.perf_counter()`` value; None: none),
    less ``slack`` seconds (CP-SAT's largest overrun of a wall limit seen so far in the run). The
    wall seconds a solve gets are counted when it starts (:func:`solver_params`), so building its
    model after the limit was made does not stretch the deadline. ``record`` receives each
    solve's overrun (:func:`run_solver`)."""

    time: float
    deterministic: bool
    until: float | None = None
    slack: float = 0.0
    record: Callable[[float], None] | None = field(default=None, compare=False, repr=False)

    def wall_seconds(self, now: float) -> float | None:
        """Wall seconds from ``now``: the deadline's for a deterministic solve, else the lesser of
        ``time`` and the deadline's (None: no wall limit)."""
        left = None if self.until is None else max(0.0, self.until - self.slack - now)
        if self.deterministic:
            return left
        return self.time if left is None else min(self.time, left)


def run_solver(solver: Any, model: Any, limit: SolveLimit, callback: Any = None) -> Any:
    """``solver.solve(model, callback)``, timed: how far it ran past the wall seconds it was
    given goes to ``limit.record``. CP-SAT checks its time limit between steps, and some steps
    are long: measured, neighbourhood rounds given 2 s taking 2.7 to 3.6 s (1.5B V shape, p = 8,
    m = 24), so the budget keeps the largest overrun seen in reserve for later solves."""
    given = solver.parameters.max_time_in_seconds
    t = time.perf_counter()
    status = solver.solve(model, callback)
    if limit.record is not None and math.isfinite(given):
        limit.record(time.perf_counter() - t - given)
    return status


class Budget:
    """A run's time budget, and where the wall time went (:attr:`phases`).

    Wall-clock (``deterministic=False``): ``limit`` seconds of wall time from the moment the
    budget is made, for everything done under it: every CP-SAT call gets ``max_time_in_seconds``
    from what is left (:meth:`solve_limit`), and work between solves is charged by the clock
    itself. Deterministic: ``limit`` units of CP-SAT's deterministic time summed over every solve
    (:meth:`charge`): the same input, seed and workers give the same result, however loaded the
    machine; ``wall_cap`` seconds (0: none) of wall time cap it as a safety net (:attr:`capped`
    says when the cap ended it: such a result may differ between runs). :meth:`share` makes a
    budget for a part of the run that charges its parent."""

    def __init__(self, limit: float, *, deterministic: bool, wall_cap: float = 0.0,
                 clock: Callable[[], float] = time.perf_counter, parent: Budget | None = None) -> None:
        self.limit = limit
        self.deterministic = deterministic
        self.clock = clock
        self.t0 = clock()
        self.charged = 0.0  # deterministic time of the solves under this budget
        self.parent = parent
        deadline: float | None = None if deterministic else self.t0 + limit
        if deterministic and wall_cap > 0:
            deadline = self.t0 + wall_cap
        if parent is not None and parent.deadline is not None:
            deadline = parent.deadline if deadline is None else min(deadline, parent.deadline)
        self.deadline: float | None = deadline
        self.phases: dict[str, float] = parent.phases if parent is not None else {}
        self.root: Budget = parent.root if parent is not None else self
        self.overrun = 0.0  # on the root: CP-SAT's largest overrun of a wall limit in the run

    def used(self) -> float:
        """Spent so far, in the limit's unit."""
        return self.charged if self.deterministic else self.clock() - self.t0

    def wall_left(self) -> float | None:
        """Wall seconds to the deadline (None: no deadline)."""
        return None if self.deadline is None else self.deadline - self.clock()

    def left(self) -> float:
        """What is left, in the limit's unit (0 once the wall deadline has passed)."""
        wall = self.wall_left()
        if wall is not None and wall <= 0:
            return 0.0
        return max(0.0, self.limit - self.used())

    @property
    def capped(self) -> bool:
        """A deterministic budget whose wall-clock cap passed before its deterministic time."""
        wall = self.wall_left()
        return self.deterministic and wall is not None and wall <= 0 and self.charged < self.limit - 0.05

    def hold_back(self, seconds: float) -> None:
        """Keep ``seconds`` of wall time for the work after the last solve (wall-clock budgets)."""
        if not self.deterministic and seconds > 0:
            self.limit = max(0.0, self.limit - seconds)
            assert self.deadline is not None
            self.deadline -= seconds

    def share(self, fraction: float) -> Budget:
        """A budget of ``fraction`` of what is left now, charging this one."""
        left = self.left()
        return Budget(fraction * left, deterministic=self.deterministic, clock=self.clock, parent=self)

    def charge(self, dt: float) -> None:
        """Record a solve's deterministic time (here and in every parent)."""
        self.charged += dt
        if self.parent is not None:
            self.parent.charge(dt)

    def solve_limit(self, want: float | None = None) -> SolveLimit:
        """The limit of the next CP-SAT call: ``want`` (None: all) of what is left, and never past
        the deadline."""
        left = self.left()
        return SolveLimit(max(0.0, left if want is None else min(want, left)), self.deterministic, self.deadline,
                          self.root.overrun, self._record)

    def _record(self, overrun: float) -> None:
        self.root.overrun = max(self.root.overrun, overrun)

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Add the wall time of the ``with`` block to :attr:`phases` [``name``]."""
        t = time.perf_counter()
        try:
            yield
        finally:
            self.phases[name] = self.phases.get(name, 0.0) + time.perf_counter() - t


def solver_params(solver: Any, *, limit: SolveLimit, seed: int, workers: int) -> None:
    """Set a ``CpSolver``'s parameters, just before it solves: seed, workers, the time limit
    (deterministic time, capped at the wall seconds to ``limit.until``, or wall-clock seconds, at
    most to ``limit.until``) and the settings these models solve best with."""
    p = solver.parameters
    p.random_seed = seed
    p.num_workers = max(1, workers)
    wall = limit.wall_seconds(time.perf_counter())
    if limit.deterministic:
        p.max_deterministic_time = max(0.01, limit.time)
        if workers > 1:
            p.interleave_search = True
    if wall is not None:  # deterministic: the safety cap (see optimize's wall_limit)
        p.max_time_in_seconds = max(0.01, wall)
    p.log_search_progress = False
    # Probing in presolve and at the root costs seconds on these models and finds little; the
    # complete hint (the warm start) then gives the first solution at once.
    p.cp_model_probing_level = 0
    # The LP relaxation of these disjunctive models is weak (the structural bound replaces it)
    # and its wall time per unit of deterministic time is erratic (10x between seeds).
    p.linearization_level = 0


def solve_model(model: IlpModel, *, limit: SolveLimit, seed: int, workers: int,
                on_solution: Callable[[float, float], None] | None = None) -> tuple[str, list[int] | None, int, float]:
    """Solve within ``limit``; returns (status name, start times or None, best bound in model
    units, the deterministic time CP-SAT used)."""
    from ortools.sat.python import cp_model

    solver = cp_model.CpSolver()
    solver_params(solver, limit=limit, seed=seed, workers=workers)

    class _Cb(cp_model.CpSolverSolutionCallback):  # type: ignore[misc]
        def on_solution_callback(self) -> None:
            if on_solution is not None:
                on_solution(self.objective_value, self.best_objective_bound)

    status = run_solver(solver, model.model, limit, _Cb() if on_solution is not None else None)
    name = solver.status_name(status)
    used = solver.deterministic_time
    if status in (cp_model.OPTIMAL, cp_model.FEASIBLE):
        starts = [int(solver.value(v)) for v in model.start]
        return name, starts, int(math.ceil(solver.best_objective_bound - 1e-9)), used
    return name, None, model.lower, used


@dataclass
class Problem:
    """Everything the search needs, computed once."""

    program: Program  # with the effective limits
    iprog: Program  # integer times
    sc: Scaled
    objective: str
    fifo: bool
    topo: Sequence[int]  # a topological order of the program's ops
    lower: int
    horizon_slack: int


def model_value(problem: Problem, starts: Sequence[int]) -> int:
    """The objective of start times, in model units (as the model defines it)."""
    p, sc = problem.iprog, problem.sc
    ends = [s + d for s, d in zip(starts, sc.dur, strict=True)]
    if problem.objective == "makespan":
        return max(ends)
    out = 0
    for r in range(p.num_ranks):
        on = [o.id for o in p.ops if o.rank == r]
        if on:
            out = max(out, max(ends[k] for k in on) - min(starts[k] for k in on))
    return out


def horizon(problem: Problem, upper: int) -> int:
    """A horizon no solution with objective <= ``upper`` needs to exceed, so proofs stay valid.

    Makespan: ``upper`` itself. Span: shift any schedule left across every time gap in which no
    rank is between its first and last op by the gap minus the largest latency (every edge across
    the gap still has its latency); then the ranks' spans (each <= ``upper``) plus at most one
    latency between them cover the whole: ``R * upper + R * max latency``."""
    if problem.objective == "makespan":
        return upper
    return problem.program.num_ranks * upper + problem.horizon_slack
