"""The CP-SAT plumbing the optimizer's searches share (a leaf: it imports no other search module).

:class:`Problem` (everything a search needs, computed once), the model-unit objective and horizon,
solver parameters and one solve, the FIFO relabelling of start times, and the progress lines.
:mod:`.solve` (the pass), :mod:`.lns` (the neighbourhood search) and :mod:`.periodic` (the
steady-state search) import it; it imports only the model and the IR. ortools is imported when a
solve runs.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
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


class Progress:
    """Progress lines on a stream (stderr by default): status, objective, bound, gap, time."""

    def __init__(self, stream: TextIO | None, t0: float) -> None:
        self.stream = stream
        self.t0 = t0

    def line(self, what: str, obj: float, bound: float) -> None:
        if self.stream is None:
            return
        gap = (obj - bound) / obj if obj > 0 else 0.0
        self.stream.write(f"ilp: {time.perf_counter() - self.t0:7.1f}s {what:<10} objective {obj:.6g} "
                          f"bound {bound:.6g} gap {100 * gap:.2f}%\n")
        self.stream.flush()


def solver_params(solver: Any, *, time_limit: float, seed: int, workers: int, deterministic: bool,
                  wall: float | None = None) -> None:
    """Set a ``CpSolver``'s parameters: seed, workers, the time limit (deterministic time, capped
    at ``wall`` seconds, or wall-clock seconds) and the settings these models solve best with."""
    p = solver.parameters
    p.random_seed = seed
    p.num_workers = max(1, workers)
    if deterministic:
        p.max_deterministic_time = max(0.01, time_limit)
        if workers > 1:
            p.interleave_search = True
        if wall is not None:  # the safety cap (see optimize's wall_limit)
            p.max_time_in_seconds = max(0.01, wall)
    else:
        p.max_time_in_seconds = max(0.01, time_limit)
    p.log_search_progress = False
    # Probing in presolve and at the root costs seconds on these models and finds little; the
    # complete hint (the warm start) then gives the first solution at once.
    p.cp_model_probing_level = 0
    # The LP relaxation of these disjunctive models is weak (the structural bound replaces it)
    # and its wall time per unit of deterministic time is erratic (10x between seeds).
    p.linearization_level = 0


def solve_model(model: IlpModel, *, time_limit: float, seed: int, workers: int, deterministic: bool,
                on_solution: Callable[[float, float], None] | None = None, wall: float | None = None) -> tuple[str, list[int] | None, int, float]:
    """Solve; returns (status name, start times or None, best bound in model units, time used in the
    limit's unit: deterministic time, or wall seconds when not ``deterministic``). ``wall`` caps
    the wall-clock seconds of a deterministic solve."""
    from ortools.sat.python import cp_model

    solver = cp_model.CpSolver()
    solver_params(solver, time_limit=time_limit, seed=seed, workers=workers, deterministic=deterministic,
                  wall=wall)

    class _Cb(cp_model.CpSolverSolutionCallback):  # type: ignore[misc]
        def on_solution_callback(self) -> None:
            if on_solution is not None:
                on_solution(self.objective_value, self.best_objective_bound)

    status = solver.solve(model.model, _Cb() if on_solution is not None else None)
    name = solver.status_name(status)
    used = solver.deterministic_time if deterministic else solver.wall_time
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
