"""``zb-auto``: the Zero Bubble paper's greedy automatic schedule search (Qi et al., ICLR 2024,
section 3.1), the family that produced ZB-1p (memory limit p*M_B) and ZB-2p (limit 2p*M_B).

Requires: one stage per rank (any permutation), split F / B / W kinds, the standard rules (F flows
down the stages, B flows back up, W after its own B). Times may differ per stage and per op; the
comm time is read from the edges' latencies; the memory limit is the program's (a ``mem_limit``
argument may tighten it: the schedule pass applies it; none if neither is given). Guarantees: orders
that respect every dependency and never take a rank over the limit (or a located error saying
the limit cannot hold the pipeline).

The heuristic, per the paper, built round by round (one microbatch per round):

1. Warm-up: each stage runs as many forwards as fit in the memory limit before the first
   backward reaches it (a stage never holds more warm-up forwards than the stage before it).
   Hyperparameter ``bubble_before_first_b``: allow one more forward even if it delays that B.
2. Steady state: one F and one B per stage per round. W fills every gap at least T_W long in
   front of an F or a B; a shorter gap also gets a W when it would not make this stage's total
   bubble exceed the worst stage's (hyperparameter ``greedy_w``). W also runs whenever the next
   F or B would exceed the memory limit.
3. A stage may skip its forward of a round when it is two or more forwards ahead of the next
   stage and the forward would not save any bubble (hyperparameter ``prioritize_b``).
4. At the end, each stage runs its remaining Ws.

Like the paper, every combination of the three binary hyperparameters is tried and the
schedule with the smallest span cost (max over ranks of last end - first start) is kept. Unless
``handcrafted=false``, the handcrafted ZB-H1 and ZB-H2 orders are candidates too when they fit
the limit: with uneven stages the greedy alone can lose to them. So with limit p*M_B (2p*M_B)
zb-auto is never worse than ZB-H1 (ZB-H2) by construction; tests check that the greedy alone is
not worse either on uniform stages.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping
from dataclasses import dataclass, field

from schedlang.ir import Orders, Program, Role, Value
from schedlang.schedulers.base import Arg, Scheduler
from schedlang.schedulers.heuristics import chain_placement, kinds_of
from schedlang.simulate import simulate
from schedlang.source import SchedlangError

EPS = 1e-9


class _NoFit(Exception):
    """The memory limit cannot hold what one greedy variant needs."""


@dataclass
class _Greedy:
    """One run of the heuristic with fixed hyperparameters."""

    program: Program
    limits: list[float]  # per stage
    bubble_before_first_b: bool
    prioritize_b: bool
    greedy_w: bool
    kinds: tuple[str, str, str] = ("F", "B", "W")
    S: int = 0
    M: int = 0
    count: dict[str, list[int]] = field(default_factory=dict)
    e: list[float] = field(default_factory=list)  # end of the last op on each stage
    mem: list[float] = field(default_factory=list)
    bubble: list[float] = field(default_factory=list)
    end: dict[int, float] = field(default_factory=dict)  # op id -> end time
    order: list[list[int]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.S, self.M = self.program.num_stages, self.program.num_microbatches
        self.count = {k: [0] * self.S for k in self.kinds}
        self.e = [0.0] * self.S
        self.mem = [0.0] * self.S
        self.bubble = [0.0] * self.S
        self.order = [[] for _ in range(self.S)]
        self.index = self.program.op_index()
        self.preds = self.program.preds()

    # -- helpers
    def op(self, kind: str, s: int, i: int) -> int:
        return self.index[(kind, s, i)]

    def next_id(self, kind: str, s: int) -> int:
        return self.op(kind, s, self.count[kind][s])

    def time(self, k: int) -> float:
        return self.program.ops[k].time

    def ready(self, k: int) -> float:
        """When op k's dependencies allow it to start (all of them must be placed)."""
        t = 0.0
        for src, lat in self.preds[k]:
            if src not in self.end:
                raise SchedlangError(
                    f"zb-auto: {self.program.ops[k].label} depends on {self.program.ops[src].label}, "
                    "which the round-by-round heuristic has not placed yet; it supports only the "
                    "standard F/B/W rules (std:fbw)", self.program.schedule_span)
            t = max(t, self.end[src] + lat)
        return t

    def max_bubble(self) -> float:
        return max(self.bubble)

    def put(self, kind: str, s: int) -> None:
        k = self.next_id(kind, s)
        o = self.program.ops[k]
        if self.mem[s] + o.mem > self.limits[s] + EPS:
            raise _NoFit(s)
        start = max(self.e[s], self.ready(k))
        if self.count[self.kinds[0]][s] > 0:
            self.bubble[s] += start - self.e[s]
        self.e[s] = start + o.time
        self.end[k] = self.e[s]
        self.mem[s] += o.mem
        self.count[kind][s] += 1
        self.order[s].append(k)

    # -- W placement
    def w_left(self, s: int) -> bool:
        f, b, w = self.kinds
        return self.count[w][s] < self.count[b][s]

    def free_memory_for(self, s: int, need: float) -> None:
        """Run Ws until ``need`` more fits under the limit."""
        while self.mem[s] + need > self.limits[s] + EPS:
            if not self.w_left(s):
                raise _NoFit(s)
            self.put(self.kinds[2], s)

    def fill_ws(self, s: int, ready: float) -> None:
        """Fill the gap before an op that can start at ``ready`` with Ws."""
        w = self.kinds[2]
        while self.w_left(s) and self.e[s] + self.time(self.next_id(w, s)) <= ready + EPS:
            self.put(w, s)
        if self.w_left(s) and self.e[s] < ready - EPS:
            # a gap shorter than T_W: a W delays the next op but may shorten the worst bubble
            if ready - self.e[s] > self.max_bubble() - self.bubble[s] or self.greedy_w:
                self.put(w, s)

    def put_after_ws(self, kind: str, s: int) -> None:
        k = self.next_id(kind, s)
        self.free_memory_for(s, self.program.ops[k].mem)
        self.fill_ws(s, self.ready(k))
        self.put(kind, s)

    # -- the rounds
    def warm_up(self) -> None:
        f, b, _ = self.kinds
        S = self.S
        for s in range(S):
            self.put(f, s)
        extra = [0] * S
        last_t = self.end[self.op(f, S - 1, 0)] + self.time(self.op(b, S - 1, 0))
        for s in range(S - 2, -1, -1):
            bk = self.op(b, s, 0)
            comm = max((lat for src, lat in self.preds[bk]), default=0.0)
            mem, cost = self.mem[s], self.e[s]
            while self.count[f][s] + extra[s] < self.M:
                fk = self.op(f, s, self.count[f][s] + extra[s])
                if mem + self.program.ops[fk].mem > self.limits[s] + EPS:
                    break
                stop = (cost + self.time(fk) > last_t + comm) if self.bubble_before_first_b else (cost >= last_t + comm)
                if stop:
                    break
                mem += self.program.ops[fk].mem
                cost += self.time(fk)
                extra[s] += 1
            last_t = max(cost, last_t + comm) + self.time(bk)
        for s in range(1, S):
            # fewer forwards than the stage before (its forwards feed these), unless it ran them all
            before = self.count[f][s - 1] + extra[s - 1]
            cap = before if before >= self.M else before - 1
            extra[s] = max(0, min(extra[s], cap - self.count[f][s]))
        for s in range(S):
            for _ in range(extra[s]):
                self.put(f, s)
        for s in range(S - 1, -1, -1):
            self.put(b, s)

    def wants_forward(self, s: int) -> bool:
        """Whether stage s runs a forward this round (rule 3 of the module docstring)."""
        f, b, w = self.kinds
        cf = self.count[f]
        if cf[s] >= self.M:
            return False
        if not (self.prioritize_b and s + 1 < self.S and cf[s] >= cf[s + 1] + 2):
            return True
        nf = self.next_id(f, s + 1) if cf[s + 1] < self.M else None
        nb = self.next_id(b, s + 1)
        comm = max((lat for src, lat in self.preds[self.next_id(b, s)] if self.program.ops[src].stage != s),
                   default=0.0)
        next_plus_fb = self.e[s + 1] + (self.time(nf) if nf is not None else 0.0) + self.time(nb) + comm
        if self.e[s] >= next_plus_fb:
            return False
        fk = self.next_id(f, s)
        mem, w_cost, n = self.mem[s] + self.program.ops[fk].mem, 0.0, 0
        while mem > self.limits[s] + EPS and self.count[w][s] + n < self.count[b][s]:
            wk = self.op(w, s, self.count[w][s] + n)
            w_cost += self.time(wk)
            mem += self.program.ops[wk].mem
            n += 1
        if self.e[s] + self.time(fk) + w_cost <= next_plus_fb:
            return True
        return not (next_plus_fb - self.e[s] <= self.max_bubble() - self.bubble[s])

    def round(self, i: int) -> None:
        f, b, _ = self.kinds
        want = [self.wants_forward(s) for s in range(self.S)]
        for s in range(self.S - 2, -1, -1):
            want[s] = want[s] and want[s + 1]
        for s in range(self.S):
            if want[s]:
                self.put_after_ws(f, s)
        for s in range(self.S - 1, -1, -1):
            assert self.count[b][s] == i
            k = self.next_id(b, s)
            self.free_memory_for(s, self.program.ops[k].mem)
            if s + 1 < self.S:
                self.fill_ws(s, self.ready(k))
            if s == 0 and self.count[f][s] == self.M:
                while self.w_left(s):
                    self.put(self.kinds[2], s)
            self.put(b, s)

    def run(self) -> list[list[int]]:
        self.warm_up()
        for i in range(1, self.M):
            self.round(i)
        for s in range(self.S):
            while self.count[self.kinds[2]][s] < self.M:
                self.put(self.kinds[2], s)
        return self.order

    def cost(self) -> float:
        """The paper's span cost: max over stages of (last end - first start)."""
        f = self.kinds[0]
        out = 0.0
        for s in range(self.S):
            first = self.op(f, s, 0)
            out = max(out, self.e[s] - (self.end[first] - self.time(first)))
        return out


def _limits(program: Program) -> list[float]:
    """Per-stage limits: the program's (the schedule pass has applied a ``mem_limit`` argument)."""
    per_rank = list(program.mem_limit) if program.mem_limit is not None else [math.inf] * program.num_ranks
    return [per_rank[program.placement[s]] for s in range(program.num_stages)]


def zb_auto(program: Program, args: Mapping[str, Value]) -> Orders:
    """Run the greedy for every hyperparameter combination; keep the best (see the module docstring)."""
    kinds = kinds_of(program)
    if kinds is None or kinds.b is None or kinds.w is None or not chain_placement(program):
        raise SchedlangError("scheduler 'zb-auto' needs one stage per rank and split F / B / W kinds "
                             f"(import std:fbw); '{program.name}' has {program.num_stages} stage(s) on "
                             f"{program.num_ranks} rank(s)", program.schedule_span)
    assert "mem_limit" not in args, "the schedule pass resolves the mem_limit argument"
    limits = _limits(program)
    best: _Greedy | None = None
    stuck: int | None = None
    for a, b, c in itertools.product((True, False), repeat=3):
        g = _Greedy(program, limits, a, b, c, kinds=(kinds.f, kinds.b, kinds.w))
        try:
            g.run()
        except _NoFit as exc:
            stuck = exc.args[0]
            continue
        if best is None or g.cost() < best.cost() - EPS:
            best = g
    if best is None:
        assert stuck is not None
        r = program.placement[stuck]
        need = max(o.mem for o in program.ops if o.stage == stuck and program.role(o) is Role.F)
        raise SchedlangError(f"zb-auto: the memory limit {limits[stuck]:g} of rank {r} cannot hold the "
                             f"pipeline (one forward alone needs {need:g} and each stage must hold its "
                             "warm-up forwards); raise mem_limit", program.mem_limit_span or program.schedule_span)
    ranks: list[tuple[tuple[int, ...], ...]] = [() for _ in range(program.num_ranks)]
    for s, order in enumerate(best.order):
        ranks[program.placement[s]] = tuple((k,) for k in order)
    orders = Orders(tuple(ranks), origin="zb-auto")
    if args.get("handcrafted", True):
        orders = _best_with_handcrafted(program, orders, best.cost(), limits)
    return orders


def _best_with_handcrafted(program: Program, orders: Orders, cost: float, limits: list[float]) -> Orders:
    """The greedy's orders, or ZB-H1's / ZB-H2's when they fit the limits and cost less (with
    uneven stages the greedy can lose to them; the paper likewise starts its optimizer from the
    best heuristic)."""
    from dataclasses import replace

    from schedlang.schedulers.heuristics import fits_memory, zb_h1, zb_h2

    per_rank = [math.inf] * program.num_ranks
    for s, lim in enumerate(limits):
        per_rank[program.placement[s]] = lim
    limited = replace(program, mem_limit=tuple(per_rank))
    for fn in (zb_h1, zb_h2):
        cand = fn(program, {})
        if fits_memory(limited, cand):
            c = simulate(program.with_orders(cand)).cost
            if c < cost - EPS:
                orders, cost = cand, c
    return Orders(orders.ranks, origin="zb-auto")


def _applies(program: Program) -> bool:
    k = kinds_of(program)
    return k is not None and k.b is not None and chain_placement(program)


SCHEDULER = Scheduler(
    name="zb-auto",
    summary="Zero Bubble automatic greedy search under mem_limit (ZB-1p: p*M_B, ZB-2p: 2p*M_B)",
    fn=zb_auto,
    warm_start=True,
    applies=_applies,
    args={"mem_limit": Arg(float, None, "per-rank memory limit (at most the program's; default: the program's)"),
          "handcrafted": Arg(bool, True, "also try ZB-H1 / ZB-H2 and keep them when they fit and cost less")},
)
