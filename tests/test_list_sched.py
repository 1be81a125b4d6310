"""The ``list`` scheduler against a plain reference implementation of the same rule.

The scheduler keeps per-rank heaps and cached choices to stay fast on large programs; the
reference below scans every ready op of every rank at each step, which is the rule as the module
docstring states it. Both must give the same orders on random pipelines (uneven costs, any
placement, user op kinds), under memory limits and with every priority order.
"""

from __future__ import annotations

from collections.abc import Mapping

from hypothesis import given, settings
from hypothesis import strategies as st

from schedlang import api
from schedlang import testing as sst
from schedlang.ir import Program, Value
from schedlang.schedulers.base import scheduler_limits
from schedlang.schedulers.list_sched import EPS, _priorities, list_schedule
from schedlang.source import SchedlangError


def reference(program: Program, args: Mapping[str, Value]) -> list[list[int]]:
    """At each step, the op that can start earliest on any rank; ties by role priority, lower
    microbatch, later stage, lower rank, then lower op id. Memory-limited ops wait."""
    prio = _priorities(program, str(args.get("priority", "BFW")))
    R = program.num_ranks
    limit_arg = args.get("mem_limit")
    limits = [float(limit_arg)] * R if isinstance(limit_arg, (int, float)) else (
        list(program.mem_limit) if program.mem_limit else [float("inf")] * R)
    ops, preds, succs = program.ops, program.preds(), program.succs()
    missing = [len(preds[k]) for k in range(len(ops))]
    est = [0.0] * len(ops)
    free, mem = [0.0] * R, [0.0] * R
    ready: list[set[int]] = [set() for _ in range(R)]
    for k in range(len(ops)):
        if missing[k] == 0:
            ready[ops[k].rank].add(k)
    orders: list[list[int]] = [[] for _ in range(R)]
    for _ in range(len(ops)):
        keys = [(max(est[k], free[r]), prio[ops[k].kind], ops[k].mb, -ops[k].stage, r, k)
                for r in range(R) for k in ready[r]
                if mem[r] + ops[k].mem <= limits[r] + EPS * max(1.0, abs(limits[r]))]
        if not keys:
            raise SchedlangError("stuck")
        t, _, _, _, r, k = min(keys)
        ready[r].discard(k)
        free[r] = t + ops[k].time
        mem[r] += ops[k].mem
        orders[r].append(k)
        for d, lat in succs[k]:
            est[d] = max(est[d], free[r] + lat)
            missing[d] -= 1
            if missing[d] == 0:
                ready[ops[d].rank].add(d)
    return orders


def _flat(program: Program, args: Mapping[str, Value]) -> list[list[int]] | str:
    """``list`` as the schedule pass calls it: a ``mem_limit`` argument resolved into the program
    by the one memory-limit rule (here always tighter: the programs drawn have no limit of their
    own, and the library's is infinite), never passed to the scheduler."""
    args = dict(args)
    limit = args.pop("mem_limit", None)
    if isinstance(limit, (int, float)):
        program = scheduler_limits(program, [float(limit)] * program.num_ranks, None)
    try:
        return [[slot[0] for slot in rank] for rank in list_schedule(program, args).ranks]
    except SchedlangError:
        return "stuck"


def _ref(program: Program, args: Mapping[str, Value]) -> list[list[int]] | str:
    try:
        return reference(program, args)
    except SchedlangError:
        return "stuck"


@given(sst.pipeline_sources(max_ranks=4, max_microbatches=6), st.sampled_from(["BFW", "FBW", "WBF", "B"]),
       st.sampled_from([None, 1.0, 2.5, 4.0, 8.0]))
@settings(max_examples=150, deadline=None)
def test_list_matches_the_reference(src: str, priority: str, mem_limit: float | None) -> None:
    program = api.loads(src)
    args: dict[str, Value] = {"priority": priority}
    if mem_limit is not None:
        args["mem_limit"] = mem_limit
    assert _flat(program, args) == _ref(program, args)


def test_list_matches_the_reference_on_the_library() -> None:
    for name in ("1f1b", "zb-h1", "zb-v", "interleaved-1f1b", "gpipe"):
        for params in ({}, {"p": 3, "m": 7}):
            program = api.load(f"std:{name}", **params)
            for args in ({}, {"priority": "FBW"}, {"mem_limit": 3.0}):
                assert _flat(program, args) == _ref(program, args), (name, params, args)
