"""The timed simulator against closed forms, an independent longest-path computation, and the
verifier on generated valid and broken orders."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from schedlang import testing as sst
from schedlang.api import compile as compile_program
from schedlang.ir import Orders, Program
from schedlang.simulate import DeadlockError, memory_profile, simulate
from schedlang.source import SchedlangError
from schedlang.verify import verify

times = st.integers(1, 16).map(lambda x: x / 4)


@given(p=st.integers(1, 8), m=st.integers(1, 24), tf=times, tb=times, tw=times)
@settings(max_examples=120, deadline=None)
def test_1f1b_bubble_matches_closed_form(p: int, m: int, tf: float, tb: float, tw: float) -> None:
    # REFERENCE.md section 1: 1F1B (B and W fused), comm 0: bubble (p-1)(T_F+T_B+T_W), peak p*M_B
    assume(m >= p)
    prog = compile_program("std:1f1b", p=p, m=m, tf=tf, tb=tb, tw=tw, tc=0.0, mem_f=2.0)
    sim = simulate(prog)
    assert sim.bubble == pytest.approx((p - 1) * (tf + tb + tw))
    if tf == tb + tw:  # symmetric ops: the schedule is a perfect parallelogram
        assert sim.makespan == pytest.approx((m + p - 1) * (tf + tb + tw))
    assert sim.ranks[0].peak_memory == pytest.approx(p * 2.0)
    assert sim.bubble_rate == pytest.approx(sim.bubble / sim.cost)


@given(p=st.integers(1, 8), m=st.integers(1, 24), tf=times, tb=times, tw=times)
@settings(max_examples=60, deadline=None)
def test_gpipe_bubble_and_memory(p: int, m: int, tf: float, tb: float, tw: float) -> None:
    prog = compile_program("std:gpipe", p=p, m=m, tf=tf, tb=tb, tw=tw, mem_f=1.0)
    sim = simulate(prog)
    assert sim.bubble == pytest.approx((p - 1) * (tf + tb + tw))
    assert all(r.peak_memory == pytest.approx(m) for r in sim.ranks)


def test_1f1b_below_p_microbatches_is_still_valid() -> None:
    for p, m in itertools.product(range(1, 6), range(1, 6)):
        sim = simulate(compile_program("std:1f1b", p=p, m=m))
        assert sim.ranks[-1].busy == pytest.approx(m * 3.0)


def longest_path(program: Program) -> tuple[list[float], list[float]]:
    """Independent reference: earliest start times by repeated relaxation over all constraints."""
    ops = program.ops
    start = [0.0] * len(ops)
    prev: dict[int, int] = {}
    for slots in program.orders.ranks:
        flat = [k for slot in slots for k in slot]
        for a, b in zip(flat, flat[1:], strict=False):
            prev[b] = a
    changed = True
    while changed:
        changed = False
        for o in ops:
            t = start[o.id]
            if o.id in prev:
                t = max(t, start[prev[o.id]] + ops[prev[o.id]].time)
            for src, lat in program.preds()[o.id]:
                t = max(t, start[src] + ops[src].time + lat)
            if t > start[o.id] + 1e-12:
                start[o.id] = t
                changed = True
    return start, [start[o.id] + o.time for o in ops]


@pytest.mark.slow
@given(sst.scheduled_programs())
@settings(max_examples=80, deadline=None)
def test_simulator_agrees_with_longest_path(program: Program) -> None:
    verify(program)
    sim = simulate(program)
    start, end = longest_path(program)
    assert sim.start == pytest.approx(start)
    assert sim.makespan == pytest.approx(max(end))
    for r, stats in enumerate(sim.ranks):
        mine = [k for slot in program.orders.ranks[r] for k in slot]
        assert stats.busy == pytest.approx(sum(program.ops[k].time for k in mine))
        levels = list(itertools.accumulate(program.ops[k].mem for k in mine))
        assert stats.peak_memory == pytest.approx(max([0.0] + levels))
        assert stats.idle == pytest.approx(stats.span - stats.busy)
    assert sim.bubble_rate == pytest.approx((sim.cost - max(r.busy for r in sim.ranks)) / sim.cost)


@pytest.mark.slow
@given(sst.scheduled_programs(max_ranks=3), st.data())
@settings(max_examples=80, deadline=None)
def test_broken_orders_are_rejected_with_a_location_or_run(program: Program, data: st.DataObject) -> None:
    """Swap two ops in one rank's order: the result either still satisfies every dependency (then
    it verifies) or the verifier names an order violation or a deadlock; it never crashes."""
    r = data.draw(st.integers(0, program.num_ranks - 1))
    slots = list(program.orders.ranks[r])
    assume(len(slots) >= 2)
    i, j = sorted(data.draw(st.lists(st.integers(0, len(slots) - 1), min_size=2, max_size=2, unique=True)))
    slots[i], slots[j] = slots[j], slots[i]
    ranks = list(program.orders.ranks)
    ranks[r] = tuple(slots)
    broken = program.with_orders(Orders(tuple(ranks)))
    try:
        verify(broken)
    except DeadlockError as exc:
        assert exc.message.startswith(("deadlock:", "the order of rank"))
    except SchedlangError as exc:
        assert "depends on" in exc.message
    else:
        simulate(broken)


def test_memory_profile_of_1f1b_rank0() -> None:
    prog = compile_program("std:1f1b", p=3, m=4, mem_f=1.0)
    assert memory_profile(prog, 0) == [1, 2, 3, 2, 3, 2, 1, 0]
