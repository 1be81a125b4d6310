"""Helpers shared by the Triton kernel modules: device checks, block sizes, row flattening.

Nothing here launches a kernel. ``interpreted()`` reports whether ``@triton.jit`` produced
interpreter functions, which it decides once, when a kernel module is imported, from
``TRITON_INTERPRET``; setting the variable later has no effect on kernels already defined.
"""

from __future__ import annotations

import torch
import triton

LOW_PRECISION = (torch.bfloat16, torch.float16)
SUPPORTED_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


@triton.jit
def _probe() -> None:
    pass


# triton.jit returns an InterpretedFunction when TRITON_INTERPRET was set at decoration time;
# every kernel module imports this one first, so the answer holds for all of them.
_INTERPRETED = type(_probe).__name__ == "InterpretedFunction"


def interpreted() -> bool:
    """Return True when the Triton kernels run under the CPU interpreter (TRITON_INTERPRET)."""
    return _INTERPRETED


def triton_usable(*tensors: torch.Tensor) -> bool:
    """Return True when the Triton kernels can run on all of ``tensors``.

    Under the interpreter every tensor must be on the CPU; otherwise every tensor must be on a
    CUDA device (compiled kernels).
    """
    if _INTERPRETED:
        return all(t.device.type == "cpu" for t in tensors)
    return all(t.is_cuda for t in tensors)


def check_usable(name: str, *tensors: torch.Tensor) -> None:
    """Raise a RuntimeError naming ``name`` when the Triton kernels cannot run on ``tensors``."""
    if not triton_usable(*tensors):
        devices = sorted({str(t.device) for t in tensors})
        mode = "TRITON_INTERPRET=1 (CPU tensors)" if _INTERPRETED else "compiled (CUDA tensors)"
        raise RuntimeError(
            f"{name}: Triton kernels run {mode}, got tensors on {devices}; "
            "use the *_ref torch function instead"
        )


def check_dtype(name: str, t: torch.Tensor) -> None:
    """Raise a TypeError unless ``t`` has a dtype the kernels support (fp32, bf16, fp16)."""
    if t.dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"{name}: unsupported dtype {t.dtype}; expected fp32, bf16 or fp16")


def next_pow2(n: int) -> int:
    """Smallest power of two that is at least ``max(n, 1)``."""
    return 1 << max(int(n) - 1, 0).bit_length()


def clamp_pow2(n: int, lo: int, hi: int) -> int:
    """``next_pow2(n)`` clamped into ``[lo, hi]`` (both powers of two)."""
    return min(max(next_pow2(n), lo), hi)


def as_rows(t: torch.Tensor) -> torch.Tensor:
    """View ``t`` (..., D) as a 2-D (rows, D) tensor, copying only when a view is impossible."""
    return t.reshape(-1, t.shape[-1]) if t.dim() != 2 else t


def unit_last_stride(t: torch.Tensor) -> torch.Tensor:
    """Return ``t`` with stride 1 along its last dimension (row kernels index columns densely)."""
    return t if t.stride(-1) == 1 or t.shape[-1] == 1 else t.contiguous()
