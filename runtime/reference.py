"""A single-process reference trainer for weight-update policies, with no pipelining.

:func:`reference_train` trains a model cut into stages on a sequence of batches, applying a
weight-update policy exactly as a pipeline must (PipeDream's weight stashing and vertical sync,
PipeDream-2BW's double buffering, or synchronous training), but one microbatch at a time in one
process. It keeps every weight version of every stage, so nothing depends on timing:

- ``versions[s][j]``: the version of stage ``s``'s weights microbatch ``j`` uses, forward and
  backward (version ``v`` = the stage's weights after ``v`` updates in this step; version 0 =
  the weights the step starts with);
- ``groups[s]``: the updates of stage ``s`` in order, each the microbatches whose gradients it
  applies, in the order they are summed; update ``u`` steps the optimizer with the mean of their
  gradients and makes version ``u + 1``.

For a program, :func:`schedlang.weights.weight_plan` gives both (``plan.version``,
``plan.groups``); synchronous training is ``versions`` all 0 and one group of all microbatches
per stage. A microbatch runs (forward through every stage, then backward) once every version it
needs exists; an update runs once all its microbatches have run. A plan that can never finish
(a version that needs its own microbatch's gradient) raises ``ValueError``.

Each stage is a module; a microbatch's forward of stage ``s`` takes the detached output of stage
``s - 1`` (stage 0 the microbatch of the batch), the last stage's output goes to
``loss_fn(output, target)``, and the loss of a step is the mean over its microbatches. This is
how the pipeline runtime computes, so a pipelined run can equal this one bit for bit (float64).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn
from torch.func import functional_call

__all__ = ["reference_train", "synchronous_plan"]


def synchronous_plan(num_stages: int, num_microbatches: int) -> tuple[list[list[int]], list[list[tuple[int, ...]]]]:
    """``(versions, groups)`` of synchronous training: one update per step, of all microbatches."""
    return ([[0] * num_microbatches for _ in range(num_stages)],
            [[tuple(range(num_microbatches))] for _ in range(num_stages)])


def reference_train(stages: Sequence[nn.Module], loss_fn: Callable[[torch.Tensor, Any], torch.Tensor],
                    optimizer_factory: Callable[[list[nn.Parameter]], torch.optim.Optimizer],
                    batches: Sequence[tuple[torch.Tensor, Any]], versions: Sequence[Sequence[int]],
                    groups: Sequence[Sequence[Sequence[int]]]) -> list[float]:
    """Train ``stages`` in place on ``batches`` (one ``(inputs, targets)`` per step) under the
    policy given by ``versions`` and ``groups`` (see the module docstring); return each step's loss."""
    S = len(stages)
    if len(versions) != S or len(groups) != S:
        raise ValueError(f"versions and groups need one entry per stage ({S})")
    m = len(versions[0])
    params = [[p for p in mod.parameters() if p.requires_grad] for mod in stages]
    names = [[n for n, p in mod.named_parameters() if p.requires_grad] for mod in stages]
    optimizers = [optimizer_factory(ps) for ps in params]
    losses = []
    for inputs, targets in batches:
        xs, ys = inputs.chunk(m), (targets.chunk(m) if isinstance(targets, torch.Tensor) else targets)
        # hist[s][v]: version v of stage s (copies, never changed)
        hist = [[[p.detach().clone() for p in params[s]]] for s in range(S)]
        grads: list[dict[int, list[torch.Tensor]]] = [{} for _ in range(S)]
        step_losses: dict[int, torch.Tensor] = {}
        todo = list(range(m))
        while todo or any(len(hist[s]) - 1 < len(groups[s]) for s in range(S)):
            ready = [j for j in todo if all(versions[s][j] < len(hist[s]) for s in range(S))]
            for j in ready:
                step_losses[j] = _microbatch(stages, names, hist, versions, j, xs[j], ys[j], loss_fn, grads)
                todo.remove(j)
            updated = False
            for s in range(S):
                while len(hist[s]) - 1 < len(groups[s]) and all(j in grads[s] for j in groups[s][len(hist[s]) - 1]):
                    _update(params[s], optimizers[s], [grads[s][j] for j in groups[s][len(hist[s]) - 1]])
                    hist[s].append([p.detach().clone() for p in params[s]])
                    updated = True
            if not ready and not updated:
                raise ValueError(f"the plan cannot finish: microbatches {todo} wait for versions no update makes")
        losses.append(float(torch.stack([step_losses[j] for j in range(m)]).mean()))
    return losses


def _microbatch(stages: Sequence[nn.Module], names: list[list[str]], hist: list[list[list[torch.Tensor]]],
                versions: Sequence[Sequence[int]], j: int, x: torch.Tensor, y: Any,
                loss_fn: Callable[[torch.Tensor, Any], torch.Tensor],
                grads: list[dict[int, list[torch.Tensor]]]) -> torch.Tensor:
    """Forward and backward of microbatch ``j`` through every stage with its versions; store the
    weight gradients; return the loss."""
    S = len(stages)
    leaves, ins, outs = [], [], []
    h = x
    for s in range(S):
        w = [t.detach().clone().requires_grad_() for t in hist[s][versions[s][j]]]
        inp = h.detach().requires_grad_() if s > 0 else h
        with torch.enable_grad():
            out = functional_call(stages[s], dict(zip(names[s], w, strict=True)), (inp,))
            if s == S - 1:
                out = loss_fn(out, y)
        leaves.append(w)
        ins.append(inp)
        outs.append(out)
        h = out
    loss = outs[-1].detach()
    dy: torch.Tensor | None = None
    for s in reversed(range(S)):
        torch.autograd.backward(outs[s], dy)
        dy = ins[s].grad if s > 0 else None
        grads[s][j] = [leaf.grad if leaf.grad is not None else torch.zeros_like(leaf) for leaf in leaves[s]]
    return loss


def _update(params: list[nn.Parameter], optimizer: torch.optim.Optimizer, grads: list[list[torch.Tensor]]) -> None:
    """One optimizer step with the mean of ``grads`` (summed in order)."""
    total = [g.detach().clone() for g in grads[0]]
    for more in grads[1:]:
        for a, g in zip(total, more, strict=True):
            a.add_(g)
    with torch.no_grad():
        for p, a in zip(params, total, strict=True):
            p.grad = a.div_(len(grads))
    optimizer.step()
    for p in params:
        p.grad = None
