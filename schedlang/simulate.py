"""The timed simulator.

Given a scheduled program, every slot starts as early as its rank and its dependencies allow:
``start = max(end of the rank's previous slot, max over predecessors of end + latency)``. A slot's
duration is the sum of its ops' times (``overlap sum``) or their maximum (``overlap max``).
Because start times are a fixed point of that rule, any topological processing order gives the
same result; the simulator walks ranks' heads Kahn-style in O(ops + edges).

Data-parallel gradient reduction (``allreduce``, per stage): when a program gives it, each
stage's all-reduce starts when the last op of that stage ends (its last backward) and runs on
its rank's communication channel, beside the computation; one rank's reductions run one after
another. A rank ends when both its last op and its last reduction have ended, so a reduction
the schedule cannot hide behind later work lengthens the rank's span and counts as bubble.

Reports (the Zero Bubble paper's definitions, Qi et al., ICLR 2024): makespan; per rank busy time,
span (first start to last end), idle time within the span and peak memory; ``cost`` = the largest
span; ``bubble`` = cost minus the busiest rank's work; ``bubble_rate`` = bubble / cost (the paper's
definition; a rank's start offset is not counted; computed by
:func:`schedlang.traceformat.span_bubble`, which the runtime's measured bubble uses too). An order
that can never finish raises :class:`DeadlockError` naming the ranks and the ops they wait on.

:func:`shared_makespan` answers a different question: the makespan when the ranks do not each
have a processor but share a few (processes on one CPU), with the cores shared equally among the
ranks computing at each moment. ``schedlang tune`` predicts with it when the ranks outnumber the
cores they run on.

Under an asynchronous weight-update policy (``weights stash``, ``stash+vsync``, ``2bw``: see
:mod:`schedlang.weights`) the program's microbatches are a window of a continuous stream with no
flush. Peak memory then counts the weight versions each stage keeps beyond its current one
(``mem`` per version), ``peak_versions`` gives the most versions per stage, and
``steady_time_per_mb`` the time per microbatch once the stream runs: the mean spacing of the
first stage's forwards issued after its rank's first backward (the fill is over), i.e. the
inverse of the steady-state throughput. It is ``None`` when the window has fewer than two such
forwards (raise the number of microbatches).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from schedlang.ir import Orders, Program, Role
from schedlang.source import Note, SchedlangError
from schedlang.traceformat import span_bubble
from schedlang.weights import weight_plan


class DeadlockError(SchedlangError):
    """The per-rank orders wait on each other in a cycle (or a rank waits on itself)."""


@dataclass(frozen=True, slots=True)
class RankStats:
    rank: int
    busy: float
    span: float
    idle: float
    peak_memory: float
    first_start: float
    last_end: float

    def as_dict(self) -> dict[str, float | int]:
        return {"rank": self.rank, "busy": self.busy, "span": self.span, "idle": self.idle,
                "peak_memory": self.peak_memory, "start": self.first_start, "end": self.last_end}


@dataclass(frozen=True, slots=True)
class Simulation:
    makespan: float
    cost: float
    bubble: float
    bubble_rate: float
    ranks: tuple[RankStats, ...]
    start: tuple[float, ...]  # per op id
    end: tuple[float, ...]  # per op id
    weights: str = "flush"  # the weight-update policy
    peak_versions: tuple[int, ...] = ()  # per stage, under an asynchronous policy
    steady_time_per_mb: float | None = None  # under an asynchronous policy (module docstring)

    def as_dict(self) -> dict[str, object]:
        out: dict[str, object] = {"makespan": self.makespan, "cost": self.cost, "bubble": self.bubble,
                                  "bubble_rate": self.bubble_rate, "ranks": [r.as_dict() for r in self.ranks]}
        if self.weights != "flush":
            out.update(weights=self.weights, peak_versions=list(self.peak_versions),
                       steady_time_per_mb=self.steady_time_per_mb)
        return out


def memory_profile(program: Program, rank: int) -> list[float]:
    """Memory level on ``rank`` after each op of its order (ops of a slot in slot order), with the
    extra weight versions its stages hold under an asynchronous policy."""
    plan = weight_plan(program)
    extra = plan.held[rank] if plan is not None else None
    level = 0.0
    out = []
    for slot in program.orders.ranks[rank]:
        for k in slot:
            level += program.ops[k].mem
            out.append(level)
    if extra is not None and plan is not None:
        out = [x + plan.mem * e for x, e in zip(out, extra, strict=True)]
    return out


def steady_time_per_mb(program: Program, start: tuple[float, ...]) -> float | None:
    """Time per microbatch of a flush-free stream in steady state (see the module docstring)."""
    if not program.num_stages:
        return None
    rank = program.placement[0]
    fwd: list[float] = []
    started = False
    for slot in program.orders.ranks[rank]:
        for k in slot:
            op = program.ops[k]
            role = program.role(op)
            if role is Role.F and op.stage == 0 and started:
                fwd.append(start[k])
            elif role in (Role.B, Role.W, Role.BW):
                started = True
    if len(fwd) < 2:
        return None
    return (fwd[-1] - fwd[0]) / (len(fwd) - 1)


def simulate(program: Program) -> Simulation:  # noqa: C901 - one tight loop, kept together for speed
    """Simulate a scheduled program (requires complete orders; see ``verify``)."""
    orders: Orders = program.orders
    ops = program.ops
    n = len(ops)
    R = program.num_ranks
    preds = program.preds()
    succs = program.succs()
    use_max = program.overlap == "max"
    slot_of = [-1] * n  # global slot number of each op
    slot_rank: list[int] = []
    slot_ops: list[tuple[int, ...]] = []
    heads = [0] * R
    first_slot = [0] * R
    for r, slots in enumerate(orders.ranks):
        first_slot[r] = len(slot_ops)
        for slot in slots:
            g = len(slot_ops)
            for k in slot:
                slot_of[k] = g
            slot_rank.append(r)
            slot_ops.append(slot)
    assert all(x >= 0 for x in slot_of), "simulate() needs every op in an order (run verify first)"
    nslots = len(slot_ops)
    pending = [0] * nslots
    for g, slot in enumerate(slot_ops):
        pending[g] = sum(1 for k in slot for (src, _) in preds[k] if slot_of[src] != g)
    limit = [first_slot[r] + len(orders.ranks[r]) for r in range(R)]
    heads = list(first_slot)
    end = [0.0] * n
    start = [0.0] * n
    free = [0.0] * R
    busy = [0.0] * R
    first = [-1.0] * R
    stack = [r for r in range(R) if heads[r] < limit[r] and pending[heads[r]] == 0]
    done = 0
    while stack:
        r = stack.pop()
        g = heads[r]
        slot = slot_ops[g]
        t0 = free[r]
        dur = 0.0
        for k in slot:
            for src, lat in preds[k]:
                if slot_of[src] != g:
                    t = end[src] + lat
                    if t > t0:
                        t0 = t
            d = ops[k].time
            dur = (d if d > dur else dur) if use_max else dur + d
        t1 = t0 + dur
        for k in slot:
            start[k] = t0
            end[k] = t1
        if first[r] < 0:
            first[r] = t0
        free[r] = t1
        busy[r] += dur
        done += 1
        heads[r] = g + 1
        if g + 1 < limit[r] and pending[g + 1] == 0:
            stack.append(r)
        for k in slot:
            for dst, _ in succs[k]:
                h = slot_of[dst]
                if h == g:
                    continue
                pending[h] -= 1
                if pending[h] == 0:
                    r2 = slot_rank[h]
                    if heads[r2] == h:
                        stack.append(r2)
    if done < nslots:
        raise _deadlock(program, heads, limit, slot_ops, slot_of, first_slot, end_known=set(
            k for g in range(nslots) for k in slot_ops[g] if _executed(g, heads, slot_rank, first_slot)))
    if program.allreduce is not None:
        free = _with_reductions(program, free, end)
    stats = []
    for r in range(R):
        mem = memory_profile(program, r)
        peak = max([0.0] + mem)
        f = max(first[r], 0.0)
        span = free[r] - f if limit[r] > first_slot[r] else 0.0
        stats.append(RankStats(r, busy[r], span, span - busy[r], peak, f, free[r]))
    makespan = max(free) if R else 0.0
    fig = span_bubble(busy, [s.span for s in stats])
    plan = weight_plan(program)
    if plan is None:
        return Simulation(makespan, fig.cost, fig.bubble, fig.bubble_rate, tuple(stats), tuple(start), tuple(end))
    return Simulation(makespan, fig.cost, fig.bubble, fig.bubble_rate, tuple(stats), tuple(start), tuple(end),
                      plan.policy, plan.peak_versions, steady_time_per_mb(program, tuple(start)))


def _with_reductions(program: Program, free: list[float], end: list[float]) -> list[float]:
    """Each rank's end once its stages' gradient all-reduces have run (see the module docstring)."""
    assert program.allreduce is not None
    ready: dict[tuple[int, int], float] = {}  # (rank, stage) -> end of the stage's last op there
    for o in program.ops:
        ready[(o.rank, o.stage)] = max(ready.get((o.rank, o.stage), 0.0), end[o.id])
    out = list(free)
    channel = [0.0] * program.num_ranks
    for (r, s), t_ready in sorted(ready.items(), key=lambda kv: (kv[1], kv[0])):
        if program.allreduce[s] > 0:
            channel[r] = max(channel[r], t_ready) + program.allreduce[s]
    return [max(f, c) for f, c in zip(out, channel, strict=True)]


def _executed(g: int, heads: list[int], slot_rank: list[int], first_slot: list[int]) -> bool:
    return g < heads[slot_rank[g]]


def _deadlock(program: Program, heads: list[int], limit: list[int], slot_ops: list[tuple[int, ...]],
              slot_of: list[int], first_slot: list[int], end_known: set[int]) -> DeadlockError:
    """Build the wait-for chain among stuck ranks and describe its cycle."""
    ops = program.ops
    preds = program.preds()
    waits: dict[int, tuple[int, int]] = {}  # rank -> (its head op, the unfinished op it waits for)
    for r in range(program.num_ranks):
        if heads[r] >= limit[r]:
            continue
        for k in slot_ops[heads[r]]:
            blocker = next((src for src, _ in preds[k] if src not in end_known and slot_of[src] != heads[r]), None)
            if blocker is not None:
                waits[r] = (k, blocker)
                break
    assert waits, "a stuck simulation must have a waiting rank"
    r = min(waits)
    chain: list[int] = []
    while r not in chain:
        chain.append(r)
        _, blocker = waits[r]
        r = ops[blocker].rank
        if r not in waits:  # waits on a rank that is itself not stuck at a head: should not happen
            break
    cycle = chain[chain.index(r):] if r in chain else chain
    orders = program.orders
    notes = []
    parts = []
    for x in cycle:
        k, blocker = waits[x]
        parts.append(f"rank {x} waits at {ops[k].label} for {ops[blocker].label} (rank {ops[blocker].rank})")
        pos = heads[x] - first_slot[x]
        notes.append(Note(orders.slot_span(x, pos), f"rank {x} is stuck here, at {ops[k].label}"))
    if len(cycle) == 1:
        x = cycle[0]
        k, blocker = waits[x]
        msg = (f"the order of rank {x} runs {ops[k].label} before {ops[blocker].label}, "
               f"which it depends on")
    else:
        msg = "deadlock: " + "; ".join(parts)
    first_note = notes[0]
    return DeadlockError(msg, first_note.span, tuple(notes[1:]))


def shared_makespan(program: Program, cores: float) -> float:  # noqa: C901 - one event loop
    """The makespan when the ranks share ``cores`` processors (fluid processor sharing).

    :func:`simulate` gives every rank a processor of its own. When more ranks than processors run
    on one machine (``schedlang run`` on a CPU with more processes than cores), the ranks that
    are computing at a moment share the cores equally: with ``k`` of them busy, each slot runs at
    rate ``min(1, cores / k)`` of its own speed; a rank waiting for a message uses no core, and
    latencies (communication) run beside the computation. Dependencies, orders and latencies are
    as in :func:`simulate`; with ``cores >= num_ranks`` the result is :func:`simulate`'s makespan.
    Data-parallel reductions are not modelled here.
    """
    if cores <= 0:
        raise ValueError("shared_makespan needs a positive number of cores")
    orders: Orders = program.orders
    ops = program.ops
    R = program.num_ranks
    preds = program.preds()
    succs = program.succs()
    use_max = program.overlap == "max"
    slot_of: dict[int, tuple[int, int]] = {}  # op -> (rank, index in the rank's order)
    for r, slots in enumerate(orders.ranks):
        for i, slot in enumerate(slots):
            for k in slot:
                slot_of[k] = (r, i)
    assert len(slot_of) == len(ops), "shared_makespan() needs every op in an order (run verify first)"

    def work(slot: tuple[int, ...]) -> float:
        times = [ops[k].time for k in slot]
        return (max(times) if use_max else sum(times)) if times else 0.0

    def inputs(r: int, i: int) -> int:  # the slot's dependencies on ops outside it
        return sum(1 for k in orders.ranks[r][i] for src, _ in preds[k] if slot_of[src] != (r, i))

    missing = [[inputs(r, i) for i in range(len(orders.ranks[r]))] for r in range(R)]
    dep_time = [[0.0] * len(orders.ranks[r]) for r in range(R)]  # latest end + latency seen so far
    end = [0.0] * len(ops)
    head = [0] * R
    free = [0.0] * R  # when the rank's previous slot ended
    left: dict[int, float] = {}  # running ranks: the work left in their head slot
    t = 0.0
    eps = 1e-12

    def finish(r: int, now: float) -> None:
        i = head[r]
        for k in orders.ranks[r][i]:
            end[k] = now
            for dst, lat in succs[k]:
                r2, i2 = slot_of[dst]
                if (r2, i2) != (r, i):
                    missing[r2][i2] -= 1
                    dep_time[r2][i2] = max(dep_time[r2][i2], now + lat)
        head[r] = i + 1
        free[r] = now

    while True:
        # start every head slot whose inputs have arrived; zero-work slots end at once
        progressed = True
        while progressed:
            progressed = False
            for r in range(R):
                i = head[r]
                if r in left or i >= len(orders.ranks[r]) or missing[r][i]:
                    continue
                if max(free[r], dep_time[r][i]) <= t + eps:
                    w = work(orders.ranks[r][i])
                    if w <= eps:
                        finish(r, t)
                        progressed = True
                    else:
                        left[r] = w
        waiting = [max(free[r], dep_time[r][head[r]]) for r in range(R)
                   if r not in left and head[r] < len(orders.ranks[r]) and not missing[r][head[r]]]
        if not left and not waiting:
            break
        rate = min(1.0, cores / len(left)) if left else 0.0
        step = min(left.values()) / rate if left else math.inf
        if waiting:
            step = min(step, min(waiting) - t)
        t += max(step, 0.0)
        for r in list(left):
            left[r] -= step * rate
            if left[r] <= eps * max(1.0, t):
                del left[r]
                finish(r, t)
    if any(head[r] < len(orders.ranks[r]) for r in range(R)):
        stuck = [r for r in range(R) if head[r] < len(orders.ranks[r])]
        raise DeadlockError(f"the orders of ranks {stuck} wait on each other (shared-core simulation)")
    return max(free) if R else 0.0
