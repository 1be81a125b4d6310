"""Measure the cost-model parameters of pipeline stages: T_F, T_B, T_W and activation memory.

:func:`profile_ops` runs each stage module on the device its input lives on, the way
``schedlang run`` executes it, and returns one dict per stage::

    {"stage": s, "tf": ms, "tb": ms, "tw": ms, "tbw": ms, "mem_f": bytes, "mem_w": bytes,
     "cv": {"tf": .., "tb": .., "tw": .., "tbw": ..}, "mode": "autograd" | "split" | "estimate",
     "device": "cpu", "threads": n, "repeats": n, "warmup": n}

How each figure is taken:

- Threads: the profile runs with ``torch.set_num_threads(threads)`` (default 1, what every
  ``schedlang run`` worker uses), restored afterwards. Letting the intra-op pool float makes
  small CPU ops swing by two orders of magnitude from run to run.
- Times: ``warmup`` untimed runs, then ``repeats`` timed runs, or more until they add up to
  ``min_time`` seconds (``repeats`` in the row: how many); each figure is the median (ms),
  and ``cv`` holds its spread as a robust coefficient of variation
  (:func:`coefficient_of_variation`) so a caller can tell a noisy figure from a steady one
  (:func:`noisy_figures`).
- ``tf``: forward time (for the last stage including ``loss_fn`` when given).
- ``split_backward="autograd"`` (mode ``"autograd"``): B and W as the runtime's autograd split
  does them (:mod:`schedlang.runtime.autograd_split`): ``tb`` is the input-gradient backward
  that captures the gradients arriving at the weight nodes, ``tw`` the weight-gradient work
  started from them. The first stage has no input gradient, so, as in the runtime, its B does
  nothing (``tb`` = 0) and its W is the whole backward.
- ``split_backward="kernels"``: the backward runs with a :class:`WeightGradStore` active; ``tb``
  is that backward and ``tw`` the time of ``store.run_w`` (mode ``"split"``: every trainable
  parameter belongs to a split layer of :mod:`schedlang.kernels.layers`). Mode ``"estimate"``
  (plain layers hold parameters): ``tw`` is a full backward's time minus ``tb``, clamped at 0.
- ``tbw``: the fused backward (B and W together, the runtime's ``BW`` of 1F1B and GPipe): one
  backward from the output, outside any store scope. It is often well below ``tb + tw``: the
  split pays for a second pass into the graph (and, through autograd, a walk of it).
- ``out_bytes``: the size of the stage's output (before ``loss_fn``), what it sends to the next.
- ``mem_f``: bytes saved for backward during the forward, counted through
  ``torch.autograd.graph.saved_tensors_hooks`` over distinct storages, parameters excluded
  (the stage input counts when a layer saves it). This is the paper's ``M_B``.
- ``mem_w``: bytes held from B until W. Autograd split: the runtime keeps the stage's graph
  for W (``retain_graph``), so this is ``mem_f`` plus the gradients B captured for W (the
  first stage: plus its output gradient, which W consumes). Kernels split: what the store
  holds for W (layer inputs, output gradients, norm statistics), the paper's ``M_W``.

The output gradient is a fixed random tensor (seeded) unless ``loss_fn`` is given; it is applied
to the last stage only. Parameter gradients and the layers' store attachments are restored
afterwards. On a CPU under ``TRITON_INTERPRET=1`` the kernels times measure the interpreter.

:func:`format_params` turns the result into schedlang parameter overrides, one
``name=[v0, v1, ...]`` line per name (``tf``, ``tb``, ``tw``, ``mem_f``, ``mem_w``), a value per
stage; :func:`in_activation_units` rescales memory to one microbatch's activations on stage 0.
The ``schedlang profile`` command wires them up.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from schedlang.kernels.layers import WeightGradStore, attach_store, split_modules
from torch import nn

__all__ = ["PARAM_NAMES", "TIME_NAMES", "coefficient_of_variation", "format_params", "in_activation_units",
           "median", "noisy_figures", "profile_ops"]

PARAM_NAMES = ("tf", "tb", "tw", "mem_f", "mem_w")
TIME_NAMES = ("tf", "tb", "tw", "tbw")
MAX_REPEATS = 2000  # the most timed runs ``min_time`` asks for


def median(samples: Sequence[float]) -> float:
    """The median of at least one sample."""
    if not samples:
        raise ValueError("median of no samples")
    return float(statistics.median(samples))


def coefficient_of_variation(samples: Sequence[float]) -> float:
    """A robust coefficient of variation: ``1.4826 * MAD / median`` (MAD: the median absolute
    deviation from the median). For normally distributed runs it estimates the standard
    deviation over the mean; unlike that ratio, a few outliers (another process taking the core
    for one run) do not blow it up, while a median that does not stand for most runs does.
    0 for fewer than two samples or a zero median."""
    if len(samples) < 2:
        return 0.0
    mid = statistics.median(samples)
    if mid == 0:
        return 0.0
    mad = statistics.median(abs(x - mid) for x in samples)
    return float(1.4826 * mad / mid)


def noisy_figures(profile: Sequence[Mapping[str, Any]], limit: float = 0.1) -> list[tuple[int, str, float]]:
    """``(stage, name, cv)`` for every time whose coefficient of variation is above ``limit``."""
    out = []
    for row in profile:
        for name, cv in row.get("cv", {}).items():
            if cv > limit:
                out.append((int(row["stage"]), name, float(cv)))
    return out


def in_activation_units(profile: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The profile with ``mem_f`` and ``mem_w`` divided by stage 0's ``mem_f`` (one microbatch's
    activations on stage 0, the unit memory limits of the built-in schedules are written in);
    each row keeps its byte figures as ``mem_f_bytes`` and ``mem_w_bytes``."""
    if not profile:
        return []
    unit = float(profile[0]["mem_f"])
    if unit <= 0:
        raise ValueError("stage 0 saves no activations: there is no activation unit")
    out = []
    for row in profile:
        new = dict(row)
        for name in ("mem_f", "mem_w"):
            new[f"{name}_bytes"] = row[name]
            new[name] = row[name] / unit
        out.append(new)
    return out


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
        # a detached alias: returning ``t`` itself would tie an op's saved output to its own
        # grad_fn in a cycle through C++ that Python's collector cannot free (a leak per run)
        return t.detach()

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


def _nbytes(tensors: Sequence[torch.Tensor | None]) -> int:
    seen: dict[tuple[str, int], int] = {}
    for t in tensors:
        if t is not None:
            st = t.untyped_storage()
            seen[(str(t.device), st.data_ptr())] = st.nbytes()
    return sum(seen.values())


def _profile_stage(
    stage: int,
    module: nn.Module,
    x: torch.Tensor,
    loss_fn: Callable[[torch.Tensor], torch.Tensor] | None,
    repeats: int,
    warmup: int,
    generator: torch.Generator,
    split_backward: str,
    min_time: float = 0.0,
) -> dict[str, Any]:
    from schedlang.runtime.autograd_split import input_backward

    device = x.device
    store = WeightGradStore()
    kernels = split_backward == "kernels"
    if kernels:
        attach_store(module, store)  # the caller restores the previous attachments
    mode = _mode(module) if kernels else "autograd"
    exclude = _storage_keys(module)
    # the runtime gives a stage an input gradient only when a stage feeds it
    first = stage == 0 or not x.is_floating_point()
    float_in = x.is_floating_point()
    params = [p for p in module.parameters() if p.requires_grad]
    times: dict[str, list[float]] = {"tf": [], "tb": [], "tw": [], "tbw": []}
    mem_f = mem_w = 0
    grad: torch.Tensor | None = None

    out_bytes = 0

    def forward(xin: torch.Tensor) -> torch.Tensor:
        nonlocal out_bytes
        out = module(xin)
        out_bytes = out.numel() * out.element_size() if isinstance(out, torch.Tensor) else 0
        return loss_fn(out) if loss_fn is not None else out

    cap = warmup + max(repeats, MAX_REPEATS)
    it, timed = 0, 0.0
    while it < warmup + repeats or (timed < min_time and it < cap):
        t_it = time.perf_counter()
        xin = x.detach().requires_grad_(float_in and not first or (kernels and float_in))
        counter = _SavedBytes(exclude)
        _sync(device)
        t0 = time.perf_counter()
        with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(counter.pack, counter.unpack):
            out = forward(xin)
        _sync(device)
        t1 = time.perf_counter()
        if loss_fn is None and grad is None:
            noise = torch.randn(out.shape, generator=generator, dtype=torch.float32)
            grad = noise.to(device=device, dtype=out.dtype)
        if kernels:
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
        elif first:  # no input gradient: B does nothing and W runs the whole backward
            t2 = t1
            held = counter.total + _nbytes([grad])
            if params:
                torch.autograd.backward(out, grad, inputs=params)
            _sync(device)
            tw = time.perf_counter() - t2
        else:
            _dx, work = input_backward(out, xin, grad, params)
            _sync(device)
            t2 = time.perf_counter()
            captured = [g for _, _, box in (work.nodes if work is not None else []) for gs in box for g in gs]
            held = counter.total + _nbytes(captured)
            if work is not None:
                work.run()
            elif params:  # a graph the capture does not handle: the runtime backs up from the output
                torch.autograd.backward(out, grad, inputs=params)
            _sync(device)
            tw = time.perf_counter() - t2
        if it >= warmup:
            times["tf"].append(t1 - t0)
            times["tb"].append(t2 - t1)
            times["tw"].append(tw)
            mem_f, mem_w = counter.total, held
        del out
        # the fused backward (BW), as the runtime runs it: one backward from the output, with
        # the input's gradient where a stage feeds this one, and no store key active
        xin = x.detach().requires_grad_(float_in and not first)
        with torch.enable_grad():
            out = forward(xin)
        _sync(device)
        t4 = time.perf_counter()
        torch.autograd.backward(out, grad)
        _sync(device)
        if it >= warmup:
            times["tbw"].append(time.perf_counter() - t4)
            timed += time.perf_counter() - t_it
        del out
        it += 1
    row: dict[str, Any] = {"stage": stage}
    row.update({k: 1e3 * median(v) for k, v in times.items()})
    row.update(mem_f=mem_f, mem_w=mem_w, out_bytes=out_bytes, cv={k: coefficient_of_variation(v) for k, v in times.items()},
               mode=mode, device=str(device), threads=torch.get_num_threads(), repeats=len(times["tf"]),
               warmup=warmup)
    return row


def profile_ops(
    stage_modules: Sequence[nn.Module],
    sample_input: torch.Tensor,
    loss_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
    repeats: int = 10,
    *,
    warmup: int = 3,
    seed: int = 0,
    split_backward: str = "kernels",
    threads: int | None = 1,
    min_time: float = 0.0,
) -> list[dict[str, Any]]:
    """Profile each stage in order; return one dict per stage (see the module docstring).

    ``sample_input`` is one microbatch for stage 0; each later stage gets the previous stage's
    output. ``loss_fn`` maps the last stage's output to a scalar; without it every stage is
    driven by a seeded random output gradient. Modules must already be on ``sample_input``'s
    device. ``split_backward`` is ``"autograd"`` or ``"kernels"`` (how the runtime will split
    B and W); ``threads`` is the intra-op thread count to profile with (``None``: leave it).
    ``min_time``: keep repeating past ``repeats`` until the timed runs of a stage add up to
    this many seconds (at most ``MAX_REPEATS`` runs), so short figures rest on many samples.
    """
    if repeats < 1 or warmup < 0 or min_time < 0:
        raise ValueError("profile_ops needs repeats >= 1, warmup >= 0 and min_time >= 0")
    if split_backward not in ("autograd", "kernels"):
        raise ValueError(f"split_backward must be 'autograd' or 'kernels', not {split_backward!r}")
    if threads is not None and threads < 1:
        raise ValueError("profile_ops needs threads >= 1")
    generator = torch.Generator().manual_seed(seed)
    rows: list[dict[str, Any]] = []
    x = sample_input
    last = len(stage_modules) - 1
    saved_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        for s, module in enumerate(stage_modules):
            stores = {m: m.wgrad_store for m in split_modules(module)}
            grads = {p: p.grad for p in module.parameters()}
            try:
                rows.append(
                    _profile_stage(
                        s, module, x, loss_fn if s == last else None, repeats, warmup, generator,
                        split_backward, min_time,
                    )
                )
                with torch.no_grad():
                    x = module(x)
            finally:
                for m, st in stores.items():
                    m.wgrad_store = st
                for p, g in grads.items():
                    p.grad = g
    finally:
        torch.set_num_threads(saved_threads)
    return rows


def format_params(
    profile: Sequence[Mapping[str, Any]],
    names: Sequence[str] = PARAM_NAMES,
    *,
    digits: int = 4,
    mem_digits: int = 0,
) -> str:
    """Render a :func:`profile_ops` result as schedlang overrides, one ``name=[...]`` per line.

    Times (ms) are rounded to ``digits`` decimals; memory names (``mem_*``) are integers (bytes)
    unless ``mem_digits`` asks for decimals (memory in activation units).
    """
    lines = []
    for name in names:
        values = [row[name] for row in profile]
        if name.startswith("mem"):
            text = ", ".join(f"{float(v):.{mem_digits}f}" if mem_digits else str(int(v)) for v in values)
        else:
            text = ", ".join(f"{float(v):.{digits}f}" for v in values)
        lines.append(f"{name}=[{text}]")
    return "\n".join(lines) + "\n"
