"""Layers whose backward splits into B (input gradient) and a deferred W (weight gradient).

``SplitLinear``, ``SplitRMSNorm`` and ``SplitLayerNorm`` are drop-in ``torch.nn.Module``s. Their
autograd backward always computes the input gradient (B). What happens to the weight gradient
(W) depends on the layer's ``wgrad_store``:

- no store, or a store with no active key: the layer behaves like a normal layer; the backward
  also computes W and autograd accumulates it into ``param.grad``;
- a :class:`WeightGradStore` with an active ``(stage, microbatch)`` key: the backward returns no
  weight gradient and stashes what W needs (the layer input ``x``, the output gradient ``dy``,
  and for norms the per-row statistics) under that key. ``store.run_w(stage, mb)`` later runs
  W for every entry of that key, accumulates into ``param.grad`` (created when None, without a
  zeroing pass) and frees the stashed tensors.

Typical use on one pipeline rank::

    store = WeightGradStore()
    attach_store(stage_module, store)
    with store.scope(stage, mb):          # or: store.key = (stage, mb)
        torch.autograd.backward(out, dy)  # B only
    ...
    store.run_w(stage, mb)                # W, any time later, any order across microbatches

The key is read from the store object, not from thread-local state, because autograd runs
CUDA backward functions on its own device threads; run one backward per store at a time.
Stashed tensors are detached views that are never modified in place: do not modify a layer's
input or the incoming gradient in place between B and W either (``run_w`` checks the autograd
version counters and raises if one was).

Kernels: ``use_triton=None`` (default) picks the Triton kernels when they can run on the
tensors (CUDA tensors, or CPU tensors under ``TRITON_INTERPRET=1``) and the torch references
otherwise, so the layers run at plain torch speed on a CPU without the interpreter. ``True`` or
``False`` forces the choice.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from schedlang.kernels import matmul as mm
from schedlang.kernels import norms as nm
from schedlang.kernels._util import triton_usable
from torch import nn
from torch.autograd.function import once_differentiable

__all__ = [
    "SplitLayerNorm",
    "SplitLinear",
    "SplitModule",
    "SplitRMSNorm",
    "WeightGradStore",
    "attach_store",
    "split_modules",
]

Key = tuple[int, int]


@dataclass(slots=True)
class _Deferred:
    """One stashed W: the layer, the tensors its W needs, and the kernel choice made in F."""

    module: SplitModule
    tensors: tuple[torch.Tensor, ...]
    use_triton: bool
    versions: tuple[int, ...]  # autograd version counters at stash time


class WeightGradStore:
    """Deferred weight-gradient work, keyed by (stage, microbatch).

    Layers stash entries during a backward run while a key is active (see :meth:`scope` and
    :attr:`key`); :meth:`run_w` drains one key. The store owns the stashed tensors until then.
    """

    def __init__(self) -> None:
        self._pending: dict[Key, list[_Deferred]] = {}
        self._key: Key | None = None

    # -- the active key ------------------------------------------------------------------

    @property
    def key(self) -> Key | None:
        """The (stage, microbatch) that backward runs stash under; None means no deferral."""
        return self._key

    @key.setter
    def key(self, value: Key | None) -> None:
        self._key = None if value is None else (int(value[0]), int(value[1]))

    @contextmanager
    def scope(self, stage: int, microbatch: int) -> Iterator[WeightGradStore]:
        """Make ``(stage, microbatch)`` the active key inside the ``with`` block."""
        previous = self._key
        self.key = (stage, microbatch)
        try:
            yield self
        finally:
            self._key = previous

    # -- stashing and draining -----------------------------------------------------------

    def stash(
        self, module: SplitModule, tensors: tuple[torch.Tensor, ...], use_triton: bool
    ) -> None:
        """Record one W for the active key (called by the layers' backward)."""
        assert self._key is not None, "stash() needs an active key"
        # detach() drops the graph but shares the version counter, so run_w can tell when a
        # stashed tensor was modified in place in the meantime.
        kept = tuple(t.detach() for t in tensors)
        entry = _Deferred(module, kept, use_triton, tuple(t._version for t in kept))
        self._pending.setdefault(self._key, []).append(entry)

    def run_w(self, stage: int, microbatch: int) -> int:
        """Run every W stashed under ``(stage, microbatch)``, free its tensors, return the count.

        Gradients accumulate into ``param.grad`` (created when None). A key with nothing
        stashed is not an error (a stage may hold no split layer): it returns 0. Raises
        RuntimeError (and drops the key's entries) when a stashed tensor was modified in place
        after its B.
        """
        entries = self._pending.pop((stage, microbatch), None)
        if not entries:
            return 0
        count = len(entries)
        with torch.no_grad():
            while entries:
                entry = entries.pop()
                if tuple(t._version for t in entry.tensors) != entry.versions:
                    raise RuntimeError(
                        f"W of {type(entry.module).__name__} for stage {stage}, microbatch "
                        f"{microbatch}: a tensor stashed for it was modified in place after B"
                    )
                entry.module.accumulate_weight_grad(entry.tensors, entry.use_triton)
                del entry  # free this entry's tensors before the next W allocates
        return count

    def has_pending(self, stage: int, microbatch: int) -> bool:
        """Return True when W work is stashed under ``(stage, microbatch)``."""
        return bool(self._pending.get((stage, microbatch)))

    def keys(self) -> list[Key]:
        """Keys with stashed W work, sorted."""
        return sorted(k for k, v in self._pending.items() if v)

    def tensors(self, stage: int, microbatch: int) -> list[torch.Tensor]:
        """The tensors stashed under one key (for inspection and tests)."""
        return [t for e in self._pending.get((stage, microbatch), []) for t in e.tensors]

    def nbytes(self, stage: int | None = None, microbatch: int | None = None) -> int:
        """Bytes of distinct storages held by the store, for one key or (both None) all keys."""
        if stage is None and microbatch is None:
            keys: list[Key] = list(self._pending)
        elif stage is not None and microbatch is not None:
            keys = [(stage, microbatch)]
        else:
            raise ValueError("nbytes() takes both stage and microbatch, or neither")
        seen: dict[tuple[str, int], int] = {}
        for k in keys:
            for e in self._pending.get(k, []):
                for t in e.tensors:
                    s = t.untyped_storage()
                    seen[(str(t.device), s.data_ptr())] = s.nbytes()
        return sum(seen.values())

    def clear(self) -> None:
        """Drop every stashed entry without running it."""
        self._pending.clear()

    def __len__(self) -> int:
        """Number of stashed W entries over all keys."""
        return sum(len(v) for v in self._pending.values())

    def __repr__(self) -> str:
        """Key and pending counts, for debugging."""
        return f"WeightGradStore(key={self._key}, pending={len(self)} in {len(self.keys())} keys)"


# ----------------------------------------------------------------------------- base module


class SplitModule(nn.Module):
    """Base of the split layers: the store hook-up and the kernel choice."""

    wgrad_store: WeightGradStore | None
    use_triton: bool | None

    def __init__(self, use_triton: bool | None = None) -> None:
        super().__init__()
        self.wgrad_store = None
        self.use_triton = use_triton

    def triton_for(self, *tensors: torch.Tensor) -> bool:
        """Whether this layer runs the Triton kernels on ``tensors`` (see ``use_triton``)."""
        if self.use_triton is None:
            return triton_usable(*tensors)
        return self.use_triton

    def deferring_store(self) -> WeightGradStore | None:
        """The store to stash W in now, or None for a full backward."""
        store = self.wgrad_store
        return store if store is not None and store.key is not None else None

    def accumulate_weight_grad(self, tensors: tuple[torch.Tensor, ...], use_triton: bool) -> None:
        """Run W on stashed ``tensors`` and accumulate into this layer's ``param.grad``."""
        raise NotImplementedError


def split_modules(module: nn.Module) -> Iterator[SplitModule]:
    """Yield every :class:`SplitModule` in ``module`` (itself included)."""
    for m in module.modules():
        if isinstance(m, SplitModule):
            yield m


def attach_store(module: nn.Module, store: WeightGradStore | None) -> int:
    """Point every split layer in ``module`` at ``store`` (None detaches); return how many."""
    count = 0
    for m in split_modules(module):
        m.wgrad_store = store
        count += 1
    return count


def _grad_slot(param: nn.Parameter | None) -> tuple[torch.Tensor | None, bool]:
    """Return (buffer to accumulate into, is_new) for ``param``; (None, True) when frozen.

    A new buffer is uninitialised: the kernel writes it (no zeroing pass).
    """
    if param is None or not param.requires_grad:
        return None, True
    if param.grad is None:
        return torch.empty_like(param, memory_format=torch.contiguous_format), True
    if not param.grad.is_contiguous():
        param.grad = param.grad.contiguous()
    return param.grad, False


def _fill_grads(
    params: tuple[nn.Parameter | None, ...],
    run: Callable[[tuple[torch.Tensor | None, ...], bool], Any],
) -> None:
    """Call ``run(buffers, accumulate)`` once for all of a layer's parameters, then set grads.

    The kernels take one accumulate flag for all buffers; when some buffers are new and others
    already hold gradients (rare: someone set one ``.grad`` by hand), the new ones are zeroed.
    """
    slots = [_grad_slot(p) for p in params]
    live = [(t, new) for t, new in slots if t is not None]
    if not live:
        return
    all_new = all(new for _, new in live)
    if not all_new:
        for t, new in live:
            if new:
                t.zero_()
    run(tuple(t for t, _ in slots), not all_new)
    for p, (slot, new) in zip(params, slots, strict=True):
        if p is not None and slot is not None and new:
            p.grad = slot


def _grad_dtype(grad: torch.Tensor | None, like: torch.Tensor | None) -> torch.Tensor | None:
    """Cast a fresh fp32 gradient to its parameter's dtype (autograd requires them to match)."""
    if grad is None or like is None:
        return None
    return grad.to(like.dtype)


# -------------------------------------------------------------------------------- Linear


class _SplitLinearFn(torch.autograd.Function):
    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        x: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        module: SplitLinear,
    ) -> torch.Tensor:
        tri = module.triton_for(x, weight)
        if tri:
            y = mm.linear_forward(x, weight, bias, allow_tf32=module.allow_tf32)
        else:
            y = mm.linear_forward_ref(x, weight, bias)
        ctx.save_for_backward(x, weight)
        ctx.module, ctx.tri, ctx.has_bias = module, tri, bias is not None
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, dy: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, weight = ctx.saved_tensors
        module: SplitLinear = ctx.module
        tri: bool = ctx.tri
        dx = None
        if ctx.needs_input_grad[0]:
            if tri:
                dx = mm.linear_backward_input(dy, weight, allow_tf32=module.allow_tf32)
            else:
                dx = mm.linear_backward_input_ref(dy, weight)
        if not (ctx.needs_input_grad[1] or (ctx.has_bias and ctx.needs_input_grad[2])):
            return dx, None, None, None
        store = module.deferring_store()
        if store is not None:
            store.stash(module, (x, dy), tri)
            return dx, None, None, None
        if tri:
            dw, db = mm.linear_backward_weight(
                x, dy, with_bias=ctx.has_bias, allow_tf32=module.allow_tf32
            )
        else:
            dw, db = mm.linear_backward_weight_ref(x, dy, with_bias=ctx.has_bias)
        return dx, _grad_dtype(dw, weight), _grad_dtype(db, module.bias), None


class SplitLinear(SplitModule):
    """``y = x W^T + b`` with a B/W-split backward (see the module docstring)."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        use_triton: bool | None = None,
        allow_tf32: bool = False,
    ) -> None:
        super().__init__(use_triton)
        self.in_features = in_features
        self.out_features = out_features
        self.allow_tf32 = allow_tf32
        kw: dict[str, Any] = {"device": device, "dtype": dtype}
        self.weight = nn.Parameter(torch.empty(out_features, in_features, **kw))
        self.bias = nn.Parameter(torch.empty(out_features, **kw)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Initialise like ``torch.nn.Linear`` (uniform, bound ``1/sqrt(in_features)``)."""
        bound = 1.0 / math.sqrt(self.in_features) if self.in_features > 0 else 0.0
        # kaiming_uniform_ with a=sqrt(5) gives exactly this bound for the weight.
        nn.init.uniform_(self.weight, -bound, bound)
        if self.bias is not None:
            nn.init.uniform_(self.bias, -bound, bound)

    @classmethod
    def from_linear(cls, linear: nn.Linear, *, use_triton: bool | None = None) -> SplitLinear:
        """Return a SplitLinear holding a copy of ``linear``'s parameters."""
        w = linear.weight
        new = cls(
            linear.in_features,
            linear.out_features,
            linear.bias is not None,
            device=w.device,
            dtype=w.dtype,
            use_triton=use_triton,
        )
        with torch.no_grad():
            new.weight.copy_(w)
            if linear.bias is not None and new.bias is not None:
                new.bias.copy_(linear.bias)
        return new

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return ``x @ weight.T + bias``."""
        return _SplitLinearFn.apply(x, self.weight, self.bias, self)

    def accumulate_weight_grad(self, tensors: tuple[torch.Tensor, ...], use_triton: bool) -> None:
        """W: ``weight.grad += dy^T x`` and ``bias.grad += dy.sum(0)``."""
        x, dy = tensors

        def run(bufs: tuple[torch.Tensor | None, ...], accumulate: bool) -> None:
            dw, db = bufs
            fn = mm.linear_backward_weight if use_triton else mm.linear_backward_weight_ref
            if dw is None:  # frozen weight, trainable bias
                assert db is not None
                s = dy.reshape(-1, dy.shape[-1]).float().sum(0)
                db.copy_(db.float() + s if accumulate else s)
                return
            kw: dict[str, Any] = {"allow_tf32": self.allow_tf32} if use_triton else {}
            fn(x, dy, dw, db, accumulate=accumulate, **kw)

        _fill_grads((self.weight, self.bias), run)

    def extra_repr(self) -> str:
        """Shown by ``repr(module)``."""
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bias={self.bias is not None}, use_triton={self.use_triton}"
        )


# ----------------------------------------------------------------------------------- norms


class _SplitRMSNormFn(torch.autograd.Function):
    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, x: torch.Tensor, weight: torch.Tensor, module: SplitRMSNorm
    ) -> torch.Tensor:
        tri = module.triton_for(x, weight)
        if tri:
            y, rstd = nm.rmsnorm_forward(x, weight, module.eps)
        else:
            y, rstd = nm.rmsnorm_forward_ref(x, weight, module.eps)
        ctx.save_for_backward(x, weight, rstd)
        ctx.module, ctx.tri = module, tri
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, dy: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, weight, rstd = ctx.saved_tensors
        module: SplitRMSNorm = ctx.module
        tri: bool = ctx.tri
        dx = None
        if ctx.needs_input_grad[0]:
            fn = nm.rmsnorm_backward_input if tri else nm.rmsnorm_backward_input_ref
            dx = fn(x, dy, weight, rstd)
        if not ctx.needs_input_grad[1]:
            return dx, None, None
        store = module.deferring_store()
        if store is not None:
            store.stash(module, (x, dy, rstd), tri)
            return dx, None, None
        fw = nm.rmsnorm_backward_weight if tri else nm.rmsnorm_backward_weight_ref
        return dx, _grad_dtype(fw(x, dy, rstd), weight), None


class SplitRMSNorm(SplitModule):
    """RMSNorm over the last dimension, ``y = x / rms(x) * weight``, with a split backward."""

    def __init__(
        self,
        normalized_shape: int,
        eps: float = 1e-6,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        use_triton: bool | None = None,
    ) -> None:
        super().__init__(use_triton)
        self.normalized_shape = normalized_shape
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(normalized_shape, device=device, dtype=dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the normalised ``x``, scaled by ``weight``."""
        return _SplitRMSNormFn.apply(x, self.weight, self)

    def accumulate_weight_grad(self, tensors: tuple[torch.Tensor, ...], use_triton: bool) -> None:
        """W: ``weight.grad += sum_rows(dy * x * rstd)``."""
        x, dy, rstd = tensors
        fn = nm.rmsnorm_backward_weight if use_triton else nm.rmsnorm_backward_weight_ref

        def run(bufs: tuple[torch.Tensor | None, ...], accumulate: bool) -> None:
            fn(x, dy, rstd, bufs[0], accumulate=accumulate)

        _fill_grads((self.weight,), run)

    def extra_repr(self) -> str:
        """Shown by ``repr(module)``."""
        return f"{self.normalized_shape}, eps={self.eps}, use_triton={self.use_triton}"


class _SplitLayerNormFn(torch.autograd.Function):
    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        x: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        module: SplitLayerNorm,
    ) -> torch.Tensor:
        tri = module.triton_for(x, weight)
        if tri:
            y, mean, rstd = nm.layernorm_forward(x, weight, bias, module.eps)
        else:
            y, mean, rstd = nm.layernorm_forward_ref(x, weight, bias, module.eps)
        ctx.save_for_backward(x, weight, mean, rstd)
        ctx.module, ctx.tri, ctx.has_bias = module, tri, bias is not None
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, dy: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, weight, mean, rstd = ctx.saved_tensors
        module: SplitLayerNorm = ctx.module
        tri: bool = ctx.tri
        dx = None
        if ctx.needs_input_grad[0]:
            fn = nm.layernorm_backward_input if tri else nm.layernorm_backward_input_ref
            dx = fn(x, dy, weight, mean, rstd)
        if not (ctx.needs_input_grad[1] or (ctx.has_bias and ctx.needs_input_grad[2])):
            return dx, None, None, None
        store = module.deferring_store()
        if store is not None:
            store.stash(module, (x, dy, mean, rstd), tri)
            return dx, None, None, None
        fw = nm.layernorm_backward_weight if tri else nm.layernorm_backward_weight_ref
        dw, db = fw(x, dy, mean, rstd, with_bias=ctx.has_bias)
        return dx, _grad_dtype(dw, weight), _grad_dtype(db, module.bias), None


class SplitLayerNorm(SplitModule):
    """LayerNorm over the last dimension with weight and optional bias, split backward."""

    def __init__(
        self,
        normalized_shape: int,
        eps: float = 1e-5,
        bias: bool = True,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        use_triton: bool | None = None,
    ) -> None:
        super().__init__(use_triton)
        self.normalized_shape = normalized_shape
        self.eps = eps
        kw: dict[str, Any] = {"device": device, "dtype": dtype}
        self.weight = nn.Parameter(torch.ones(normalized_shape, **kw))
        self.bias = nn.Parameter(torch.zeros(normalized_shape, **kw)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return ``(x - mean) / std * weight + bias`` over the last dimension."""
        return _SplitLayerNormFn.apply(x, self.weight, self.bias, self)

    def accumulate_weight_grad(self, tensors: tuple[torch.Tensor, ...], use_triton: bool) -> None:
        """W: ``weight.grad += sum_rows(dy * xhat)``, ``bias.grad += sum_rows(dy)``."""
        x, dy, mean, rstd = tensors
        fn = nm.layernorm_backward_weight if use_triton else nm.layernorm_backward_weight_ref

        def run(bufs: tuple[torch.Tensor | None, ...], accumulate: bool) -> None:
            dw, db = bufs
            if dw is None:  # frozen weight, trainable bias: compute both, keep db
                _, db_new = nm.layernorm_backward_weight_ref(x, dy, mean, rstd, with_bias=True)
                assert db is not None and db_new is not None
                db.copy_(db.float() + db_new if accumulate else db_new)
                return
            fn(x, dy, mean, rstd, dw, db, accumulate=accumulate)

        _fill_grads((self.weight, self.bias), run)

    def extra_repr(self) -> str:
        """Shown by ``repr(module)``."""
        return (
            f"{self.normalized_shape}, eps={self.eps}, bias={self.bias is not None}, "
            f"use_triton={self.use_triton}"
        )
