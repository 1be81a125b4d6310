"""Tests for schedlang.kernels: Triton kernels vs torch references, split layers, profiling.

Without CUDA the Triton kernels run under the interpreter: this file sets TRITON_INTERPRET=1
(unless already set) *before* importing any kernel module, because ``triton.jit`` reads it when
the kernels are defined. tests/conftest.py does the same for the whole session. Launches stay
small (odd shapes such as 37x48x80 that are not block multiples, a few dozen
program-iterations each) because the interpreter costs about 2 ms per program-iteration.
GPU-only checks carry ``@pytest.mark.gpu`` and skip without CUDA.
"""

from __future__ import annotations

import gc
import os
import random
import weakref

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from schedlang.kernels import matmul as mm  # noqa: E402
from schedlang.kernels import norms as nm  # noqa: E402
from schedlang.kernels._util import interpreted, triton_usable  # noqa: E402
from schedlang.kernels.layers import (  # noqa: E402
    SplitLayerNorm,
    SplitLinear,
    SplitRMSNorm,
    WeightGradStore,
    attach_store,
    split_modules,
)
from schedlang.kernels.profile import PARAM_NAMES, format_params, profile_ops  # noqa: E402
from torch import nn  # noqa: E402

DEV = "cuda" if torch.cuda.is_available() else "cpu"
ATOL, RTOL = 1e-4, 1e-5  # fp32 tolerances against torch
SMALL = mm.MatmulBlocks(16, 16, 16)  # forces several programs and partial edge tiles

needs_triton = pytest.mark.skipif(
    not triton_usable(torch.empty(0, device=DEV)),
    reason="Triton kernels cannot run here (no CUDA and TRITON_INTERPRET disabled)",
)
gpu = pytest.mark.gpu
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.fixture(autouse=True)
def _exact_fp32() -> None:
    """Keep torch's own fp32 matmuls exact on a GPU (references must not use TF32)."""
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.manual_seed(0)


def rnd(*shape: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Random normal tensor on the test device."""
    return torch.randn(*shape, device=DEV).to(dtype)


def close(
    a: torch.Tensor | None, b: torch.Tensor | None, atol: float = ATOL, rtol: float = RTOL
) -> None:
    """Assert ``a`` and ``b`` exist and agree in value (compared in fp32)."""
    assert a is not None and b is not None
    torch.testing.assert_close(a.float(), b.float(), atol=atol, rtol=rtol)


def test_interpreter_active_on_cpu() -> None:
    """Without CUDA the kernels must have been defined under the interpreter."""
    if not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") == "1":
        assert interpreted()


# ------------------------------------------------------------------------------ linear


@needs_triton
@pytest.mark.parametrize("blocks", [None, SMALL], ids=["auto", "16x16x16"])
@pytest.mark.parametrize("with_bias", [True, False])
def test_linear_forward(blocks: mm.MatmulBlocks | None, with_bias: bool) -> None:
    x, w = rnd(37, 80), rnd(48, 80)
    b = rnd(48) if with_bias else None
    close(mm.linear_forward(x, w, b, blocks=blocks), mm.linear_forward_ref(x, w, b))


@needs_triton
def test_linear_forward_strided_3d() -> None:
    x = rnd(80, 3, 5).permute(1, 2, 0)  # (3, 5, 80), not contiguous
    w = rnd(80, 48).t()  # (48, 80), transposed view
    b = rnd(48)
    y = mm.linear_forward(x, w, b, blocks=SMALL)
    assert y.shape == (3, 5, 48)
    close(y, mm.linear_forward_ref(x, w, b))


@needs_triton
@pytest.mark.parametrize("blocks", [None, SMALL], ids=["auto", "16x16x16"])
def test_linear_backward_input(blocks: mm.MatmulBlocks | None) -> None:
    dy, w = rnd(37, 48), rnd(48, 80)
    close(mm.linear_backward_input(dy, w, blocks=blocks), mm.linear_backward_input_ref(dy, w))


@needs_triton
@pytest.mark.parametrize("blocks", [None, SMALL], ids=["auto", "16x16x16"])
def test_linear_backward_weight_buffers(blocks: mm.MatmulBlocks | None) -> None:
    x, dy = rnd(37, 80), rnd(37, 48)
    want_w, want_b = mm.linear_backward_weight_ref(x, dy, with_bias=True)
    assert want_b is not None
    # No buffers: allocated and written.
    dw, db = mm.linear_backward_weight(x, dy, with_bias=True, blocks=blocks)
    assert dw.dtype == torch.float32 and db is not None
    close(dw, want_w)
    close(db, want_b)
    # First accumulation into garbage: overwritten, not added to.
    dw = torch.full((48, 80), float("nan"), device=DEV)
    db = torch.full((48,), float("nan"), device=DEV)
    mm.linear_backward_weight(x, dy, dw, db, accumulate=False, blocks=blocks)
    close(dw, want_w)
    close(db, want_b)
    # Accumulation adds in place.
    dw0, db0 = rnd(48, 80), rnd(48)
    dw, db = dw0.clone(), db0.clone()
    out_w, out_b = mm.linear_backward_weight(x, dy, dw, db, blocks=blocks)
    assert out_w is dw and out_b is db
    close(dw, dw0 + want_w)
    close(db, db0 + want_b)


@needs_triton
def test_linear_backward_weight_bias_over_many_row_and_column_blocks() -> None:
    # 300 rows and 200 columns: the column-sum kernel loops over row blocks in every column block
    # (128 x 128 tiles under the interpreter), the last of each partial; a strided dY (a slice).
    x, dy_full = rnd(300, 24), rnd(300, 2 * 200)
    dy = dy_full[:, ::2]
    want_w, want_b = mm.linear_backward_weight_ref(x, dy, with_bias=True)
    db0 = rnd(200)
    db = db0.clone()
    _, got_b = mm.linear_backward_weight(x, dy, db=db)
    assert got_b is db
    close(db, db0 + want_b)
    dw, got_b = mm.linear_backward_weight(x, dy, with_bias=True)
    close(dw, want_w)
    close(got_b, want_b)


@needs_triton
def test_linear_backward_weight_no_bias_3d() -> None:
    x, dy = rnd(3, 7, 40), rnd(3, 7, 24)
    dw, db = mm.linear_backward_weight(x, dy)
    assert db is None
    close(dw, mm.linear_backward_weight_ref(x, dy)[0])


def test_linear_references_match_autograd() -> None:
    x, w, b, dy = rnd(37, 80), rnd(48, 80), rnd(48), rnd(37, 48)
    xx, ww, bb = (t.clone().requires_grad_() for t in (x, w, b))
    out = nn.functional.linear(xx, ww, bb)
    out.backward(dy)
    close(mm.linear_forward_ref(x, w, b), out.detach())
    close(mm.linear_backward_input_ref(dy, w), xx.grad)
    dw, db = mm.linear_backward_weight_ref(x, dy, with_bias=True)
    close(dw, ww.grad)
    close(db, bb.grad)


@needs_triton
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_linear_low_precision(dtype: torch.dtype) -> None:
    """16-bit inputs: fp32 accumulation (interpreter: the UPCAST path); looser tolerance."""
    x, w, b, dy = rnd(37, 80, dtype=dtype), rnd(48, 80, dtype=dtype), rnd(48, dtype=dtype), None
    dy = rnd(37, 48, dtype=dtype)
    y = mm.linear_forward(x, w, b, blocks=SMALL)
    assert y.dtype == dtype
    close(y, mm.linear_forward_ref(x, w, b), atol=5e-2, rtol=1e-2)
    # Against the exact fp32 product of the 16-bit values too (catches a bf16-arithmetic path).
    close(y, x.float() @ w.float().t() + b.float(), atol=5e-2, rtol=1e-2)
    dx = mm.linear_backward_input(dy, w)
    close(dx, mm.linear_backward_input_ref(dy, w), atol=5e-2, rtol=1e-2)
    dw, db = mm.linear_backward_weight(x, dy, with_bias=True)  # fp32 buffers
    want_w, want_b = mm.linear_backward_weight_ref(x, dy, with_bias=True)
    close(dw, want_w, atol=1e-3, rtol=1e-4)
    close(db, want_b, atol=1e-3, rtol=1e-4)


# ------------------------------------------------------------------------------- norms


@needs_triton
@pytest.mark.parametrize("block_rows", [None, 8])
def test_rmsnorm_kernels(block_rows: int | None) -> None:
    x, w, dy = rnd(37, 80), rnd(80), rnd(37, 80)
    y, rstd = nm.rmsnorm_forward(x, w, 1e-6, block_rows=block_rows)
    y_ref, rstd_ref = nm.rmsnorm_forward_ref(x, w, 1e-6)
    close(y, y_ref)
    close(rstd, rstd_ref)
    dx = nm.rmsnorm_backward_input(x, dy, w, rstd, block_rows=block_rows)
    close(dx, nm.rmsnorm_backward_input_ref(x, dy, w, rstd_ref))
    blocks = (8, 32) if block_rows else None
    want = nm.rmsnorm_backward_weight_ref(x, dy, rstd_ref)
    close(nm.rmsnorm_backward_weight(x, dy, rstd, blocks=blocks), want)
    buf = torch.full((80,), float("nan"), device=DEV)
    nm.rmsnorm_backward_weight(x, dy, rstd, buf, accumulate=False, blocks=blocks)
    close(buf, want)
    dw0 = rnd(80)
    buf = dw0.clone()
    nm.rmsnorm_backward_weight(x, dy, rstd, buf, blocks=blocks)
    close(buf, dw0 + want)


@needs_triton
@pytest.mark.parametrize("with_bias", [True, False])
@pytest.mark.parametrize("block_rows", [None, 8])
def test_layernorm_kernels(block_rows: int | None, with_bias: bool) -> None:
    x, w, dy = rnd(37, 80) * 3 + 1, rnd(80), rnd(37, 80)
    b = rnd(80) if with_bias else None
    y, mean, rstd = nm.layernorm_forward(x, w, b, 1e-5, block_rows=block_rows)
    y_ref, mean_ref, rstd_ref = nm.layernorm_forward_ref(x, w, b, 1e-5)
    close(y, y_ref)
    close(mean, mean_ref)
    close(rstd, rstd_ref)
    dx = nm.layernorm_backward_input(x, dy, w, mean, rstd, block_rows=block_rows)
    close(dx, nm.layernorm_backward_input_ref(x, dy, w, mean_ref, rstd_ref))
    blocks = (8, 32) if block_rows else None
    want_w, want_b = nm.layernorm_backward_weight_ref(
        x, dy, mean_ref, rstd_ref, with_bias=with_bias
    )
    dw0, db0 = rnd(80), rnd(80)
    dw, db = dw0.clone(), db0.clone() if with_bias else None
    nm.layernorm_backward_weight(x, dy, mean, rstd, dw, db, blocks=blocks)
    close(dw, dw0 + want_w)
    if with_bias:
        assert db is not None and want_b is not None
        close(db, db0 + want_b)
    fresh_w, fresh_b = nm.layernorm_backward_weight(
        x, dy, mean, rstd, with_bias=with_bias, blocks=blocks
    )
    close(fresh_w, want_w)
    assert (fresh_b is None) == (not with_bias)


def test_norm_references_match_autograd() -> None:
    x, w, b, dy = rnd(37, 80), rnd(80), rnd(80), rnd(37, 80)
    xx, ww = x.clone().requires_grad_(), w.clone().requires_grad_()
    out = nn.functional.rms_norm(xx, (80,), ww, eps=1e-6)
    out.backward(dy)
    y, rstd = nm.rmsnorm_forward_ref(x, w, 1e-6)
    close(y, out.detach())
    close(nm.rmsnorm_backward_input_ref(x, dy, w, rstd), xx.grad)
    close(nm.rmsnorm_backward_weight_ref(x, dy, rstd), ww.grad)

    xx, ww, bb = (t.clone().requires_grad_() for t in (x, w, b))
    out = nn.functional.layer_norm(xx, (80,), ww, bb, eps=1e-5)
    out.backward(dy)
    y, mean, rstd = nm.layernorm_forward_ref(x, w, b, 1e-5)
    close(y, out.detach())
    close(nm.layernorm_backward_input_ref(x, dy, w, mean, rstd), xx.grad)
    dw, db = nm.layernorm_backward_weight_ref(x, dy, mean, rstd, with_bias=True)
    close(dw, ww.grad)
    close(db, bb.grad)


@needs_triton
def test_norms_bf16() -> None:
    x, w, b, dy = (rnd(*s, dtype=torch.bfloat16) for s in [(37, 80), (80,), (80,), (37, 80)])
    y, mean, rstd = nm.layernorm_forward(x, w, b)
    y_ref, mean_ref, rstd_ref = nm.layernorm_forward_ref(x, w, b)
    assert y.dtype == torch.bfloat16
    close(y, y_ref, atol=5e-2, rtol=1e-2)
    close(rstd, rstd_ref, atol=1e-4, rtol=1e-4)
    dx = nm.layernorm_backward_input(x, dy, w, mean, rstd)
    close(dx, nm.layernorm_backward_input_ref(x, dy, w, mean_ref, rstd_ref), atol=5e-2, rtol=1e-2)
    y, rstd = nm.rmsnorm_forward(x, w)
    close(y, nm.rmsnorm_forward_ref(x, w)[0], atol=5e-2, rtol=1e-2)
    close(nm.rmsnorm_backward_weight(x, dy, rstd), nm.rmsnorm_backward_weight_ref(x, dy, rstd))


# ------------------------------------------------------------------------------ layers


class Residual(nn.Module):
    """``x + f(x)``: autograd hands the same gradient tensor to both branches."""

    def __init__(self, f: nn.Module) -> None:
        super().__init__()
        self.f = f

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return ``x + f(x)``."""
        return x + self.f(x)


def split_stages(use_triton: bool | None = None) -> list[nn.Sequential]:
    """Two pipeline stages built from split layers (plus an activation and a residual)."""
    torch.manual_seed(1)
    s0 = nn.Sequential(
        SplitLinear(80, 48, use_triton=use_triton), SplitRMSNorm(48, use_triton=use_triton)
    )
    s1 = nn.Sequential(
        nn.Tanh(),
        SplitLinear(48, 40, use_triton=use_triton),
        Residual(
            nn.Sequential(
                SplitLayerNorm(40, use_triton=use_triton),
                SplitLinear(40, 40, use_triton=use_triton),
            )
        ),
        SplitLinear(40, 24, bias=False, use_triton=use_triton),
    )
    for p in [*s0.parameters(), *s1.parameters()]:  # non-trivial norm weights and biases
        with torch.no_grad():
            p.add_(0.1 * torch.randn_like(p))
    return [s0.to(DEV), s1.to(DEV)]


def plain_stages(split: list[nn.Sequential]) -> list[nn.Sequential]:
    """The plain-torch equivalent of ``split_stages``, with the same parameter values."""
    s0 = nn.Sequential(nn.Linear(80, 48), nn.RMSNorm(48, eps=1e-6))
    s1 = nn.Sequential(
        nn.Tanh(),
        nn.Linear(48, 40),
        Residual(nn.Sequential(nn.LayerNorm(40, eps=1e-5), nn.Linear(40, 40))),
        nn.Linear(40, 24, bias=False),
    )
    plain = [s0.to(DEV), s1.to(DEV)]
    for p, q in zip(plain, split, strict=True):
        p.load_state_dict(q.state_dict())
    return plain


def run_pipeline(
    stages: list[nn.Sequential],
    xs: list[torch.Tensor],
    dys: list[torch.Tensor],
    store: WeightGradStore | None,
) -> list[torch.Tensor | None]:
    """F then B for every microbatch, stage by stage (as two pipeline ranks would); W not run.

    Returns the input gradient of stage 0 per microbatch.
    """
    grads: list[torch.Tensor | None] = []
    for mb, (x, dy) in enumerate(zip(xs, dys, strict=True)):
        x = x.clone().requires_grad_()
        h = stages[0](x)
        h_in = h.detach().requires_grad_()
        out = stages[1](h_in)
        for stage, (t, g) in ((1, (out, dy)), (0, (h, None))):
            g = g if g is not None else h_in.grad
            if store is None:
                t.backward(g)
            else:
                with store.scope(stage, mb):
                    t.backward(g)
        grads.append(x.grad)
    return grads


def reference_grads(
    split: list[nn.Sequential], xs: list[torch.Tensor], dys: list[torch.Tensor]
) -> tuple[list[torch.Tensor | None], list[torch.Tensor | None]]:
    """Input and parameter gradients of the plain-torch model over all microbatches."""
    plain = plain_stages(split)
    model = nn.Sequential(*plain)
    grads: list[torch.Tensor | None] = []
    for x, dy in zip(xs, dys, strict=True):
        x = x.clone().requires_grad_()
        model(x).backward(dy)
        grads.append(x.grad)
    return grads, [p.grad for p in model.parameters()]


def microbatches(n: int = 4) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """``n`` microbatches of inputs (3, 3, 80) and output gradients (3, 3, 24)."""
    xs = [rnd(3, 3, 80) for _ in range(n)]  # 9 rows per microbatch
    dys = [rnd(3, 3, 24) for _ in range(n)]
    return xs, dys


@pytest.mark.slow
@pytest.mark.parametrize("use_triton", [None, False], ids=["auto", "torch-fallback"])
def test_deferred_w_matches_autograd(use_triton: bool | None) -> None:
    if use_triton is None and not triton_usable(torch.empty(0, device=DEV)):
        pytest.skip("Triton kernels cannot run here")
    stages = split_stages(use_triton)
    if use_triton is None:  # auto must pick the Triton kernels on this device
        assert all(m.triton_for(torch.empty(0, device=DEV)) for m in split_modules(stages[1]))
    store = WeightGradStore()
    assert attach_store(stages[0], store) == 2 and attach_store(stages[1], store) == 4
    xs, dys = microbatches()
    want_dx, want_params = reference_grads(stages, xs, dys)

    got_dx = run_pipeline(stages, xs, dys, store)
    params = [p for s in stages for p in s.parameters()]
    assert all(p.grad is None for p in params), "B must not touch weight gradients"
    keys = [(s, mb) for s in (0, 1) for mb in range(4)]
    assert store.keys() == keys
    assert len(store) == 4 * 6
    for a, b in zip(got_dx, want_dx, strict=True):
        close(a, b)

    stashed = [weakref.ref(t) for k in keys for t in store.tensors(*k)]
    assert stashed and all(r() is not None for r in stashed)
    random.Random(0).shuffle(keys)
    for k in keys:
        assert store.run_w(*k) > 0
    assert store.run_w(0, 0) == 0  # drained
    assert len(store) == 0 and store.keys() == [] and store.nbytes() == 0
    gc.collect()
    assert all(r() is None for r in stashed), "run_w must free the stashed tensors"
    for p, want in zip(params, want_params, strict=True):
        close(p.grad, want)


@needs_triton
def test_run_w_adds_to_existing_grads() -> None:
    stages = split_stages()
    store = WeightGradStore()
    for s in stages:
        attach_store(s, store)
    xs, dys = microbatches(2)
    _, want = reference_grads(stages, xs, dys)
    params = [p for s in stages for p in s.parameters()]
    before = [rnd(*p.shape) for p in params]
    for p, g in zip(params, before, strict=True):
        p.grad = g.clone()
    params[1].grad = None  # mixed: one new buffer among existing ones
    run_pipeline(stages, xs, dys, store)
    for k in store.keys():
        store.run_w(*k)
    for i, (p, g0, w) in enumerate(zip(params, before, want, strict=True)):
        assert w is not None
        close(p.grad, w if i == 1 else g0 + w)


@pytest.mark.slow
@needs_triton
def test_no_active_key_means_full_backward() -> None:
    """No store, or a store without an active key: normal layers, grads straight to .grad."""
    xs, dys = microbatches(2)
    for attach in (False, True):
        stages = split_stages()
        store = WeightGradStore()
        if attach:
            for s in stages:
                attach_store(s, store)
        want_dx, want = reference_grads(stages, xs, dys)
        got_dx = run_pipeline(stages, xs, dys, None)
        assert len(store) == 0
        for a, b in zip(got_dx, want_dx, strict=True):
            close(a, b)
        for p, w in zip([p for s in stages for p in s.parameters()], want, strict=True):
            close(p.grad, w)


def test_store_key_attribute_and_scope() -> None:
    store = WeightGradStore()
    assert store.key is None
    store.key = (2, 5)
    with store.scope(0, 1):
        assert store.key == (0, 1)
    assert store.key == (2, 5)
    store.key = None
    layer = SplitLinear(8, 4, use_triton=False).to(DEV)
    layer.wgrad_store = store
    x, dy = rnd(5, 8), rnd(5, 4)
    store.key = (0, 3)
    layer(x).backward(dy)
    store.key = None
    assert layer.weight.grad is None and store.has_pending(0, 3)
    assert store.nbytes(0, 3) == (5 * 8 + 5 * 4) * 4  # x and dy, fp32
    assert store.run_w(0, 3) == 1
    close(layer.weight.grad, dy.t() @ x)
    close(layer.bias.grad, dy.sum(0))


@needs_triton
def test_expanded_output_grad() -> None:
    """``out.sum().backward()`` hands B and W a stride-0 dy: the kernels read it by strides."""
    layer = SplitLinear(8, 4).to(DEV)
    store = WeightGradStore()
    layer.wgrad_store = store
    x = rnd(5, 8).requires_grad_()
    with store.scope(0, 0):
        layer(x).sum().backward()
    assert store.nbytes(0, 0) == 5 * 8 * 4 + 4  # dy is one expanded scalar
    store.run_w(0, 0)
    close(x.grad, layer.weight.detach().sum(0).expand(5, 8))
    close(layer.weight.grad, torch.ones(4, 5, device=DEV) @ x.detach())
    close(layer.bias.grad, torch.full((4,), 5.0, device=DEV))


def test_in_place_change_between_b_and_w_is_caught() -> None:
    layer = SplitLinear(8, 4, use_triton=False).to(DEV)
    store = WeightGradStore()
    layer.wgrad_store = store
    x = rnd(5, 8).requires_grad_()
    with store.scope(0, 0):
        layer(x).backward(rnd(5, 4))
    with torch.no_grad():
        x.mul_(2.0)  # W would now see the wrong input
    with pytest.raises(RuntimeError, match="modified in place after B"):
        store.run_w(0, 0)
    assert len(store) == 0


def test_frozen_weight_trainable_bias() -> None:
    layer = SplitLinear(8, 4, use_triton=False).to(DEV)
    layer.weight.requires_grad_(False)
    store = WeightGradStore()
    layer.wgrad_store = store
    with store.scope(0, 0):
        layer(rnd(5, 8)).sum().backward()
    store.run_w(0, 0)
    assert layer.weight.grad is None
    close(layer.bias.grad, torch.full((4,), 5.0, device=DEV))


# ----------------------------------------------------------------------------- profile


def test_profile_ops_and_format_params() -> None:
    torch.manual_seed(2)
    stages = [
        nn.Sequential(SplitLinear(32, 48, use_triton=False), nn.GELU()),
        nn.Sequential(nn.Linear(48, 16)),  # plain: W is estimated
    ]
    for s in stages:
        s.to(DEV)
    mine = WeightGradStore()
    stages[0][0].wgrad_store = mine
    rows = profile_ops(stages, rnd(5, 32), loss_fn=lambda y: y.square().mean(), repeats=2)
    assert [r["stage"] for r in rows] == [0, 1]
    assert [r["mode"] for r in rows] == ["split", "estimate"]
    for r in rows:
        assert set(PARAM_NAMES) <= r.keys()
        assert r["tf"] > 0 and r["tb"] > 0 and r["tw"] >= 0
    # Stage 0 saves x (5x32) for the linear and its output (5x48) for GELU, fp32.
    assert rows[0]["mem_f"] == (5 * 32 + 5 * 48) * 4
    # W of stage 0 holds x and dy of the linear.
    assert rows[0]["mem_w"] == (5 * 32 + 5 * 48) * 4
    # Stage 1 saves its input for the linear and the linear's output for the loss's square.
    assert rows[1]["mem_f"] == (5 * 48 + 5 * 16) * 4
    # Profiling leaves gradients and store attachments as they were.
    assert all(p.grad is None for s in stages for p in s.parameters())
    assert len(mine) == 0
    assert stages[0][0].wgrad_store is mine

    text = format_params(rows)
    lines = text.splitlines()
    assert [ln.split("=")[0] for ln in lines] == list(PARAM_NAMES)
    assert lines[3] == f"mem_f=[{rows[0]['mem_f']}, {rows[1]['mem_f']}]"
    assert lines[0] == f"tf=[{rows[0]['tf']:.4f}, {rows[1]['tf']:.4f}]"


# --------------------------------------------------------------------------------- GPU


@gpu
@needs_cuda
def test_gpu_bf16_native_dot() -> None:
    """On a GPU 16-bit operands go to tl.dot natively (no UPCAST); compare with torch."""
    assert not interpreted()
    x, w, dy = (rnd(*s, dtype=torch.bfloat16) for s in [(1000, 512), (768, 512), (1000, 768)])
    close(mm.linear_forward(x, w), mm.linear_forward_ref(x, w), atol=1e-1, rtol=2e-2)
    close(mm.linear_backward_input(dy, w), mm.linear_backward_input_ref(dy, w), 1e-1, 2e-2)
    dw, _ = mm.linear_backward_weight(x, dy)
    close(dw, mm.linear_backward_weight_ref(x, dy)[0], atol=1e-1, rtol=1e-2)


@gpu
@needs_cuda
def test_gpu_fp32_ieee_exact() -> None:
    """input_precision="ieee" keeps fp32 results at fp32 tolerances on a GPU (no TF32)."""
    x, w = rnd(1000, 512), rnd(768, 512)
    close(mm.linear_forward(x, w), mm.linear_forward_ref(x, w), atol=1e-3, rtol=1e-5)
