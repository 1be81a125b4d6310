"""The schedlang IR: a resolved pipeline, its op instances, dependency edges and schedule.

A :class:`Program` is what the front end (parse, check, lower) produces and what every pass
consumes and returns. All nodes are frozen, slotted dataclasses with tuple fields; source spans are
kept out of equality. Behaviour lives in passes and in the simulator, not here.

Ops are numbered densely (``Program.ops[k].id == k``). A schedule is either an explicit
:class:`Orders` (one tuple of slots per rank; a slot is a tuple of op ids that run together,
normally one) or a :class:`SchedulerCall` that the ``schedule`` pass replaces with orders.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import Enum
from graphlib import CycleError
from typing import Any

from schedlang.source import Span

Value = int | float | bool | str | tuple[Any, ...]


class Role(Enum):
    """What an op kind means to codegen and the runtime."""

    F = "F"  # forward
    B = "B"  # backward for the input (activation gradient)
    W = "W"  # backward for the weights
    BW = "BW"  # fused full backward
    USER = "USER"  # a user kind with only a time and a memory effect (e.g. recompute)

    @property
    def is_backward(self) -> bool:
        return self in (Role.B, Role.BW)


# Kinds named like a role get that role unless declared otherwise.
DEFAULT_ROLES = {"F": Role.F, "B": Role.B, "W": Role.W, "BW": Role.BW}


@dataclass(frozen=True, slots=True)
class OpKind:
    name: str
    role: Role
    span: Span | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class Op:
    """One op instance: kind, stage and microbatch, with its rank, time and memory delta."""

    id: int
    kind: str
    stage: int
    mb: int
    rank: int
    time: float
    mem: float

    @property
    def label(self) -> str:
        return f"{self.kind}[{self.stage},{self.mb}]"


@dataclass(frozen=True, slots=True)
class Edge:
    """``dst`` may start ``latency`` after ``src`` ends. ``rule`` indexes ``Program.rule_spans``."""

    src: int
    dst: int
    latency: float
    rule: int = -1


@dataclass(frozen=True, slots=True)
class Orders:
    """Per-rank op orders. ``ranks[r]`` is a tuple of slots; a slot is a tuple of op ids."""

    ranks: tuple[tuple[tuple[int, ...], ...], ...]
    # spans[r][k] is where slot k of rank r was written (None for generated orders)
    spans: tuple[tuple[Span | None, ...], ...] | None = field(default=None, compare=False, repr=False)
    origin: str = field(default="explicit", compare=False)

    def slot_span(self, rank: int, k: int) -> Span | None:
        if self.spans is None or rank >= len(self.spans) or k >= len(self.spans[rank]):
            return None
        return self.spans[rank][k]


@dataclass(frozen=True, slots=True)
class SchedulerCall:
    """A named scheduler with its (evaluated) arguments, to be run by the ``schedule`` pass."""

    name: str
    args: tuple[tuple[str, Value], ...]
    span: Span | None = field(default=None, compare=False, repr=False)
    arg_spans: tuple[Span | None, ...] = field(default=(), compare=False, repr=False)


Schedule = Orders | SchedulerCall | None

WEIGHT_POLICIES = ("flush", "stash", "stash+vsync", "2bw")


@dataclass(frozen=True, slots=True)
class Weights:
    """The weight-update policy (see docs/async.md).

    ``flush``: one optimizer step per window, every microbatch sees the same weights.
    ``stash`` (PipeDream): each stage updates after every microbatch's backward; a microbatch's
    forward and backward on a stage use the version that was current at its forward there.
    ``stash+vsync``: like ``stash``, but every stage uses the version stage 0 had at the
    microbatch's forward. ``2bw`` (PipeDream-2BW): each stage updates once per ``every``
    microbatches (their mean gradient); microbatches of group ``g`` use version ``g - 1``.
    ``mem``: memory of one weight version of a stage, counted for every version beyond the
    current one that a stage must keep."""

    policy: str = "flush"
    every: int = 0  # 2bw only: microbatches per update
    mem: float = 0.0
    span: Span | None = field(default=None, compare=False, repr=False)

    @property
    def asynchronous(self) -> bool:
        return self.policy != "flush"


@dataclass(frozen=True, slots=True)
class Program:
    """A resolved pipeline and (optionally) its schedule."""

    name: str
    params: tuple[tuple[str, Value], ...]
    num_ranks: int
    num_stages: int
    num_microbatches: int
    placement: tuple[int, ...]  # stage -> rank
    kinds: tuple[OpKind, ...]
    ops: tuple[Op, ...]
    edges: tuple[Edge, ...]
    mem_limit: tuple[float, ...] | None = None  # per rank; None = unlimited
    overlap: str = "sum"  # how a multi-op slot's time adds up: "sum" or "max"
    schedule: Schedule = None
    weights: Weights = Weights()
    rule_spans: tuple[Span | None, ...] = field(default=(), compare=False, repr=False)
    schedule_span: Span | None = field(default=None, compare=False, repr=False)
    mem_limit_span: Span | None = field(default=None, compare=False, repr=False)
    # per stage: time of its data-parallel gradient all-reduce (``allreduce``); None = not modelled
    allreduce: tuple[float, ...] | None = None
    # Located warnings from the front end (rendered with severity "warning" by the CLI).
    warnings: tuple[Any, ...] = field(default=(), compare=False, repr=False)
    # Derived lookups (op index, roles, the dependency graph: adjacency, topological order, earliest
    # starts); rebuilt lazily, never compared. Only functions of the ops, edges and kinds go here:
    # with_orders shares the cache between a program and its scheduled copies.
    _cache: dict[str, Any] = field(default_factory=dict, compare=False, repr=False, init=False, hash=False)

    # -- lookups (pure functions of the fields above, memoised)
    def op_index(self) -> Mapping[tuple[str, int, int], int]:
        idx = self._cache.get("op_index")
        if idx is None:
            idx = {(o.kind, o.stage, o.mb): o.id for o in self.ops}
            self._cache["op_index"] = idx
        return idx  # type: ignore[no-any-return]

    def find(self, kind: str, stage: int, mb: int) -> Op | None:
        k = self.op_index().get((kind, stage, mb))
        return None if k is None else self.ops[k]

    # -- the dependency graph (pure functions of ``ops`` and ``edges``, memoised; the schedule
    # is not part of it, so :meth:`with_orders` keeps the cache)
    def preds(self) -> tuple[tuple[tuple[int, float], ...], ...]:
        """For every op, its (predecessor op id, latency) pairs."""
        pr = self._cache.get("preds")
        if pr is None:
            lists: list[list[tuple[int, float]]] = [[] for _ in self.ops]
            for e in self.edges:
                lists[e.dst].append((e.src, e.latency))
            pr = tuple(tuple(x) for x in lists)
            self._cache["preds"] = pr
        return pr  # type: ignore[no-any-return]

    def succs(self) -> tuple[tuple[tuple[int, float], ...], ...]:
        """For every op, its (successor op id, latency) pairs."""
        su = self._cache.get("succs")
        if su is None:
            lists: list[list[tuple[int, float]]] = [[] for _ in self.ops]
            for e in self.edges:
                lists[e.src].append((e.dst, e.latency))
            su = tuple(tuple(x) for x in lists)
            self._cache["succs"] = su
        return su  # type: ignore[no-any-return]

    def topo(self) -> tuple[int, ...]:
        """Every op id in a topological order of the dependency graph (see
        :func:`topological_order`). Raises :class:`graphlib.CycleError` (``args[1]``: the op ids
        of one cycle, in dependency order) if the graph has a cycle."""
        order = self._cache.get("topo")
        if order is None:
            order = topological_order([[d for d, _ in s] for s in self.succs()],
                                      [[s for s, _ in p] for p in self.preds()])
            self._cache["topo"] = order
        return order  # type: ignore[no-any-return]

    def heads(self) -> tuple[float, ...]:
        """The earliest start of every op: the longest path (op times plus edge latencies) from
        the start of a source op to its start."""
        got = self._cache.get("heads")
        if got is None:
            got = self.longest_from(*(k for k, p in enumerate(self.preds()) if not p))
            self._cache["heads"] = got
        return got  # type: ignore[no-any-return]

    def tails(self) -> tuple[float, ...]:
        """For every op, the longest path from its start to the end of a sink op (at least its own
        time): how long everything takes from the op's start on."""
        got = self._cache.get("tails")
        if got is None:
            got = self.longest_to(*(k for k, s in enumerate(self.succs()) if not s))
            self._cache["tails"] = got
        return got  # type: ignore[no-any-return]

    def longest_from(self, *srcs: int) -> tuple[float, ...]:
        """The longest dependency path from the start of any of ``srcs`` to the start of every op
        (``-inf`` where none reaches it). Not memoised (one pass over the edges)."""
        dist = [-math.inf] * len(self.ops)
        for k in srcs:
            dist[k] = 0.0
        succs, ops = self.succs(), self.ops
        for k in self.topo():
            if dist[k] == -math.inf:
                continue
            for d, lat in succs[k]:
                dist[d] = max(dist[d], dist[k] + ops[k].time + lat)
        return tuple(dist)

    def longest_to(self, *dsts: int) -> tuple[float, ...]:
        """The longest dependency path from the start of every op to the end of any of ``dsts``
        (``-inf`` where it reaches none). Not memoised (one pass over the edges)."""
        ops = self.ops
        reach = [-math.inf] * len(ops)
        for k in dsts:
            reach[k] = ops[k].time
        succs = self.succs()
        for k in reversed(self.topo()):
            for d, lat in succs[k]:
                if reach[d] > -math.inf:
                    reach[k] = max(reach[k], ops[k].time + lat + reach[d])
        return tuple(reach)

    def kind(self, name: str) -> OpKind:
        for k in self.kinds:
            if k.name == name:
                return k
        raise KeyError(name)

    def role(self, op: Op) -> Role:
        roles = self._cache.get("roles")
        if roles is None:
            roles = {k.name: k.role for k in self.kinds}
            self._cache["roles"] = roles
        return roles[op.kind]  # type: ignore[no-any-return]

    def stages_on(self, rank: int) -> tuple[int, ...]:
        return tuple(s for s, r in enumerate(self.placement) if r == rank)

    def ops_on(self, rank: int) -> tuple[Op, ...]:
        return tuple(o for o in self.ops if o.rank == rank)

    def param(self, name: str, default: Value | None = None) -> Value | None:
        for k, v in self.params:
            if k == name:
                return v
        return default

    @property
    def orders(self) -> Orders:
        """The explicit orders; only valid after scheduling."""
        assert isinstance(self.schedule, Orders), "program is not scheduled yet"
        return self.schedule

    def with_orders(self, orders: Orders) -> Program:
        """The same program with ``orders`` as its schedule. Everything memoised is a function of
        the ops, edges and kinds, which orders do not change, so the copy shares the cache."""
        out = replace(self, schedule=orders)
        object.__setattr__(out, "_cache", self._cache)
        return out


def topological_order(succ: Sequence[Sequence[int]],
                      pred: Sequence[Sequence[int]] | None = None) -> tuple[int, ...]:
    """A topological order of the graph on ``0 .. len(succ) - 1`` with successor lists ``succ``.

    Kahn's algorithm with a stack (the last ready node first): the order the optimizer's
    tie-breaks have always used, so it is kept rather than :mod:`graphlib`'s, which releases nodes
    level by level. On a cycle it raises :class:`graphlib.CycleError`, as
    :meth:`graphlib.TopologicalSorter.prepare` does, with one cycle's nodes in edge order as
    ``args[1]`` (graphlib repeats the first node at the end; this does not), found by walking back from the lowest node left over through its first left-over
    predecessor (in ``pred``'s order, by default ascending) until a node repeats."""
    n = len(succ)
    indeg = [0] * n
    for k in range(n):
        for d in succ[k]:
            indeg[d] += 1
    stack = [k for k in range(n) if indeg[k] == 0]
    out: list[int] = []
    while stack:
        k = stack.pop()
        out.append(k)
        for d in succ[k]:
            indeg[d] -= 1
            if indeg[d] == 0:
                stack.append(d)
    if len(out) == n:
        return tuple(out)
    if pred is None:
        lists: list[list[int]] = [[] for _ in range(n)]
        for k in range(n):
            for d in succ[k]:
                lists[d].append(k)
        pred = lists
    k = next(i for i in range(n) if indeg[i] > 0)
    path: list[int] = []
    while k not in path:
        path.append(k)
        k = next(s for s in pred[k] if indeg[s] > 0)
    raise CycleError("dependency cycle", path[path.index(k):][::-1])


# --------------------------------------------------------------------------- printer


def _fmt_value(v: Value) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, tuple):
        return "[" + ", ".join(_fmt_value(x) for x in v) + "]"
    if isinstance(v, float):
        return repr(v)
    if isinstance(v, str):
        return f'"{v}"'
    return str(v)


def _fmt_num(x: float) -> str:
    return repr(int(x)) if float(x).is_integer() and abs(x) < 1e15 else repr(float(x))


def format_program(p: Program) -> str:
    """A stable, human-readable dump of the IR (used by ``--emit ir`` and golden tests)."""
    out = [f"program {p.name}"]
    out += [f"  param {k} = {_fmt_value(v)}" for k, v in p.params]
    out.append(f"  ranks {p.num_ranks} stages {p.num_stages} microbatches {p.num_microbatches}")
    out.append(f"  placement {' '.join(map(str, p.placement))}")
    if p.mem_limit is not None:
        out.append(f"  mem_limit {' '.join(_fmt_num(x) for x in p.mem_limit)}")
    if p.allreduce is not None:
        out.append(f"  allreduce {' '.join(_fmt_num(x) for x in p.allreduce)}")
    if p.overlap != "sum":
        out.append(f"  overlap {p.overlap}")
    if p.weights.asynchronous:
        w = p.weights
        out.append(f"  weights {w.policy}" + (f" every {w.every}" if w.policy == "2bw" else "")
                   + f" mem {_fmt_num(w.mem)}")
    out += [f"  kind {k.name} role {k.role.value}" for k in p.kinds]
    out.append(f"ops {len(p.ops)}")
    for o in p.ops:
        out.append(f"  {o.id} {o.label} rank {o.rank} time {_fmt_num(o.time)} mem {_fmt_num(o.mem)}")
    out.append(f"edges {len(p.edges)}")
    for e in p.edges:
        out.append(f"  {p.ops[e.src].label} -> {p.ops[e.dst].label} latency {_fmt_num(e.latency)}")
    sched = p.schedule
    if isinstance(sched, SchedulerCall):
        args = ", ".join(f"{k}={_fmt_value(v)}" for k, v in sched.args)
        out.append(f'schedule "{sched.name}"({args})')
    elif isinstance(sched, Orders):
        out.append(f"orders ({sched.origin})")
        out += [f"  rank {r}: {format_slots(p, slots)}" for r, slots in enumerate(sched.ranks)]
    return "\n".join(out) + "\n"


def format_slots(p: Program, slots: tuple[tuple[int, ...], ...]) -> str:
    return " ".join("&".join(p.ops[k].label for k in slot) for slot in slots)


def format_orders(p: Program) -> str:
    """One line per rank: its ops in order (``--emit orders``)."""
    return "".join(f"rank {r}: {format_slots(p, slots)}\n" for r, slots in enumerate(p.orders.ranks))
