"""A float64 model factory for the multi-node and data-parallel tests (``--model scale_models:mlp64``).

Workers import it by module name, so the tests put this directory on ``PYTHONPATH``.
:func:`reference` trains the same model in one process on whole batches.
"""

from __future__ import annotations

from typing import Any

import torch
from schedlang.runtime.models import ModelSpec

DIM = 5
ROWS = 2  # rows per microbatch and data-parallel replica
REPLICAS = 2  # the batch is sized for up to this many replicas


def _blocks(num_stages: int) -> list[torch.nn.Module]:
    torch.manual_seed(1234)
    return [torch.nn.Sequential(torch.nn.Linear(DIM, DIM), torch.nn.LayerNorm(DIM), torch.nn.Tanh()).double()
            for _ in range(num_stages)]


def _batches(num_microbatches: int) -> Any:
    def batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
        g = torch.Generator().manual_seed(100 + step)  # new data every step: stale buffers show
        n = REPLICAS * num_microbatches * ROWS
        return (torch.randn(n, DIM, generator=g, dtype=torch.float64),
                torch.randn(n, DIM, generator=g, dtype=torch.float64))
    return batch


def _optimizer(params: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr=0.1, momentum=0.9)


def mlp64(num_stages: int, num_microbatches: int = 4, **_: Any) -> ModelSpec:
    """``num_stages`` Linear-LayerNorm-Tanh blocks in float64, MSE loss, SGD with momentum."""
    return ModelSpec(stages=_blocks(num_stages), loss_fn=torch.nn.functional.mse_loss,
                     batch=_batches(num_microbatches), optimizer=_optimizer)


def reference(num_stages: int, num_microbatches: int, steps: int) -> tuple[list[dict[str, torch.Tensor]], list[float]]:
    """One process, whole batches: each stage's final state dict and the loss of every step (the
    mean over the batch's ``REPLICAS * num_microbatches`` equal microbatches)."""
    spec = mlp64(num_stages, num_microbatches)
    blocks = spec.stages
    opt = spec.optimizer([p for b in blocks for p in b.parameters()])
    losses = []
    for step in range(steps):
        x, y = spec.batch(step)
        k = REPLICAS * num_microbatches
        opt.zero_grad()
        total = torch.zeros((), dtype=torch.float64)
        for xm, ym in zip(x.chunk(k), y.chunk(k), strict=True):
            out = xm
            for b in blocks:
                out = b(out)
            total = total + spec.loss_fn(out, ym)
        loss = total / k
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return [{k: v.detach().clone() for k, v in b.state_dict().items()} for b in blocks], losses
