"""``zb-v``: zero-bubble schedules for the V placement (two stages per rank: chunk 0 of rank r is
stage r, chunk 1 is stage 2p-1-r), as in ZB-V (Qi et al., 2024) and its memory-controlled
relatives V-Half and V-Min ("Pipeline Parallelism with Controllable Memory", Qi et al., 2024).

The paper builds ZB-V with a greedy search under a memory limit of p*M_B per rank (M_B: the
activations of one microbatch through a rank's whole share of the model, i.e. both chunks). This
scheduler runs three kinds of greedy and keeps the order with the smallest span cost (then
makespan): the round-based V heuristic of the Zero Bubble repository, restated here
(:class:`_VRounds`: warm-up, then one backward and one forward per rank per round, W filling the
gaps); the core's list scheduler (earliest start, then a role priority); and a gap-filling list
scheduler (:func:`gap_fill`: W only in a gap before the next F or B). The list schedulers run
backward-first and forward-first, with and without reserving a microbatch's chunk-1 memory at its
chunk-0 forward. With T_F = T_B = T_W it reaches zero bubble at p*M_B for m >= 2p (tests check
it); with the paper's 1.5B profile and comm, 0.07 bubble rate at p = 8, m = 24 (ZB-H1: 0.16).
With a smaller limit (``mem_limit``, ``mb_limit``) it trades bubble for memory the way V-Half
(about half of 1F1B's memory) and V-Min (about a third) do: a greedy stand-in for the paper's
hand-built V-Half / V-Min building blocks, not a reproduction of them.

Requires: the V placement with 2p stages on p ranks and split F / B / W kinds.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping
from dataclasses import replace

from schedlang.ir import Op, Orders, Program, Role, SchedulerCall, Value
from schedlang.schedulers.base import Arg, Scheduler, scheduler_limits
from schedlang.schedulers.heuristics import Kinds, kinds_of
from schedlang.schedulers.list_sched import list_schedule
from schedlang.simulate import simulate
from schedlang.source import SchedlangError, Span


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


def _limits(program: Program, mb_limit: Value | None) -> tuple[Program, list[float]]:
    """The program under its per-rank limits, and those limits: the program's (the schedule pass
    has applied a ``mem_limit`` argument), tightened to ``mb_limit`` * M_B by the schedule pass's
    rule (a looser ``mb_limit`` is an error at the argument); with no limit at all, p * M_B
    (ZB-V's budget)."""

    R = program.num_ranks
    if isinstance(mb_limit, (int, float)) and not isinstance(mb_limit, bool):
        program = scheduler_limits(program, default_limits(program, float(mb_limit)),
                                   _arg_span(program, "mb_limit"), "mb_limit")
    if program.mem_limit is not None:
        return program, list(program.mem_limit)
    return program, default_limits(program, float(R))


def _arg_span(program: Program, name: str) -> Span | None:
    call = program.schedule
    if isinstance(call, SchedulerCall):
        for i, (k, _) in enumerate(call.args):
            if k == name and i < len(call.arg_spans):
                return call.arg_spans[i]
    return program.schedule_span


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
    assert "mem_limit" not in args, "the schedule pass resolves the mem_limit argument"
    program, limits = _limits(program, args.get("mb_limit"))
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
    for orders in v_rounds(program, limits):
        key = _cost(program, orders)
        if best is None or key < best[0]:
            best = (key, orders)
    if best is None:
        assert last_error is not None
        span = program.mem_limit_span or program.schedule_span
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
    args={"mem_limit": Arg(float, None, "per-rank memory limit (at most the program's; default: the program's, else p*M_B)"),
          "mb_limit": Arg(float, None, "limit in microbatches: mb_limit * M_B on each rank (V-Half, V-Min)")},
)


# ------------------------------------------------------------------ the paper's round-based V greedy


class _Stuck(Exception):
    """One variant of the round-based greedy cannot continue (memory, or an unplaced dependency)."""


class _VRounds:
    """The Zero Bubble repository's ZB-V heuristic, restated: a warm-up that fills each rank with
    chunk-0 forwards until its chunk-1 forward can come back (within the memory budget), a
    balancing pass, then 2m rounds of one backward and one forward per rank (the chunk chosen by
    which one's inputs have arrived), W filling the gaps before them, and the remaining Ws last.
    ``fill_f`` / ``fill_b``: also put a W in a short gap before an F / a chunk-1 B when this rank's
    bubble would otherwise exceed the worst rank's (``approved`` raises that bar per rank)."""

    def __init__(self, program: Program, limits: list[float], kinds: Kinds, fill_f: bool, fill_b: bool,
                 approved: list[float] | None) -> None:
        self.program, self.limits, self.kinds = program, limits, kinds
        self.fill_f, self.fill_b = fill_f, fill_b
        p = program.num_ranks
        self.p, self.M = p, program.num_microbatches
        self.approved = approved or [-1.0] * p
        self.index = program.op_index()
        self.preds = program.preds()
        # the latency of each dependency, looked up by (src, dst): the comm before an op is
        # that of the edge it waits on, not the largest of all edges
        self.latency = {(e.src, e.dst): e.latency for e in program.edges}
        self.count = {(c, ch): [0] * p for c in ("F", "B") for ch in (0, 1)}
        self.cur = [0.0] * p
        self.mem = [0.0] * p
        self.bubble = [0.0] * p
        self.end: dict[int, float] = {}
        self.pending_w: list[list[int]] = [[] for _ in range(p)]
        self.order: list[list[int]] = [[] for _ in range(p)]

    def stage(self, r: int, chunk: int) -> int:
        return r if chunk == 0 else 2 * self.p - 1 - r

    def op_id(self, cat: str, r: int, chunk: int, mb: int) -> int | None:
        kind = self.kinds.f if cat == "F" else self.kinds.b
        return None if kind is None else self.index.get((kind, self.stage(r, chunk), mb))

    def placed(self, cat: str, r: int, chunk: int, mb: int) -> bool:
        k = self.op_id(cat, r, chunk, mb)
        return k is not None and k in self.end

    def max_bubble(self, r: int) -> float:
        return max(max(self.bubble), max(self.approved) - self.approved[r])

    def _put_op(self, r: int, k: int) -> None:
        o = self.program.ops[k]
        if self.mem[r] + o.mem > self.limits[r] + 1e-9 * max(1.0, abs(self.limits[r])):
            raise _Stuck
        start = self.cur[r]
        for src, lat in self.preds[k]:
            if src not in self.end:
                raise _Stuck
            start = max(start, self.end[src] + lat)
        if self.count[("F", 0)][r] > 0:
            self.bubble[r] += start - self.cur[r]
        self.end[k] = self.cur[r] = start + o.time
        self.mem[r] += o.mem
        self.order[r].append(k)

    def put(self, cat: str, chunk: int, r: int) -> None:
        n = self.count[(cat, chunk)][r]
        k = self.op_id(cat, r, chunk, n)
        if n >= self.M or k is None:
            raise _Stuck
        self._put_op(r, k)
        self.count[(cat, chunk)][r] += 1
        if cat == "B":
            w = self.index.get((self.kinds.w or "", self.stage(r, chunk), n))
            if w is None:
                raise _Stuck
            self.pending_w[r].append(w)

    def put_w(self, r: int) -> None:
        if not self.pending_w[r]:
            raise _Stuck
        self._put_op(r, self.pending_w[r].pop(0))

    def dep_end(self, k: int | None) -> float | None:
        return None if k is None else self.end.get(k)

    def warm_up(self) -> None:
        p, M = self.p, self.M
        for r in range(p):
            self.put("F", 0, r)
        for r in range(p - 1, -1, -1):
            if r < p - 1:
                src, dst = self.op_id("F", r + 1, 1, 0), self.op_id("F", r, 1, 0)
                assert src is not None
                back = self.end[src] + self._comm(src, dst)
                f_mem = self.program.ops[self.op_id("F", r, 0, 0)].mem  # type: ignore[index]
                f_time = self.program.ops[self.op_id("F", r, 0, 0)].time  # type: ignore[index]
                while (self.mem[r] + f_mem * (2 + 2 * r) <= self.limits[r] and self.cur[r] + f_time <= back
                       and self.count[("F", 0)][r] < M):
                    for j in range(r + 1):
                        self.put("F", 0, j)
            self.put("F", 1, r)
        chunk = 0
        for r in range(1, p):
            cf = self.count
            while (cf[("F", 0)][r] + cf[("F", 1)][r] < cf[("F", 0)][r - 1] + cf[("F", 1)][r - 1]
                   or cf[("F", 1)][r] <= cf[("F", 1)][r - 1] < M):
                for j in range(p - 1, r - 1, -1):
                    if cf[("F", chunk)][j] < M:
                        self.put("F", chunk, j)
                chunk = 1 - chunk

    def _comm(self, src: int, dst: int | None) -> float:
        """The latency of the edge ``src -> dst`` (0 when there is none)."""
        return 0.0 if dst is None else self.latency.get((src, dst), 0.0)

    def fill(self, r: int, src: int | None, dst: int | None, flag: bool) -> None:
        """Ws into the gap before ``dst``, whose input from ``src`` arrives after the edge's
        latency."""
        dep = self.dep_end(src)
        if dep is None:
            return
        assert src is not None
        comm = self._comm(src, dst)
        while self.pending_w[r] and dep + comm >= self.cur[r] + self.program.ops[self.pending_w[r][0]].time:
            self.put_w(r)
        if self.pending_w[r] and dep + comm - self.cur[r] > self.max_bubble(r) - self.bubble[r] and flag:
            self.put_w(r)

    def backward_round(self) -> None:
        p, M = self.p, self.M
        b0, b1 = self.count[("B", 0)], self.count[("B", 1)]
        for r in range(p):
            b_mem = self.program.ops[self.op_id("B", r, 1, 0)].mem  # type: ignore[index]
            while self.mem[r] + b_mem > self.limits[r]:
                self.put_w(r)
        first, second = [], []  # chunk-0 backwards (flow p-1 -> 0), chunk-1 backwards (0 -> p-1)
        for r in range(p):
            if b0[r] >= b1[r]:
                second.append(r)
            elif r == p - 1 or self.placed("B", r + 1, 0, b0[r]) or b1[r] >= M:
                first.append(r)
            else:
                second.append(r)
        for r, chunk in [(r, 0) for r in reversed(first)] + [(r, 1) for r in second]:
            if self.count[("B", chunk)][r] >= M:
                continue
            n = self.count[("B", chunk)][r]
            src = self.op_id("B", r + 1, 0, n) if chunk == 0 and r < p - 1 else (
                self.op_id("B", r - 1, 1, n) if chunk == 1 and r > 0 else None)
            self.fill(r, src, self.op_id("B", r, chunk, n), chunk == 0 or self.fill_b)
            self.put("B", chunk, r)

    def forward_round(self) -> None:
        p, M = self.p, self.M
        f0, f1 = self.count[("F", 0)], self.count[("F", 1)]
        for r in range(p):
            if f1[r] >= M:
                continue
            chunk: int | None = None
            if f1[r] >= f0[r]:
                chunk = 0
            elif r == p - 1 or self.placed("F", r + 1, 1, f1[r]):
                chunk = 1
            elif f0[r] < M and (r == 0 or self.placed("F", r - 1, 0, f0[r])):
                chunk = 0
            if chunk is None or self.count[("F", chunk)][r] >= M:
                continue
            k = self.op_id("F", r, chunk, self.count[("F", chunk)][r])
            if k is None:
                raise _Stuck
            while self.mem[r] + self.program.ops[k].mem > self.limits[r]:
                self.put_w(r)
            src = self.op_id("F", r - 1, 0, f0[r]) if chunk == 0 and r > 0 else (
                self.op_id("F", r + 1, 1, f1[r]) if chunk == 1 and r < p - 1 else None)
            self.fill(r, src, k, self.fill_f)
            self.put("F", chunk, r)

    def run(self) -> Orders:
        self.warm_up()
        for _ in range(2 * self.M):
            self.backward_round()
            self.forward_round()
        for r in range(self.p):
            while self.pending_w[r]:
                self.put_w(r)
        if len(self.end) != len(self.program.ops):
            raise _Stuck
        return Orders(tuple(tuple((k,) for k in x) for x in self.order), origin="zb-v")


def v_rounds(program: Program, limits: list[float]) -> list[Orders]:
    """The round-based V greedy for every fill_f / fill_b, each refined by re-running with its
    own per-rank bubbles as the approved bar until the worst bubble stops shrinking."""
    kinds = kinds_of(program)
    assert kinds is not None
    out = []
    for fill_f, fill_b in itertools.product((True, False), repeat=2):
        approved: list[float] | None = None
        best_bubble = math.inf
        for _ in range(8):
            g = _VRounds(program, limits, kinds, fill_f, fill_b, approved)
            try:
                orders = g.run()
            except _Stuck:
                break
            worst = max(g.bubble)
            if worst >= best_bubble - 1e-12:
                break
            best_bubble = worst
            out.append(orders)
            approved = list(g.bubble)
    return out
