"""Triton kernels for a linear layer, split into the three ops of a zero-bubble pipeline.

- F: ``Y = X W^T + b``                                    (:func:`linear_forward`)
- B: ``dX = dY W``                                        (:func:`linear_backward_input`)
- W: ``dW (+)= dY^T X`` and ``db (+)= sum(dY, 0)``        (:func:`linear_backward_weight`)

Shapes: ``X`` is (..., K), ``W`` is (N, K), ``b`` is (N,), ``dY`` is (..., N); leading dimensions
are flattened into M rows. All three ops use one tiled matmul kernel ``C (+)= A @ B`` that reads
its operands through strides, so transposes are views, except one: on a GPU an fp32 forward of
at least :data:`COPY_WEIGHT_ROWS` rows first copies ``W^T`` to a contiguous tensor (reading the
weight transposed ran the fp32 forward at 0.43x of cuBLAS on an H100 at M = N = K = 4096 and
8192, and 0.81-0.83x with the copy counted; in bf16 the copy made it slower, so bf16 reads the
view). The W kernel adds into an existing gradient buffer, or writes it when told this is the
first accumulation: no zeroing pass. The bias gradient ``sum(dY, 0)`` is its own column-sum
kernel: fused into the matmul's K loop as a row sum of ``dY^T`` it made the bf16 W 2.8x slower
(8.0 ms against 2.8 ms at 8192 on an H100).

Every kernel wrapper has a plain torch reference beside it (``*_ref``) with the same signature
and semantics; the layers in :mod:`schedlang.kernels.layers` use them where Triton cannot run.

Precision: accumulation is always fp32. fp32 inputs use ``input_precision="ieee"`` unless
``allow_tf32=True`` (on a GPU, fp32 ``tl.dot`` otherwise rounds inputs to TF32). bf16/fp16 inputs
use the native ``tl.dot`` on a GPU; under ``TRITON_INTERPRET=1`` they are cast to fp32 right
after the loads (constexpr ``UPCAST``) because the interpreter computes bf16 dots wrongly.
Outputs of F and B take the input dtype; gradient buffers may have any supported dtype and are
accumulated in fp32 registers.

Block sizes come from :func:`matmul_blocks` (``@triton.autotune`` does not work without a GPU).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
import triton
import triton.language as tl
from schedlang.kernels._util import (
    LOW_PRECISION,
    as_rows,
    check_dtype,
    check_usable,
    clamp_pow2,
    interpreted,
)

__all__ = [
    "MatmulBlocks",
    "linear_backward_input",
    "linear_backward_input_ref",
    "linear_backward_weight",
    "linear_backward_weight_ref",
    "linear_forward",
    "linear_forward_ref",
    "matmul_blocks",
]


# An fp32 forward of at least this many rows copies the transposed weight first (module docstring):
# the copy moves 8 N K bytes, which a product of this many rows repays several times over.
COPY_WEIGHT_ROWS = 512


@dataclass(frozen=True, slots=True)
class MatmulBlocks:
    """Tile sizes and launch options of one matmul launch."""

    block_m: int
    block_n: int
    block_k: int
    group_m: int = 8
    num_warps: int = 4
    num_stages: int = 3


def matmul_blocks(m: int, n: int, k: int, dtype: torch.dtype = torch.float32) -> MatmulBlocks:
    """Pick tile sizes for ``C[m, n] = A[m, k] @ B[k, n]``.

    Under the interpreter a program-iteration costs about the same whatever its size, so tiles
    are as large as the problem allows (up to 128 x 128 x 64). On a GPU the usual choice for
    tensor cores: 128 x 128 tiles when the problem is big enough, K tiles of 32 (fp32) or 64
    (16-bit). Every size is at least 16, the smallest ``tl.dot`` accepts.
    """
    if interpreted():
        return MatmulBlocks(clamp_pow2(m, 16, 128), clamp_pow2(n, 16, 128), clamp_pow2(k, 16, 64))
    bm = clamp_pow2(m, 16, 128)
    bn = clamp_pow2(n, 16, 128)
    bk = clamp_pow2(k, 16, 64 if dtype in LOW_PRECISION else 32)
    warps = 8 if bm * bn >= 128 * 128 else 4
    return MatmulBlocks(bm, bn, bk, group_m=8, num_warps=warps, num_stages=3)


@triton.jit
def _matmul_kernel(
    a_ptr,
    b_ptr,
    c_ptr,
    bias_ptr,
    M,
    N,
    K,
    stride_am,
    stride_ak,
    stride_bk,
    stride_bn,
    stride_cm,
    stride_cn,
    HAS_BIAS: tl.constexpr,  # C += bias[None, :]
    ACCUMULATE: tl.constexpr,  # C += result, else C = result
    UPCAST: tl.constexpr,  # cast 16-bit operands to fp32 after loading
    PRECISION: tl.constexpr,  # "ieee" or "tf32", for fp32 operands
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr,
):
    # Grouped launch order: GROUP_M row blocks share each column block in turn, so the B tiles
    # they read stay in L2 on a GPU. The mapping is a bijection onto (pid_m, pid_n).
    pid = tl.program_id(0)
    num_pid_m = tl.cdiv(M, BLOCK_M)
    num_pid_n = tl.cdiv(N, BLOCK_N)
    per_group = GROUP_M * num_pid_n
    first_m = (pid // per_group) * GROUP_M
    group_rows = tl.minimum(num_pid_m - first_m, GROUP_M)
    pid_m = first_m + (pid % per_group) % group_rows
    pid_n = (pid % per_group) // group_rows

    # int64 offsets: M * stride can pass 2**31 on large activations.
    rm = (pid_m * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
    rn = (pid_n * BLOCK_N + tl.arange(0, BLOCK_N)).to(tl.int64)
    rk = tl.arange(0, BLOCK_K).to(tl.int64)
    mask_m = rm < M
    mask_n = rn < N

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        kk = k0 + rk
        mask_k = kk < K
        a = tl.load(
            a_ptr + rm[:, None] * stride_am + kk[None, :] * stride_ak,
            mask=mask_m[:, None] & mask_k[None, :],
            other=0.0,
        )
        b = tl.load(
            b_ptr + kk[:, None] * stride_bk + rn[None, :] * stride_bn,
            mask=mask_k[:, None] & mask_n[None, :],
            other=0.0,
        )
        if UPCAST:
            a = a.to(tl.float32)
            b = b.to(tl.float32)
        acc = tl.dot(a, b, acc, input_precision=PRECISION)

    if HAS_BIAS:
        bias = tl.load(bias_ptr + rn, mask=mask_n, other=0.0).to(tl.float32)
        acc += bias[None, :]

    c_ptrs = c_ptr + rm[:, None] * stride_cm + rn[None, :] * stride_cn
    c_mask = mask_m[:, None] & mask_n[None, :]
    if ACCUMULATE:
        acc += tl.load(c_ptrs, mask=c_mask, other=0.0).to(tl.float32)
    tl.store(c_ptrs, acc.to(c_ptr.dtype.element_ty), mask=c_mask)


@triton.jit
def _col_sum_kernel(
    x_ptr,
    out_ptr,
    M,
    N,
    stride_xm,
    stride_xn,
    ACCUMULATE: tl.constexpr,  # out += sums, else out = sums
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    # One program per column block: fp32 sums over all M rows, BLOCK_M rows at a time.
    rn = (tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)).to(tl.int64)
    mask_n = rn < N
    acc = tl.zeros((BLOCK_N,), dtype=tl.float32)
    for m0 in range(0, M, BLOCK_M):
        rm = (m0 + tl.arange(0, BLOCK_M)).to(tl.int64)
        x = tl.load(x_ptr + rm[:, None] * stride_xm + rn[None, :] * stride_xn,
                    mask=(rm < M)[:, None] & mask_n[None, :], other=0.0)
        acc += tl.sum(x.to(tl.float32), axis=0)
    if ACCUMULATE:
        acc += tl.load(out_ptr + rn, mask=mask_n, other=0.0).to(tl.float32)
    tl.store(out_ptr + rn, acc.to(out_ptr.dtype.element_ty), mask=mask_n)


def _col_sum(x: torch.Tensor, out: torch.Tensor, *, accumulate: bool) -> None:
    """Launch ``out (+)= x.sum(0)`` (fp32 accumulation) for a 2-D ``x`` and a contiguous ``out``."""
    m, n = x.shape
    if n == 0:
        return
    block_n = clamp_pow2(n, 16, 128)
    block_m = clamp_pow2(m, 16, 128 if interpreted() else 32)
    _col_sum_kernel[(triton.cdiv(n, block_n),)](
        x, out, m, n, x.stride(0), x.stride(1),
        ACCUMULATE=accumulate, BLOCK_M=block_m, BLOCK_N=block_n,
    )


def _matmul(
    a: torch.Tensor,
    b: torch.Tensor,
    c: torch.Tensor,
    *,
    bias: torch.Tensor | None = None,
    accumulate: bool = False,
    allow_tf32: bool = False,
    blocks: MatmulBlocks | None = None,
) -> None:
    """Launch ``c (+)= a @ b (+ bias)``; all 2-D views."""
    m, k = a.shape
    n = b.shape[1]
    assert b.shape[0] == k and tuple(c.shape) == (m, n), (a.shape, b.shape, c.shape)
    assert a.dtype == b.dtype, (a.dtype, b.dtype)
    if m == 0 or n == 0:
        return
    cfg = blocks or matmul_blocks(m, n, k, a.dtype)
    upcast = a.dtype in LOW_PRECISION and interpreted()
    # input_precision matters only for fp32 operands; 16-bit dots keep Triton's default.
    fp32_dot = a.dtype == torch.float32 or upcast
    precision = "ieee" if fp32_dot and not allow_tf32 else "tf32"
    grid = (triton.cdiv(m, cfg.block_m) * triton.cdiv(n, cfg.block_n),)
    # Placeholders for absent optional operands: never dereferenced (constexpr flags are off).
    _matmul_kernel[grid](
        a,
        b,
        c,
        bias if bias is not None else c,
        m,
        n,
        k,
        a.stride(0),
        a.stride(1),
        b.stride(0),
        b.stride(1),
        c.stride(0),
        c.stride(1),
        HAS_BIAS=bias is not None,
        ACCUMULATE=accumulate,
        UPCAST=upcast,
        PRECISION=precision,
        BLOCK_M=cfg.block_m,
        BLOCK_N=cfg.block_n,
        BLOCK_K=cfg.block_k,
        GROUP_M=cfg.group_m,
        num_warps=cfg.num_warps,
        num_stages=cfg.num_stages,
    )


def _check_linear(name: str, x: torch.Tensor, weight: torch.Tensor, dim: int) -> None:
    check_dtype(name, x)
    if x.dtype != weight.dtype:
        raise TypeError(f"{name}: dtype mismatch {x.dtype} vs weight {weight.dtype}")
    if weight.dim() != 2 or x.shape[-1] != weight.shape[dim]:
        raise ValueError(f"{name}: shape mismatch {tuple(x.shape)} vs weight {tuple(weight.shape)}")


# ---------------------------------------------------------------------------------------- F


def linear_forward(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    allow_tf32: bool = False,
    blocks: MatmulBlocks | None = None,
) -> torch.Tensor:
    """F: return ``x @ weight.T + bias`` (shape (..., N), dtype of ``x``) computed by Triton."""
    _check_linear("linear_forward", x, weight, 1)
    check_usable("linear_forward", x, weight, *([bias] if bias is not None else []))
    x2 = as_rows(x)
    y = torch.empty((x2.shape[0], weight.shape[0]), dtype=x.dtype, device=x.device)
    wt = weight.t()
    if x.dtype == torch.float32 and x2.shape[0] >= COPY_WEIGHT_ROWS and not interpreted():
        wt = wt.contiguous()  # see the module docstring: fp32 reads a transposed weight slowly
    _matmul(x2, wt, y, bias=bias, allow_tf32=allow_tf32, blocks=blocks)
    return y.reshape(*x.shape[:-1], weight.shape[0])


def linear_forward_ref(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """Torch reference of :func:`linear_forward` (16-bit inputs accumulate in fp32)."""
    if x.dtype in LOW_PRECISION:
        b = bias.float() if bias is not None else None
        return F.linear(x.float(), weight.float(), b).to(x.dtype)
    return F.linear(x, weight, bias)


# ---------------------------------------------------------------------------------------- B


def linear_backward_input(
    dy: torch.Tensor,
    weight: torch.Tensor,
    *,
    allow_tf32: bool = False,
    blocks: MatmulBlocks | None = None,
) -> torch.Tensor:
    """B: return ``dX = dy @ weight`` (shape (..., K), dtype of ``dy``) computed by Triton."""
    _check_linear("linear_backward_input", dy, weight, 0)
    check_usable("linear_backward_input", dy, weight)
    dy2 = as_rows(dy)
    dx = torch.empty((dy2.shape[0], weight.shape[1]), dtype=dy.dtype, device=dy.device)
    _matmul(dy2, weight, dx, allow_tf32=allow_tf32, blocks=blocks)
    return dx.reshape(*dy.shape[:-1], weight.shape[1])


def linear_backward_input_ref(dy: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Torch reference of :func:`linear_backward_input`."""
    if dy.dtype in LOW_PRECISION:
        return torch.matmul(dy.float(), weight.float()).to(dy.dtype)
    return torch.matmul(dy, weight)


# ---------------------------------------------------------------------------------------- W


def _grad_buffer(
    buf: torch.Tensor | None, shape: tuple[int, ...], like: torch.Tensor
) -> tuple[torch.Tensor, bool]:
    """Return (buffer, is_new): a fresh uninitialised fp32 buffer when ``buf`` is None."""
    if buf is None:
        return torch.empty(shape, dtype=torch.float32, device=like.device), True
    if tuple(buf.shape) != shape:
        raise ValueError(f"gradient buffer has shape {tuple(buf.shape)}, expected {shape}")
    check_dtype("gradient buffer", buf)
    return buf, False


def linear_backward_weight(
    x: torch.Tensor,
    dy: torch.Tensor,
    dw: torch.Tensor | None = None,
    db: torch.Tensor | None = None,
    *,
    with_bias: bool = False,
    accumulate: bool = True,
    allow_tf32: bool = False,
    blocks: MatmulBlocks | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """W: accumulate ``dw += dy^T x`` and, with a bias, ``db += dy.sum(0)``, by Triton.

    ``x`` is (..., K) and ``dy`` is (..., N) with the same leading shape. A buffer passed as
    None is allocated (fp32, uninitialised) and written, never zeroed first. A given buffer is
    updated in place: added to when ``accumulate`` is True, overwritten when False (first
    accumulation into e.g. a ``torch.empty`` buffer). ``db`` is computed when ``with_bias`` is
    True or a ``db`` buffer is given. Returns ``(dw, db)`` (``db`` None when not computed).
    """
    check_dtype("linear_backward_weight", x)
    if x.dtype != dy.dtype:
        raise TypeError(f"linear_backward_weight: dtype mismatch x {x.dtype} vs dy {dy.dtype}")
    if x.shape[:-1] != dy.shape[:-1]:
        raise ValueError(
            f"linear_backward_weight: leading shapes differ {tuple(x.shape)} vs {tuple(dy.shape)}"
        )
    n, k = dy.shape[-1], x.shape[-1]
    dw, new_w = _grad_buffer(dw, (n, k), x)
    want_bias = with_bias or db is not None
    if want_bias:
        db, new_b = _grad_buffer(db, (n,), x)
        if db.stride(0) != 1:
            raise ValueError("linear_backward_weight: db must be contiguous")
    else:
        new_b = True
    check_usable("linear_backward_weight", x, dy, dw, *([db] if db is not None else []))
    x2, dy2 = as_rows(x), as_rows(dy)
    if x2.shape[0] == 0:  # no rows: the gradient is zero
        if new_w or not accumulate:
            dw.zero_()
        if db is not None and (new_b or not accumulate):
            db.zero_()
        return dw, db
    _matmul(dy2.t(), x2, dw, accumulate=accumulate and not new_w, allow_tf32=allow_tf32, blocks=blocks)
    if db is not None:
        _col_sum(dy2, db, accumulate=accumulate and not new_b)
    return dw, db


def linear_backward_weight_ref(
    x: torch.Tensor,
    dy: torch.Tensor,
    dw: torch.Tensor | None = None,
    db: torch.Tensor | None = None,
    *,
    with_bias: bool = False,
    accumulate: bool = True,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Torch reference of :func:`linear_backward_weight`, with the same buffer semantics.

    fp32 buffers are updated by ``addmm_`` / ``mm(out=)`` with no temporary, so the layers'
    CPU fallback stays fast.
    """
    x2, dy2 = as_rows(x), as_rows(dy)
    if x2.dtype != torch.float32:
        x2, dy2 = x2.float(), dy2.float()
    if dw is None:
        dw = dy2.t() @ x2
    elif dw.dtype == torch.float32 and accumulate:
        dw.addmm_(dy2.t(), x2)
    elif dw.dtype == torch.float32:
        torch.mm(dy2.t(), x2, out=dw)
    else:
        _accumulate_ref(dw, dy2.t() @ x2, accumulate)
    if with_bias or db is not None:
        db = _accumulate_ref(db, dy2.sum(0), accumulate)
    return dw, db


def _accumulate_ref(
    buf: torch.Tensor | None, value: torch.Tensor, accumulate: bool
) -> torch.Tensor:
    """Reference buffer update: new fp32 tensor, in-place add, or in-place overwrite."""
    if buf is None:
        return value
    if not accumulate:
        buf.copy_(value)
    elif buf.dtype == torch.float32:
        buf.add_(value)
    else:
        # Like the kernel: add in fp32, round once into the buffer's dtype.
        buf.copy_(buf.float() + value)
    return buf
