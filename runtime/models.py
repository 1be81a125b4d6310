"""Cutting models into pipeline stages, and the bundled example: a tiny GPT on bundled text.

- :func:`split_sequential` cuts an ``nn.Sequential`` or a list of blocks into N stages
  (contiguous, balanced by parameter count unless explicit cut points are given).
- :class:`ModelSpec` is the full form of what a ``--model`` factory returns for ``schedlang run``
  (``FACTORY(num_stages, num_microbatches)``; :mod:`schedlang.runtime.intake` documents the
  other forms and the defaults).
- :func:`tiny_gpt` is the default factory: a character-level GPT (token and position embedding,
  pre-norm transformer blocks, final norm and head) trained on :data:`TEXT`.
- :func:`to_split_layers` swaps ``nn.Linear``/``nn.LayerNorm`` for the
  :mod:`schedlang.kernels` split layers (same parameters), for ``split_backward="kernels"``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn import functional as fn

__all__ = ["TEXT", "ModelSpec", "TinyGPT", "layers_of", "split_sequential", "tiny_gpt", "to_split_layers"]

TEXT = """\
A pipeline splits a model into stages and a batch into microbatches. Each stage lives on its own
device and hands its activations to the next stage, which hands gradients back. While the first
stage works on the second microbatch, the second stage works on the first, and so on down the
line. The time a device spends waiting is the bubble. Good schedules keep the bubble small and
the memory bounded: they choose the order in which each device runs its forward passes, its
backward passes for the inputs and its backward passes for the weights. A schedule written down
once can be checked, simulated, drawn, compiled into instruction streams and run on real devices.
"""


def _param_count(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def _balanced_cuts(weights: Sequence[int], n: int) -> list[int]:
    """Cut points splitting ``weights`` into ``n`` non-empty contiguous parts of similar sums."""
    prefix = [0]
    for w in weights:
        prefix.append(prefix[-1] + max(w, 1))
    cuts: list[int] = []
    for k in range(1, n):
        lo = (cuts[-1] if cuts else 0) + 1
        hi = len(weights) - (n - k)  # leave one block for each later stage
        target = prefix[-1] * k / n
        best = min(range(lo, hi + 1), key=lambda i: abs(prefix[i] - target))
        cuts.append(best)
    return cuts


def split_sequential(model: nn.Sequential | Sequence[nn.Module], num_stages: int,
                     cuts: Sequence[int] | None = None) -> list[nn.Sequential]:
    """Cut a sequence of blocks into ``num_stages`` contiguous ``nn.Sequential`` stages.

    ``cuts`` are the indices where stages 1, 2, ... begin (``num_stages - 1`` increasing indices);
    without them the cut balances parameter counts. The stages share the blocks' parameters.
    """
    blocks = list(model)
    if not 1 <= num_stages <= len(blocks):
        raise ValueError(f"cannot cut {len(blocks)} blocks into {num_stages} non-empty stages")
    if cuts is None:
        cuts = _balanced_cuts([_param_count(b) for b in blocks], num_stages)
    cuts = list(cuts)
    bounds = [0, *cuts, len(blocks)]
    if len(cuts) != num_stages - 1 or any(a >= b for a, b in zip(bounds, bounds[1:], strict=False)):
        raise ValueError(f"cut points {cuts} do not give {num_stages} non-empty stages of {len(blocks)} blocks")
    return [nn.Sequential(*blocks[a:b]) for a, b in zip(bounds, bounds[1:], strict=False)]


def layers_of(stages: Sequence[nn.Module]) -> list[nn.Module]:
    """The model's layers in order: the blocks of stages that are ``nn.Sequential`` (as
    :func:`split_sequential` makes them); any other stage module counts as one layer."""
    out: list[nn.Module] = []
    for stage in stages:
        out.extend(stage if isinstance(stage, nn.Sequential) else [stage])
    return out


# ---------------------------------------------------------------------- a tiny GPT


class Embed(nn.Module):
    """Token plus learned position embedding."""

    def __init__(self, vocab: int, dim: int, seq: int) -> None:
        super().__init__()
        self.tok = nn.Embedding(vocab, dim)
        self.pos = nn.Embedding(seq, dim)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        t = idx.shape[1]
        return self.tok(idx) + self.pos(torch.arange(t, device=idx.device))


class Block(nn.Module):
    """A pre-norm transformer block: causal self-attention and an MLP, both residual."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.ln1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.ln2 = nn.LayerNorm(dim)
        self.fc = nn.Linear(dim, 4 * dim)
        self.out = nn.Linear(4 * dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(c, dim=2)
        shape = (b, t, self.heads, c // self.heads)
        q, k, v = (z.reshape(shape).transpose(1, 2) for z in (q, k, v))
        att = (q @ k.transpose(-2, -1)) / math.sqrt(c // self.heads)
        mask = torch.ones(t, t, dtype=torch.bool, device=x.device).tril()
        att = att.masked_fill(~mask, float("-inf")).softmax(dim=-1)
        y = (att @ v).transpose(1, 2).reshape(b, t, c)
        x = x + self.proj(y)
        return x + self.out(fn.gelu(self.fc(self.ln2(x))))


class Head(nn.Module):
    """Final norm and the projection to vocabulary logits."""

    def __init__(self, dim: int, vocab: int) -> None:
        super().__init__()
        self.ln = nn.LayerNorm(dim)
        self.lm = nn.Linear(dim, vocab)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lm(self.ln(x))


class TinyGPT(nn.Sequential):
    """``Embed``, ``layers`` blocks, ``Head``: an ``nn.Sequential`` ready for :func:`split_sequential`."""

    def __init__(self, vocab: int, dim: int = 32, heads: int = 2, layers: int = 4, seq: int = 32) -> None:
        super().__init__(Embed(vocab, dim, seq), *(Block(dim, heads) for _ in range(layers)), Head(dim, vocab))


def lm_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross entropy."""
    return fn.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))


def to_split_layers(module: nn.Module, use_triton: bool | None = None) -> nn.Module:
    """Replace every ``nn.Linear``/``nn.LayerNorm`` in ``module`` by its schedlang.kernels split layer."""
    from schedlang.kernels.layers import SplitLayerNorm, SplitLinear

    for name, child in list(module.named_children()):
        if isinstance(child, nn.Linear):
            setattr(module, name, SplitLinear.from_linear(child, use_triton=use_triton))
        elif isinstance(child, nn.LayerNorm) and len(child.normalized_shape) == 1:
            new = SplitLayerNorm(child.normalized_shape[0], child.eps, child.bias is not None,
                                 device=child.weight.device, dtype=child.weight.dtype, use_triton=use_triton)
            with torch.no_grad():
                new.weight.copy_(child.weight)
                if child.bias is not None and new.bias is not None:
                    new.bias.copy_(child.bias)
            setattr(module, name, new)
        else:
            to_split_layers(child, use_triton)
    return module


@dataclass
class ModelSpec:
    """What a model factory may return for ``schedlang run`` (:mod:`schedlang.runtime.intake`).

    Give either ``stages`` (the model already cut, one module per stage, in order) or ``model``
    (an ``nn.Module`` or a list of blocks that intake cuts). Every other field has a default:

    - ``loss_fn(last_stage_output, targets) -> scalar``: a mean over the microbatch (default:
      cross entropy, classes in the output's last dimension);
    - ``batch(step) -> (inputs, targets)``: one whole batch, split into microbatches along
      dimension 0 (default: synthetic batches like ``example`` with class-index targets);
    - ``optimizer(params) -> torch.optim.Optimizer`` (default: AdamW, lr 1e-3);
    - ``example``: one whole batch of inputs, for tracing and for the synthetic batches
      (default: the inputs of ``batch(0)``);
    - ``split``: names of the submodules that begin stages 1, 2, ... (``--split`` gives the same).
    """

    stages: list[nn.Module] | None = None
    loss_fn: Callable[[Any, Any], torch.Tensor] | None = None
    batch: Callable[[int], tuple[torch.Tensor, Any]] | None = None
    optimizer: Callable[[list[nn.Parameter]], torch.optim.Optimizer] | None = None
    model: nn.Module | Sequence[nn.Module] | None = None
    example: torch.Tensor | None = None
    split: Sequence[str] | None = None


class TextBatches:
    """Random windows of :data:`TEXT` (characters), reproducible per step."""

    def __init__(self, text: str, seq: int, batch: int, seed: int = 0) -> None:
        self.chars = sorted(set(text))
        self.data = torch.tensor([self.chars.index(c) for c in text], dtype=torch.long)
        self.seq, self.batch, self.seed = seq, batch, seed

    def __call__(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        g = torch.Generator().manual_seed(self.seed * 100003 + step)
        starts = torch.randint(0, len(self.data) - self.seq - 1, (self.batch,), generator=g)
        x = torch.stack([self.data[s:s + self.seq] for s in starts.tolist()])
        y = torch.stack([self.data[s + 1:s + 1 + self.seq] for s in starts.tolist()])
        return x, y


def tiny_gpt(num_stages: int, num_microbatches: int = 4, *, batch: int | None = None, seq: int = 32, dim: int = 32, heads: int = 2,
             layers: int | None = None, lr: float = 3e-3, seed: int = 0, kernels: bool = False,
             dtype: torch.dtype = torch.float32) -> ModelSpec:
    """The bundled example: a tiny character-level GPT cut into ``num_stages`` stages.

    ``layers`` defaults to ``max(2, num_stages - 2)`` blocks so every stage has work; the
    embedding and the head are stages' first and last blocks. Every rank builds the same
    initial weights (``seed``). ``batch`` (default: the smallest multiple of
    ``num_microbatches`` that is at least 16) must be divisible by the number of microbatches.
    """
    if batch is None:
        batch = num_microbatches * max(1, -(-16 // num_microbatches))
    data = TextBatches(TEXT, seq, batch, seed)
    torch.manual_seed(seed)
    model = TinyGPT(len(data.chars), dim, heads, layers if layers is not None else max(2, num_stages - 2), seq)
    model = model.to(dtype)
    if kernels:
        to_split_layers(model, use_triton=None)
    return ModelSpec(
        stages=list(split_sequential(model, num_stages)),
        loss_fn=lm_loss,
        batch=data,
        optimizer=lambda params: torch.optim.Adam(params, lr=lr),
    )
