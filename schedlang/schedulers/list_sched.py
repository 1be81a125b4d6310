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
from typing import Any

from schedlang.ir import Orders, Program, Role, Value
from schedlang.schedulers.base import Arg, Scheduler
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
    """Greedy earliest-start list scheduling (see the module docstring).

    Each rank keeps the ops whose inputs are all placed in two heaps: ``now``, ready by the time
    the rank is free (they would all start then, so the best is the one of highest priority), and
    ``later`` (the earliest ready first). A rank's choice changes only when it places an op or
    gains a ready one, so it is cached and recomputed for those ranks alone: each step costs a
    heap operation or two and a look at every rank's cached choice, not a scan of every ready op.
    """
    rule = str(args.get("priority", "BFW"))
    prio = _priorities(program, rule)
    assert "mem_limit" not in args, "the schedule pass resolves the mem_limit argument"
    R = program.num_ranks
    limits = list(program.mem_limit) if program.mem_limit else [float("inf")] * R
    ops = program.ops
    succs = program.succs()
    missing = [len(p) for p in program.preds()]
    est = [0.0] * len(ops)
    free = [0.0] * R
    mem = [0.0] * R
    ranks = [_Rank(limit + EPS * max(1.0, abs(limit))) for limit in limits]

    def push(k: int) -> None:
        o = ops[k]
        rk = ranks[o.rank]
        heapq.heappush(rk.later, (est[k], prio[o.kind], o.mb, -o.stage, k))
        rk.dirty = True

    for k in range(len(ops)):
        if missing[k] == 0:
            push(k)
    orders: list[list[tuple[int, ...]]] = [[] for _ in range(R)]
    for _ in range(len(ops)):
        best: tuple[float, int, int, int, int, int] | None = None
        for r, rk in enumerate(ranks):
            if rk.dirty:
                rk.choose(free[r], mem[r], ops)
            if rk.choice is not None and (best is None or rk.choice < best[:4]):  # a tie keeps the lower rank
                best = rk.choice + (r, rk.choice_k)
        if best is None:
            stuck = [r for r, rk in enumerate(ranks) if rk.now or rk.later]
            r = stuck[0] if stuck else 0
            raise SchedlangError(
                f"list scheduler: no op can run within the memory limit (rank {r} holds {mem[r]:g}, "
                f"limit {limits[r]:g}); raise mem_limit")
        t, r, k = best[0], best[4], best[5]
        ranks[r].take(k)
        o = ops[k]
        end = t + o.time
        free[r] = end
        mem[r] += o.mem
        orders[r].append((k,))
        for d, lat in succs[k]:
            est[d] = max(est[d], end + lat)
            missing[d] -= 1
            if missing[d] == 0:
                push(d)
    return Orders(tuple(tuple(x) for x in orders), origin="list")


class _Rank:
    """One rank's ready ops and its cached choice (see :func:`list_schedule`)."""

    __slots__ = ("cap", "choice", "choice_k", "dirty", "later", "now", "taken")

    def __init__(self, cap: float) -> None:
        self.cap = cap  # the memory limit, with the tolerance for float noise
        self.now: list[tuple[int, int, int, int]] = []  # (priority, mb, -stage, op)
        self.later: list[tuple[float, int, int, int, int]] = []  # (ready time, priority, mb, -stage, op)
        self.taken: set[int] = set()  # ops placed but still in a heap (removed lazily)
        self.choice: tuple[float, int, int, int] | None = None  # (start, priority, mb, -stage)
        self.choice_k = -1
        self.dirty = True

    def choose(self, free: float, level: float, ops: tuple) -> None:  # type: ignore[type-arg]
        """The op to run next: of those ready by ``free``, the best priority; else the earliest
        ready (then the best priority). Ops that would exceed the memory limit are passed over."""
        self.dirty = False
        now, later, taken = self.now, self.later, self.taken
        while later and later[0][0] <= free:
            _, p, mb, ns, k = heapq.heappop(later)
            if k not in taken:
                heapq.heappush(now, (p, mb, ns, k))
        room = self.cap - level
        heaps: tuple[tuple[list[Any], bool], ...] = ((now, True), (later, False))
        for heap, is_now in heaps:
            skipped: list[Any] = []
            while heap:
                item = heap[0]
                k = item[-1]
                if k in taken:
                    heapq.heappop(heap)
                    taken.discard(k)
                elif ops[k].mem > room:
                    skipped.append(heapq.heappop(heap))
                else:
                    break
            found = heap[0] if heap else None
            for item in skipped:
                heapq.heappush(heap, item)
            if found is not None:
                self.choice = (free, *found[:3]) if is_now else tuple(found[:4])
                self.choice_k = found[-1]
                return
        self.choice, self.choice_k = None, -1

    def take(self, k: int) -> None:
        self.taken.add(k)
        self.dirty = True


SCHEDULER = Scheduler(
    name="list",
    summary="greedy list scheduling: earliest start, then role priority (default BFW), under mem_limit",
    fn=list_schedule,
    warm_start=True,
    args={
        "priority": Arg(str, "BFW", "role order among ops that can start at once"),
        "mem_limit": Arg(float, None, "per-rank memory limit (at most the program's; default: the program's)"),
    },
)
