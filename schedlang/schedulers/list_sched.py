"""``list``: greedy list scheduling with a role priority under the memory limit.

Works for any program (any placement, user op kinds, uneven times). It simulates time: the next
op to place is the one that can start earliest on its rank; among ops that can start at the
same moment, the role order given by ``priority`` decides (default ``"BFW"``: backward before
forward before weight gradient, which gives 1F1B-like orders and defers W into bubbles), then the
lower microbatch, then the later stage. An op that would push its rank over the memory limit
waits; if nothing can run anywhere, the limit is infeasible for this rule and the error says
which rank is stuck at which level.
"""

from __future__ import annotations

import heapq
from collections.abc import Mapping

from schedlang.ir import Orders, Program, Role, Value
from schedlang.schedulers import Arg, Scheduler
from schedlang.source import SchedlangError

EPS = 1e-9


def _priorities(program: Program, rule: str) -> dict[str, int]:
    letters = {"F": Role.F, "B": Role.B, "W": Role.W}
    order = {}
    for pos, ch in enumerate(rule.upper()):
        if ch not in letters:
            raise SchedlangError(f"list scheduler: priority letters are F, B, W; got {rule!r}")
        order[letters[ch]] = pos
    prio = {}
    for k in program.kinds:
        role = Role.B if k.role is Role.BW else k.role
        prio[k.name] = order.get(role, len(order))
    return prio


def list_schedule(program: Program, args: Mapping[str, Value]) -> Orders:
    """Greedy earliest-start list scheduling (see the module docstring)."""
    rule = str(args.get("priority", "BFW"))
    prio = _priorities(program, rule)
    limit_arg = args.get("mem_limit")
    R = program.num_ranks
    limits = [float(limit_arg)] * R if isinstance(limit_arg, (int, float)) else (
        list(program.mem_limit) if program.mem_limit else [float("inf")] * R)
    ops = program.ops
    preds, succs = program.preds(), program.succs()
    missing = [len(preds[k]) for k in range(len(ops))]
    est = [0.0] * len(ops)
    end = [0.0] * len(ops)
    free = [0.0] * R
    mem = [0.0] * R
    ready: list[list[tuple[float, int, int, int, int]]] = [[] for _ in range(R)]

    def push(k: int) -> None:
        o = ops[k]
        heapq.heappush(ready[o.rank], (est[k], prio[o.kind], o.mb, -o.stage, k))

    for k in range(len(ops)):
        if missing[k] == 0:
            push(k)
    orders: list[list[tuple[int, ...]]] = [[] for _ in range(R)]
    placed = 0
    # A rank's pick depends only on its own ready ops, free time and memory level: recompute it
    # only for the ranks those changed on (the one that ran an op and those that got a ready op),
    # not for every rank at every step (quadratic: 4 s at p = 32, m = 128).
    picks: list[tuple[float, int] | None] = [None] * R
    dirty = set(range(R))
    while placed < len(ops):
        best: tuple[float, int, int, int, int, int] | None = None
        for r in dirty:
            picks[r] = _pick(ready[r], free[r], mem[r], limits[r], ops)
        dirty.clear()
        for r in range(R):
            pick = picks[r]
            if pick is not None:
                t, k = pick
                o = ops[k]
                key = (t, prio[o.kind], o.mb, -o.stage, r, k)
                if best is None or key < best:
                    best = key
        if best is None:
            stuck = [r for r in range(R) if ready[r]]
            r = stuck[0] if stuck else 0
            raise SchedlangError(
                f"list scheduler: no op can run within the memory limit (rank {r} holds {mem[r]:g}, "
                f"limit {limits[r]:g}); raise mem_limit")
        t, _, _, _, r, k = best
        ready[r].remove(next(x for x in ready[r] if x[4] == k))
        heapq.heapify(ready[r])
        o = ops[k]
        end[k] = t + o.time
        free[r] = end[k]
        mem[r] += o.mem
        orders[r].append((k,))
        placed += 1
        dirty.add(r)
        for d, lat in succs[k]:
            est[d] = max(est[d], end[k] + lat)
            missing[d] -= 1
            if missing[d] == 0:
                push(d)
                dirty.add(ops[d].rank)
    return Orders(tuple(tuple(x) for x in orders), origin="list")


def _pick(heap: list[tuple[float, int, int, int, int]], free: float, level: float, limit: float,
          ops: tuple) -> tuple[float, int] | None:  # type: ignore[type-arg]
    """The op to run next on one rank: among those ready by ``free``, the best priority; else the
    earliest. Ops that would exceed the memory limit are skipped."""
    best: tuple[tuple[float, int, int, int], int] | None = None
    for e, p, mb, neg_stage, k in heap:
        if level + ops[k].mem > limit + EPS * max(1.0, abs(limit)):
            continue
        start = e if e > free else free
        key = (start, p, mb, neg_stage)
        if best is None or key < best[0]:
            best = (key, k)
    return None if best is None else (best[0][0], best[1])


SCHEDULER = Scheduler(
    name="list",
    summary="greedy list scheduling: earliest start, then role priority (default BFW), under mem_limit",
    fn=list_schedule,
    warm_start=True,
    args={
        "priority": Arg(str, "BFW", "role order among ops that can start at once"),
        "mem_limit": Arg(float, None, "per-rank memory limit (default: the program's)"),
    },
)
