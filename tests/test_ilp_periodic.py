"""The optimizer's periodic start (schedlang/schedulers/ilp/periodic.py): the steady state of a
long pipeline under a tight memory limit, searched directly.

Budget: about half a minute on 2 cores (deterministic time limits of a few seconds).
"""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from schedlang import testing as sst
from schedlang.ir import Program
from schedlang.schedulers.ilp import optimize, periodic
from schedlang.schedulers.ilp.cases import pipeline
from schedlang.schedulers.ilp.cpsat import Budget, SolveLimit
from schedlang.schedulers.ilp.model import fifo_is_safe, scale_program
from schedlang.schedulers.ilp.solve import effective_limits, peaks, sequential_orders, warm_starts
from schedlang.simulate import memory_profile, simulate
from schedlang.verify import verify


def _search(prog: Program, time_limit: float) -> periodic.Periodic | None:
    limits = effective_limits(prog, None)
    prog = replace(prog, mem_limit=limits, schedule=None)
    sc = scale_program(prog, limits)
    topo = prog.topo()
    solves: list[tuple[SolveLimit, float]] = []  # (limit given, deterministic time used) per solve
    solve = periodic._solve

    def traced(*args: Any) -> Any:
        got, name, used = solve(*args)
        solves.append((args[5], used))
        return got, name, used

    periodic._solve = traced
    budget = Budget(time_limit, deterministic=True)
    try:
        got = periodic.search(prog, sc, "span", topo, budget=budget)
    finally:
        periodic._solve = solve
    # every solve gets at most what is left (deterministic time), and the search charges what
    # CP-SAT used. CP-SAT may overrun a solve's deterministic limit (measured on cases Hypothesis
    # found: 0.108 s used of 0.075 s, 0.908 s of 0.740 s), so the total may too, by that last
    # solve's overrun only
    before = 0.0
    for limit, used in solves:
        assert limit.deterministic and limit.until is None
        assert 0 < limit.time <= min(periodic.SOLVE_TIME, time_limit - before) + 1e-9
        before += used
    assert budget.charged == pytest.approx(before) and (got is None or got.used <= budget.charged + 1e-9)
    assert before - solves[-1][1] <= time_limit + 1e-9 if solves else budget.charged == 0.0
    return got


@pytest.mark.slow
def test_steady_state_beats_every_heuristic_under_a_tight_limit() -> None:
    """Uniform costs, p = 4, m = 64, limit 0.75 p*M_B (three forwards fit on rank 0): the greedy
    heuristics settle at 0.25 bubble or worse; a periodic schedule does better, and its period
    per microbatch is never below the busiest rank's work per microbatch (3 time units)."""
    prog = pipeline(4, 64, "uniform", 0.75)
    best_heuristic = min(c.value for c in warm_starts(prog, "span"))
    got = _search(prog, 10.0)
    assert got is not None
    sched = prog.with_orders(got.orders)
    verify(sched)
    sim = simulate(sched)
    assert got.value == pytest.approx(sim.cost)
    assert got.value < 0.96 * best_heuristic
    assert got.period / got.k >= 3.0 - 1e-9
    assert got.orders.origin == f"periodic(K={got.k})"


@pytest.mark.slow
def test_optimize_starts_from_the_periodic_schedule_and_reports_it() -> None:
    prog = pipeline(4, 24, "uniform", 0.75)
    orders, rep = optimize(prog, time_limit=4, deterministic=True)
    assert rep.warm_start.startswith("periodic(K=")
    heuristics = [v for k, v in rep.candidates.items() if not k.startswith("periodic")]
    assert rep.objective <= rep.warm_objective + 1e-9 < min(heuristics)
    verify(prog.with_orders(orders))
    _, off = optimize(prog, time_limit=4, deterministic=True, periodic=False)
    assert not off.warm_start.startswith("periodic")
    assert not any(k.startswith("periodic") for k in off.candidates)


@st.composite
def limited_programs(draw: st.DrawFn) -> Program:
    """Random pipelines (uneven costs, comm, interleaved and V placements, user kinds) with a
    uniform memory limit between the least feasible one and 2.5 times it."""
    prog = draw(sst.programs(max_microbatches=8))
    need = max(peaks(prog, sequential_orders(prog)))
    factor = draw(st.floats(1.0, 2.5))
    return replace(prog, mem_limit=(need * factor,) * prog.num_ranks)


@pytest.mark.slow
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(limited_programs())
def test_unrolled_periodic_schedules_are_valid(prog: Program) -> None:
    """Whatever it returns verifies, stays under the limit on every rank, and is worth what the
    simulator says."""
    assume(fifo_is_safe(prog) and prog.num_microbatches > 1)
    got = _search(prog, 1.0)
    if got is None:
        return
    sched = prog.with_orders(got.orders)
    verify(sched)
    limit = (prog.mem_limit or (math.inf,))[0]
    for r in range(prog.num_ranks):
        assert max([0.0, *memory_profile(sched, r)]) <= limit * (1 + 1e-9)
    assert got.value == pytest.approx(simulate(sched).cost)


@pytest.mark.slow
def test_command_line_reports_the_starts_and_can_skip_the_periodic_one(capsys: pytest.CaptureFixture[str]) -> None:
    from schedlang.cli import main

    example = str(Path(__file__).resolve().parent.parent / "examples" / "zb-h1.sched")
    base = ["optimize", example, "--set", "p=4", "--set", "m=16", "--set", "tc=0.1", "--set", "tf=1.0",
            "--set", "tb=1.0", "--set", "tw=1.0", "--set", "mem_limit=3.0", "--time-limit", "2", "--quiet"]
    assert main(base) == 0
    out = capsys.readouterr().out
    starts = next(line for line in out.splitlines() if line.startswith("starts: "))
    assert starts.startswith("starts: periodic(K=") and "list" in starts
    assert main([*base, "--no-periodic"]) == 0
    out = capsys.readouterr().out
    assert "periodic" not in out and "starts: list" in out


def _bisection_trace(prog: Program, replace_call: int, status: str) -> list[tuple[int, int, bool, str]]:
    """Run the search with K = 1 only, answering the ``replace_call``-th fixed-period solve with
    ``status`` and no schedule (as CP-SAT does when its time runs out, or when it proves the period
    infeasible); every other solve is real. Returns (period, K, shorten, status) per solve."""
    limits = effective_limits(prog, None)
    prog = replace(prog, mem_limit=limits, schedule=None)
    sc = scale_program(prog, limits)
    calls: list[tuple[int, int, bool, str]] = []
    solve, ks = periodic._solve, periodic.KS

    def scripted(program: Program, t: Any, P: int, K: int, Q: int, limit: SolveLimit, seed: int,
                 hint: Any = None, shorten: bool = False) -> Any:
        if len(calls) == replace_call:
            calls.append((P, K, shorten, status))
            return None, status, 0.01
        got, name, used = solve(program, t, P, K, Q, limit, seed, hint, shorten)
        calls.append((P, K, shorten, name))
        return got, name, used

    periodic._solve, periodic.KS = scripted, (1,)  # type: ignore[assignment]
    try:
        periodic.search(prog, sc, "span", prog.topo(), budget=Budget(20.0, deterministic=True))
    finally:
        periodic._solve, periodic.KS = solve, ks  # type: ignore[assignment]
    return calls


def test_a_timed_out_period_does_not_move_the_bisection() -> None:
    """Issue 14: a fixed-period solve that runs out of time (UNKNOWN) says nothing about the
    period. It used to count as infeasible: the bisection raised its lower end to that period and
    went on above it. Now the bisection stops there (keeping its best schedule); a proved
    INFEASIBLE still moves the lower end, so the search goes on above it."""
    prog = pipeline(4, 16, "uniform", 0.75)
    real = _bisection_trace(prog, -1, "")  # no answer replaced
    first_ok = next(i for i, c in enumerate(real) if c[3] in ("OPTIMAL", "FEASIBLE"))
    # the call after the first schedule is the bisection's first midpoint, below that schedule
    mid = first_ok + 1
    assert real[mid][0] < real[first_ok][0] and not real[mid][2]

    timed_out = _bisection_trace(prog, mid, "UNKNOWN")
    assert timed_out[:mid] == real[:mid]
    after = timed_out[mid + 1:]
    # only the closing "shorten" solve at the best period found before the timeout follows
    assert [c[:3] for c in after] == [(real[first_ok][0], 1, True)]

    infeasible = _bisection_trace(prog, mid, "INFEASIBLE")
    nxt = infeasible[mid + 1]
    assert not nxt[2] and real[mid][0] < nxt[0] < real[first_ok][0]  # bisects above the proved end
