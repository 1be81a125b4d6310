"""The optimizer and the bounds against brute force over every per-rank order (tiny pipelines).

Brute force enumerates every combination of per-rank orders that respects the dependencies on
each rank, drops those that deadlock or exceed the memory limit, and simulates the rest: its
minimum is the true optimum of the objective as the simulator measures it. No FIFO assumption.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schedlang.api import loads
from schedlang.ir import Orders, Program
from schedlang.schedulers.ilp import optimize
from schedlang.schedulers.ilp.bounds import lower_bound
from schedlang.simulate import DeadlockError, memory_profile, simulate

SRC = 'import "std:fbw"\nparam p = 2\nparam m = 2\nranks p\nmicrobatches m\n'


def _ancestors(prog: Program) -> list[set[int]]:
    preds = prog.preds()
    memo: list[set[int] | None] = [None] * len(prog.ops)

    def anc(k: int) -> set[int]:
        got = memo[k]
        if got is None:
            got = set()
            for s, _ in preds[k]:
                got |= {s} | anc(s)
            memo[k] = got
        return got

    return [anc(k) for k in range(len(prog.ops))]


def _extensions(ids: list[int], anc: list[set[int]]) -> Iterator[tuple[int, ...]]:
    """Every order of ``ids`` that puts each op after its ancestors among ``ids``."""
    if not ids:
        yield ()
        return
    for k in ids:
        if not any(a in ids for a in anc[k]):
            rest = [x for x in ids if x != k]
            for tail in _extensions(rest, anc):
                yield (k, *tail)


def brute_force(prog: Program, objective: str) -> float:
    anc = _ancestors(prog)
    per_rank = [list(_extensions([o.id for o in prog.ops if o.rank == r], anc)) for r in range(prog.num_ranks)]
    limits = prog.mem_limit or (math.inf,) * prog.num_ranks
    best = math.inf
    for combo in itertools.product(*per_rank):
        sched = prog.with_orders(Orders(tuple(tuple((k,) for k in seq) for seq in combo)))
        if any(max(memory_profile(sched, r)) > limits[r] + 1e-9 for r in range(prog.num_ranks)):
            continue
        try:
            sim = simulate(sched)
        except DeadlockError:
            continue
        best = min(best, sim.cost if objective == "span" else sim.makespan)
    return best


costs = st.sampled_from([1.0, 2.0, 3.0])


@st.composite
def tiny(draw: st.DrawFn, p: int = 2) -> tuple[Program, str]:
    tf = [draw(costs) for _ in range(p)]
    tb = [draw(costs) for _ in range(p)]
    tw = [draw(costs) for _ in range(p)]
    tc = draw(st.sampled_from([0.0, 0.5]))
    mem_w = draw(st.sampled_from([0.0, 1.0]))
    limit = draw(st.sampled_from([2.0, 3.0, 4.0, math.inf]))
    objective = draw(st.sampled_from(["span", "makespan"]))
    src = SRC.replace("param p = 2", f"param p = {p}")
    prog = loads(src, tf=tf, tb=tb, tw=tw, tc=tc, mem_f=2.0, mem_w=mem_w, mem_limit=limit)
    return prog, objective


@pytest.mark.slow
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tiny())
def test_ilp_matches_brute_force_and_bounds_are_valid(case: tuple[Program, str]) -> None:
    prog, objective = case
    best = brute_force(prog, objective)
    assert math.isfinite(best)  # every limit above fits one microbatch at a time
    bound = lower_bound(prog, prog.mem_limit or (math.inf,) * 2, objective).value
    assert bound <= best + 1e-9
    orders, rep = optimize(prog, objective=objective, time_limit=2, deterministic=True)
    assert rep.objective >= best - 1e-9  # nothing beats the true optimum
    assert rep.bound <= best + 1e-9  # the reported bound is valid
    assert rep.objective == pytest.approx(best)  # and the ILP finds it
    assert rep.objective <= rep.warm_objective + 1e-9
    sim = simulate(prog.with_orders(orders))
    assert rep.objective == pytest.approx(sim.cost if objective == "span" else sim.makespan)


@pytest.mark.slow
@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tiny(p=3))
def test_three_ranks_against_brute_force(case: tuple[Program, str]) -> None:
    prog, objective = case
    best = brute_force(prog, objective)
    assert lower_bound(prog, prog.mem_limit or (math.inf,) * 3, objective).value <= best + 1e-9
    _, rep = optimize(prog, objective=objective, time_limit=2, deterministic=True)
    assert rep.bound <= best + 1e-9 <= rep.objective + 2e-9
    assert rep.objective == pytest.approx(best)
