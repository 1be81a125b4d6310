"""B/W split through autograd: W from the gradients B captured, not a second full backward."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from schedlang.runtime.autograd_split import input_backward  # noqa: E402


def _block() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.LayerNorm(7), torch.nn.Tanh(),
                               torch.nn.Linear(7, 3, bias=False)).double()


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return (torch.randn(4, 5, generator=g, dtype=torch.float64, requires_grad=True),
            torch.randn(4, 3, generator=g, dtype=torch.float64))


def test_w_from_captured_gradients_equals_autograd_and_skips_the_input_path() -> None:
    mod = _block()
    x, dy = _data()
    out = mod(x)
    tanh = next(n for n in _walk(out.grad_fn) if "Tanh" in type(n).__name__)
    calls = []
    tanh.register_hook(lambda *a: calls.append(1))
    params = list(mod.parameters())
    dx, work = input_backward(out, x, dy, params)
    assert work is not None and len(work.nodes) == 3  # two linears, one norm
    assert calls == [1]  # B went through the activation path once
    assert all(p.grad is None for p in params)  # and computed no weight gradient
    work.run()
    assert calls == [1]  # W did not go through it again
    ref = _block()
    x2, _ = _data()
    ref(x2).backward(dy)
    torch.testing.assert_close(dx, x2.grad, rtol=1e-12, atol=1e-14)
    for p, q in zip(params, ref.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-12, atol=1e-14)


def test_tied_weights_fall_back() -> None:
    lin = torch.nn.Linear(4, 4, bias=False).double()
    x = torch.randn(2, 4, dtype=torch.float64, requires_grad=True)
    out = lin(torch.tanh(lin(x)))  # one weight used by two nodes on the input path
    dx, work = input_backward(out, x, torch.ones_like(out), list(lin.parameters()))
    assert work is None and dx is not None


def _walk(root):  # noqa: ANN001, ANN202 - autograd nodes
    todo, seen = [root], set()
    while todo:
        n = todo.pop()
        if n is None or n in seen:
            continue
        seen.add(n)
        yield n
        todo += [m for m, _ in n.next_functions]


def test_the_split_leaves_no_reference_cycle_holding_the_graph() -> None:
    """What B leaves behind is freed by reference counting alone: with the garbage collector off,
    dropping B's results frees as much as a collection does afterwards (a closure cycle in the
    graph walk once kept visited nodes, and the activations they saved, until the next collection)."""
    import gc
    import weakref

    class Saved:  # what the graph holds for each tensor saved for backward
        def __init__(self, t: torch.Tensor) -> None:
            self.t = t

    held: list[weakref.ref[Saved]] = []

    def pack(t: torch.Tensor) -> Saved:
        box = Saved(t)
        held.append(weakref.ref(box))
        return box

    def b_only() -> None:
        mod = _block()
        x, dy = _data()
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda box: box.t):
            out = mod(x)
        dx, work = input_backward(out, x, dy, list(mod.parameters()))
        assert dx is not None and work is not None and held

    gc.collect()
    gc.disable()
    try:
        b_only()
        before = [r() is not None for r in held]
        gc.collect()
        assert [r() is not None for r in held] == before
    finally:
        gc.enable()
