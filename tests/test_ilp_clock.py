"""The optimizer's time limit: a wall-clock budget for the whole run, or (a switch) CP-SAT's
deterministic time; progress as it goes.

What is tested is what the code controls: the limit each CP-SAT call is given against what is left
of the budget when it is made, the budget's arithmetic on a scripted clock, the report's mode and
the progress events. No assertion depends on how fast this machine is.

Budget: about half a minute on 2 cores (time limits of a few seconds).
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import pytest

from schedlang.schedulers.ilp import optimize
from schedlang.schedulers.ilp.cases import pipeline
from schedlang.schedulers.ilp.cpsat import Budget, ProgressEvent
from schedlang.verify import verify


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_wall_budget_gives_each_solve_what_is_left() -> None:
    clock = FakeClock()
    b = Budget(10.0, deterministic=False, clock=clock)
    assert b.solve_limit(2.0).time == 2.0 and b.solve_limit().time == 10.0
    lim = b.solve_limit(2.0)
    assert not lim.deterministic and lim.until == 110.0
    # the wall seconds are counted when the solve starts: time spent building its model counts
    assert lim.wall_seconds(100.0) == 2.0 and lim.wall_seconds(109.5) == 0.5 and lim.wall_seconds(111.0) == 0.0
    clock.now += 9.0
    assert b.left() == pytest.approx(1.0) and b.solve_limit(2.0).time == pytest.approx(1.0)
    b.charge(5.0)  # deterministic time says nothing about the wall clock
    assert b.left() == pytest.approx(1.0)
    b.hold_back(0.5)  # kept for the final checks
    assert b.left() == pytest.approx(0.5) and b.solve_limit().time == pytest.approx(0.5)
    clock.now += 1.0
    assert b.left() == 0.0 and b.solve_limit(2.0).time == 0.0 and not b.capped


def test_an_overrun_is_kept_in_reserve_for_later_solves() -> None:
    """CP-SAT can run past a wall limit (it checks the clock between steps): the largest overrun
    seen, in any part of the run, is taken off the deadline of every later solve."""
    clock = FakeClock()
    b = Budget(10.0, deterministic=False, clock=clock)
    part = b.share(0.5)
    lim = part.solve_limit(2.0)
    assert lim.slack == 0.0 and lim.record is not None
    lim.record(0.8)
    lim.record(0.3)
    later = b.solve_limit()
    assert later.slack == 0.8 and later.wall_seconds(clock.now) == pytest.approx(9.2)
    assert later.wall_seconds(clock.now + 9.5) == 0.0
    assert b.solve_limit(2.0).wall_seconds(clock.now) == 2.0  # far from the deadline: the full 2 s


def test_a_share_charges_its_parent_and_ends_with_it() -> None:
    clock = FakeClock()
    b = Budget(8.0, deterministic=False, clock=clock)
    clock.now += 4.0
    part = b.share(0.25)  # a quarter of the 4 s left
    assert part.left() == pytest.approx(1.0) and part.deadline == pytest.approx(105.0)
    clock.now += 1.0
    assert part.left() == 0.0 and b.left() == pytest.approx(3.0)
    d = Budget(8.0, deterministic=True, wall_cap=20.0, clock=clock)
    dpart = d.share(0.25)
    dpart.charge(1.5)
    assert d.charged == 1.5 and d.left() == pytest.approx(6.5) and dpart.left() == pytest.approx(0.5)
    assert dpart.deadline == d.deadline  # the parent's wall cap holds for the part


def test_deterministic_budget_counts_solver_time_under_a_wall_cap() -> None:
    clock = FakeClock()
    b = Budget(6.0, deterministic=True, wall_cap=30.0, clock=clock)
    b.charge(2.5)
    clock.now += 12.0  # wall time passing does not count ...
    lim = b.solve_limit(5.0)
    assert lim.deterministic and lim.time == pytest.approx(3.5) and lim.wall_seconds(clock.now) == pytest.approx(18.0)
    b.hold_back(1.0)  # ... and nothing is held back from deterministic time
    assert b.left() == pytest.approx(3.5)
    clock.now += 18.0  # ... until the cap passes
    assert b.left() == 0.0 and b.capped
    uncapped = Budget(6.0, deterministic=True, clock=clock)
    clock.now += 1000.0
    assert uncapped.deadline is None and uncapped.left() == 6.0 and uncapped.solve_limit().wall_seconds(clock.now) is None


def _record_solves(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """Wrap every CP-SAT solve (the optimizer's and the periodic search's): when it was called and
    the limits it was given, and the deterministic time it used."""
    from ortools.sat.python import cp_model

    calls: list[dict[str, Any]] = []
    solve = cp_model.CpSolver.solve

    def traced(self: Any, *args: Any, **kwargs: Any) -> Any:
        p = self.parameters
        row = {"at": time.perf_counter(), "wall": p.max_time_in_seconds, "det": p.max_deterministic_time,
               "has_det": math.isfinite(p.max_deterministic_time), "has_wall": math.isfinite(p.max_time_in_seconds)}
        out = solve(self, *args, **kwargs)
        row["used"] = self.deterministic_time
        calls.append(row)
        return out

    monkeypatch.setattr(cp_model.CpSolver, "solve", traced)
    return calls


def test_every_solve_of_a_wall_clock_run_ends_by_the_deadline(monkeypatch: pytest.MonkeyPatch) -> None:
    """Uniform costs, p = 4, m = 24, limit 0.75 p*M_B: heuristics, bounds, the periodic search
    (many small solves), the full solve and neighbourhood rounds all run. Each CP-SAT call is given
    wall seconds that end before the run's deadline (start + time limit, less what is held back
    for the final checks), and no deterministic limit."""
    calls = _record_solves(monkeypatch)
    prog = pipeline(4, 24, "uniform", 0.75)
    t0 = time.perf_counter()
    orders, rep = optimize(prog, time_limit=3.0)
    verify(prog.with_orders(orders))
    assert len(calls) > 3 and any(c["wall"] > 0.05 for c in calls)
    for c in calls:
        assert c["has_wall"] and not c["has_det"]
        assert c["at"] + c["wall"] <= t0 + 3.0 + 0.01  # 0.01: the solver's floor on a limit
    assert rep.clock == "wall" and rep.time_limit == 3.0 and "wall-clock limit 3s" in rep.summary()
    assert not rep.wall_capped
    assert {"heuristics", "bounds", "periodic", "model", "search", "finish"} <= set(rep.phases)
    assert rep.deterministic_time == pytest.approx(sum(c["used"] for c in calls))


def test_a_deterministic_run_gives_each_solve_what_is_left_of_its_time(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _record_solves(monkeypatch)
    prog = pipeline(4, 24, "uniform", 0.75)
    t0 = time.perf_counter()
    _, rep = optimize(prog, time_limit=3.0, deterministic=True, wall_limit=60.0)
    used = 0.0
    assert len(calls) > 3
    for c in calls:
        assert c["has_det"] and 0 < c["det"] <= max(0.01, 3.0 - used) + 1e-9
        assert c["at"] + c["wall"] <= t0 + 60.0 + 0.01  # the wall cap
        used += c["used"]
    assert rep.clock == "deterministic" and "deterministic time limit 3: reproducible" in rep.summary()
    assert rep.deterministic_time == pytest.approx(used)


def test_progress_reaches_a_callback_as_it_goes() -> None:
    prog = pipeline(4, 12, "1.5B", 2.0)
    events: list[ProgressEvent] = []
    _, rep = optimize(prog, time_limit=2.0, progress=events.append)
    whats = [e.what for e in events]
    assert whats[0] == "heuristics" and whats[1] == "bounds" and whats[-1] == rep.status.lower()
    assert any(w.startswith("start:") for w in whats)
    assert [e.elapsed for e in events] == sorted(e.elapsed for e in events)
    assert events[-1].objective == rep.objective and events[-1].bound == rep.bound
    assert events[0].objective is None and events[0].text().endswith("heuristics")
    assert "objective" in events[-1].text() and "gap" in events[-1].text()


def test_the_command_prints_progress_on_stderr_and_says_which_clock_ran(capsys: pytest.CaptureFixture[str]) -> None:
    from schedlang.cli import main

    example = str(Path(__file__).resolve().parent.parent / "examples" / "zb-h1.sched")
    base = ["optimize", example, "--set", "p=4", "--set", "m=8", "--time-limit", "1"]
    assert main(base) == 0
    out, err = capsys.readouterr()
    lines = [x for x in err.splitlines() if x.startswith("ilp:")]
    assert lines[0].split()[2] == "heuristics" and any(" bounds" in x for x in lines)
    assert "(wall-clock limit 1s)" in out and "ilp:" not in out.splitlines()[1:]
    assert main([*base, "--deterministic", "--quiet"]) == 0
    out, err = capsys.readouterr()
    assert "(deterministic time limit 1: reproducible)" in out and "ilp:" not in err
    assert main([*base, "--wall-limit", "5"]) == 1
    err = capsys.readouterr().err
    assert "wall_limit caps a deterministic run" in err and "Traceback" not in err
    assert main([*base, "--relax", "-1"]) == 1
    err = capsys.readouterr().err
    assert "relax must be 0 (off) or positive seconds" in err and "Traceback" not in err
    assert main([*base, "--relax", "0.5", "--quiet", "--json"]) == 0
    assert "relax" in json.loads(capsys.readouterr().out)["phases"]  # the option reached the optimizer


def test_a_budget_spent_before_the_search_returns_the_best_start_and_says_why(monkeypatch: pytest.MonkeyPatch) -> None:
    """A limit shorter than what is held back for the final checks (0.1 s at least) leaves
    nothing to search with: no model is built, no solve runs, the best heuristic comes back
    verified, and the summary says what took the time."""
    calls = _record_solves(monkeypatch)
    prog = pipeline(4, 8, "uniform", 0.75)
    orders, rep = optimize(prog, time_limit=0.001)
    verify(prog.with_orders(orders))
    assert calls == [] and "model" not in rep.phases and "periodic" not in rep.phases
    assert rep.status == "WARM_START" and rep.objective == min(rep.candidates.values())
    assert "over it: loading, heuristics and bounds" in rep.summary()


def _built_and_copied(prog: Any, upper_value: float | None, fixed_ranks: tuple[int, ...]) -> tuple[Any, Any, int, int]:
    """The model built with bounds, fixed orders and a hint, the same from a copy
    (``restricted``), the structural lower bound and the upper bound used (model units)."""
    from dataclasses import replace

    from schedlang.schedulers.ilp.bounds import lower_bound
    from schedlang.schedulers.ilp.model import build_model, fifo_is_safe, restricted, scale_program
    from schedlang.schedulers.ilp.solve import effective_limits, integer_program, warm_starts
    from schedlang.simulate import simulate

    limits = effective_limits(prog, None)
    prog = replace(prog, mem_limit=limits, schedule=None)
    sc = scale_program(prog, limits)
    iprog = integer_program(prog, sc)
    warm = warm_starts(prog, "span")[0]
    hint = [round(x) for x in simulate(iprog.with_orders(warm.orders)).start]
    upper = round((upper_value or warm.value) * sc.scale)
    fixed = {r: sorted((o.id for o in prog.ops if o.rank == r and o.mb >= prog.num_microbatches - 2),
                       key=lambda k: hint[k]) for r in fixed_ranks}
    lower = math.floor(lower_bound(iprog, limits, "span").value + 1e-6)  # as the search uses it
    kw: dict[str, Any] = dict(objective="span", horizon=10 * upper, fifo=fifo_is_safe(prog))
    built = build_model(iprog, sc, upper=upper, lower=lower, hint=hint, fixed_order=fixed, **kw)
    base = build_model(iprog, sc, upper=upper, lower=lower, **kw)
    copied = restricted(base, upper=upper, lower=lower, hint=hint, fixed_order=fixed)
    return built, copied, lower, upper


def test_a_copied_model_proves_what_a_built_one_proves() -> None:
    """The search builds its model once and copies it for each solve (``restricted``). Uniform
    costs, p = 4, m = 8, limit 2p*M_B, bounded above by the optimum 24.2: the structural bound is
    below it, so CP-SAT must prove it, and does so from the copy as from the built model."""
    from schedlang.schedulers.ilp.cpsat import SolveLimit, solve_model

    built, copied, lower, upper = _built_and_copied(pipeline(4, 8, "uniform", 2.0), 24.2, ())
    got = [solve_model(mdl, limit=SolveLimit(20.0, True), seed=0, workers=1) for mdl in (built, copied)]
    assert [g[0] for g in got] == ["OPTIMAL", "OPTIMAL"]
    assert lower < got[0][2] == got[1][2] == upper == 242  # the same optimum, proved above the bound


@pytest.mark.parametrize(("profile", "p", "m", "limit"), [("uniform", 3, 4, 0.75), ("1.5B", 2, 4, 1.5)])
def test_a_copied_model_is_complete(profile: str, p: int, m: int, limit: float) -> None:
    """A copy with fixed orders and a hint: the hint covers every variable the built model's does
    (the cumulative's sizes too: the 1.5B case uses the cumulative memory model, the uniform one
    the reservoir), and both solve to the same value."""
    from schedlang.schedulers.ilp.cpsat import SolveLimit, solve_model

    prog = pipeline(p, m, profile, limit)
    built, copied, _, _ = _built_and_copied(prog, None, (0,))
    assert len(copied.model.proto.solution_hint.vars) == len(built.model.proto.solution_hint.vars) > len(prog.ops)
    assert bool(copied.holds) == (profile == "1.5B") and len(copied.holds) == len(built.holds)
    got = [solve_model(mdl, limit=SolveLimit(20.0, True), seed=0, workers=1) for mdl in (built, copied)]
    assert [g[0] for g in got] == ["OPTIMAL", "OPTIMAL"] and got[0][2] == got[1][2]
