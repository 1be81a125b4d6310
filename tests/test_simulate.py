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
    # Qi et al., ICLR 2024 (the Zero Bubble paper): 1F1B (B and W fused), comm 0: bubble (p-1)(T_F+T_B+T_W), peak p*M_B
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


# ---------------------------------------------------------------------- data-parallel all-reduce


def test_allreduce_time_extends_the_rank_that_cannot_hide_it() -> None:
    """ZB-H1, p=2, m=2, unit times. Rank 0 runs F00 [0,1] F01 [1,2] B00 [3,4] W00 [4,5]
    B01 [5,6] W01 [6,7]; rank 1 F10 [1,2] B10 [2,3] F11 [3,4] B11 [4,5] W10 [5,6] W11 [6,7].
    Each stage's all-reduce (3) starts at its last W (7) and ends at 10: rank 0 spans 0..10,
    rank 1 1..10; cost 10, bubble 10 - 6 = 4."""
    base = simulate(compile_program("std:zb-h1", {"p": 2, "m": 2}))
    assert (base.makespan, base.cost, base.bubble) == (7, 7, 1)
    sim = simulate(compile_program("std:zb-h1", {"p": 2, "m": 2, "t_allreduce": 3}))
    assert (sim.makespan, sim.cost, sim.bubble, sim.bubble_rate) == (10, 10, 4, 0.4)
    assert [(r.first_start, r.last_end, r.busy) for r in sim.ranks] == [(0, 10, 6), (1, 10, 6)]
    assert sim.start == base.start and sim.end == base.end  # the ops themselves do not move


def test_allreduce_overlaps_later_work_and_queues_on_one_channel() -> None:
    """Interleaved 1F1B, p=2, m=2 (stages 0, 2 on rank 0; 1, 3 on rank 1), F 1 and BW 2 per stage
    (costs_per = "stage": each chunk its own cost, not half of a model slice).
    Rank 0: BW2.1 ends 11, BW0.1 ends 15; rank 1: BW3.1 ends 9, BW1.1 ends 13 (starts at 1).
    t_allreduce 1: stage 2 [11,12] hides behind BW0.0 [11,13], stage 0 [15,16]: rank 0 ends 16;
    stage 3 [9,10], stage 1 [13,14]: rank 1 spans 13. t_allreduce 5: stage 2 [11,16] still runs
    when stage 0 is ready at 15, so stage 0 waits: [16,21]; rank 1: stage 3 [9,14], stage 1
    [14,19], span 18."""
    params = {"p": 2, "m": 2, "costs_per": "stage"}
    one = simulate(compile_program("std:interleaved-1f1b", {**params, "t_allreduce": 1}))
    assert (one.makespan, one.cost, one.bubble) == (16, 16, 4)
    assert [r.span for r in one.ranks] == [16, 13]
    five = simulate(compile_program("std:interleaved-1f1b", {**params, "t_allreduce": 5}))
    assert (five.makespan, five.cost, five.bubble) == (21, 21, 9)
    assert [r.span for r in five.ranks] == [21, 18]
    # a time per stage: only stage 1 reduces, ready at 13 on rank 1
    only1 = simulate(compile_program("std:interleaved-1f1b", {**params, "t_allreduce": [0, 4, 0, 0]}))
    assert [r.last_end for r in only1.ranks] == [15, 17]


@pytest.mark.parametrize(("value", "message"), [
    ("-1", "the all-reduce time must be a finite number >= 0, got -1"),
    ("[1, 2]", "allreduce lists 2 values for 4 stages"),
])
def test_bad_allreduce_times_are_located_errors(value: str, message: str) -> None:
    from schedlang.api import loads

    text = f"""import "std:fbw"
ranks 4
microbatches 4
allreduce {value}
"""
    with pytest.raises(SchedlangError) as err:
        loads(text, "x.sched")
    assert err.value.message == message
    assert (err.value.span.line, err.value.span.col) == (4, 11)


def test_compare_accounts_for_the_allreduce_when_asked() -> None:
    from schedlang.api import compare_rows

    sets = ["p=2", "m=2"]
    plain = {r["program"]: r for r in compare_rows(["std:zb-h1", "std:1f1b"], sets)}
    dp = {r["program"]: r for r in compare_rows(["std:zb-h1", "std:1f1b"], [*sets, "t_allreduce=3"])}
    assert plain["std:zb-h1"]["makespan"] == 7 and dp["std:zb-h1"]["makespan"] == 10  # see above
    # 1F1B, fused BW (time 2). Rank 1: F10 [1,2] BW10 [2,4] F11 [4,5] BW11 [5,7]; rank 0:
    # F00 [0,1] F01 [1,2] BW00 [4,6] BW01 [7,9]. Reductions: rank 0 [9,12], rank 1 [7,10]
    assert plain["std:1f1b"]["makespan"] == 9 and dp["std:1f1b"]["makespan"] == 12
    assert dp["std:1f1b"]["bubble"] == 12 - 6 and dp["std:1f1b"]["bubble_rate"] == 0.5


@given(sst.scheduled_programs(), st.integers(1, 6))
@settings(max_examples=60, deadline=None)
def test_shared_cores_simulation_bounds_and_limits(program: Program, cores: int) -> None:
    """Processor sharing: with a core per rank it is the simulator; with fewer it is never faster
    than the simulator nor than the total work spread over the cores; with one core and no
    latencies it never idles, so it takes exactly the total work."""
    from schedlang.simulate import shared_makespan

    verify(program)
    sim = simulate(program)
    total = sum(o.time for o in program.ops)
    got = shared_makespan(program, cores)
    if cores >= program.num_ranks:
        assert got == pytest.approx(sim.makespan, rel=1e-9, abs=1e-9)
    assert got >= sim.makespan - 1e-9 * max(1.0, sim.makespan)
    assert got >= total / cores - 1e-9 * max(1.0, total)
    if program.allreduce is None and all(lat == 0 for k in range(len(program.ops)) for _, lat in program.preds()[k]):
        assert shared_makespan(program, 1) == pytest.approx(total, rel=1e-9, abs=1e-9)


def test_shared_cores_two_ranks_on_one_core_by_hand() -> None:
    """Two ranks, one stage each, one microbatch: F0 (2) -> F1 (1) -> B1 (1) -> B0 (2) is a chain,
    so one core loses nothing (6); with two microbatches under GPipe, F0[1] and F1[0] overlap
    (rank 0: F F . . BW BW, rank 1: . F . F BW BW, 10 in all), and one core must run all 12."""
    from schedlang.simulate import shared_makespan

    one = compile_program("std:gpipe", {"p": 2, "m": 1, "tf": [2.0, 1.0], "tb": [1.0, 0.5], "tw": [1.0, 0.5]})
    assert shared_makespan(one, 1) == pytest.approx(6.0) == simulate(one).makespan
    two = compile_program("std:gpipe", {"p": 2, "m": 2, "tf": [2.0, 1.0], "tb": [1.0, 0.5], "tw": [1.0, 0.5]})
    assert simulate(two).makespan == pytest.approx(10.0)
    assert shared_makespan(two, 1) == pytest.approx(12.0)  # one core: all the work, never idle
    assert shared_makespan(two, 2) == pytest.approx(10.0)
