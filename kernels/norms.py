"""Triton kernels for RMSNorm and LayerNorm, split into F, B (input gradient) and W.

Over the last dimension D of ``x`` (leading dimensions are flattened into M rows):

- RMSNorm   F: ``rstd = 1/sqrt(mean(x^2) + eps)``, ``y = x * rstd * w``
            B: ``dx = rstd * (g - xhat * mean(g * xhat))`` with ``g = dy * w``, ``xhat = x * rstd``
            W: ``dw (+)= sum_rows(dy * xhat)``
- LayerNorm F: ``mean``, ``rstd = 1/sqrt(var + eps)``, ``y = (x - mean) * rstd * w + b``
            B: ``dx = rstd * (g - mean(g) - xhat * mean(g * xhat))``, ``xhat = (x - mean) * rstd``
            W: ``dw (+)= sum_rows(dy * xhat)``, ``db (+)= sum_rows(dy)``

F returns the per-row statistics (fp32 ``rstd``, and ``mean`` for LayerNorm) that B and W reuse,
so W needs only ``x``, ``dy`` and those (M floats each). W adds into existing gradient buffers or
writes them when told it is the first accumulation, as in :mod:`schedlang.kernels.matmul`.

All arithmetic is fp32: 16-bit inputs are cast right after loading (which also keeps the
interpreter, which computes bf16 wrongly, correct), outputs are stored in the input dtype. The
F and B kernels hold a whole row in one block, so D is limited to ``MAX_D``. Every kernel has a
torch reference (``*_ref``) with the same signature and semantics.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from schedlang.kernels._util import (
    as_rows,
    check_dtype,
    check_usable,
    clamp_pow2,
    interpreted,
    next_pow2,
    unit_last_stride,
)

__all__ = [
    "MAX_D",
    "layernorm_backward_input",
    "layernorm_backward_input_ref",
    "layernorm_backward_weight",
    "layernorm_backward_weight_ref",
    "layernorm_forward",
    "layernorm_forward_ref",
    "rmsnorm_backward_input",
    "rmsnorm_backward_input_ref",
    "rmsnorm_backward_weight",
    "rmsnorm_backward_weight_ref",
    "rmsnorm_forward",
    "rmsnorm_forward_ref",
    "row_blocks",
]

MAX_D = 65536  # one row per block in F and B


def row_blocks(d: int) -> tuple[int, int, int]:
    """Pick ``(block_rows, block_d, num_warps)`` for the row-wise F and B kernels.

    ``block_d`` covers the whole row. Under the interpreter a block holds up to 16384 elements
    (one program-iteration costs about the same at any size); on a GPU about 4096 elements, so
    short rows are batched several per program and long rows get more warps.
    """
    if d > MAX_D:
        raise ValueError(f"norm kernels support D <= {MAX_D}, got {d}")
    block_d = max(next_pow2(d), 16)
    budget = 16384 if interpreted() else 4096
    block_rows = clamp_pow2(budget // block_d, 1, 128)
    warps = 4 if block_d * block_rows <= 4096 else 8 if block_d <= 8192 else 16
    return block_rows, block_d, warps


def _wgrad_blocks(d: int) -> tuple[int, int]:
    """Pick ``(block_rows, block_d)`` for the W kernel (programs over column blocks)."""
    if interpreted():
        return 128, clamp_pow2(d, 16, 1024)
    return 64, clamp_pow2(d, 16, 128)


# ------------------------------------------------------------------------------------ kernels


@triton.jit
def _norm_fwd_kernel(
    x_ptr,
    w_ptr,
    b_ptr,
    y_ptr,
    mean_ptr,
    rstd_ptr,
    M,
    D,
    stride_x,
    stride_y,
    eps,
    CENTER: tl.constexpr,  # LayerNorm (subtract the mean) rather than RMSNorm
    HAS_BIAS: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    rows = (tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)).to(tl.int64)
    cols = tl.arange(0, BLOCK_D)
    row_ok = rows < M
    col_ok = cols < D
    mask = row_ok[:, None] & col_ok[None, :]
    x = tl.load(x_ptr + rows[:, None] * stride_x + cols[None, :], mask=mask, other=0.0)
    x = x.to(tl.float32)
    if CENTER:
        mean = tl.sum(x, axis=1) / D
        x = tl.where(mask, x - mean[:, None], 0.0)
        tl.store(mean_ptr + rows, mean, mask=row_ok)
    rstd = 1.0 / tl.sqrt_rn(tl.sum(x * x, axis=1) / D + eps)
    tl.store(rstd_ptr + rows, rstd, mask=row_ok)
    w = tl.load(w_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)
    y = x * rstd[:, None] * w[None, :]
    if HAS_BIAS:
        y += tl.load(b_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]
    tl.store(
        y_ptr + rows[:, None] * stride_y + cols[None, :], y.to(y_ptr.dtype.element_ty), mask=mask
    )


@triton.jit
def _norm_bwd_input_kernel(
    x_ptr,
    dy_ptr,
    w_ptr,
    mean_ptr,
    rstd_ptr,
    dx_ptr,
    M,
    D,
    stride_x,
    stride_dy,
    stride_dx,
    CENTER: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    rows = (tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)).to(tl.int64)
    cols = tl.arange(0, BLOCK_D)
    row_ok = rows < M
    col_ok = cols < D
    mask = row_ok[:, None] & col_ok[None, :]
    x = tl.load(x_ptr + rows[:, None] * stride_x + cols[None, :], mask=mask, other=0.0)
    dy = tl.load(dy_ptr + rows[:, None] * stride_dy + cols[None, :], mask=mask, other=0.0)
    w = tl.load(w_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)
    rstd = tl.load(rstd_ptr + rows, mask=row_ok, other=0.0)
    x = x.to(tl.float32)
    g = dy.to(tl.float32) * w[None, :]  # zero outside the mask
    if CENTER:
        mean = tl.load(mean_ptr + rows, mask=row_ok, other=0.0)
        xhat = tl.where(mask, (x - mean[:, None]) * rstd[:, None], 0.0)
        g_mean = tl.sum(g, axis=1) / D
    else:
        xhat = x * rstd[:, None]
    proj = tl.sum(g * xhat, axis=1) / D
    if CENTER:
        dx = rstd[:, None] * (g - g_mean[:, None] - xhat * proj[:, None])
    else:
        dx = rstd[:, None] * (g - xhat * proj[:, None])
    tl.store(
        dx_ptr + rows[:, None] * stride_dx + cols[None, :],
        dx.to(dx_ptr.dtype.element_ty),
        mask=mask,
    )


@triton.jit
def _norm_bwd_weight_kernel(
    x_ptr,
    dy_ptr,
    mean_ptr,
    rstd_ptr,
    dw_ptr,
    db_ptr,
    M,
    D,
    stride_x,
    stride_dy,
    CENTER: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    ACCUMULATE_W: tl.constexpr,  # dw += sums, else dw = sums
    ACCUMULATE_B: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    # One program per column block walks all rows: a deterministic reduction (no atomics).
    cols = tl.program_id(0) * BLOCK_D + tl.arange(0, BLOCK_D)
    col_ok = cols < D
    acc_w = tl.zeros((BLOCK_D,), dtype=tl.float32)
    acc_b = tl.zeros((BLOCK_D,), dtype=tl.float32)
    for r0 in range(0, M, BLOCK_R):
        rows = (r0 + tl.arange(0, BLOCK_R)).to(tl.int64)
        row_ok = rows < M
        mask = row_ok[:, None] & col_ok[None, :]
        x = tl.load(x_ptr + rows[:, None] * stride_x + cols[None, :], mask=mask, other=0.0)
        dy = tl.load(dy_ptr + rows[:, None] * stride_dy + cols[None, :], mask=mask, other=0.0)
        rstd = tl.load(rstd_ptr + rows, mask=row_ok, other=0.0)
        x = x.to(tl.float32)
        dy = dy.to(tl.float32)
        if CENTER:
            mean = tl.load(mean_ptr + rows, mask=row_ok, other=0.0)
            x = x - mean[:, None]
        acc_w += tl.sum(dy * x * rstd[:, None], axis=0)  # dy is zero outside the mask
        if HAS_BIAS:
            acc_b += tl.sum(dy, axis=0)
    if ACCUMULATE_W:
        acc_w += tl.load(dw_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)
    tl.store(dw_ptr + cols, acc_w.to(dw_ptr.dtype.element_ty), mask=col_ok)
    if HAS_BIAS:
        if ACCUMULATE_B:
            acc_b += tl.load(db_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)
        tl.store(db_ptr + cols, acc_b.to(db_ptr.dtype.element_ty), mask=col_ok)


# ----------------------------------------------------------------------------------- launchers


def _check_norm(name: str, x: torch.Tensor, weight: torch.Tensor) -> None:
    check_dtype(name, x)
    if weight.dim() != 1 or x.shape[-1] != weight.shape[0]:
        raise ValueError(f"{name}: shape mismatch {tuple(x.shape)} vs weight {tuple(weight.shape)}")


def _forward(
    name: str,
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    eps: float,
    center: bool,
    block_rows: int | None,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    _check_norm(name, x, weight)
    check_usable(name, x, weight, *([bias] if bias is not None else []))
    x2 = unit_last_stride(as_rows(x))
    m, d = x2.shape
    y = torch.empty((m, d), dtype=x.dtype, device=x.device)
    rstd = torch.empty((m,), dtype=torch.float32, device=x.device)
    mean = torch.empty((m,), dtype=torch.float32, device=x.device) if center else None
    br, bd, warps = row_blocks(d)
    br = block_rows or br
    if m > 0:
        _norm_fwd_kernel[(triton.cdiv(m, br),)](
            x2,
            weight.contiguous(),
            bias.contiguous() if bias is not None else weight,
            y,
            mean if mean is not None else rstd,
            rstd,
            m,
            d,
            x2.stride(0),
            y.stride(0),
            float(eps),
            CENTER=center,
            HAS_BIAS=bias is not None,
            BLOCK_R=br,
            BLOCK_D=bd,
            num_warps=warps,
        )
    return y.reshape(x.shape), mean, rstd


def _backward_input(
    name: str,
    x: torch.Tensor,
    dy: torch.Tensor,
    weight: torch.Tensor,
    mean: torch.Tensor | None,
    rstd: torch.Tensor,
    block_rows: int | None,
) -> torch.Tensor:
    _check_norm(name, x, weight)
    check_usable(name, x, dy, weight, rstd)
    x2 = unit_last_stride(as_rows(x))
    dy2 = unit_last_stride(as_rows(dy))
    m, d = x2.shape
    dx = torch.empty((m, d), dtype=dy.dtype, device=dy.device)
    br, bd, warps = row_blocks(d)
    br = block_rows or br
    if m > 0:
        _norm_bwd_input_kernel[(triton.cdiv(m, br),)](
            x2,
            dy2,
            weight.contiguous(),
            mean if mean is not None else rstd,
            rstd,
            dx,
            m,
            d,
            x2.stride(0),
            dy2.stride(0),
            dx.stride(0),
            CENTER=mean is not None,
            BLOCK_R=br,
            BLOCK_D=bd,
            num_warps=warps,
        )
    return dx.reshape(dy.shape)


def _buffer(buf: torch.Tensor | None, d: int, like: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """Return (buffer, is_new): a fresh uninitialised fp32 (d,) buffer when ``buf`` is None."""
    if buf is None:
        return torch.empty((d,), dtype=torch.float32, device=like.device), True
    if tuple(buf.shape) != (d,) or buf.stride(0) != 1:
        raise ValueError(f"gradient buffer must be contiguous of shape ({d},), got {buf.shape}")
    check_dtype("gradient buffer", buf)
    return buf, False


def _backward_weight(
    name: str,
    x: torch.Tensor,
    dy: torch.Tensor,
    mean: torch.Tensor | None,
    rstd: torch.Tensor,
    dw: torch.Tensor | None,
    db: torch.Tensor | None,
    with_bias: bool,
    accumulate: bool,
    blocks: tuple[int, int] | None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    check_dtype(name, x)
    if x.shape != dy.shape:
        raise ValueError(f"{name}: x {tuple(x.shape)} and dy {tuple(dy.shape)} differ")
    x2 = unit_last_stride(as_rows(x))
    dy2 = unit_last_stride(as_rows(dy))
    m, d = x2.shape
    dw, new_w = _buffer(dw, d, x)
    want_bias = with_bias or db is not None
    db, new_b = _buffer(db, d, x) if want_bias else (None, True)
    check_usable(name, x, dy, rstd, dw, *([db] if db is not None else []))
    br, bd = blocks or _wgrad_blocks(d)
    _norm_bwd_weight_kernel[(triton.cdiv(d, bd),)](
        x2,
        dy2,
        mean if mean is not None else rstd,
        rstd,
        dw,
        db if db is not None else dw,
        m,
        d,
        x2.stride(0),
        dy2.stride(0),
        CENTER=mean is not None,
        HAS_BIAS=db is not None,
        ACCUMULATE_W=accumulate and not new_w,
        ACCUMULATE_B=accumulate and not new_b,
        BLOCK_R=br,
        BLOCK_D=bd,
    )
    return dw, db


# ------------------------------------------------------------------------------------ RMSNorm


def rmsnorm_forward(
    x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6, *, block_rows: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """F: return ``(y, rstd)``; ``y`` has the shape and dtype of ``x``, ``rstd`` is fp32 (M,)."""
    y, _, rstd = _forward("rmsnorm_forward", x, weight, None, eps, False, block_rows)
    return y, rstd


def rmsnorm_forward_ref(
    x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6
) -> tuple[torch.Tensor, torch.Tensor]:
    """Torch reference of :func:`rmsnorm_forward`."""
    x2 = as_rows(x).float()
    rstd = torch.rsqrt(x2.square().mean(1) + eps)
    y = x2 * rstd[:, None] * weight.float()
    return y.to(x.dtype).reshape(x.shape), rstd


def rmsnorm_backward_input(
    x: torch.Tensor,
    dy: torch.Tensor,
    weight: torch.Tensor,
    rstd: torch.Tensor,
    *,
    block_rows: int | None = None,
) -> torch.Tensor:
    """B: return ``dx`` (shape of ``x``, dtype of ``dy``) from ``x``, ``dy``, ``w`` and ``rstd``."""
    return _backward_input("rmsnorm_backward_input", x, dy, weight, None, rstd, block_rows)


def rmsnorm_backward_input_ref(
    x: torch.Tensor, dy: torch.Tensor, weight: torch.Tensor, rstd: torch.Tensor
) -> torch.Tensor:
    """Torch reference of :func:`rmsnorm_backward_input`."""
    x2, dy2 = as_rows(x).float(), as_rows(dy).float()
    xhat = x2 * rstd[:, None]
    g = dy2 * weight.float()
    dx = rstd[:, None] * (g - xhat * (g * xhat).mean(1, keepdim=True))
    return dx.to(dy.dtype).reshape(dy.shape)


def rmsnorm_backward_weight(
    x: torch.Tensor,
    dy: torch.Tensor,
    rstd: torch.Tensor,
    dw: torch.Tensor | None = None,
    *,
    accumulate: bool = True,
    blocks: tuple[int, int] | None = None,
) -> torch.Tensor:
    """W: accumulate ``dw += sum_rows(dy * x * rstd)``; allocate and write when ``dw`` is None.

    With ``accumulate=False`` a given buffer is overwritten instead (first accumulation).
    """
    dw, _ = _backward_weight(
        "rmsnorm_backward_weight", x, dy, None, rstd, dw, None, False, accumulate, blocks
    )
    return dw


def rmsnorm_backward_weight_ref(
    x: torch.Tensor,
    dy: torch.Tensor,
    rstd: torch.Tensor,
    dw: torch.Tensor | None = None,
    *,
    accumulate: bool = True,
) -> torch.Tensor:
    """Torch reference of :func:`rmsnorm_backward_weight`."""
    x2, dy2 = as_rows(x).float(), as_rows(dy).float()
    return _update(dw, (dy2 * x2 * rstd[:, None]).sum(0), accumulate)


# ---------------------------------------------------------------------------------- LayerNorm


def layernorm_forward(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    eps: float = 1e-5,
    *,
    block_rows: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """F: return ``(y, mean, rstd)``; ``mean`` and ``rstd`` are fp32 (M,)."""
    y, mean, rstd = _forward("layernorm_forward", x, weight, bias, eps, True, block_rows)
    assert mean is not None
    return y, mean, rstd


def layernorm_forward_ref(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, eps: float = 1e-5
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Torch reference of :func:`layernorm_forward`."""
    x2 = as_rows(x).float()
    mean = x2.mean(1)
    xc = x2 - mean[:, None]
    rstd = torch.rsqrt(xc.square().mean(1) + eps)
    y = xc * rstd[:, None] * weight.float()
    if bias is not None:
        y = y + bias.float()
    return y.to(x.dtype).reshape(x.shape), mean, rstd


def layernorm_backward_input(
    x: torch.Tensor,
    dy: torch.Tensor,
    weight: torch.Tensor,
    mean: torch.Tensor,
    rstd: torch.Tensor,
    *,
    block_rows: int | None = None,
) -> torch.Tensor:
    """B: return ``dx`` (shape of ``x``, dtype of ``dy``) from the forward's ``mean``/``rstd``."""
    return _backward_input("layernorm_backward_input", x, dy, weight, mean, rstd, block_rows)


def layernorm_backward_input_ref(
    x: torch.Tensor, dy: torch.Tensor, weight: torch.Tensor, mean: torch.Tensor, rstd: torch.Tensor
) -> torch.Tensor:
    """Torch reference of :func:`layernorm_backward_input`."""
    x2, dy2 = as_rows(x).float(), as_rows(dy).float()
    xhat = (x2 - mean[:, None]) * rstd[:, None]
    g = dy2 * weight.float()
    dx = rstd[:, None] * (g - g.mean(1, keepdim=True) - xhat * (g * xhat).mean(1, keepdim=True))
    return dx.to(dy.dtype).reshape(dy.shape)


def layernorm_backward_weight(
    x: torch.Tensor,
    dy: torch.Tensor,
    mean: torch.Tensor,
    rstd: torch.Tensor,
    dw: torch.Tensor | None = None,
    db: torch.Tensor | None = None,
    *,
    with_bias: bool = False,
    accumulate: bool = True,
    blocks: tuple[int, int] | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """W: accumulate ``dw += sum_rows(dy * xhat)`` and, with a bias, ``db += sum_rows(dy)``.

    Buffers follow :func:`schedlang.kernels.matmul.linear_backward_weight`: None means allocate
    and write; a given buffer is added to (``accumulate=True``) or overwritten. ``db`` is
    computed when ``with_bias`` is True or a ``db`` buffer is given.
    """
    return _backward_weight(
        "layernorm_backward_weight", x, dy, mean, rstd, dw, db, with_bias, accumulate, blocks
    )


def layernorm_backward_weight_ref(
    x: torch.Tensor,
    dy: torch.Tensor,
    mean: torch.Tensor,
    rstd: torch.Tensor,
    dw: torch.Tensor | None = None,
    db: torch.Tensor | None = None,
    *,
    with_bias: bool = False,
    accumulate: bool = True,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Torch reference of :func:`layernorm_backward_weight`."""
    x2, dy2 = as_rows(x).float(), as_rows(dy).float()
    xhat = (x2 - mean[:, None]) * rstd[:, None]
    dw = _update(dw, (dy2 * xhat).sum(0), accumulate)
    if with_bias or db is not None:
        db = _update(db, dy2.sum(0), accumulate)
    return dw, db


def _update(buf: torch.Tensor | None, value: torch.Tensor, accumulate: bool) -> torch.Tensor:
    """Reference buffer update: new fp32 tensor, in-place add (in fp32), or overwrite."""
    if buf is None:
        return value
    buf.copy_(buf.float() + value if accumulate else value)
    return buf
