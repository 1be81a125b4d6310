"""``zb-v``: zero-bubble schedules for the V placement (two stages per rank: chunk 0 of rank r is
stage r, chunk 1 is stage 2p-1-r), as in ZB-V (Qi et al., 2024) and its memory-controlled
relatives V-Half and V-Min ("Pipeline Parallelism with Controllable Memory", Qi et al., 2024).

The paper builds ZB-V with a greedy search under a memory limit of p*M_B per rank (M_B: the
activations of one microbatch through a rank's whole share of the model, i.e. both chunks). This
scheduler does the same kind of search with the core's greedy list scheduler (earliest start,
then a role priority, under the limit): it runs it with backward-first (``BFW``) and
forward-first (``FBW``) priorities and keeps the order with the smaller span cost (then
makespan). With T_F = T_B = T_W it reaches zero bubble at p*M_B for m >= 2p (tests check it);
with a smaller limit (``mem_limit``) it trades bubble for memory the way V-Half (about half of
1F1B's memory) and V-Min (about a third) do. It is a greedy stand-in for the paper's
hand-built V-Half / V-Min building blocks, not a reproduction of them.

Requires: the V placement with 2p stages on p ranks and split F / B / W kinds.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping
from dataclasses import replace

from schedlang.ir import Orders, Program, Role, Value
from schedlang.schedulers import Arg, Scheduler
from schedlang.schedulers.heuristics import kinds_of
from schedlang.schedulers.list_sched import list_schedule
from schedlang.simulate import simulate
from schedlang.source import SchedlangError


def v_placement(program: Program) -> bool:
    """2p stages on p ranks, stage s on rank s for s < p and on rank 2p-1-s after."""
    p = program.num_ranks
    return program.num_stages == 2 * p and all(
        r == (s if s < p else 2 * p - 1 - s) for s, r in enumerate(program.placement))


def microbatch_memory(program: Program, rank: int) -> float:
    """M_B of a rank: what the forwards of microbatch 0 on all its stages allocate."""
    return sum(o.mem for o in program.ops
               if o.rank == rank and o.mb == 0 and program.role(o) is Role.F)


def default_limits(program: Program, factor: float) -> list[float]:
    """``factor * M_B`` on every rank (ZB-V: factor p)."""
    return [factor * microbatch_memory(program, r) for r in range(program.num_ranks)]


def _limits(program: Program, mem_limit: Value | None, mb_limit: Value | None) -> list[float]:
    """Per-rank limits: the smaller of ``mem_limit`` (else the program's) and ``mb_limit`` * M_B;
    with neither given, p * M_B (ZB-V's budget)."""
    R = program.num_ranks
    if isinstance(mem_limit, (int, float)) and not isinstance(mem_limit, bool):
        base = [float(mem_limit)] * R
    elif program.mem_limit is not None:
        base = list(program.mem_limit)
    else:
        base = [math.inf] * R
    if not isinstance(mb_limit, (int, float)) or isinstance(mb_limit, bool):
        if not all(math.isinf(x) for x in base):
            return base
        mb_limit = float(R)
    return [min(b, x) for b, x in zip(base, default_limits(program, float(mb_limit)), strict=True)]


def _cost(program: Program, orders: Orders) -> tuple[float, float]:
    sim = simulate(program.with_orders(orders))
    return sim.cost, sim.makespan


def zb_v(program: Program, args: Mapping[str, Value]) -> Orders:
    """The best of the greedy list schedules under the memory limit (see the module docstring)."""
    k = kinds_of(program)
    if k is None or k.b is None or not v_placement(program):
        raise SchedlangError(
            "scheduler 'zb-v' needs the V placement (2p stages, 'place s => s < p ? s : 2*p - 1 - s') "
            f"and split F / B / W kinds; '{program.name}' has {program.num_stages} stage(s) on "
            f"{program.num_ranks} rank(s), placement {list(program.placement)}", program.schedule_span)
    arg = args.get("mem_limit")
    limits = _limits(program, arg, args.get("mb_limit"))
    best: tuple[tuple[float, float], Orders] | None = None
    last_error: SchedlangError | None = None
    for priority, reserve in itertools.product(("BFW", "FBW"), (False, True)):
        try:
            orders = _run(program, limits, priority, reserve)
        except SchedlangError as exc:
            last_error = exc
            continue
        key = _cost(program, orders)
        if best is None or key < best[0]:
            best = (key, orders)
    if best is None:
        assert last_error is not None
        span = program.schedule_span if arg is not None else program.mem_limit_span or program.schedule_span
        raise SchedlangError(f"zb-v: {last_error.message}", span)
    return Orders(best[1].ranks, origin="zb-v")


def _run(program: Program, limits: list[float], priority: str, reserve: bool) -> Orders:
    """One greedy list schedule; per-rank limits go in through the program's mem_limit.

    With ``reserve``, a chunk-0 forward is charged the memory of the whole microbatch on its rank
    (and the chunk-1 forward nothing), so the greedy never fills a tight limit with chunk-0
    forwards whose chunk-1 forwards could then not run. Real memory never exceeds the charged
    memory (the same amounts, allocated earlier), so the orders keep the real limit too."""
    ops = program.ops
    if reserve:
        p = program.num_ranks
        index = program.op_index()
        new = list(ops)
        for o in ops:
            if program.role(o) is Role.F:
                twin = index.get((o.kind, 2 * p - 1 - o.stage, o.mb))
                if twin is not None:
                    new[o.id] = replace(o, mem=o.mem + ops[twin].mem if o.stage < p else 0.0)
        ops = tuple(new)
    limited = replace(program, ops=ops,
                      mem_limit=tuple(limits) if not all(math.isinf(x) for x in limits) else None)
    return list_schedule(limited, {"priority": priority})


SCHEDULER = Scheduler(
    name="zb-v",
    summary="ZB-V: greedy zero-bubble search on the V placement under mem_limit (default p*M_B)",
    fn=zb_v,
    warm_start=True,
    applies=lambda p: (k := kinds_of(p)) is not None and k.b is not None and v_placement(p),
    args={"mem_limit": Arg(float, None, "per-rank memory limit (default: the program's, else p*M_B)"),
          "mb_limit": Arg(float, None, "limit in microbatches: mb_limit * M_B on each rank (V-Half, V-Min)")},
)
