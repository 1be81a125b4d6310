"""The IR's graph toolkit (``Program.topo``, adjacency, longest paths) against naive references."""

from __future__ import annotations

import graphlib
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schedlang import testing as st_sched
from schedlang.ir import Program, topological_order


def _naive_longest_from(p: Program, srcs: set[int]) -> list[float]:
    """Bellman-Ford style: relax every edge until nothing changes (at most n rounds)."""
    dist = [0.0 if k in srcs else -math.inf for k in range(len(p.ops))]
    for _ in range(len(p.ops) + 1):
        changed = False
        for e in p.edges:
            if dist[e.src] > -math.inf:
                cand = dist[e.src] + p.ops[e.src].time + e.latency
                if cand > dist[e.dst]:
                    dist[e.dst], changed = cand, True
        if not changed:
            return dist
    raise AssertionError("relaxation did not settle: the graph has a cycle")


def _naive_longest_to(p: Program, dsts: set[int]) -> list[float]:
    reach = [p.ops[k].time if k in dsts else -math.inf for k in range(len(p.ops))]
    for _ in range(len(p.ops) + 1):
        changed = False
        for e in p.edges:
            if reach[e.dst] > -math.inf:
                cand = p.ops[e.src].time + e.latency + reach[e.dst]
                if cand > reach[e.src]:
                    reach[e.src], changed = cand, True
        if not changed:
            return reach
    raise AssertionError("relaxation did not settle: the graph has a cycle")


def _close(a: list[float] | tuple[float, ...], b: list[float]) -> bool:
    return all((x == y) if math.isinf(y) else math.isclose(x, y, rel_tol=1e-12, abs_tol=1e-12)
               for x, y in zip(a, b, strict=True))


@settings(max_examples=40, deadline=None)
@given(st_sched.programs(), st.data())
def test_graph_helpers_agree_with_naive_references(p: Program, data: st.DataObject) -> None:
    n = len(p.ops)
    edges = sorted((e.src, e.dst, e.latency) for e in p.edges)
    assert sorted((s, d, lat) for d in range(n) for s, lat in p.preds()[d]) == edges
    assert sorted((s, d, lat) for s in range(n) for d, lat in p.succs()[s]) == edges
    order = p.topo()
    assert sorted(order) == list(range(n))
    pos = {k: i for i, k in enumerate(order)}
    assert all(pos[e.src] < pos[e.dst] for e in p.edges)
    sources = {k for k in range(n) if not p.preds()[k]}
    sinks = {k for k in range(n) if not p.succs()[k]}
    assert _close(p.heads(), _naive_longest_from(p, sources))
    assert _close(p.tails(), _naive_longest_to(p, sinks))
    # earliest starts are those of the graph alone: a schedule with one op per rank would reach them
    assert all(p.heads()[e.dst] >= p.heads()[e.src] + p.ops[e.src].time + e.latency - 1e-9 for e in p.edges)
    some = set(data.draw(st.lists(st.integers(0, n - 1), min_size=1, max_size=4), label="ops"))
    assert _close(p.longest_from(*some), _naive_longest_from(p, some))
    assert _close(p.longest_to(*some), _naive_longest_to(p, some))


@settings(max_examples=15, deadline=None)
@given(st_sched.scheduled_programs())
def test_with_orders_keeps_the_graph_cache(p: Program) -> None:
    bare = p.with_orders(p.orders)
    topo, heads, succs = p.topo(), p.heads(), p.succs()
    again = bare.with_orders(p.orders)
    assert again.topo() is topo and again.heads() is heads and again.succs() is succs


_digraphs = st.integers(1, 7).flatmap(
    lambda n: st.lists(st.tuples(st.integers(0, n - 1), st.integers(0, n - 1)), max_size=12)
    .map(lambda es: (n, es)))


@settings(max_examples=200, deadline=None)
@given(_digraphs)
def test_topological_order_agrees_with_graphlib(graph: tuple[int, list[tuple[int, int]]]) -> None:
    n, es = graph
    succ: list[list[int]] = [[] for _ in range(n)]
    for a, b in es:
        succ[a].append(b)
    sorter = graphlib.TopologicalSorter({k: [a for a, b in es if b == k] for k in range(n)})
    try:
        list(sorter.static_order())
        acyclic = True
    except graphlib.CycleError:
        acyclic = False
    if acyclic:
        order = topological_order(succ)
        pos = {k: i for i, k in enumerate(order)}
        assert sorted(order) == list(range(n)) and all(pos[a] < pos[b] for a, b in es)
        return
    with pytest.raises(graphlib.CycleError) as exc:
        topological_order(succ)
    cycle = exc.value.args[1]
    assert cycle and len(set(cycle)) == len(cycle)
    assert all((a, b) in es for a, b in zip(cycle, cycle[1:] + cycle[:1], strict=True))


def test_topo_of_a_cyclic_program_names_the_cycle() -> None:
    from schedlang.api import loads
    from schedlang.source import SchedlangError

    src = ('op F[s, i] time 1 mem 0\nop B[s, i] time 1 mem 0\nranks 2\nstages 2\nmicrobatches 1\n'
           'dep F[s, i] -> B[s, i]\ndep B[s, i] -> F[s, i]\n')
    with pytest.raises(SchedlangError, match=r"dependency cycle: (F|B)\[0,0\] -> (F|B)\[0,0\] -> (F|B)\[0,0\]"):
        loads(src)
