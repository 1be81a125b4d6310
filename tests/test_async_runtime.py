"""Asynchronous weight-update policies on real processes (gloo on CPU), against the reference.

For ``stash`` (PipeDream), ``stash+vsync`` and ``2bw`` (PipeDream-2BW) on 2 and 4 processes, in
PipeDream's flush-free 1F1B order and in other orders (ZB-H1's split B/W, interleaved 1F1B's
several stages per rank, ZB-V's V placement): the parameters after two steps of a window that crosses several updates per stage (SGD with momentum,
float64, new data every step) equal, bit for bit, those of the single-process reference trainer
(:mod:`schedlang.runtime.reference`) applying the program's weight plan; and they differ from
synchronous training on the same data, so a runtime that fell back to flush semantics would fail.
All cases of one process count share one spawned group.
"""

from __future__ import annotations

import copy
from functools import cache
from typing import Any

import pytest

torch = pytest.importorskip("torch")

from schedlang.runtime.launch import spawn  # noqa: E402
from schedlang.runtime.reference import reference_train, synchronous_plan  # noqa: E402

from schedlang import api  # noqa: E402
from schedlang.codegen import codegen  # noqa: E402
from schedlang.ir import Program  # noqa: E402
from schedlang.isa import Streams  # noqa: E402
from schedlang.isa_check import StreamError  # noqa: E402
from schedlang.load import read_source  # noqa: E402
from schedlang.weights import weight_plan  # noqa: E402

pytestmark = pytest.mark.dist

DIM = 4
ROWS = 2
STEPS = 2
POLICIES = ("stash", "stash+vsync", "2bw")
# other orders under a policy: (case id, the schedule it imports, policy)
OTHERS = (("zb-h1 stash", "std:zb-h1", "stash"), ("interleaved-1f1b stash+vsync", "std:interleaved-1f1b", "stash+vsync"),
          ("zb-v 2bw", "std:zb-v", "2bw"))
CASE_IDS = POLICIES + tuple(c for c, _, _ in OTHERS)


def _program(case: str, p: int) -> Program:
    m = 3 * p  # stash: 3p updates per stage and step; 2bw (every p): 3
    if case in POLICIES:
        text = read_source("std:pipedream").text.replace("weights stash mem mem_weights", f"weights {case}")
    else:
        _, base, policy = next(c for c in OTHERS if c[0] == case)
        text = f'import "{base}"\nweights {policy}\n'
    return api.schedule(api.loads(text, "case.sched", {"p": p, "m": m}))


@cache
def _cases(p: int) -> tuple[tuple[str, Streams], ...]:
    return tuple((case, codegen(_program(case, p))) for case in CASE_IDS)


def _blocks(n: int) -> list[Any]:
    torch.manual_seed(4321)
    return [torch.nn.Sequential(torch.nn.Linear(DIM, DIM), torch.nn.Tanh()).double() for _ in range(n)]


def _data(step: int, m: int) -> tuple[Any, Any]:
    g = torch.Generator().manual_seed(7 + step)
    return (torch.randn(m * ROWS, DIM, generator=g, dtype=torch.float64),
            torch.randn(m * ROWS, DIM, generator=g, dtype=torch.float64))


def _optimizer(params: list[Any]) -> Any:
    return torch.optim.SGD(params, lr=0.2, momentum=0.5)


def _worker(rank: int, world: int, cases: tuple[tuple[str, Streams], ...]) -> dict[str, Any]:
    from schedlang.runtime.executor import PipelineRunner

    out: dict[str, Any] = {}
    for policy, streams in cases:
        blocks = _blocks(streams.num_stages)
        mods = {s: copy.deepcopy(blocks[s]) for s in streams.stream(rank).stages}
        runner = PipelineRunner(streams, rank, mods, torch.nn.functional.mse_loss, _optimizer,
                                timeout=60, fault_action="raise")
        losses = []
        for step in range(STEPS):
            x, y = _data(step, streams.num_microbatches)
            losses.append(float(runner.step(x, y, broadcast_loss=True)))
        runner.close()
        out[policy] = {"params": {(s, n): q.detach().clone() for s, mod in mods.items()
                                  for n, q in mod.named_parameters()},
                       "losses": losses, "copies": runner._async.copies if runner._async else -1}
    return out


@cache
def _results(p: int) -> dict[str, dict[str, Any]]:
    ranks = spawn(_worker, p, (_cases(p),), timeout=60, join_timeout=200)
    merged: dict[str, dict[str, Any]] = {}
    for res in ranks:
        assert res.exitcode == 0, res.stderr[-2000:]
        for policy, r in res.value.items():
            entry = merged.setdefault(policy, {"params": {}, "losses": r["losses"], "copies": {}})
            entry["params"].update(r["params"])
            entry["copies"][res.rank] = r["copies"]
    return merged


def _reference(program: Program, synchronous: bool = False) -> tuple[dict[tuple[int, str], Any], list[float]]:
    blocks = _blocks(program.num_stages)
    m = program.num_microbatches
    if synchronous:
        versions, groups = synchronous_plan(program.num_stages, m)
    else:
        plan = weight_plan(program)
        assert plan is not None
        versions, groups = plan.version, plan.groups  # type: ignore[assignment]
    losses = reference_train(blocks, torch.nn.functional.mse_loss, _optimizer,
                             [_data(step, m) for step in range(STEPS)], versions, groups)
    return {(s, n): q.detach() for s, b in enumerate(blocks) for n, q in b.named_parameters()}, losses


CASES = [(p, case) for p in (2, 4) for case in CASE_IDS]


@pytest.mark.parametrize(("p", "case"), CASES, ids=[f"p{p}-{c}" for p, c in CASES])
def test_pipelined_training_equals_the_reference_exactly(p: int, case: str) -> None:
    program = _program(case, p)
    got = _results(p)[case]
    ref, ref_losses = _reference(program)
    sync, _ = _reference(program, synchronous=True)
    assert set(got["params"]) == set(ref)
    for key, value in got["params"].items():
        assert torch.equal(value, ref[key]), f"{case} p={p}: stage {key[0]} parameter {key[1]} differs"
    assert got["losses"] == ref_losses
    # and it is not synchronous training: every stage's weights end elsewhere
    for s in range(program.num_stages):
        assert any(not torch.allclose(got["params"][(s, n)], sync[(s, n)], rtol=1e-6, atol=1e-9)
                   for n in ("0.weight", "0.bias")), f"{case} p={p}: stage {s} trained synchronously"
    # a version still in use when its stage updates is copied
    assert got["copies"][0] > 0


def test_the_plans_differ_between_policies() -> None:
    """The three policies really are different semantics on this window (else the test above
    could not tell them apart)."""
    plans = {policy: weight_plan(_program(policy, 4)) for policy in POLICIES}
    assert len({(pl.version, pl.groups) for pl in plans.values() if pl is not None}) == 3


def test_kernels_split_is_refused_for_async_streams() -> None:
    from schedlang.runtime.executor import PipelineRunner

    streams = codegen(api.compile("std:pipedream", p=1, m=2))
    mods = {0: _blocks(1)[0]}
    with pytest.raises(StreamError, match="weights=stash streams need split_backward='autograd'"):
        PipelineRunner(streams, 0, mods, torch.nn.functional.mse_loss, _optimizer, split_backward="kernels",
                       fault_action="raise")


def test_single_rank_stash_equals_the_reference() -> None:
    """One rank, no processes: the runtime's versions and updates alone against the reference."""
    from schedlang.runtime.executor import PipelineRunner

    program = api.compile("std:pipedream", p=1, m=4)
    streams = codegen(program)
    blocks = _blocks(1)
    mods = {0: copy.deepcopy(blocks[0])}
    runner = PipelineRunner(streams, 0, mods, torch.nn.functional.mse_loss, _optimizer, fault_action="raise")
    for step in range(STEPS):
        runner.step(*_data(step, 4))
    runner.close()
    ref, _ = _reference(program)
    for n, q in mods[0].named_parameters():
        assert torch.equal(q.detach(), ref[(0, n)])
