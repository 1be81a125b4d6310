"""The IR verifier: the invariants every pass must keep.

``verify(program)`` raises the first violated invariant as a located error:

- structure: ops numbered densely; each op's rank is its stage's rank; edges name real ops;
- the dependency graph is acyclic (a cycle is reported with the ops on it and its rules);
- when scheduled: every op appears exactly once, in the order of its own rank; no slot holds
  two ops that depend on each other; same-rank dependencies run in order; the orders cannot
  deadlock across ranks; memory never exceeds the limit on any rank at any point (with the
  weight versions an asynchronous ``weights`` policy keeps, as the simulator counts them).
"""

from __future__ import annotations

from graphlib import CycleError

from schedlang.ir import Orders, Program
from schedlang.simulate import simulate
from schedlang.source import Note, SchedlangError
from schedlang.weights import weight_plan

EPS = 1e-9


def verify(program: Program) -> None:
    """Raise :class:`SchedlangError` for the first broken invariant (see module docstring)."""
    verify_structure(program)
    verify_acyclic(program)
    if isinstance(program.schedule, Orders):
        verify_orders(program)


def verify_structure(p: Program) -> None:
    assert len(p.placement) == p.num_stages, "placement length != number of stages"
    for k, o in enumerate(p.ops):
        assert o.id == k, f"op ids are not dense at {k}"
        assert 0 <= o.stage < p.num_stages and 0 <= o.mb < p.num_microbatches, f"op {o} out of range"
        assert o.rank == p.placement[o.stage], f"{o.label} on rank {o.rank}, its stage on {p.placement[o.stage]}"
    n = len(p.ops)
    for e in p.edges:
        assert 0 <= e.src < n and 0 <= e.dst < n and e.latency >= 0, f"bad edge {e}"


def verify_acyclic(p: Program) -> None:
    """The dependency graph has a topological order; on failure, report the cycle
    :meth:`Program.topo` found, with the rules that made its edges."""
    try:
        p.topo()
    except CycleError as exc:
        cycle: list[int] = list(exc.args[1])
    else:
        return
    labels = " -> ".join(p.ops[x].label for x in cycle + [cycle[0]])
    rules = []
    for a, b in zip(cycle, cycle[1:] + [cycle[0]], strict=True):
        rule = next((e.rule for e in p.edges if e.src == a and e.dst == b), -1)
        if 0 <= rule < len(p.rule_spans) and rule not in rules:
            rules.append(rule)
    rules.sort(reverse=True)  # the latest rule first: the user's own, rather than a library's
    spans = [p.rule_spans[r] for r in rules]
    notes = tuple(Note(s, "this rule is part of the cycle") for s in spans[1:])
    raise SchedlangError(f"dependency cycle: {labels}", spans[0] if spans else None, notes)


def verify_orders(p: Program) -> None:  # noqa: C901 - a list of independent checks
    orders = p.orders
    if len(orders.ranks) != p.num_ranks:
        raise SchedlangError(f"the schedule has orders for {len(orders.ranks)} ranks, the pipeline {p.num_ranks}",
                             p.schedule_span)
    pos = [-1] * len(p.ops)
    for r, slots in enumerate(orders.ranks):
        for k, slot in enumerate(slots):
            for op_id in slot:
                op = p.ops[op_id]
                span = orders.slot_span(r, k)
                if op.rank != r:
                    raise SchedlangError(f"{op.label} runs on rank {op.rank}, not in the order of rank {r}", span)
                if pos[op_id] >= 0:
                    raise SchedlangError(f"{op.label} is scheduled twice (rank {r})", span)
                pos[op_id] = k
    missing = [p.ops[k].label for k in range(len(p.ops)) if pos[k] < 0]
    if missing:
        more = f" and {len(missing) - 6} more" if len(missing) > 6 else ""
        raise SchedlangError(f"the schedule leaves out {len(missing)} op(s): {', '.join(missing[:6])}{more}",
                             p.schedule_span)
    for e in p.edges:
        a, b = p.ops[e.src], p.ops[e.dst]
        if a.rank == b.rank and pos[e.src] >= pos[e.dst]:
            span = orders.slot_span(b.rank, pos[e.dst])
            where = "in the same slot as" if pos[e.src] == pos[e.dst] else "before"
            rule = p.rule_spans[e.rule] if 0 <= e.rule < len(p.rule_spans) else None
            raise SchedlangError(
                f"the order of rank {b.rank} runs {b.label} {where} {a.label}, which it depends on",
                span, (Note(rule, "the dependency comes from this rule"),) if rule else ())
    simulate(p)  # raises DeadlockError on cross-rank waits
    verify_memory(p)


def verify_memory(p: Program) -> None:
    if p.mem_limit is None:
        return
    orders = p.orders
    plan = weight_plan(p)  # asynchronous policies: stashed weight versions count too
    for r, slots in enumerate(orders.ranks):
        limit = p.mem_limit[r]
        level = 0.0
        n = 0
        for k, slot in enumerate(slots):
            for op_id in slot:
                level += p.ops[op_id].mem
                total = level + (plan.mem * plan.held[r][n] if plan is not None else 0.0)
                n += 1
                if total > limit + EPS * max(1.0, abs(limit)):
                    op = p.ops[op_id]
                    notes = (Note(p.mem_limit_span, "the limit is set here"),) if p.mem_limit_span else ()
                    raise SchedlangError(
                        f"memory limit exceeded on rank {r}: {op.label} raises memory to {total:g}"
                        + (f" ({total - level:g} of it stashed weight versions)" if total != level else "")
                        + ", "
                        f"over the limit {limit:g}", orders.slot_span(r, k), notes)
