"""``chimera``: the bidirectional schedule of Chimera (Li & Hoefler, SC 2021).

Requires: 2p stages on p ranks forming two pipelines in opposite directions, as ``std:chimera``
declares them: the down pipeline is stages 0..p-1 on ranks 0..p-1, the up pipeline stages
p..2p-1 on ranks p-1..0, and every microbatch runs through exactly one of them (its ops exist on
one half only, by a ``where``). Kinds F and BW, or F, B and W.

Each pipeline gets its own 1F1B order (warm-up p-1-d forwards at depth d; B and W together).
Both are timed as if each ran alone, and every rank interleaves its two lists by those ideal
start times, as Chimera merges its two pipelines' schedules. Sorting by the start times of a
valid timed schedule never puts an op before one it depends on, so the merged orders cannot
deadlock whatever the costs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from schedlang.ir import Orders, Program, Value
from schedlang.schedulers.base import Scheduler
from schedlang.schedulers.heuristics import Kinds, kinds_of
from schedlang.schedulers.zb_v import v_placement
from schedlang.source import SchedlangError


def _pipelines(program: Program, kinds: Kinds) -> list[tuple[list[int], list[int]]]:
    """(stages in chain order, microbatches) of the down and the up pipeline."""
    p, M = program.num_ranks, program.num_microbatches
    down, up = list(range(p)), list(range(p, 2 * p))
    mbs_down = [i for i in range(M) if program.find(kinds.f, 0, i) is not None]
    mbs_up = [i for i in range(M) if program.find(kinds.f, p, i) is not None]
    return [(down, mbs_down), (up, mbs_up)]


def _one_f_one_b(kinds: Kinds, stages: list[int], mbs: list[int], depth: int) -> list[tuple[str, int, int]]:
    s, n = stages[depth], len(mbs)
    warm = min(len(stages) - 1 - depth, n)
    items = [(kinds.f, s, mbs[j]) for j in range(warm)]
    for j in range(n - warm):
        items.append((kinds.f, s, mbs[j + warm]))
        items += [(k, s, mbs[j]) for k in kinds.backward]
    items += [(k, s, mbs[j]) for j in range(n - warm, n) for k in kinds.backward]
    return items


def ideal_starts(program: Program, per_rank: Sequence[Sequence[int]]) -> dict[int, float]:
    """Start times of the ops in ``per_rank`` run alone (deps on ops outside are ignored)."""
    inside = {k for order in per_rank for k in order}
    preds = program.preds()
    start: dict[int, float] = {}
    end: dict[int, float] = {}
    heads = [0] * len(per_rank)
    free = [0.0] * len(per_rank)
    progress = True
    while progress:
        progress = False
        for r, order in enumerate(per_rank):
            while heads[r] < len(order):
                k = order[heads[r]]
                deps = [(src, lat) for src, lat in preds[k] if src in inside]
                if any(src not in end for src, _ in deps):
                    break
                t = max([free[r]] + [end[src] + lat for src, lat in deps])
                start[k], end[k] = t, t + program.ops[k].time
                free[r] = end[k]
                heads[r] += 1
                progress = True
    assert all(h == len(o) for h, o in zip(heads, per_rank, strict=True)), "a 1F1B order deadlocked"
    return start


def bidirectional(program: Program) -> bool:
    """Two opposite pipelines as ``std:chimera`` declares them (see the module docstring): V
    placement, every microbatch's forwards on exactly one half, no rule across the halves."""
    kinds = kinds_of(program)
    if kinds is None or not v_placement(program):
        return False
    p = program.num_ranks
    for i in range(program.num_microbatches):
        if (program.find(kinds.f, 0, i) is None) == (program.find(kinds.f, p, i) is None):
            return False
    ops = program.ops
    return all((ops[e.src].stage < p) == (ops[e.dst].stage < p) for e in program.edges)


def chimera(program: Program, args: Mapping[str, Value]) -> Orders:
    """Merge the two pipelines' 1F1B orders by ideal start time (see the module docstring)."""
    kinds = kinds_of(program)
    if kinds is None or not bidirectional(program):
        raise SchedlangError("scheduler 'chimera' needs 2p stages in two opposite pipelines "
                             "('place s => s < p ? s : 2*p - 1 - s', each microbatch on one half only, "
                             "no rule across the halves; see std:chimera) and F / BW or F / B / W kinds",
                             program.schedule_span)
    index = program.op_index()
    p = program.num_ranks
    merged: list[list[tuple[float, int, int, int]]] = [[] for _ in range(p)]
    for which, (stages, mbs) in enumerate(_pipelines(program, kinds)):
        per_rank: list[list[int]] = [[] for _ in range(p)]
        for depth, s in enumerate(stages):
            items = _one_f_one_b(kinds, stages, mbs, depth)
            per_rank[program.placement[s]] = [index[it] for it in items if it in index]
        start = ideal_starts(program, per_rank)
        for r, order in enumerate(per_rank):
            merged[r] += [(start[k], pos, which, k) for pos, k in enumerate(order)]
    missing = len(program.ops) - sum(len(x) for x in merged)
    if missing:
        raise SchedlangError(f"scheduler 'chimera': {missing} op(s) belong to neither pipeline "
                             "(each microbatch must run on stages 0..p-1 or on p..2p-1 only)",
                             program.schedule_span)
    ranks = tuple(tuple((k,) for _, _, _, k in sorted(x, key=lambda e: (e[0], e[2], e[1]))) for x in merged)
    return Orders(ranks, origin="chimera")


SCHEDULER = Scheduler(
    name="chimera",
    summary="Chimera: two opposite 1F1B pipelines merged on every rank by ideal start time",
    fn=chimera,
    warm_start=True,
    applies=bidirectional,
)
