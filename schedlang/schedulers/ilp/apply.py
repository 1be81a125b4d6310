"""Turn a solution (start times per op) into per-rank :class:`~schedlang.ir.Orders`.

Each rank's ops are sorted by start time; ties (only possible with zero-length ops) go by a
topological position of the precedence graph, so dependencies on one rank stay in order, then
by memory delta (frees first). The orders carry no times: the simulator recomputes them exactly.
"""

from __future__ import annotations

from collections.abc import Sequence

from schedlang.ir import Orders, Program


def orders_from_starts(program: Program, starts: Sequence[int | float], topo: Sequence[int],
                       origin: str = "ilp") -> Orders:
    """Per-rank orders from start times (``topo``: a topological order of all op ids)."""
    pos = {k: i for i, k in enumerate(topo)}
    ranks: list[list[int]] = [[] for _ in range(program.num_ranks)]
    for o in program.ops:
        ranks[o.rank].append(o.id)
    out = []
    for ids in ranks:
        ids.sort(key=lambda k: (starts[k], pos[k], program.ops[k].mem, k))
        out.append(tuple((k,) for k in ids))
    return Orders(tuple(out), origin=origin)
