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
