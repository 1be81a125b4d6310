"""Model factories for the model-intake tests, loaded by path as a user's file would be.

Every factory has the documented signature ``FACTORY(num_stages, num_microbatches)`` and builds
a float64 model (exact comparisons), trained with SGD with momentum: Adam's updates barely
depend on the gradient's scale, so a gradient summed twice or not at all would hide there.
"""

from __future__ import annotations

from typing import Any

import torch
from schedlang.runtime.models import ModelSpec
from torch import nn
from torch.distributed.pipelining import pipe_split

DIM = 6
VOCAB = 11
SEQ = 5
ROWS = 2  # rows per microbatch


def sgd(params: list[nn.Parameter]) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr=0.1, momentum=0.9)


class Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(DIM, DIM)
        self.norm = nn.LayerNorm(DIM)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + torch.tanh(self.lin(self.norm(x)))


class SkipNet(nn.Module):
    """``pipe_split()`` between its blocks; the input projection's output skips every stage
    and joins again just before the head (a skip connection across all stage boundaries)."""

    def __init__(self, num_blocks: int) -> None:
        super().__init__()
        self.inp = nn.Linear(DIM, DIM)
        self.blocks = nn.ModuleList(Residual() for _ in range(num_blocks))
        self.head = nn.Linear(DIM, VOCAB)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h0 = self.inp(x)
        h = h0
        for i, block in enumerate(self.blocks):
            if i:
                pipe_split()
            h = block(h)
        return self.head(h * h0)


def skip_net(num_stages: int, num_microbatches: int) -> ModelSpec:
    return ModelSpec(model=SkipNet(num_stages).double(), optimizer=sgd,
                     example=torch.zeros(ROWS * num_microbatches, DIM, dtype=torch.float64))


class TiedLM(nn.Module):
    """A token embedding whose weight is also the output head's (tied, as in GPT-2)."""

    def __init__(self, num_blocks: int) -> None:
        super().__init__()
        self.emb = nn.Embedding(VOCAB, DIM)
        self.blocks = nn.Sequential(*(Residual() for _ in range(num_blocks)))
        self.head = nn.Linear(DIM, VOCAB, bias=False)
        self.head.weight = self.emb.weight

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.emb(idx)))


def tied_lm(num_stages: int, num_microbatches: int) -> ModelSpec:
    return ModelSpec(model=TiedLM(num_stages).double(), optimizer=sgd,
                     example=torch.randint(0, VOCAB, (ROWS * num_microbatches, SEQ)),
                     split=[f"blocks.{i}" for i in range(1, num_stages)])


def gpt2(num_stages: int, num_microbatches: int) -> ModelSpec:
    """transformers' GPT-2 from a small config (random weights, nothing downloaded); one block
    per stage, split by name with ``--split transformer.h.1,...``; its head is tied to ``wte``."""
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(vocab_size=VOCAB * 3, n_positions=SEQ + 3, n_embd=8, n_layer=max(2, num_stages),
                        n_head=2, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, use_cache=False,
                        bos_token_id=0, eos_token_id=0)
    model = GPT2LMHeadModel(config).double()
    return ModelSpec(model=model, optimizer=sgd,
                     example=torch.randint(0, VOCAB * 3, (ROWS * num_microbatches, SEQ)))


def gpt2_split(num_stages: int) -> list[str]:
    return [f"transformer.h.{i}" for i in range(1, num_stages)]


def unsplit(spec: ModelSpec) -> Any:
    """The factory's whole model as one callable (``.logits`` of a transformers output)."""
    model = spec.model
    assert isinstance(model, nn.Module)

    def run(x: torch.Tensor) -> torch.Tensor:
        out = model(x)
        return out.logits if hasattr(out, "logits") else out

    return run
