"""Item 7 of the optimizer's bounds (relax.py): relaxations keeping two ranks exact on the first
microbatches. Every figure they give, and the bound they make, is checked against exact optima
from a CP-SAT model written here (apart from the optimizer's: no bound fed to it, no relaxation).
"""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schedlang import testing as sst
from schedlang.ir import Program
from schedlang.schedulers.ilp import optimize
from schedlang.schedulers.ilp.bounds import lower_bound
from schedlang.schedulers.ilp.cases import pipeline
from schedlang.schedulers.ilp.relax import (
    RelaxStats,
    applies,
    every_other,
    first_microbatches,
    windows,
)


def exact(prog: Program, scale: int, *, fifo: bool, goal: tuple[str, int, int] = ("span", -1, 0),
          time_limit: float = 20.0) -> tuple[str, float]:
    """The least ``goal`` over every valid schedule of ``prog`` under its memory limit: ``("span",
    -1, 0)`` the span cost (the largest rank span); ``("span", r, 0)`` rank ``r``'s span;
    ``("gap", a, b)`` ``start[b] - start[a]``. Start times on a ``1/scale`` grid, every edge, one op
    at a time on every rank, memory as a reservoir on every rank, FIFO per (kind, stage) only if
    ``fifo``. Returns (status, value)."""
    from ortools.sat.python import cp_model

    def units(x: float) -> int:
        assert abs(x * scale - round(x * scale)) < 1e-6, (x, scale)
        return round(x * scale)

    m = cp_model.CpModel()
    horizon = units(sum(o.time for o in prog.ops) + sum(e.latency for e in prog.edges))
    start = [m.new_int_var(0, horizon, f"s{o.id}") for o in prog.ops]
    for e in prog.edges:
        m.add(start[e.dst] >= start[e.src] + units(prog.ops[e.src].time + e.latency))
    if fifo:
        chains: dict[tuple[str, int], list[int]] = {}
        for o in sorted(prog.ops, key=lambda o: o.mb):
            chains.setdefault((o.kind, o.stage), []).append(o.id)
        for chain in chains.values():
            for a, c in zip(chain, chain[1:], strict=False):
                m.add(start[c] >= start[a] + units(prog.ops[a].time))
    limits = prog.mem_limit or (math.inf,) * prog.num_ranks
    obj = m.new_int_var(0, horizon, "obj")
    for r in range(prog.num_ranks):
        on = [o for o in prog.ops if o.rank == r]
        m.add_no_overlap([m.new_fixed_size_interval_var(start[o.id], units(o.time), f"i{o.id}") for o in on])
        if math.isfinite(limits[r]):
            m.add_reservoir_constraint([start[o.id] for o in on], [round(o.mem * 1000) for o in on], 0,
                                       math.floor(limits[r] * 1000 + 1e-6))
        lo, hi = m.new_int_var(0, horizon, f"lo{r}"), m.new_int_var(0, horizon, f"hi{r}")
        m.add_min_equality(lo, [start[o.id] for o in on])
        m.add_max_equality(hi, [start[o.id] + units(o.time) for o in on])
        if goal[0] == "span" and goal[1] in (-1, r):
            m.add(obj >= hi - lo)
    if goal[0] == "gap":
        m.add(obj == start[goal[2]] - start[goal[1]])
    m.minimize(obj)
    solver = cp_model.CpSolver()
    solver.parameters.max_deterministic_time = time_limit
    solver.parameters.num_workers = 1
    status = solver.solve(m)
    return solver.status_name(status), solver.objective_value / scale


def check_figures(prog: Program, scale: int, seconds: float = 1.0, most: int = 3) -> tuple[float, float, float]:
    """Item 7's figures on ``prog`` (every partner): the ``most`` largest windows' figures that
    beat items 5 and 6 on their window, each against the exact least figure of the window; and
    the bound before and after against the exact optimum. Returns (old bound, new bound, optimum)."""
    from schedlang.schedulers.ilp.bounds import rank_bound
    from schedlang.schedulers.ilp.relax import _lb

    limits = prog.mem_limit or (math.inf,) * prog.num_ranks
    got = windows(prog, limits, seconds=seconds, partners=every_other(prog), deterministic=True)
    for r, w in got.items():
        f = prog.ops[_first_forward(prog, r)]
        for k in sorted(w.gaps, reverse=True)[:most]:
            q = first_microbatches(prog, k + 1)
            if w.gaps[k] <= _lb(q, r, limits[r], {}, k) + 1e-9:
                continue  # item 5 gives it already
            a, b = q.find(f.kind, f.stage, 0), q.find(f.kind, f.stage, k)
            assert a is not None and b is not None
            status, best = exact(q, scale, fifo=True, goal=("gap", a.id, b.id))
            assert status in ("OPTIMAL", "FEASIBLE")  # FEASIBLE: best is a schedule's, above the least
            assert w.gaps[k] <= best + 1e-6, (r, "gap", k, w.gaps[k], best)
        for n in sorted(w.spans, reverse=True)[:most]:
            q = first_microbatches(prog, n)
            if w.spans[n] <= rank_bound(q, r, limits[r], True).span + 1e-9:
                continue
            status, best = exact(q, scale, fifo=True, goal=("span", r, 0))
            assert status in ("OPTIMAL", "FEASIBLE")
            assert w.spans[n] <= best + 1e-6, (r, "span", n, w.spans[n], best)
    old = lower_bound(prog, limits, "span").value
    new = lower_bound(prog, limits, "span", got).value
    assert new >= old - 1e-9
    status, best = exact(prog, scale, fifo=True)
    assert status == "OPTIMAL"
    assert new <= best + 1e-6, (old, new, best)
    return old, new, best


def _first_forward(prog: Program, r: int) -> int:
    """The op id of rank ``r``'s first-chunk ``F[s, 0]`` (the forwards item 7's gaps measure)."""
    from schedlang.schedulers.ilp.bounds import _rank_shape

    shapes = _rank_shape(prog, r, True)
    assert shapes is not None
    return shapes[0].f


def test_one_exact_rank_beats_the_pacing_dp() -> None:
    """Uniform costs, p = 4, limit 0.75 p*M_B, rank 0 alone exact: its fifth forward starts at
    least 12.6 after its first, where item 5's DP gives 11.6 (it counts memory states no order of
    F, B and W reaches); CP-SAT's least over every valid schedule of five microbatches is 12.6."""
    from schedlang.schedulers.ilp.relax import _lb

    prog = pipeline(4, 5, "uniform", 0.75)
    limits = prog.mem_limit or ()
    got = windows(prog, limits, seconds=20, ranks=[0], deterministic=True)
    assert _lb(prog, 0, limits[0], {}, 4) == pytest.approx(11.6)
    assert got[0].gaps[4] == pytest.approx(12.6)
    f0, f4 = prog.find("F", 0, 0), prog.find("F", 0, 4)
    assert f0 is not None and f4 is not None
    assert exact(prog, 10, fifo=True, goal=("gap", f0.id, f4.id)) == ("OPTIMAL", pytest.approx(12.6))


@pytest.mark.slow
def test_two_exact_ranks_prove_the_optimum_uniform_p4_m8() -> None:
    """Uniform costs (T = 1, comm 0.1, M_W = M_B / 2), p = 4, m = 8, limit 0.75 p*M_B: items 1 to 6
    give 31.8; with ranks 0 and 2 exact (1 and 3 free), rank 0's eighth forward starts at least 23
    after its first (item 5: 22.2; rank 2 cannot run the F and the B that rank 0's tightest
    rhythm asks of it at the same moments), and its span is at least 32.6, which CP-SAT proves
    optimal (the optimizer with this bound proves it at once)."""
    prog = pipeline(4, 8, "uniform", 0.75)
    limits = prog.mem_limit or ()
    assert lower_bound(prog, limits, "span").value == pytest.approx(31.8)
    stats = RelaxStats()
    got = windows(prog, limits, seconds=60, ranks=[0], partners=lambda r: [2], deterministic=True, stats=stats)
    assert got[0].gaps[7] == pytest.approx(23.0) and got[0].spans[8] == pytest.approx(32.6)
    assert any(ex == (0, 2) and kind == "gap" and k == 7 for _, ex, kind, k, _, _ in stats.log)
    b = lower_bound(prog, limits, "span", got)
    assert b.value == pytest.approx(32.6) and "a relaxation keeping it" in b.describe()
    from schedlang.schedulers.ilp.solve import warm_starts

    assert all(c.value >= 32.6 - 1e-9 for c in warm_starts(prog, "span"))


def test_the_optimizer_runs_it_as_a_phase_when_asked() -> None:
    """``relax`` (seconds) runs item 7 as the phase ``relax`` (off by default); its bound is at
    least the structural one and at most the result; a negative value is refused, naming it."""
    from schedlang.schedulers.ilp.options import ArgError

    prog = pipeline(4, 5, "uniform", 0.75)  # the best heuristic (23) is above the bound (22.2)
    _, on = optimize(prog, time_limit=10, relax=2, deterministic=True)
    _, off = optimize(prog, time_limit=5, deterministic=True)
    assert "relax" in on.phases and "relax" not in off.phases
    assert off.bound - 1e-9 <= on.bound <= on.objective + 1e-9
    assert on.objective == pytest.approx(22.2) and on.status == "OPTIMAL"
    with pytest.raises(ArgError, match="relax must be 0"):
        optimize(prog, relax=-1.0)


@pytest.mark.slow
@pytest.mark.parametrize(("profile", "p", "m", "factor"), [
    ("uniform", 2, 3, 0.5), ("uniform", 3, 4, 0.5), ("uniform", 3, 4, 0.75), ("uniform", 4, 5, 0.75)])
def test_figures_and_bound_never_exceed_the_optimum_grid(profile: str, p: int, m: int, factor: float) -> None:
    """The F/B/W pipeline, small p and m, tight limits: every figure at most its window's exact
    least value, the bound at most the exact optimum."""
    prog = pipeline(p, m, profile, factor)
    check_figures(prog, 10 if profile == "uniform" else 1000)


@pytest.mark.slow
@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sst.programs(max_ranks=3, max_stages_per_rank=2, max_microbatches=4, user_kind=False),
       st.sampled_from([0.0, 0.25, 0.5, 1.0]))
def test_figures_and_bound_never_exceed_the_optimum(prog: Program, frac: float) -> None:
    """Random pipelines (uneven costs, comm, V, interleaved and random placements), limits from one
    microbatch's peak to a heuristic's: the same checks."""
    from schedlang.schedulers.ilp.solve import peaks, warm_starts

    if not applies(prog) or prog.num_microbatches < 2:
        return
    lo = max(sum(max(0.0, o.mem) for o in prog.ops if o.rank == r and o.mb == 0) for r in range(prog.num_ranks))
    hi = max(max(peaks(prog, c.orders)) for c in warm_starts(prog, "span"))
    limit = lo + frac * (hi - lo)
    limited = replace(prog, mem_limit=(limit,) * prog.num_ranks)
    check_figures(limited, 4)
