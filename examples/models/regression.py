"""Your own loss, data and optimizer: return a ModelSpec with the fields you want to set."""

import torch
from torch import nn

from schedlang.runtime.models import ModelSpec


def batches(step):
    """Batch number `step`: 32 rows of 8 features; the target is their sum."""
    g = torch.Generator().manual_seed(step)
    x = torch.randn(32, 8, generator=g)
    return x, x.sum(dim=1, keepdim=True)


def make(num_stages, num_microbatches):
    blocks = [nn.Sequential(nn.Linear(8, 32), nn.Tanh())]
    blocks += [nn.Sequential(nn.Linear(32, 32), nn.Tanh()) for _ in range(max(0, num_stages - 2))]
    blocks.append(nn.Linear(32, 1))
    return ModelSpec(
        model=blocks,  # a list of blocks, cut like an nn.Sequential
        loss_fn=nn.functional.mse_loss,
        batch=batches,
        optimizer=lambda params: torch.optim.SGD(params, lr=0.05, momentum=0.9),
    )
