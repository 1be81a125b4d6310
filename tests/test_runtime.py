"""The runtime on real processes (gloo on CPU): differential training and fault handling.

Differential: for every built-in schedule, several named schedulers (``list``, ``zb-auto``,
``ilp``), V and interleaved placements, and the ``kernels`` B/W split, on 2 and 4 processes (and
Chimera on 3, where one rank holds both replicas of a part): the parameters after three optimizer steps (SGD with momentum, different data every
step) equal those of single-process training of the same float64 model on the same data.
All cases of one process count share one spawned group (process start-up dominates).

Faults: one rank raises in the middle of a step, or dies without a word; every rank ends by
itself with a non-zero status and a message naming the failed rank and instruction.
"""

from __future__ import annotations

import copy
import os
from functools import cache
from typing import Any

import pytest

torch = pytest.importorskip("torch")

from schedlang.runtime.launch import spawn  # noqa: E402

from schedlang import api  # noqa: E402
from schedlang.codegen import codegen  # noqa: E402
from schedlang.isa import Streams  # noqa: E402

pytestmark = pytest.mark.dist

DIM = 5
ROWS = 2  # rows per microbatch
STEPS = 3
STDLIB = os.path.join(os.path.dirname(api.__file__), "stdlib")
LIBRARIES = {"costs", "fbw", "fused"}  # op and cost definitions, no schedule of their own
# asynchronous weight updates: not synchronous training by design (tests/test_async_runtime.py
# compares them with the reference trainer applying their policy)
ASYNC = {"pipedream", "pipedream-2bw"}


def _std_schedules() -> list[str]:
    names = sorted(f[:-6] for f in os.listdir(STDLIB) if f.endswith(".sched"))
    return [n for n in names if n not in LIBRARIES | ASYNC]


def _cases(p: int) -> list[tuple[str, str, dict[str, Any], str | None, str]]:
    """(case id, file, params, scheduler, mode: autograd, kernels, or prepost = autograd with prepost=4)."""
    m = 2 * p
    if p == 3:  # odd p: Chimera's middle rank holds both replicas of one part, the others one each
        return [("std:chimera", "std:chimera", {"p": p, "m": m}, None, "autograd")]
    out = [(f"std:{n}", f"std:{n}", {"p": p, "m": m}, None, "autograd") for n in _std_schedules()]
    out += [
        ("zb-h1 --scheduler list", "std:zb-h1", {"p": p, "m": m}, "list", "autograd"),
        ("zb-h1 --scheduler zb-auto", "std:zb-h1", {"p": p, "m": m}, "zb-auto", "autograd"),
        ("zb-h1 --scheduler ilp", "std:zb-h1", {"p": p, "m": m}, "ilp:time_limit=10,workers=1", "autograd"),
        ("zb-h1 kernels", "std:zb-h1", {"p": p, "m": m}, None, "kernels"),
        ("zb-v kernels", "std:zb-v", {"p": p, "m": m}, None, "kernels"),
        ("1f1b kernels", "std:1f1b", {"p": p, "m": m}, None, "kernels"),
        ("zb-v prepost", "std:zb-v", {"p": p, "m": m}, None, "prepost"),
        ("interleaved-1f1b prepost", "std:interleaved-1f1b", {"p": p, "m": m}, None, "prepost"),
        ("zb-h2 prepost", "std:zb-h2", {"p": p, "m": m}, None, "prepost"),
    ]
    return out


@cache
def _compiled(p: int) -> tuple[tuple[str, Streams, str], ...]:
    return tuple((cid, codegen(api.compile(f, params, scheduler=sched)), mode)
                 for cid, f, params, sched, mode in _cases(p))


def _blocks(num_stages: int, kernels: bool) -> list[Any]:
    torch.manual_seed(1234)
    blocks = [torch.nn.Sequential(torch.nn.Linear(DIM, DIM), torch.nn.LayerNorm(DIM), torch.nn.Tanh()).double()
              for _ in range(num_stages)]
    if kernels:
        from schedlang.runtime.models import to_split_layers

        # torch reference kernels: the Triton interpreter would be far too slow in workers
        blocks = [to_split_layers(b, use_triton=False) for b in blocks]
    return blocks


def _data(step: int, m: int) -> tuple[Any, Any]:
    g = torch.Generator().manual_seed(100 + step)  # new data every step: stale buffers show
    return (torch.randn(m * ROWS, DIM, generator=g, dtype=torch.float64),
            torch.randn(m * ROWS, DIM, generator=g, dtype=torch.float64))


def _optimizer(params: list[Any]) -> Any:
    return torch.optim.SGD(params, lr=0.1, momentum=0.9)


def _run_dp(rank: int, streams: Streams) -> dict[str, Any]:
    """Worker, 4 processes: two data-parallel replicas of a 2-rank pipeline (pp {0,1} {2,3})."""
    import torch.distributed as dist
    from schedlang.runtime.executor import PipelineRunner

    pp = [dist.new_group([0, 1]), dist.new_group([2, 3])]
    dp = [dist.new_group([0, 2]), dist.new_group([1, 3])]
    replica, pp_rank = divmod(rank, 2)
    blocks = _blocks(streams.num_stages, False)
    mods = {s: blocks[s] for s in streams.stream(pp_rank).stages}
    runner = PipelineRunner(streams, pp_rank, mods, torch.nn.functional.mse_loss, _optimizer,
                            group=pp[replica], dp_group=dp[pp_rank], fault_action="raise")
    for step in range(STEPS):
        x, y = _data(10 * step + replica, streams.num_microbatches)  # each replica its own data
        runner.step(x, y)
    runner.close()
    return {(s, n): p.detach().clone() for s, mod in mods.items() for n, p in mod.named_parameters()}


def _run_cases(rank: int, world: int, cases: tuple[tuple[str, Streams, str], ...],
               dp_streams: Streams | None = None) -> dict[str, Any]:
    """Worker: train every case for STEPS steps; return this rank's parameters per case."""
    from schedlang.runtime.executor import PipelineRunner

    out: dict[str, Any] = {}
    if dp_streams is not None:
        out["dp"] = _run_dp(rank, dp_streams)
    for cid, streams, mode in cases:
        blocks = _blocks(streams.num_parts, mode == "kernels")
        # a stage runs model part streams.part(s): itself, or a weight replica (Chimera)
        mods = {s: copy.deepcopy(blocks[streams.part(s)]) for s in streams.stream(rank).stages}
        runner = PipelineRunner(streams, rank, mods, torch.nn.functional.mse_loss, _optimizer,
                                split_backward="kernels" if mode == "kernels" else "autograd",
                                prepost=4 if mode == "prepost" else 0, timeout=60, fault_action="raise")
        losses, peaks = [], []
        for step in range(STEPS):
            x, y = _data(step, streams.num_microbatches)
            loss = runner.step(x if runner.holds_input else None, y if runner.holds_loss else None,
                               broadcast_loss=True)
            losses.append(float(loss))
            peaks.append((runner.peak_live, runner.peak_sends))
        runner.close()
        params = {(s, n): p.detach().clone() for s, mod in mods.items() for n, p in mod.named_parameters()}
        out[cid] = {"params": params, "losses": losses, "peak": max(p for p, _ in peaks),
                    "sends": max(q for _, q in peaks)}
    return out


def _reference(num_stages: int, m: int, kernels: bool) -> tuple[dict[tuple[int, str], Any], list[float]]:
    blocks = _blocks(num_stages, kernels)
    opt = _optimizer([p for b in blocks for p in b.parameters()])
    losses = []
    for step in range(STEPS):
        x, y = _data(step, m)
        opt.zero_grad()
        total = 0.0
        for xm, ym in zip(x.chunk(m), y.chunk(m), strict=True):
            out = xm
            for b in blocks:
                out = b(out)
            total = total + torch.nn.functional.mse_loss(out, ym)
        loss = total / m
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    params = {(s, n): p.detach() for s, b in enumerate(blocks) for n, p in b.named_parameters()}
    return params, losses


@cache
def _results(p: int) -> dict[str, dict[str, Any]]:
    """Run every case of ``p`` processes in one spawned group; merge the ranks' parameters."""
    cases = _compiled(p)
    ranks = spawn(_run_cases, p, (cases, _dp_streams() if p == 4 else None), timeout=60, join_timeout=200)
    merged: dict[str, dict[str, Any]] = {}
    for res in ranks:
        if "dp" in res.value:
            merged.setdefault("dp", {}).setdefault(res.rank // 2, {}).update(res.value.pop("dp"))
        for cid, r in res.value.items():
            entry = merged.setdefault(cid, {"params": {}, "losses": r["losses"], "peaks": {}, "sends": {}})
            entry["params"].update(r["params"])
            entry["peaks"][res.rank] = r["peak"]
            entry["sends"][res.rank] = r["sends"]
            assert entry["losses"] == r["losses"], "broadcast loss differs between ranks"
    return merged


ALL_CASES = [(p, c[0]) for p in (2, 3, 4) for c in _cases(p)]


@pytest.mark.parametrize(("p", "case"), ALL_CASES, ids=[f"p{p}-{c}" for p, c in ALL_CASES])
def test_parameters_match_single_process_training(p: int, case: str) -> None:
    streams, mode = next((s, mode) for cid, s, mode in _compiled(p) if cid == case)
    got = _results(p)[case]
    ref, ref_losses = _reference(streams.num_parts, streams.num_microbatches, mode == "kernels")
    # float64 throughout, except the kernels' W, which computes in fp32 by design
    rtol, atol = (1e-5, 1e-7) if mode == "kernels" else (1e-10, 1e-12)
    # every stage's parameters equal the reference's for the model part it runs (replicas included)
    assert {(streams.part(s), n) for s, n in got["params"]} == set(ref)
    assert len(got["params"]) == sum(1 for s in range(streams.num_stages) for (k, _) in ref if k == streams.part(s))
    for (s, n), value in got["params"].items():
        torch.testing.assert_close(value, ref[(streams.part(s), n)], rtol=rtol, atol=atol,
                                   msg=lambda m, s=s, n=n: f"{case}: stage {s} parameter {n}: {m}")
    assert got["losses"] == pytest.approx(ref_losses, rel=rtol)


def _dp_streams() -> Streams:
    return codegen(api.compile("std:zb-h1", {"p": 2, "m": 2}))


def test_data_parallel_replicas_match_training_on_their_joint_batch() -> None:
    """2 replicas x 2-rank pipelines: gradients averaged over replicas = one process on both batches."""
    got = _results(4)["dp"]
    streams = _dp_streams()
    m = streams.num_microbatches
    blocks = _blocks(streams.num_stages, False)
    opt = _optimizer([p for b in blocks for p in b.parameters()])
    for step in range(STEPS):
        xs, ys = zip(*(_data(10 * step + d, m) for d in range(2)), strict=True)
        x, y = torch.cat(xs), torch.cat(ys)
        opt.zero_grad()
        total = sum(torch.nn.functional.mse_loss(_chain(blocks, a), b)
                    for a, b in zip(x.chunk(2 * m), y.chunk(2 * m), strict=True))
        (total / (2 * m)).backward()
        opt.step()
    for replica in (0, 1):
        assert set(got[replica]) == {(s, n) for s, b in enumerate(blocks) for n, _ in b.named_parameters()}
        for (s, n), value in got[replica].items():
            want = dict(blocks[s].named_parameters())[n]
            torch.testing.assert_close(value, want.detach(), rtol=1e-10, atol=1e-12)


def _chain(blocks: list[Any], x: Any) -> Any:
    for b in blocks:
        x = b(x)
    return x


def test_the_cases_cover_v_and_interleaved_placements() -> None:
    placements = {cid: s.placement for cid, s, _ in _compiled(4)}
    assert placements["std:zb-v"] == (0, 1, 2, 3, 3, 2, 1, 0)
    assert placements["std:interleaved-1f1b"] == (0, 1, 2, 3, 0, 1, 2, 3)


def test_buffers_are_released_at_last_use() -> None:
    """Live (stage, microbatch) entries on rank 0 peak at p for 1F1B and at m for GPipe."""
    res = _results(4)
    assert res["std:1f1b"]["peaks"][0] == 4
    assert res["std:gpipe"]["peaks"][0] == 8
    # the last rank: one microbatch in flight, plus the next one, received while the gradient
    # of the first is still being sent (codegen batches the two)
    assert res["std:1f1b"]["peaks"][3] == 2


# ---------------------------------------------------------------------- faults


class _Boom(torch.nn.Module):
    """Raises on its ``when``-th forward call."""

    def __init__(self, when: int) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(DIM, DIM).double()
        self.calls, self.when = 0, when

    def forward(self, x: Any) -> Any:
        self.calls += 1
        if self.calls == self.when:
            raise ValueError("boom: injected failure")
        return self.lin(x)


def _faulty(rank: int, world: int, streams: Streams, bad_rank: int, how: str) -> None:
    from schedlang.runtime.executor import PipelineRunner

    mods: dict[int, Any] = {}
    for s in streams.stream(rank).stages:
        # the probe at the first step counts as a call: fail in the second step's third forward
        mods[s] = _Boom(streams.num_microbatches + 4) if rank == bad_rank else torch.nn.Linear(DIM, DIM).double()
    if how == "die" and rank == bad_rank:
        mods = {s: _Dies(m) for s, m in mods.items()}
    runner = PipelineRunner(streams, rank, mods, torch.nn.functional.mse_loss, _optimizer, timeout=8)
    for step in range(3):
        x, y = _data(step, streams.num_microbatches)
        runner.step(x, y)


class _Dies(torch.nn.Module):
    """Ends its process without a word (as a crash would) instead of raising."""

    def __init__(self, inner: Any) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: Any) -> Any:
        try:
            return self.inner(x)
        except ValueError:
            os._exit(7)


@pytest.mark.parametrize(("how", "p", "bad"), [("raise", 4, 2), ("die", 2, 1)])
def test_a_failing_rank_stops_every_rank_with_a_message(how: str, p: int, bad: int) -> None:
    streams = codegen(api.compile("std:1f1b", {"p": p, "m": 4}))
    results = spawn(_faulty, p, (streams, bad, how), timeout=8, join_timeout=90, check=False)
    for r in results:
        assert r.exitcode not in (0, None), f"rank {r.rank} exited with {r.exitcode}"
        assert not (r.error or "").startswith("killed"), f"rank {r.rank} had to be killed"
    if how == "raise":
        for r in results:
            text = (r.error or "") + r.stderr
            assert "rank 2 failed at instruction" in text, text
            assert "(F stage=2 mb=" in text and "in step 1" in text and "boom" in text, text
    else:
        assert results[bad].exitcode == 7
        for r in results:
            if r.rank != bad:
                text = (r.error or "") + r.stderr
                assert "rank " in text and "instruction" in text, text


def test_send_buffers_are_released_before_the_end_of_the_step() -> None:
    """Sends are waited for once the peer has provably posted their receives, not at step end."""
    res = _results(4)
    # 1F1B: rank r has p - r activations in flight before the first gradient comes back, and
    # each gradient that arrives proves the matching send done (without the release: m = 8)
    assert res["std:1f1b"]["sends"] == {0: 4, 1: 3, 2: 2, 3: 1}
    # GPipe: no gradient arrives before every forward was sent
    assert res["std:gpipe"]["sends"][0] == 8
