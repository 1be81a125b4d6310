"""``zb-v``: zero-bubble schedules for the V placement (two stages per rank: chunk 0 of rank r is
stage r, chunk 1 is stage 2p-1-r), as in ZB-V (Qi et al., 2024) and its memory-controlled
relatives V-Half and V-Min ("Pipeline Parallelism with Controllable Memory", Qi et al., 2024).

The paper builds ZB-V with a greedy search under a memory limit of p*M_B per rank (M_B: the
activations of one microbatch through a rank's whole share of the model, i.e. both chunks). This
scheduler does the same kind of search with two greedy list schedulers: the core's (earliest
start, then a role priority, under the limit) and a gap-filling one (:func:`gap_fill`: W runs only
in a gap before the next F or B, as the Zero Bubble heuristics place it). Each runs with
backward-first and forward-first priorities, with and without reserving a microbatch's chunk-1
memory at its chunk-0 forward; the order with the smallest span cost (then makespan) is kept.
With T_F = T_B = T_W it reaches zero bubble at p*M_B for m >= 2p (tests check it). With the
paper's profiled times and comm it does not: about 0.15 bubble rate at p = 8, m = 24 (zero with
unlimited memory), where the paper's own ZB-V search does better. With a smaller limit
(``mem_limit``, ``mb_limit``) it trades bubble for memory the way V-Half (about half of 1F1B's
memory) and V-Min (about a third) do: a greedy stand-in for the paper's hand-built V-Half / V-Min
building blocks, not a reproduction of them.

Requires: the V placement with 2p stages on p ranks and split F / B / W kinds.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping
from dataclasses import replace

from schedlang.ir import Op, Orders, Program, Role, Value
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
    for algo, priority, reserve in itertools.product((_run, gap_fill), ("BFW", "FBW"), (False, True)):
        try:
            orders = algo(program, limits, priority, reserve)
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


def _charged(program: Program, reserve: bool) -> tuple[Op, ...]:
    """The ops with the memory the greedy charges (see :func:`_run`)."""
    ops = program.ops
    if not reserve:
        return ops
    p = program.num_ranks
    index = program.op_index()
    new = list(ops)
    for o in ops:
        if program.role(o) is Role.F:
            twin = index.get((o.kind, 2 * p - 1 - o.stage, o.mb))
            if twin is not None:
                new[o.id] = replace(o, mem=o.mem + ops[twin].mem if o.stage < p else 0.0)
    return tuple(new)


def _run(program: Program, limits: list[float], priority: str, reserve: bool) -> Orders:
    """One greedy list schedule; per-rank limits go in through the program's mem_limit.

    With ``reserve``, a chunk-0 forward is charged the memory of the whole microbatch on its rank
    (and the chunk-1 forward nothing), so the greedy never fills a tight limit with chunk-0
    forwards whose chunk-1 forwards could then not run. Real memory never exceeds the charged
    memory (the same amounts, allocated earlier), so the orders keep the real limit too."""
    limited = replace(program, ops=_charged(program, reserve),
                      mem_limit=tuple(limits) if not all(math.isinf(x) for x in limits) else None)
    return list_schedule(limited, {"priority": priority})


class _GapFill:
    """List scheduling where W only fills gaps: the state of one run of :func:`gap_fill`."""

    def __init__(self, program: Program, limits: list[float], priority: str, reserve: bool) -> None:
        self.program = program
        self.ops = _charged(program, reserve)
        self.limits = limits
        self.rank_of_role = {Role.B: priority.index("B"), Role.BW: priority.index("B"),
                             Role.F: priority.index("F"), Role.W: 3, Role.USER: 3}
        R = program.num_ranks
        self.free = [0.0] * R
        self.mem = [0.0] * R
        self.end: dict[int, float] = {}
        self.missing = [len(x) for x in program.preds()]
        self.est = [0.0] * len(self.ops)
        self.ready: list[set[int]] = [set() for _ in range(R)]  # F / B ops whose preds are placed
        self.ws: list[list[int]] = [[] for _ in range(R)]  # Ws whose B is placed, FIFO
        self.orders: list[list[tuple[int, ...]]] = [[] for _ in range(R)]
        for k in range(len(self.ops)):
            if self.missing[k] == 0:
                self._make_ready(k)

    def _make_ready(self, k: int) -> None:
        o = self.ops[k]
        if self.program.role(o) is Role.W:
            self.ws[o.rank].append(k)
        else:
            self.ready[o.rank].add(k)

    def _fits(self, r: int, k: int) -> bool:
        lim = self.limits[r]
        return self.mem[r] + self.ops[k].mem <= lim + 1e-9 * max(1.0, abs(lim))

    def action(self, r: int) -> tuple[float, int, int] | None:
        """(start, priority, op) of what rank r would do next."""
        t = self.free[r]
        cands = [(max(t, self.est[k]), self.rank_of_role[self.program.role(self.ops[k])], self.ops[k].mb, k)
                 for k in self.ready[r] if self._fits(r, k)]
        now = [c for c in cands if c[0] <= t]
        if now:
            s, pr, _, k = min(now, key=lambda c: (c[1], c[2], c[3]))
            return s, pr, k
        nxt = min(cands, default=None)
        w = self.ws[r][0] if self.ws[r] else None
        if w is not None and (nxt is None or t + self.ops[w].time <= nxt[0] + 1e-12):
            return t, 3, w
        if nxt is not None:
            return nxt[0], nxt[1], nxt[3]
        return None

    def place(self, r: int, start: float, k: int) -> None:
        o = self.ops[k]
        if k in self.ready[r]:
            self.ready[r].discard(k)
        else:
            self.ws[r].remove(k)
        self.end[k] = start + o.time
        self.free[r] = self.end[k]
        self.mem[r] += o.mem
        self.orders[r].append((k,))
        for d, lat in self.program.succs()[k]:
            self.est[d] = max(self.est[d], self.end[k] + lat)
            self.missing[d] -= 1
            if self.missing[d] == 0:
                self._make_ready(d)

    def run(self) -> Orders:
        for _ in range(len(self.ops)):
            acts = [(a, r) for r in range(self.program.num_ranks) if (a := self.action(r)) is not None]
            if not acts:
                r = max(range(self.program.num_ranks), key=lambda x: len(self.ready[x]))
                raise SchedlangError(f"gap-filling greedy: no op can run within the memory limit "
                                     f"(rank {r} holds {self.mem[r]:g}, limit {self.limits[r]:g}); raise mem_limit")
            (start, _, k), r = min(acts, key=lambda x: (x[0][0], x[0][1], x[1]))
            self.place(r, start, k)
        return Orders(tuple(tuple(x) for x in self.orders), origin="zb-v")


def gap_fill(program: Program, limits: list[float], priority: str, reserve: bool) -> Orders:
    """Greedy list scheduling in which a W runs only when it fits in the gap before the rank's
    next forward or backward (or nothing else can run), as the Zero Bubble heuristics place W;
    forwards wait for memory (``reserve`` as in :func:`_run`)."""
    return _GapFill(program, limits, priority, reserve).run()


SCHEDULER = Scheduler(
    name="zb-v",
    summary="ZB-V: greedy zero-bubble search on the V placement under mem_limit (default p*M_B)",
    fn=zb_v,
    warm_start=True,
    applies=lambda p: (k := kinds_of(p)) is not None and k.b is not None and v_placement(p),
    args={"mem_limit": Arg(float, None, "per-rank memory limit (default: the program's, else p*M_B)"),
          "mb_limit": Arg(float, None, "limit in microbatches: mb_limit * M_B on each rank (V-Half, V-Min)")},
)
