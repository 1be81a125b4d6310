"""Measure the cost-model parameters of pipeline stages: T_F, T_B, T_W and activation memory.

:func:`profile_ops` runs each stage module on the device its input lives on and returns one dict
per stage::

    {"stage": s, "tf": ms, "tb": ms, "tw": ms, "mem_f": bytes, "mem_w": bytes,
     "mode": "split" | "estimate", "device": "cpu", "repeats": n}

- ``tf``: forward time (for the last stage including ``loss_fn`` when given).
- ``tb``: input-gradient time. The backward runs with a :class:`WeightGradStore` active, so split
  layers defer their W, and (when the stage input is floating point) as
  ``torch.autograd.grad(out, stage_input)``, so autograd also skips the weight gradients of
  plain torch layers.
- ``tw``: mode ``"split"`` (every trainable parameter belongs to a split layer of
  :mod:`schedlang.kernels.layers`): the time of ``store.run_w``. Mode ``"estimate"`` (plain layers
  hold parameters): a full backward's time minus ``tb``, clamped at 0.
- ``mem_f``: bytes saved for backward during the forward, counted through
  ``torch.autograd.graph.saved_tensors_hooks`` over distinct storages, parameters excluded
  (the stage input counts when a layer saves it). This is the paper's ``M_B``.
- ``mem_w``: bytes the store holds for W after B (layer inputs, output gradients, norm
  statistics), the paper's ``M_W``. Exact in mode ``"split"``; in mode ``"estimate"`` it covers
  the split layers only.

Times are medians over ``repeats`` runs after ``warmup`` runs, in ms. The output gradient is a
fixed random tensor (seeded) unless ``loss_fn`` is given; it is applied to the last stage only.
Known limit: when the stage input is not floating point (token ids), B cannot be separated from
plain layers' weight gradients, so their W is counted in ``tb``. Parameter gradients and the
layers' store attachments are restored afterwards. On a CPU under ``TRITON_INTERPRET=1`` the
times measure the interpreter, not the kernels.

:func:`format_params` turns the result into schedlang parameter overrides, one
``name=[v0, v1, ...]`` line per name (``tf``, ``tb``, ``tw``, ``mem_f``, ``mem_w``), a value per
stage. The ``schedlang profile`` command wires both up.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from schedlang.kernels.layers import WeightGradStore, attach_store, split_modules
from torch import nn

__all__ = ["PARAM_NAMES", "format_params", "profile_ops"]

PARAM_NAMES = ("tf", "tb", "tw", "mem_f", "mem_w")


class _SavedBytes:
    """saved_tensors_hooks pair counting distinct non-parameter storages saved for backward."""

    def __init__(self, exclude: set[tuple[str, int]]) -> None:
        self.exclude = exclude
        self.seen: dict[tuple[str, int], int] = {}

    def pack(self, t: torch.Tensor) -> torch.Tensor:
        s = t.untyped_storage()
        key = (str(t.device), s.data_ptr())
        if key not in self.exclude:
            self.seen[key] = s.nbytes()
        return t

    @staticmethod
    def unpack(t: torch.Tensor) -> torch.Tensor:
        return t

    @property
    def total(self) -> int:
        return sum(self.seen.values())


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _storage_keys(module: nn.Module) -> set[tuple[str, int]]:
    tensors = [*module.parameters(), *module.buffers()]
    return {(str(t.device), t.untyped_storage().data_ptr()) for t in tensors}


def _mode(module: nn.Module) -> str:
    """ "split" when every trainable parameter belongs to a split layer, else "estimate"."""
    split = {id(p) for m in split_modules(module) for p in m.parameters(recurse=False)}
    trainable = [p for p in module.parameters() if p.requires_grad]
    return "split" if all(id(p) in split for p in trainable) else "estimate"


def _profile_stage(
    stage: int,
    module: nn.Module,
    x: torch.Tensor,
    loss_fn: Callable[[torch.Tensor], torch.Tensor] | None,
    repeats: int,
    warmup: int,
    generator: torch.Generator,
) -> dict[str, Any]:
    device = x.device
    store = WeightGradStore()
    attach_store(module, store)  # the caller restores the previous attachments
    mode = _mode(module)
    exclude = _storage_keys(module)
    float_in = x.is_floating_point()
    times: dict[str, list[float]] = {"tf": [], "tb": [], "tw": []}
    mem_f = mem_w = 0
    grad: torch.Tensor | None = None

    def forward(xin: torch.Tensor) -> torch.Tensor:
        out = module(xin)
        return loss_fn(out) if loss_fn is not None else out

    for it in range(warmup + repeats):
        xin = x.detach().requires_grad_(float_in)
        counter = _SavedBytes(exclude)
        _sync(device)
        t0 = time.perf_counter()
        with torch.autograd.graph.saved_tensors_hooks(counter.pack, counter.unpack):
            out = forward(xin)
        _sync(device)
        t1 = time.perf_counter()
        if loss_fn is None and grad is None:
            noise = torch.randn(out.shape, generator=generator, dtype=torch.float32)
            grad = noise.to(device=device, dtype=out.dtype)
        with store.scope(stage, 0):
            if float_in:
                torch.autograd.grad(out, xin, grad, allow_unused=True)
            else:
                torch.autograd.backward(out, grad)
        _sync(device)
        t2 = time.perf_counter()
        held = store.nbytes(stage, 0)
        store.run_w(stage, 0)
        _sync(device)
        t3 = time.perf_counter()
        tw = t3 - t2
        if mode == "estimate":
            out = forward(xin)
            _sync(device)
            t4 = time.perf_counter()
            torch.autograd.backward(out, grad)
            _sync(device)
            tw = max(0.0, time.perf_counter() - t4 - (t2 - t1))
        if it >= warmup:
            times["tf"].append(t1 - t0)
            times["tb"].append(t2 - t1)
            times["tw"].append(tw)
            mem_f, mem_w = counter.total, held
        del out
    row: dict[str, Any] = {"stage": stage}
    row.update({k: 1e3 * statistics.median(v) for k, v in times.items()})
    row.update(mem_f=mem_f, mem_w=mem_w, mode=mode, device=str(device), repeats=repeats)
    return row


def profile_ops(
    stage_modules: Sequence[nn.Module],
    sample_input: torch.Tensor,
    loss_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
    repeats: int = 5,
    *,
    warmup: int = 1,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """Profile each stage in order; return one dict per stage (see the module docstring).

    ``sample_input`` is one microbatch for stage 0; each later stage gets the previous stage's
    output. ``loss_fn`` maps the last stage's output to a scalar; without it every stage is
    driven by a seeded random output gradient. Modules must already be on ``sample_input``'s
    device.
    """
    if repeats < 1 or warmup < 0:
        raise ValueError("profile_ops needs repeats >= 1 and warmup >= 0")
    generator = torch.Generator().manual_seed(seed)
    rows: list[dict[str, Any]] = []
    x = sample_input
    last = len(stage_modules) - 1
    for s, module in enumerate(stage_modules):
        stores = {m: m.wgrad_store for m in split_modules(module)}
        grads = {p: p.grad for p in module.parameters()}
        try:
            rows.append(
                _profile_stage(
                    s, module, x, loss_fn if s == last else None, repeats, warmup, generator
                )
            )
            with torch.no_grad():
                x = module(x)
        finally:
            for m, st in stores.items():
                m.wgrad_store = st
            for p, g in grads.items():
                p.grad = g
    return rows


def format_params(
    profile: Sequence[Mapping[str, Any]],
    names: Sequence[str] = PARAM_NAMES,
    *,
    digits: int = 4,
) -> str:
    """Render a :func:`profile_ops` result as schedlang overrides, one ``name=[...]`` per line.

    Times (ms) are rounded to ``digits`` decimals; memory names (``mem_*``) are integer bytes.
    """
    lines = []
    for name in names:
        values = [row[name] for row in profile]
        if name.startswith("mem"):
            text = ", ".join(str(int(v)) for v in values)
        else:
            text = ", ".join(f"{float(v):.{digits}f}" for v in values)
        lines.append(f"{name}=[{text}]")
    return "\n".join(lines) + "\n"
