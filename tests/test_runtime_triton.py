"""ZB-H1 on two gloo processes with the Triton split layers themselves (interpreted on the CPU).

The differential tests in ``test_runtime.py`` run the ``kernels`` split with the layers' torch
reference path (the interpreter is slow); this one runs the Triton kernels in the workers, on a
model small enough for the interpreter, and compares the parameters after two SGD steps with one
process training the same fp32 model on the same data with plain autograd.
"""

from __future__ import annotations

import os
from typing import Any

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("triton")

from schedlang.runtime.launch import spawn  # noqa: E402

from schedlang import api  # noqa: E402
from schedlang.codegen import codegen  # noqa: E402
from schedlang.isa import Streams  # noqa: E402

pytestmark = [
    pytest.mark.dist,
    pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1" and not torch.cuda.is_available(),
                       reason="CPU tensors need the Triton interpreter"),
]

STEPS = 2
ROWS = 3  # rows per microbatch: not a block multiple


def _blocks(num_stages: int) -> list[Any]:
    torch.manual_seed(7)
    return [torch.nn.Sequential(torch.nn.Linear(6, 6), torch.nn.LayerNorm(6), torch.nn.Tanh())
            for _ in range(num_stages)]


def _data(step: int, m: int) -> tuple[Any, Any]:
    g = torch.Generator().manual_seed(50 + step)
    return torch.randn(m * ROWS, 6, generator=g), torch.randn(m * ROWS, 6, generator=g)


def _optimizer(params: list[Any]) -> Any:
    return torch.optim.SGD(params, lr=0.2)


def _worker(rank: int, world: int, streams: Streams) -> dict[str, Any]:
    from schedlang.runtime.executor import PipelineRunner
    from schedlang.runtime.models import to_split_layers

    blocks = [to_split_layers(b, use_triton=True) for b in _blocks(streams.num_stages)]
    mods = {s: blocks[s] for s in streams.stream(rank).stages}
    runner = PipelineRunner(streams, rank, mods, torch.nn.functional.mse_loss, _optimizer,
                            split_backward="kernels", timeout=120, fault_action="raise")
    for step in range(STEPS):
        x, y = _data(step, streams.num_microbatches)
        runner.step(x if 0 in mods else None, y if runner.holds_loss else None)
    held = len(runner.wgrad_store)
    runner.close()
    return {"held": held,
            "params": {(s, n): p.detach().clone() for s, mod in mods.items() for n, p in mod.named_parameters()}}


def test_zb_h1_two_ranks_with_triton_kernels_matches_one_process() -> None:
    streams = codegen(api.compile("std:zb-h1", p=2, m=3))
    results = spawn(_worker, 2, (streams,), timeout=120, join_timeout=300)
    got: dict[Any, Any] = {}
    for res in results:
        assert res.value["held"] == 0, f"rank {res.rank}: W left stashed tensors behind"
        got.update(res.value["params"])
    blocks = _blocks(streams.num_stages)
    opt = _optimizer([p for b in blocks for p in b.parameters()])
    m = streams.num_microbatches
    for step in range(STEPS):
        x, y = _data(step, m)
        opt.zero_grad()
        loss = sum(torch.nn.functional.mse_loss(blocks[1](blocks[0](a)), b)
                   for a, b in zip(x.chunk(m), y.chunk(m), strict=True)) / m
        loss.backward()
        opt.step()
    want = {(s, n): p.detach() for s, b in enumerate(blocks) for n, p in b.named_parameters()}
    assert set(got) == set(want)
    for key, w in want.items():
        torch.testing.assert_close(got[key], w, rtol=1e-5, atol=1e-6, msg=lambda msg, key=key: f"{key}: {msg}")
