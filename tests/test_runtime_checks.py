"""The runtime without worker processes: stream checks, single-rank execution, timelines, helpers."""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import subprocess
import sys

import pytest
import torch
from schedlang.runtime.executor import PipelineRunner, with_reductions
from schedlang.runtime.models import split_sequential, tiny_gpt
from schedlang.runtime.timeline import Event, chrome_trace, measured_bubble

from schedlang import api, isa
from schedlang.codegen import codegen
from schedlang.isa import Instr, Opcode, RankStream, Streams
from schedlang.isa_check import StreamError, check_streams


def _streams(name: str, **params: int) -> Streams:
    return codegen(api.compile(name, params))


def _replace_instr(streams: Streams, rank: int, index: int, new: Instr) -> Streams:
    rs = streams.ranks[rank]
    instrs = list(rs.instrs)
    instrs[index] = new
    ranks = list(streams.ranks)
    ranks[rank] = RankStream(rs.rank, rs.stages, tuple(instrs))
    return dataclasses.replace(streams, ranks=tuple(ranks))


STD = ["gpipe", "1f1b", "zb-h1", "zb-h2", "interleaved-1f1b", "zb-v", "zb-1p", "zb-2p", "v-half", "v-min",
       "looped-bfs", "pipedream", "dualpipe-v"]


@pytest.mark.parametrize("name", STD)
@pytest.mark.parametrize("p", [2, 3, 4])
def test_codegen_streams_of_builtins_pass_the_checks(name: str, p: int) -> None:
    check_streams(_streams(f"std:{name}", p=p, m=2 * p))


def test_mismatched_peers_are_rejected() -> None:
    """Rank 0 sends microbatch 1's activation before microbatch 0's; rank 1 expects 0 first."""
    st = _streams("std:gpipe", p=2, m=3)
    r0 = list(st.ranks[0].instrs)
    sends = [i for i, ins in enumerate(r0) if ins.op is Opcode.SEND_ACT]
    r0.insert(sends[1], r0.pop(sends[0]))
    bad = dataclasses.replace(st, ranks=(RankStream(0, (0,), tuple(r0)), st.ranks[1]))
    with pytest.raises(StreamError, match=r"rank 0 -> rank 1: message 0 does not match: rank 0 sends act "
                                          r"of stage 0 microbatch 1 at instruction 2 but rank 1 receives act of stage 0 microbatch 0 at instruction 0"):
        check_streams(bad)


def test_wrong_peer_stage_is_rejected() -> None:
    st = _streams("std:1f1b", p=2, m=2)
    bad = _replace_instr(st, 0, 1, Instr(Opcode.SEND_ACT, stage=0, mb=0, peer=1, peer_stage=0))
    with pytest.raises(StreamError, match=r"rank 0, instruction 1 \(SEND_ACT .*\): peer_stage should be 1"):
        check_streams(bad)


def test_deadlocked_streams_are_rejected() -> None:
    """Both ranks receive before they send: each waits for the other forever."""
    ins = Instr
    r0 = (ins(Opcode.F, stage=0, mb=0), ins(Opcode.RECV_GRAD, stage=0, mb=0, peer=1, peer_stage=1),
          ins(Opcode.SEND_ACT, stage=0, mb=0, peer=1, peer_stage=1), ins(Opcode.BW, stage=0, mb=0))
    r1 = (ins(Opcode.RECV_ACT, stage=1, mb=0, peer=0, peer_stage=0), ins(Opcode.F, stage=1, mb=0),
          ins(Opcode.BW, stage=1, mb=0), ins(Opcode.SEND_GRAD, stage=1, mb=0, peer=0, peer_stage=0))
    st = Streams(2, 2, 1, (0, 1), (RankStream(0, (0,), r0), RankStream(1, (1,), r1)))
    with pytest.raises(StreamError, match=r"deadlock \(buffered sends\): ranks 0 -> 1 -> 0 wait on each other\n"
                                          r"  rank 0 at instruction 1 \(RECV_GRAD .*\) waits on rank 1\n"
                                          r"  rank 1 at instruction 0 \(RECV_ACT"):
        check_streams(with_reductions(st))


def test_missing_and_extra_stage_modules_are_rejected() -> None:
    st = _streams("std:interleaved-1f1b", p=2, m=4)
    lin = torch.nn.Linear(2, 2)
    with pytest.raises(StreamError, match=r"rank 0: no module for stage\(s\) \[2\]"):
        PipelineRunner(st, 0, {0: lin}, torch.nn.functional.mse_loss)
    with pytest.raises(StreamError, match=r"rank 0: modules given for stage\(s\) \[1\]"):
        PipelineRunner(st, 0, {0: lin, 1: lin, 2: lin}, torch.nn.functional.mse_loss)


def test_stages_listed_on_the_wrong_rank_are_rejected() -> None:
    st = _streams("std:1f1b", p=2, m=2)
    bad = dataclasses.replace(st, placement=(1, 0))
    with pytest.raises(StreamError, match=r"rank 0: stream lists stages \[0\] but the placement puts stages \[1\]"):
        check_streams(bad)


def _batches(steps: int, din: int, dout: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Eight float64 rows of inputs and targets per step, different every step."""
    out = []
    for step in range(steps):
        g = torch.Generator().manual_seed(step)
        out.append((torch.randn(8, din, generator=g, dtype=torch.float64),
                    torch.randn(8, dout, generator=g, dtype=torch.float64)))
    return out


def _plain_step(model: torch.nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
                m: int) -> float:
    """One training step of ``model`` in one process: mean MSE over ``m`` microbatches."""
    opt.zero_grad()
    loss = sum(torch.nn.functional.mse_loss(model(a), b) for a, b in zip(x.chunk(m), y.chunk(m), strict=True)) / m
    loss.backward()  # type: ignore[union-attr]
    opt.step()
    return float(loss.detach())  # type: ignore[union-attr]


def test_chimera_streams_carry_two_chains_and_pass_the_checks() -> None:
    from schedlang.isa_check import microbatches_of

    st = _streams("std:chimera", p=2, m=4)
    check_streams(st)
    assert st.prev == (-1, 0, -1, 2)
    assert st.chains() == ((0, 1), (2, 3))
    assert [st.part(s) for s in range(4)] == [0, 1, 0, 1]
    mbs = microbatches_of(st)
    assert mbs[0] == mbs[1] == {0, 2} and mbs[2] == mbs[3] == {1, 3}
    # the text and JSON forms keep the stage graph; linear streams do not mention it
    assert isa.parse_text(isa.to_text(st)) == st and isa.from_json(isa.to_json(st)) == st
    assert "prev=" not in isa.to_text(_streams("std:zb-v", p=2, m=4))


def test_bad_stage_graphs_are_rejected() -> None:
    st = _streams("std:chimera", p=2, m=4)
    with pytest.raises(StreamError, match=r"prev: stage 0 feeds 2 stages"):
        check_streams(dataclasses.replace(st, prev=(-1, 0, 0, 2)))
    with pytest.raises(StreamError, match=r"differ in length"):
        check_streams(dataclasses.replace(st, prev=(-1, 0, 1, -1)))
    with pytest.raises(StreamError, match=r"cycle"):
        check_streams(dataclasses.replace(st, prev=(-1, 0, 3, 2)))
    # a microbatch that leaves its chain: stage 3 forwards microbatch 0 as well
    r0 = st.ranks[0]
    extra = (Instr(Opcode.F, stage=3, mb=0),) + r0.instrs
    with pytest.raises(StreamError, match=r"rank 0, instruction 0 \(F stage=3 mb=0\): stage 3 forwards microbatch 0, which stage 2 \(the head "):
        check_streams(dataclasses.replace(st, ranks=(dataclasses.replace(r0, instrs=extra), st.ranks[1])))


def test_a_module_shared_by_two_stages_is_rejected() -> None:
    st = _streams("std:chimera", p=1, m=2)
    lin = torch.nn.Linear(2, 2)
    with pytest.raises(StreamError, match=r"stages 0 and 1 are given the same module object"):
        PipelineRunner(st, 0, {0: lin, 1: lin}, torch.nn.functional.mse_loss)


def test_replicas_on_one_rank_train_like_one_model() -> None:
    """Chimera on one rank: two chains of one stage, weight replicas summed before each step."""
    st = _streams("std:chimera", p=1, m=4)
    torch.manual_seed(5)
    ref = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh()).double()
    mods = {0: copy.deepcopy(ref), 1: copy.deepcopy(ref)}
    r = PipelineRunner(st, 0, mods, torch.nn.functional.mse_loss, lambda ps: torch.optim.SGD(ps, lr=0.3))
    assert r.holds_input and r.holds_loss
    opt = torch.optim.SGD(ref.parameters(), lr=0.3)
    for x, y in _batches(3, 3, 4):
        loss = r.step(x, y)
        want = _plain_step(ref, opt, x, y, 4)
        assert loss is not None and float(loss) == pytest.approx(want, rel=1e-12)
        for mod in mods.values():
            for a, b in zip(mod.parameters(), ref.parameters(), strict=True):
                torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)
    r.close()


def test_user_ops_need_a_handler() -> None:
    st = Streams(1, 1, 1, (0,), (RankStream(0, (0,), (
        Instr(Opcode.F, stage=0, mb=0), Instr(Opcode.USER, stage=0, mb=0, kind="R"), Instr(Opcode.BW, stage=0, mb=0))),))
    with pytest.raises(StreamError, match="no handler for user op kind 'R'"):
        PipelineRunner(st, 0, {0: torch.nn.Linear(2, 2)}, torch.nn.functional.mse_loss)
    seen: list[tuple[int, int]] = []
    r = PipelineRunner(st, 0, {0: torch.nn.Linear(2, 2)}, torch.nn.functional.mse_loss,
                       user_ops={"R": lambda runner, ins: seen.append((ins.stage, ins.mb))})
    r.step(torch.randn(2, 2), torch.randn(2, 2))
    r.close()
    assert seen == [(0, 0)]


def test_with_reductions_appends_missing_sync_instructions() -> None:
    st = Streams(1, 1, 2, (0,), (RankStream(0, (0,), (
        Instr(Opcode.F, stage=0, mb=0), Instr(Opcode.BW, stage=0, mb=0), Instr(Opcode.F, stage=0, mb=1),
        Instr(Opcode.B, stage=0, mb=1), Instr(Opcode.W, stage=0, mb=1))),))
    tail = with_reductions(st).ranks[0].instrs[-2:]
    assert tail == (Instr(Opcode.REDUCE_GRAD, stage=0), Instr(Opcode.OPT_STEP))
    check_streams(with_reductions(st))


@pytest.mark.parametrize("mode", ["autograd", "kernels"])
def test_single_rank_runner_matches_plain_training(mode: str) -> None:
    """p = 1 (no process group): an F/B/W stream gives the gradients of plain training."""
    st = _streams("std:zb-h1", p=1, m=4)

    def model() -> torch.nn.Module:
        torch.manual_seed(3)
        return torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.LayerNorm(6), torch.nn.Tanh(),
                                   torch.nn.Linear(6, 4)).double()

    mine, ref = model(), model()
    if mode == "kernels":
        from schedlang.runtime.models import to_split_layers

        to_split_layers(mine, use_triton=False)
        to_split_layers(ref, use_triton=False)
    r = PipelineRunner(st, 0, {0: mine}, torch.nn.functional.mse_loss,
                       lambda ps: torch.optim.SGD(ps, lr=0.1), split_backward=mode)
    opt = torch.optim.SGD(ref.parameters(), lr=0.1)
    for x, y in _batches(2, 4, 4):
        loss = r.step(x, y)
        ref_loss = _plain_step(ref, opt, x, y, 4)
        rel = 1e-6 if mode == "kernels" else 1e-12  # the kernels compute W in fp32
        assert loss is not None and float(loss) == pytest.approx(ref_loss, rel=rel)
    r.close()
    tol = {"rtol": 1e-5, "atol": 1e-7} if mode == "kernels" else {"rtol": 1e-12, "atol": 1e-14}
    for a, b in zip(mine.parameters(), ref.parameters(), strict=True):
        torch.testing.assert_close(a, b, **tol)
    names = [e.name for e in r.step_events(1)]
    assert names.count("F") == 4 and names.count("B") == 4 and names.count("W") == 4


def test_runner_rejects_indivisible_batches() -> None:
    st = _streams("std:1f1b", p=1, m=3)
    r = PipelineRunner(st, 0, {0: torch.nn.Linear(2, 2)}, torch.nn.functional.mse_loss)
    with pytest.raises(ValueError, match="not divisible by 3 microbatches"):
        r.step(torch.randn(4, 2), torch.randn(4, 2))
    r.close()


def test_measured_bubble_follows_the_simulator_definition() -> None:
    ev = [Event(0, 0, 0, "F", 0, 0, 0, 10), Event(0, 0, 2, "B", 0, 0, 30, 40),
          Event(0, 0, 1, "RECV_GRAD", 0, 0, 10, 30),
          Event(1, 0, 0, "F", 1, 0, 10, 20), Event(1, 0, 1, "B", 1, 0, 20, 30)]
    b = measured_bubble(ev)
    assert b.cost == pytest.approx(40e-9) and b.busy == pytest.approx((20e-9, 20e-9))
    assert b.bubble_rate == pytest.approx(0.5)
    trace = chrome_trace(ev, {"program": "x"})
    complete = [e for e in trace["traceEvents"] if e["ph"] == "X"]
    assert len(complete) == 5 and {e["pid"] for e in complete} == {0, 1}
    assert complete[1]["args"] == {"op": "B", "stage": 0, "mb": 0, "step": 0, "index": 2}
    json.dumps(trace)


def test_split_sequential() -> None:
    blocks = [torch.nn.Linear(2, 2) for _ in range(5)]
    stages = split_sequential(blocks, 3, cuts=[1, 4])
    assert [len(s) for s in stages] == [1, 3, 1]
    assert all(len(s) >= 1 for s in split_sequential(blocks, 5))
    with pytest.raises(ValueError):
        split_sequential(blocks, 6)
    with pytest.raises(ValueError):
        split_sequential(blocks, 3, cuts=[2, 2])
    spec = tiny_gpt(4, 8)
    assert len(spec.stages) == 4
    x, y = spec.batch(0)
    assert x.shape == y.shape and x.shape[0] % 8 == 0


@pytest.mark.slow
def test_runtime_imports_no_compiler_module_but_isa() -> None:
    code = ("import sys, schedlang.runtime.executor, schedlang.runtime.worker, schedlang.runtime.launch;"
            "bad = sorted(m for m in sys.modules if m.startswith(('schedlang.', 'lark', 'ortools')) "
            "and not m.startswith(('schedlang.runtime', 'schedlang.isa', 'schedlang.traceformat', 'schedlang.kernels')));"
            "print(bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env=dict(os.environ))
    assert out.stdout.strip() == "[]"


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1", reason="CPU tensors need the Triton interpreter")
def test_kernels_path_with_the_triton_kernels() -> None:
    """split_backward="kernels" with the Triton kernels themselves (interpreted on CPU), fp32."""
    from schedlang.runtime.models import to_split_layers

    st = _streams("std:zb-h1", p=1, m=2)

    def model() -> torch.nn.Module:
        torch.manual_seed(3)
        return torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.LayerNorm(7), torch.nn.Tanh(),
                                   torch.nn.Linear(7, 3))

    mine, ref = to_split_layers(model(), use_triton=True), model()
    r = PipelineRunner(st, 0, {0: mine}, torch.nn.functional.mse_loss,
                       lambda ps: torch.optim.SGD(ps, lr=0.1), split_backward="kernels")
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(6, 5, generator=g), torch.randn(6, 3, generator=g)
    loss = r.step(x, y)
    r.close()
    assert r.wgrad_store is not None and len(r.wgrad_store) == 0  # every deferred W ran
    ref_loss = _plain_step(ref, torch.optim.SGD(ref.parameters(), lr=0.1), x, y, 2)
    assert loss is not None and float(loss) == pytest.approx(ref_loss, rel=1e-5)
    for a, b in zip(mine.parameters(), ref.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_runner_from_a_compiled_program() -> None:
    from schedlang.api import runner_from_program

    prog = api.compile("std:zb-h1", {"p": 1, "m": 2})
    r = runner_from_program(prog, 0, {0: torch.nn.Linear(3, 3)}, torch.nn.functional.mse_loss,
                            lambda ps: torch.optim.SGD(ps, lr=0.1))
    before = [p.detach().clone() for p in r.modules[0].parameters()]
    loss = r.step(torch.randn(4, 3), torch.randn(4, 3))
    r.close()
    assert loss is not None and r.stream.stages == (0,)
    assert any(not torch.equal(a, b) for a, b in zip(before, r.modules[0].parameters(), strict=True))
