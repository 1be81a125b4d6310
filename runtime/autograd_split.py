"""Split a stage's backward into B (input gradient) and W (weight gradients) through autograd,
without doing B's work twice.

The simple split runs B as ``autograd.grad(out, x)`` and W as a second backward from ``out`` to
the parameters: W then recomputes every activation gradient B already computed. Here B captures,
on the way, the gradient arriving at every *weight node*: an autograd node on the path from the
output to the input that also leads to parameters (a linear layer's matmul, a norm, a bias add).
W then starts from those nodes alone, one backward per node restricted to that node's own
parameters, so it only does the weight-gradient work.

:func:`input_backward` returns the input gradient and a :class:`WeightWork` (``None`` when the
graph does not fit, for instance a parameter used by two weight nodes, or a parameter that
reaches the output without meeting the input path: the caller then falls back to the simple
split). :meth:`WeightWork.run` accumulates into ``.grad`` like ``autograd.backward`` does.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch.autograd.graph import GradientEdge, get_gradient_edge

__all__ = ["WeightWork", "input_backward"]


def _consumers(root: Any) -> dict[Any, list[Any]]:
    """Every node reachable from ``root`` (a grad_fn) but the root, with the nodes that consume
    its output (its parents in the walk from the output)."""
    parents: dict[Any, list[Any]] = {}
    todo, seen = [root], {root}
    while todo:
        node = todo.pop()
        for nxt, _ in node.next_functions:
            if nxt is None:
                continue
            parents.setdefault(nxt, []).append(node)
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return parents


def _reaching(target: Any, parents: dict[Any, list[Any]]) -> set[Any]:
    """The nodes from which ``target`` can be reached (``target`` included): its consumers,
    their consumers, and so on. Iterative, so no frame or closure keeps the graph alive."""
    found, todo = {target}, [target]
    while todo:
        for parent in parents.get(todo.pop(), ()):
            if parent not in found:
                found.add(parent)
                todo.append(parent)
    return found


class WeightWork:
    """What W needs: per weight node, the gradient B saw arriving there, and its parameters."""

    def __init__(self, nodes: list[tuple[Any, list[torch.Tensor], list[torch.Tensor]]]) -> None:
        self.nodes = nodes  # (node, its parameters, [captured grad outputs])

    def run(self) -> None:
        """Accumulate every parameter's gradient (the W of this stage and microbatch)."""
        for node, params, captured in self.nodes:
            if not captured:
                continue  # no gradient reached this node (its output did not affect the loss)
            grads = captured[0]
            outs = [GradientEdge(node, k) for k, g in enumerate(grads) if g is not None]
            if not outs:
                continue
            got = torch.autograd.grad(outs, params, [g for g in grads if g is not None], allow_unused=True)
            for p, g in zip(params, got, strict=True):
                if g is None:
                    continue
                if p.grad is None:
                    p.grad = g
                else:
                    p.grad.add_(g)
        self.nodes = []


def input_backward(out: torch.Tensor, x: torch.Tensor, dy: torch.Tensor | None,
                   params: Sequence[torch.Tensor]) -> tuple[torch.Tensor | None, WeightWork | None]:
    """B: ``d out / d x`` applied to ``dy``, keeping the graph; plus the captured weight work."""
    root = out.grad_fn
    work = _plan(root, x, params) if root is not None else None
    hooks = []
    if work is not None:
        for node, _, captured in work.nodes:
            hooks.append(node.register_prehook(lambda grads, box=captured: box.append(tuple(grads))))
    try:
        (dx,) = torch.autograd.grad(out, x, dy, retain_graph=True, allow_unused=True)
    finally:
        for h in hooks:
            h.remove()
    return dx, work


def _plan(root: Any, x: torch.Tensor, params: Sequence[torch.Tensor]) -> WeightWork | None:
    if not params:
        return WeightWork([])
    parents = _consumers(root)
    x_node = get_gradient_edge(x).node
    if x_node is not root and x_node not in parents:
        return None  # the output does not depend on the input through the graph
    on_path = _reaching(x_node, parents)  # nodes between the output and the input
    owner: dict[Any, list[torch.Tensor]] = {}
    for p in params:
        acc = get_gradient_edge(p).node
        if acc not in parents:
            continue  # the parameter is not used by this forward: no gradient, as with backward()
        # climb from the parameter through nodes off the input path to the first nodes on it
        found, todo, seen = [], [acc], {acc}
        while todo:
            node = todo.pop()
            for parent in parents.get(node, ()):
                if parent in on_path:
                    found.append(parent)
                elif parent not in seen:
                    seen.add(parent)
                    todo.append(parent)
        if len(set(found)) != 1:
            return None  # used by several weight nodes, or reaching the output off the input path
        owner.setdefault(found[0], []).append(p)
    return WeightWork([(node, ps, []) for node, ps in owner.items()])
