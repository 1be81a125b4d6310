"""One prepared check of the kernels, the runtime and the cost model on one CUDA GPU.

    python benchmarks/gpu_check.py --out DIR                   # one CUDA GPU, about 8 minutes at most
    python benchmarks/gpu_check.py --out DIR --cpu-rehearsal   # the same code paths on the CPU

Four parts, each in its own subprocess under its own time budget (``--budget-scale`` scales
them), so one part that crashes or runs out of time does not take the others or the report down:

- ``kernels``: the split linear kernels of :mod:`schedlang.kernels.matmul` (F, B, W), compiled:
  correctness against their torch references in fp32 and bf16 on odd and large shapes, and speed
  against ``torch.nn.functional.linear`` / ``torch.matmul`` (cuBLAS) at M = N = K in
  {2048, 4096, 8192}, as ratios (CUDA events, warm-up, median). The cases come from
  ``benchmarks/kernels.py``.
- ``norms``: the LayerNorm and RMSNorm kernels of :mod:`schedlang.kernels.norms`, the same way;
  F against ``torch.nn.functional.layer_norm`` / ``rms_norm``, B and W against the torch
  references, B+W against torch's own backward, at 8192 rows and D in {2048, 4096, 8192}.
- ``runtime``: the bundled GPT (:func:`schedlang.runtime.models.tiny_gpt`) on 2 processes under
  ZB-H1 and 1F1B, with the autograd and the kernels B/W split: the gradients of the first step
  against one process computing the whole model, then step time and peak memory per rank. On
  one GPU the two processes share it; the transport is chosen by a probe (NCCL, then gloo with
  CUDA tensors, then gloo through host memory, ``PipelineRunner(comm_device="cpu")``).
- ``profile``: ``python -m schedlang profile`` on the device (both splits), its figures fed to
  ``python -m schedlang simulate`` for both schedules; the predicted step time beside the one
  the runtime part measured.

Each part writes ``DIR/PART.json`` as it goes (rows, checks, what it skipped and why) and
``DIR/PART.log``; the driver gathers them into ``DIR/report.json`` and prints a short table
(also in ``DIR/report.txt``). A part is ``ok`` when everything in it ran and every check
passed, ``partial`` when it skipped something (out of time, a missing input), ``failed``,
``timeout`` or ``crashed`` otherwise; the exit status is 0 when every part is ``ok``.

``--cpu-rehearsal`` runs the same code on the CPU (about 25 s of CPU time): tiny odd shapes
under ``TRITON_INTERPRET=1`` (set in the parts' environment before any kernel module is
imported), gloo between CPU processes, a tiny model; the speed loops run at a tiny size so that
their code runs too. What needs CUDA (the real sizes' timing, CUDA memory, the NCCL and
gloo-with-CUDA probes) is skipped with the code ``no-cuda``. Every process uses ``cuda:0``.
See docs/gpu.md.
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import math
import os
import platform
import signal
import statistics
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
PARTS = ("kernels", "norms", "runtime", "profile")
# seconds per part. On a GPU they add up to 440 s; with the driver's 15 s backstop per part and
# the parts' start-up, a whole run stays under 8 minutes even when every part overruns.
BUDGETS = {
    "gpu": {"kernels": 130, "norms": 50, "runtime": 170, "profile": 90},
    "cpu": {"kernels": 60, "norms": 30, "runtime": 120, "profile": 90},
}
# relative tolerance: max |triton - torch| <= TOL * max(1, max |torch|)
TOL = {"float32": 1e-4, "bfloat16": 2e-2}
# runtime gradients against one process (fp32, TF32 off), per parameter tensor:
# max |pipeline - one process| <= GRAD_RTOL * max |one process| + GRAD_ATOL
GRAD_RTOL, GRAD_ATOL = 1e-4, 1e-9

LINEAR_CORRECT = {"gpu": [(37, 48, 80), (1000, 1537, 771), (3000, 2049, 4097)],
                  "cpu": [(37, 48, 80), (5, 130, 19)]}
# speed: M = N = K. The rehearsal times a tiny size on the CPU only to run the same code.
LINEAR_SPEED = {"gpu": (2048, 4096, 8192), "cpu": (32,)}
NORM_CORRECT = {"gpu": [(37, 80), (3001, 1537), (8192, 8192)], "cpu": [(37, 80), (5, 130)]}
NORM_SPEED = {"gpu": [(8192, 2048), (8192, 4096), (8192, 8192)], "cpu": [(16, 64)]}  # (rows, D)
REPEATS = {"gpu": 10, "cpu": 2}  # timed runs per case (median)

# The bundled GPT for the runtime and profile parts: 2 stages, m microbatches of per_mb sequences.
GPT = {
    "gpu": {"dim": 1024, "heads": 16, "seq": 512, "layers": 4, "per_mb": 4, "m": 8, "warmup": 2, "steps": 5},
    "cpu": {"dim": 16, "heads": 2, "seq": 8, "layers": 2, "per_mb": 2, "m": 2, "warmup": 0, "steps": 1},
}
RUNTIME_CASES = [("zb-h1", "autograd"), ("zb-h1", "kernels"), ("1f1b", "autograd"), ("1f1b", "kernels")]
SCHEDULES = ("zb-h1", "1f1b")
SPLITS = ("autograd", "kernels")
# transport name -> (process group backend, where tensors cross ranks: None = the compute device)
TRANSPORTS: dict[str, tuple[str, str | None]] = {
    "nccl": ("nccl", None), "gloo-cuda": ("gloo", None), "gloo-host": ("gloo", "cpu"), "gloo-cpu": ("gloo", "cpu"),
}


# ---------------------------------------------------------------------- model factories


def _gpt(num_stages: int, num_microbatches: int, cfg: dict[str, Any]) -> Any:
    from schedlang.runtime.models import tiny_gpt

    return tiny_gpt(num_stages, num_microbatches, batch=cfg["per_mb"] * num_microbatches, seq=cfg["seq"],
                    dim=cfg["dim"], heads=cfg["heads"], layers=cfg["layers"])


def gpu_gpt(num_stages: int, num_microbatches: int = 8) -> Any:
    """The GPU run's model, for ``schedlang profile --model gpu_check:gpu_gpt``."""
    return _gpt(num_stages, num_microbatches, GPT["gpu"])


def rehearsal_gpt(num_stages: int, num_microbatches: int = 2) -> Any:
    """The rehearsal's tiny model, for ``schedlang profile --model gpu_check:rehearsal_gpt``."""
    return _gpt(num_stages, num_microbatches, GPT["cpu"])


# ---------------------------------------------------------------------- a part's record


class PartLog:
    """What one part did: rows, checks, skips and notes, saved to ``OUT/PART.json`` at each change."""

    def __init__(self, name: str, out: Path, budget: float, mode: str) -> None:
        self.path = out / f"{name}.json"
        self.start = time.monotonic()
        self.budget = budget
        self.doc: dict[str, Any] = {"part": name, "mode": mode, "status": "running", "budget_s": budget,
                                    "seconds": 0.0, "rows": [], "checks": [], "skipped": [], "notes": [],
                                    "errors": []}
        self.save()

    def left(self) -> float:
        """Seconds left of this part's budget."""
        return self.budget - (time.monotonic() - self.start)

    def row(self, **fields: Any) -> None:
        self.doc["rows"].append(fields)
        self.save()

    def check(self, what: str, ok: bool, **detail: Any) -> None:
        self.doc["checks"].append({"what": what, "ok": bool(ok), **detail})
        self.save()

    def skip(self, what: str, code: str, why: str) -> None:
        """``code``: ``no-cuda`` (meaningless without a GPU), ``budget``, ``unavailable`` or ``failed``."""
        self.doc["skipped"].append({"what": what, "code": code, "why": why})
        self.save()

    def note(self, text: str) -> None:
        self.doc["notes"].append(text)
        self.save()

    def error(self, text: str) -> None:
        self.doc["errors"].append(text)
        self.save()

    def save(self) -> None:
        self.doc["seconds"] = round(time.monotonic() - self.start, 2)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.doc, indent=1, default=str) + "\n", encoding="utf-8")
        tmp.replace(self.path)

    def finish(self) -> None:
        """``failed``: a check failed or something raised; ``partial``: something was skipped for a
        reason other than the lack of CUDA (budget, a missing input); ``ok``: everything ran and passed."""
        failed = any(not c["ok"] for c in self.doc["checks"]) or self.doc["errors"]
        partial = any(s["code"] != "no-cuda" for s in self.doc["skipped"])
        self.doc["status"] = "failed" if failed else "partial" if partial else "ok"
        self.save()


def _rel_ok(err: float, ref_max: float, dtype: str) -> bool:
    return math.isfinite(err) and err <= TOL[dtype] * max(1.0, ref_max)


def _dtype_name(dtype: Any) -> str:
    return str(dtype).removeprefix("torch.")


# ---------------------------------------------------------------------- part: kernels


def _load_benchmark(name: str) -> Any:
    """Import ``benchmarks/NAME.py`` under a private module name (``kernels`` is taken)."""
    spec = importlib.util.spec_from_file_location(f"_bench_{name}", HERE / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _time_cpu(fn: Callable[[], Any], repeats: int, warmup: int = 1) -> float:
    """Median wall-clock ms of ``fn`` (the rehearsal's stand-in for CUDA-event timing)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(1e3 * (time.perf_counter() - t0))
    return statistics.median(times)


def _timer(bench: Any, cuda: bool, log: PartLog) -> Callable[[Callable[[], Any], int], float]:
    if cuda:
        log.doc["timer"] = "CUDA events, median after 3 warm-up runs"
        return bench._time_cuda  # type: ignore[no-any-return]
    log.doc["timer"] = "CPU wall clock of interpreted kernels: runs the code, says nothing about speed"
    return _time_cpu


def _cuda_setup(log: PartLog) -> bool:
    import torch

    if not torch.cuda.is_available():
        return False
    torch.backends.cuda.matmul.allow_tf32 = False  # the fp32 baselines stay IEEE, as the kernels
    torch.backends.cudnn.allow_tf32 = False
    log.doc["device"] = torch.cuda.get_device_name()
    return True


def part_kernels(log: PartLog, mode: str) -> None:
    """Linear F/B/W: correctness on odd and large shapes, speed against cuBLAS (GPU)."""
    import torch
    from schedlang.kernels._util import interpreted

    bench = _load_benchmark("kernels")
    cuda = _cuda_setup(log)
    device = "cuda" if cuda else "cpu"
    log.doc["triton"] = "interpreted (TRITON_INTERPRET=1)" if interpreted() else "compiled"
    dtypes = [torch.float32, torch.bfloat16]

    def correctness(m: int, n: int, k: int, dtype: Any, cases: dict[str, Any]) -> None:
        for op, (_, _, error) in cases.items():
            err, ref_max = error()
            name = _dtype_name(dtype)
            log.check(f"linear {op} {m}x{n}x{k} {name}", _rel_ok(err, ref_max, name), op=op, m=m, n=n, k=k,
                      dtype=name, max_abs_err=err, ref_abs_max=ref_max, tol=TOL[name])

    for m, n, k in LINEAR_CORRECT[mode]:
        for dtype in dtypes:
            if log.left() < 10:
                log.skip(f"linear correctness {m}x{n}x{k} {_dtype_name(dtype)}", "budget", "part budget spent")
                continue
            correctness(m, n, k, dtype, bench._cases(m, n, k, dtype, device))
    timer = _timer(bench, cuda, log)
    if not cuda:
        log.skip("linear F/B/W speed vs torch at M=N=K in 2048/4096/8192", "no-cuda",
                 "interpreted kernels: their speed says nothing about compiled ones (a tiny size runs the code)")
    for size in LINEAR_SPEED[mode]:
        for dtype in dtypes:
            name = _dtype_name(dtype)
            if log.left() < 20:
                log.skip(f"linear speed and correctness {size}^3 {name}", "budget", "part budget spent")
                continue
            cases = bench._cases(size, size, size, dtype, device)
            correctness(size, size, size, dtype, cases)
            for op, (tri, ref, _) in cases.items():
                t_tri, t_ref = timer(tri, REPEATS[mode]), timer(ref, REPEATS[mode])
                flops = 2.0 * size**3
                log.row(kind="speed", op=op, m=size, n=size, k=size, dtype=name, triton_ms=t_tri, torch_ms=t_ref,
                        triton_tflops=flops / t_tri / 1e9, torch_tflops=flops / t_ref / 1e9,
                        speed_vs_torch=t_ref / t_tri)
            del cases
            if cuda:
                torch.cuda.empty_cache()


# ---------------------------------------------------------------------- part: norms


def _norm_ops(kind: str, x: Any, w: Any, b: Any, dy: Any) -> dict[str, tuple[Callable[[], Any], Callable[[], Any]]]:
    """Per op: (triton call, torch reference call) returning comparable tensors (tuples)."""
    from schedlang.kernels import norms as nm

    if kind == "layernorm":
        _, mean, rstd = nm.layernorm_forward_ref(x, w, b)
        return {
            "F": (lambda: nm.layernorm_forward(x, w, b), lambda: nm.layernorm_forward_ref(x, w, b)),
            "B": (lambda: (nm.layernorm_backward_input(x, dy, w, mean, rstd),),
                  lambda: (nm.layernorm_backward_input_ref(x, dy, w, mean, rstd),)),
            "W": (lambda: nm.layernorm_backward_weight(x, dy, mean, rstd, with_bias=True),
                  lambda: nm.layernorm_backward_weight_ref(x, dy, mean, rstd, with_bias=True)),
        }
    _, rstd = nm.rmsnorm_forward_ref(x, w)
    return {
        "F": (lambda: nm.rmsnorm_forward(x, w), lambda: nm.rmsnorm_forward_ref(x, w)),
        "B": (lambda: (nm.rmsnorm_backward_input(x, dy, w, rstd),),
              lambda: (nm.rmsnorm_backward_input_ref(x, dy, w, rstd),)),
        "W": (lambda: (nm.rmsnorm_backward_weight(x, dy, rstd),),
              lambda: (nm.rmsnorm_backward_weight_ref(x, dy, rstd),)),
    }


def _norm_inputs(rows: int, d: int, dtype: Any, device: str) -> tuple[Any, Any, Any, Any]:
    import torch

    g = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(rows, d, device=device, generator=g).to(dtype)
    w = (1 + 0.1 * torch.randn(d, device=device, generator=g)).to(dtype)
    b = (0.1 * torch.randn(d, device=device, generator=g)).to(dtype)
    dy = torch.randn(rows, d, device=device, generator=g).to(dtype)
    return x, w, b, dy


def _max_err(got: tuple[Any, ...], want: tuple[Any, ...]) -> tuple[float, float]:
    err = ref = 0.0
    for a, r in zip(got, want, strict=True):
        if r is None:
            continue
        err = max(err, float((a.float() - r.float()).abs().max()))
        ref = max(ref, float(r.float().abs().max()))
    return err, ref


def _torch_norm(kind: str, x: Any, w: Any, b: Any) -> Any:
    import torch.nn.functional as fn

    if kind == "layernorm":
        return fn.layer_norm(x, (x.shape[-1],), w, b)
    return fn.rms_norm(x, (x.shape[-1],), w, 1e-6)


def _norm_speed(log: PartLog, kind: str, rows: int, d: int, dtype: Any, timer: Any, mode: str) -> None:
    import torch

    name = _dtype_name(dtype)
    x, w, b, dy = _norm_inputs(rows, d, dtype, "cuda" if mode == "gpu" else "cpu")
    ops = _norm_ops(kind, x, w, b, dy)
    baseline = {"F": lambda: _torch_norm(kind, x, w, b), "B": ops["B"][1], "W": ops["W"][1]}
    xg, wg, bg = (t.detach().requires_grad_() for t in (x, w, b))
    yg = _torch_norm(kind, xg, wg, bg)
    inputs = (xg, wg, bg) if kind == "layernorm" else (xg, wg)

    def torch_backward() -> Any:
        return torch.autograd.grad(yg, inputs, dy, retain_graph=True)

    def triton_bw() -> Any:
        ops["B"][0]()
        return ops["W"][0]()

    timed = {op: (ops[op][0], baseline[op]) for op in ("F", "B", "W")}
    timed["B+W"] = (triton_bw, torch_backward)
    against = {"F": f"torch.nn.functional.{'layer_norm' if kind == 'layernorm' else 'rms_norm'}",
               "B": "torch reference", "W": "torch reference", "B+W": "torch autograd backward"}
    for op, (tri, ref) in timed.items():
        t_tri, t_ref = timer(tri, REPEATS[mode]), timer(ref, REPEATS[mode])
        log.row(kind="speed", norm=kind, op=op, rows=rows, d=d, dtype=name, triton_ms=t_tri, torch_ms=t_ref,
                against=against[op], speed_vs_torch=t_ref / t_tri)


def part_norms(log: PartLog, mode: str) -> None:
    """LayerNorm / RMSNorm F, B, W: correctness on odd and large shapes, speed (GPU)."""
    import torch
    from schedlang.kernels._util import interpreted

    bench = _load_benchmark("kernels")
    cuda = _cuda_setup(log)
    device = "cuda" if cuda else "cpu"
    log.doc["triton"] = "interpreted (TRITON_INTERPRET=1)" if interpreted() else "compiled"
    dtypes = [torch.float32, torch.bfloat16]
    for kind in ("layernorm", "rmsnorm"):
        for rows, d in NORM_CORRECT[mode]:
            for dtype in dtypes:
                name = _dtype_name(dtype)
                if log.left() < 5:
                    log.skip(f"{kind} correctness {rows}x{d} {name}", "budget", "part budget spent")
                    continue
                for op, (tri, ref) in _norm_ops(kind, *_norm_inputs(rows, d, dtype, device)).items():
                    err, ref_max = _max_err(tri(), ref())
                    log.check(f"{kind} {op} {rows}x{d} {name}", _rel_ok(err, ref_max, name), norm=kind, op=op,
                              rows=rows, d=d, dtype=name, max_abs_err=err, ref_abs_max=ref_max, tol=TOL[name])
    timer = _timer(bench, cuda, log)
    if not cuda:
        log.skip("norm F/B/W speed vs torch at 8192 rows, D in 2048/4096/8192", "no-cuda",
                 "interpreted kernels: their speed says nothing about compiled ones (a tiny size runs the code)")
    for kind in ("layernorm", "rmsnorm"):
        for rows, d in NORM_SPEED[mode]:
            for dtype in dtypes:
                if log.left() < 8:
                    log.skip(f"{kind} speed {rows}x{d} {_dtype_name(dtype)}", "budget", "part budget spent")
                    continue
                _norm_speed(log, kind, rows, d, dtype, timer, mode)


# ---------------------------------------------------------------------- part: runtime


def _probe_worker(rank: int, world: int, device_kind: str) -> dict[str, Any]:
    """Send a known tensor from rank 0 to rank 1 on ``device_kind``; rank 1 checks it."""
    import torch
    import torch.distributed as dist

    device = torch.device("cuda", 0) if device_kind == "cuda" else torch.device("cpu")
    want = torch.arange(4099, dtype=torch.float32, device=device) * 0.5 + 1
    if rank == 0:
        dist.send(want, 1)
        return {"ok": True}
    got = torch.zeros_like(want)
    dist.recv(got, 0)
    return {"ok": bool(torch.equal(got.cpu(), want.cpu()))}


def _probe(transport: str, device_kind: str) -> tuple[bool, str]:
    """Can two processes move a tensor with ``transport``? (ok, what happened)."""
    from schedlang.runtime.launch import spawn

    backend, _ = TRANSPORTS[transport]
    try:
        results = spawn(_probe_worker, 2, (device_kind,), backend=backend, timeout=15, join_timeout=30, check=False)
    except Exception as exc:
        return False, f"{type(exc).__name__}: {exc}"
    bad = [r for r in results if r.exitcode != 0]
    if bad:
        r = bad[0]
        lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
        return False, f"rank {r.rank} exit {r.exitcode}: {r.error or (lines[-1] if lines else 'no message')}"
    if not results[1].value["ok"]:
        return False, "the received tensor differs from the sent one"
    return True, "ok"


class _GradRecorder:
    """An SGD optimizer that keeps a copy of the gradients it sees at its first step."""

    def __init__(self, params: list[Any], lr: float = 1e-3) -> None:
        import torch

        self.params = params
        self.inner = torch.optim.SGD(params, lr=lr)
        self.first: list[Any] | None = None

    def step(self) -> None:
        if self.first is None:
            self.first = [p.grad.detach().cpu().clone() if p.grad is not None else None for p in self.params]
        self.inner.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.inner.zero_grad(set_to_none=set_to_none)


def _reference_grads(cfg: dict[str, Any], device: Any) -> tuple[dict[tuple[int, str], Any], float]:
    """One process, the whole model, plain autograd: gradients of the mean microbatch loss at step 0,
    and that loss."""
    spec = _gpt(2, cfg["m"], cfg)
    stages = [s.to(device) for s in spec.stages]
    x, y = spec.batch(0)
    total = 0.0
    for xc, yc in zip(x.chunk(cfg["m"]), y.chunk(cfg["m"]), strict=True):
        out = xc.to(device)
        for s in stages:
            out = s(out)
        loss = spec.loss_fn(out, yc.to(device)) / cfg["m"]
        loss.backward()
        total += float(loss)
    grads = {(i, n): p.grad.detach().cpu() for i, s in enumerate(stages) for n, p in s.named_parameters()}
    return grads, total


def _barrier_time(fn: Callable[[], Any], cuda: bool) -> float:
    import torch
    import torch.distributed as dist

    if cuda:
        torch.cuda.synchronize()
    dist.barrier()
    t0 = time.perf_counter()
    fn()
    if cuda:
        torch.cuda.synchronize()
    dist.barrier()
    return time.perf_counter() - t0


def _runtime_job(rank: int, job: dict[str, Any], opts: dict[str, Any], ref: dict[tuple[int, str], Any],
                 ref_loss: float) -> dict[str, Any]:
    import torch
    from schedlang.runtime.executor import PipelineRunner
    from schedlang.runtime.worker import default_device, prepare_stages

    cfg, cuda, streams = opts["cfg"], opts["cuda"], job["streams"]
    device = default_device()
    spec = _gpt(2, cfg["m"], cfg)
    mods = prepare_stages({s: copy.deepcopy(spec.stages[streams.part(s)]).to(device)
                           for s in streams.stream(rank).stages}, job["split"])
    names = {id(p): (s, n) for s, mod in mods.items() for n, p in mod.named_parameters()}
    bad: list[str] = []
    recorders: list[_GradRecorder] = []

    def optimizer(params: list[Any]) -> Any:
        recorders.append(_GradRecorder(params))
        return recorders[-1]

    runner = PipelineRunner(streams, rank, mods, spec.loss_fn, optimizer, split_backward=job["split"],
                            device=device, timeout=120, fault_action="raise", prepost=4,
                            comm_device=opts["comm_device"])
    times: list[float] = []
    losses: list[Any] = []
    base = peak = None
    for step in range(1 + cfg["warmup"] + cfg["steps"]):
        x, y = spec.batch(step)
        if cuda and step == 1 + cfg["warmup"]:
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
        t = _barrier_time(lambda x=x, y=y: losses.append(runner.step(x if runner.holds_input else None,
                                                                     y if runner.holds_loss else None)), cuda)
        if step > cfg["warmup"]:
            times.append(t)
    if cuda:
        peak = torch.cuda.max_memory_allocated()
    runner.close()
    loss = None if losses[0] is None else float(losses[0])
    if loss is not None and not abs(loss - ref_loss) <= GRAD_RTOL * abs(ref_loss):
        bad.append(f"step 0 loss {loss!r} differs from one process's {ref_loss!r}")
    rec = recorders[0]
    assert rec.first is not None
    diff = rel = 0.0
    for p, g in zip(rec.params, rec.first, strict=True):
        want = ref[names[id(p)]].double()
        got = g.double() if g is not None else torch.zeros_like(want)  # a missing gradient counts as 0
        err, scale = float((got - want).abs().max()), float(want.abs().max())
        diff, rel = max(diff, err), max(rel, err / scale if scale else (0.0 if err == 0 else math.inf))
        if not err <= GRAD_RTOL * scale + GRAD_ATOL:
            bad.append(f"stage {names[id(p)][0]} {names[id(p)][1]}: max|diff| {err:.3g}, max|grad| {scale:.3g}")
    return {"schedule": job["schedule"], "split": job["split"], "rank": rank, "grads_ok": not bad,
            "grad_max_abs_diff": diff, "grad_max_rel_diff": rel, "grad_mismatches": bad[:5],
            "loss": loss, "ref_loss": ref_loss,
            "params": len(rec.params), "step_s": times,
            "peak_bytes": None if peak is None else peak - (base or 0), "peak_total_bytes": peak,
            "peak_live_buffers": runner.peak_live}


def _runtime_worker(rank: int, world: int, jobs: list[dict[str, Any]], opts: dict[str, Any]) -> list[dict[str, Any]]:
    """Run every job that fits the deadline; append each result to OUT/runtime-rank{R}.jsonl."""
    import torch
    import torch.distributed as dist

    if opts["cuda"]:
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    from schedlang.runtime.worker import default_device

    ref, ref_loss = _reference_grads(opts["cfg"], default_device())
    path = Path(opts["out"]) / f"runtime-rank{rank}.jsonl"
    done = []
    for job in jobs:
        go = [time.time() < opts["deadline"]]
        dist.broadcast_object_list(go, src=0)  # both ranks take the same decision
        if not go[0]:
            break
        try:
            res = _runtime_job(rank, job, opts, ref, ref_loss)
        except Exception as exc:
            res = {"schedule": job["schedule"], "split": job["split"], "rank": rank,
                   "error": f"{type(exc).__name__}: {exc}"}
            with path.open("a", encoding="utf-8") as fh:
                fh.write(json.dumps(res) + "\n")
            raise
        with path.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(res) + "\n")
        done.append(res)
        if opts["cuda"]:
            torch.cuda.empty_cache()
    return done


def _choose_transport(log: PartLog, cuda: bool) -> str:
    if not cuda:
        log.skip("transport probes nccl and gloo-cuda", "no-cuda", "no CUDA tensors to move")
        ok, what = _probe("gloo-cpu", "cpu")
        log.row(kind="probe", transport="gloo-cpu", ok=ok, detail=what)
        if not ok:
            raise RuntimeError(f"gloo between two CPU processes failed: {what}")
        return "gloo-cpu"
    for transport in ("nccl", "gloo-cuda"):
        ok, what = _probe(transport, "cuda")
        log.row(kind="probe", transport=transport, ok=ok, detail=what)
        if ok:
            return transport
    log.note("neither NCCL nor gloo moved CUDA tensors between two processes on one GPU; "
             "activations and gradients cross through host memory (gloo-host)")
    return "gloo-host"


def part_runtime(log: PartLog, mode: str) -> None:
    """The bundled GPT on 2 processes: gradients against one process, step time and memory."""
    from schedlang.runtime.launch import spawn

    from schedlang import api
    from schedlang.codegen import codegen

    cuda = _cuda_setup(log)
    cfg = GPT[mode]
    log.doc["model"] = {k: cfg[k] for k in ("dim", "heads", "seq", "layers", "per_mb", "m")}
    transport = _choose_transport(log, cuda)
    backend, comm = TRANSPORTS[transport]
    log.doc["transport"] = transport
    if not cuda:
        log.skip("CUDA peak memory per rank", "no-cuda", "no CUDA memory counter; peak_live_buffers is given")
        log.note("CPU: step times of a tiny model are measured but say nothing about a GPU")
    jobs = [{"schedule": s, "split": sp, "streams": codegen(api.compile(f"std:{s}", {"p": 2, "m": cfg["m"]}))}
            for s, sp in RUNTIME_CASES]
    out = Path(log.path).parent
    for r in range(2):
        (out / f"runtime-rank{r}.jsonl").unlink(missing_ok=True)
    opts = {"cfg": cfg, "cuda": cuda, "comm_device": comm, "out": str(out),
            "deadline": time.time() + log.left() - (40 if cuda else 20)}
    results = spawn(_runtime_worker, 2, (jobs, opts), backend=backend, timeout=120,
                    join_timeout=max(30.0, log.left() - 5), check=False)
    for r in results:
        if r.exitcode != 0:
            lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
            log.error(f"rank {r.rank} exit {r.exitcode}: {r.error or (lines[-1] if lines else '')}")
    _runtime_rows(log, out, transport, cuda)


def _runtime_rows(log: PartLog, out: Path, transport: str, cuda: bool) -> None:
    by_case: dict[tuple[str, str], dict[int, dict[str, Any]]] = {}
    for r in range(2):
        path = out / f"runtime-rank{r}.jsonl"
        if path.exists():
            for line in path.read_text(encoding="utf-8").splitlines():
                res = json.loads(line)
                by_case.setdefault((res["schedule"], res["split"]), {})[res["rank"]] = res
    for sched, split in RUNTIME_CASES:
        ranks = by_case.get((sched, split), {})
        if len(ranks) < 2 or any("error" in v for v in ranks.values()):
            why = "; ".join(v["error"] for v in ranks.values() if "error" in v) or "did not run (deadline or crash)"
            log.skip(f"runtime {sched} {split}", "failed" if ranks else "budget", why)
            continue
        r0, r1 = ranks[0], ranks[1]
        ok = r0["grads_ok"] and r1["grads_ok"]
        diff = max(r0["grad_max_abs_diff"], r1["grad_max_abs_diff"])
        rel = max(r0["grad_max_rel_diff"], r1["grad_max_rel_diff"])
        loss = next((v["loss"] for v in (r0, r1) if v["loss"] is not None), None)
        log.check(f"runtime {sched} {split}: gradients and loss == one process", ok and loss is not None,
                  loss=loss, ref_loss=r0["ref_loss"], schedule=sched, split=split,
                  grad_max_abs_diff=diff, grad_max_rel_diff=rel, rtol=GRAD_RTOL, atol=GRAD_ATOL,
                  params=r0["params"] + r1["params"], mismatches=r0["grad_mismatches"] + r1["grad_mismatches"])
        steps = [max(a, b) for a, b in zip(r0["step_s"], r1["step_s"], strict=True)]
        log.row(kind="run", schedule=sched, split=split, transport=transport, grads_ok=ok, grad_max_abs_diff=diff,
                grad_max_rel_diff=rel, loss=loss, ref_loss=r0["ref_loss"],
                step_ms=1e3 * statistics.median(steps), all_step_ms=[1e3 * s for s in steps],
                peak_mib=[None if v["peak_bytes"] is None else v["peak_bytes"] / 2**20 for v in (r0, r1)],
                peak_total_mib=[None if v["peak_total_bytes"] is None else v["peak_total_bytes"] / 2**20
                                for v in (r0, r1)],
                peak_live_buffers=[r0["peak_live_buffers"], r1["peak_live_buffers"]], cuda=cuda)


# ---------------------------------------------------------------------- part: profile


def _schedlang(log: PartLog, args: list[str], what: str) -> subprocess.CompletedProcess[str] | None:
    """``python -m schedlang ARGS`` within the part's budget (this folder importable for --model);
    None, with the reason recorded, when it failed or ran out of time."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(HERE), *filter(None, [env.get("PYTHONPATH")])])
    try:
        proc = subprocess.run([sys.executable, "-m", "schedlang", *args], capture_output=True, text=True,
                              timeout=max(log.left() - 3, 1.0), env=env)
    except subprocess.TimeoutExpired:
        log.skip(what, "budget", "part budget spent while it ran")
        return None
    if proc.returncode != 0:
        log.error(f"{what}: exit {proc.returncode}: {proc.stderr[-2000:]}")
        return None
    return proc


def part_profile(log: PartLog, mode: str) -> None:
    """``schedlang profile`` per split, ``schedlang simulate`` per schedule, against the runtime part."""
    from schedlang import api

    cuda = _cuda_setup(log)
    cfg = GPT[mode]
    out = Path(log.path).parent
    model = "gpu_check:gpu_gpt" if mode == "gpu" else "gpu_check:rehearsal_gpt"
    shape = ["--set", "p=2", "--set", f"m={cfg['m']}"]
    measured = {}
    runtime = out / "runtime.json"
    if runtime.exists():
        for row in json.loads(runtime.read_text(encoding="utf-8"))["rows"]:
            if row.get("kind") == "run":
                measured[(row["schedule"], row["split"])] = row["step_ms"]
    log.note("stage 0 has no input gradient: with the autograd split its B does nothing and its W is the "
             "whole backward; with the kernels split its B includes the embedding's weight gradient")
    if not cuda:
        log.note("CPU: the figures are those of a tiny model under the Triton interpreter; only the "
                 "code path is rehearsed, the prediction means nothing")
    for split in SPLITS:
        costs = out / f"costs-{split}.txt"
        if log.left() < 15:
            log.skip(f"profile {split}", "budget", "part budget spent")
            continue
        if _schedlang(log, ["profile", "std:zb-h1", *shape, "--model", model, "--split-backward", split,
                            "--repeats", "5" if cuda else "1", "--warmup", "2" if cuda else "1", "-o", str(costs)],
                      f"schedlang profile --split-backward {split}") is None:
            continue
        params = {name: value for name, value, _ in api.read_params_file(str(costs))}
        finite = all(math.isfinite(v) and v >= 0 for name in ("tf", "tb", "tw", "mem_f", "mem_w")
                     for v in params[name])  # type: ignore[union-attr]
        log.check(f"profile {split}: figures for both stages, finite and >= 0", finite and len(params["tf"]) == 2,
                  split=split, params=params)
        for sched in SCHEDULES:
            sim = _schedlang(log, ["simulate", f"std:{sched}", *shape, "--params", str(costs), "--json"],
                             f"schedlang simulate std:{sched} --params {costs.name}")
            if sim is None:
                continue
            doc = json.loads(sim.stdout)
            predicted = float(doc["makespan"])
            shared = sum(float(r["busy"]) for r in doc["ranks"])
            got = measured.get((sched, split))
            log.check(f"simulate {sched} with the {split} profile: a finite positive step time",
                      math.isfinite(predicted) and predicted > 0, schedule=sched, split=split)
            if got is None:
                log.skip(f"measured step time {sched} {split}", "unavailable",
                         "the runtime part did not measure this case")
            log.row(kind="prediction", schedule=sched, split=split, predicted_ms=predicted,
                    predicted_shared_ms=max(predicted, shared), measured_ms=got,
                    measured_over_predicted=None if got is None else got / predicted,
                    bubble_rate=doc["bubble_rate"])


# ---------------------------------------------------------------------- driver


PART_FUNCS: dict[str, Callable[[PartLog, str], None]] = {
    "kernels": part_kernels, "norms": part_norms, "runtime": part_runtime, "profile": part_profile,
}


def _inject_fault(name: str, log: PartLog) -> None:
    """``GPU_CHECK_FAULT=NAME:crash`` or ``NAME:hang``: the driver's tests make a part fail this way."""
    fault = os.environ.get("GPU_CHECK_FAULT", "")
    if fault == f"{name}:crash":
        os._exit(3)
    if fault == f"{name}:hang":  # with a child of its own, which the driver must end too
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
        log.note(f"fault injection: hanging, child pid {child.pid}")
        time.sleep(600)


def _run_part_here(name: str, out: Path, budget: float, mode: str) -> int:
    log = PartLog(name, out, budget, mode)
    _inject_fault(name, log)
    try:
        PART_FUNCS[name](log, mode)
    except Exception:
        log.error(traceback.format_exc())
    log.finish()
    return 0 if log.doc["status"] == "ok" else 1


def _run_part(name: str, out: Path, budget: float, mode: str) -> dict[str, Any]:
    """Run one part in its own process group; kill the group when the budget is spent."""
    env = dict(os.environ)
    if mode == "cpu":
        env.update(TRITON_INTERPRET="1", CUDA_VISIBLE_DEVICES="")
    else:
        env.pop("TRITON_INTERPRET", None)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--part", name, "--out", str(out), "--budget", str(budget)]
    if mode == "cpu":
        cmd.append("--cpu-rehearsal")
    start = time.monotonic()
    timed_out = False
    with (out / f"{name}.log").open("w", encoding="utf-8") as logf:
        proc = subprocess.Popen(cmd, env=env, stdout=logf, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            rc = proc.wait(timeout=budget + 15)  # the part watches its own budget; this is the backstop
        except subprocess.TimeoutExpired:
            timed_out = True
            os.killpg(proc.pid, signal.SIGKILL)
            rc = proc.wait()
    path = out / f"{name}.json"
    doc: dict[str, Any] = (json.loads(path.read_text(encoding="utf-8")) if path.exists()
                           else {"part": name, "status": "running", "rows": [], "checks": [], "skipped": [],
                                 "notes": [], "errors": []})
    doc["wall_s"] = round(time.monotonic() - start, 2)
    doc["returncode"] = rc
    if doc["status"] == "running":
        doc["status"] = "timeout" if timed_out else "crashed"
        tail = (out / f"{name}.log").read_text(encoding="utf-8", errors="replace")[-3000:]
        doc["errors"].append(f"the part process ended without finishing (exit {rc}); log tail:\n{tail}")
    return doc


def _environment(mode: str) -> dict[str, Any]:
    from importlib.metadata import version

    env: dict[str, Any] = {"python": platform.python_version(), "torch": version("torch"),
                           "triton": version("triton"), "host": platform.node()}
    if mode == "gpu":
        import torch  # the driver touches CUDA only for the device's name

        env["device"] = torch.cuda.get_device_name(0)
        env["cuda"] = torch.version.cuda
    else:  # the rehearsal's driver does not import torch: one start-up less
        env["device"] = "CPU (rehearsal: Triton interpreter, gloo)"
    return env


def _fmt(v: Any, spec: str) -> str:
    """``format(v, spec)``, or a dash as wide as the spec asks for when ``v`` is None."""
    return format("-", ">" + spec.split(".")[0]) if v is None else format(v, spec)


def table(report: dict[str, Any]) -> str:
    """The short text summary of a report."""
    parts = report["parts"]
    lines = [f"gpu_check [{report['mode']}] on {report['environment']['device']}: {report['verdict']}",
             f"{'part':<9}{'status':<9}{'seconds':>8}{'checks':>8}{'failed':>8}{'skipped':>9}  skipped codes"]
    for name, p in parts.items():
        failed = sum(not c["ok"] for c in p["checks"])
        codes = ",".join(sorted({s["code"] for s in p["skipped"]})) or "-"
        lines.append(f"{name:<9}{p['status']:<9}{p.get('wall_s', 0):>8.1f}{len(p['checks']):>8}{failed:>8}"
                     f"{len(p['skipped']):>9}  {codes}")
    for name, p in parts.items():
        for c in p["checks"]:
            if not c["ok"]:
                lines.append(f"  FAILED {name}: {c['what']}")
        for e in p["errors"]:
            text = e.strip().splitlines() or [""]
            lines.append(f"  ERROR {name}: {text[0]}" + (f" ... {text[-1]}" if len(text) > 1 else ""))
    speed = [r for n in ("kernels", "norms") for r in parts.get(n, {}).get("rows", []) if r.get("kind") == "speed"]
    if speed:
        lines.append("speed = torch ms / triton ms (above 1: the Triton kernel is faster)" if report["mode"] == "gpu"
                     else "speed rows (CPU wall clock of interpreted kernels: the code ran, the figures mean nothing)")
        for r in speed:
            what = f"linear {r['op']} {r['m']}^3" if "m" in r else f"{r['norm']} {r['op']} {r['rows']}x{r['d']}"
            lines.append(f"  {what:<28}{r['dtype']:<10}triton {r['triton_ms']:8.3f} ms  torch {r['torch_ms']:8.3f} ms"
                         f"  speed {r['speed_vs_torch']:5.2f}x")
    runs = [r for r in parts.get("runtime", {}).get("rows", []) if r.get("kind") == "run"]
    if runs:
        lines.append(f"runtime: 2 processes, transport {parts['runtime'].get('transport')}")
        lines.append(f"  {'schedule':<9}{'split':<10}{'grads':<7}{'max rel diff':>13}{'step ms':>10}"
                     f"{'peak MiB r0/r1':>18}")
        for r in runs:
            peak = "/".join(_fmt(v, ".0f") for v in r["peak_mib"])
            lines.append(f"  {r['schedule']:<9}{r['split']:<10}{'equal' if r['grads_ok'] else 'DIFFER':<7}"
                         f"{r['grad_max_rel_diff']:>13.1e}{r['step_ms']:>10.2f}{peak:>18}")
    preds = [r for r in parts.get("profile", {}).get("rows", []) if r.get("kind") == "prediction"]
    if preds:
        lines.append("profile -> simulate: predicted step (own device per rank / ranks sharing one device) vs measured")
        for r in preds:
            lines.append(f"  {r['schedule']:<9}{r['split']:<10}predicted {r['predicted_ms']:9.2f} / "
                         f"{r['predicted_shared_ms']:9.2f} ms  measured {_fmt(r['measured_ms'], '9.2f')} ms")
    return "\n".join(lines)


def _verdict(parts: dict[str, Any]) -> str:
    bad = [n for n, p in parts.items() if p["status"] != "ok"]
    return "all parts ran, every check passed" if not bad else "NOT OK: " + ", ".join(
        f"{n} {parts[n]['status']}" for n in bad)


def main(argv: list[str] | None = None) -> int:
    """Run the parts (or, with ``--part``, one part in this process), write and print the report."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True, help="directory for report.json and the parts' files")
    ap.add_argument("--cpu-rehearsal", action="store_true", help="run the same code paths on the CPU (tiny)")
    ap.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated subset of {','.join(PARTS)}")
    ap.add_argument("--budget-scale", type=float, default=1.0, help="multiply every part's time budget")
    ap.add_argument("--part", choices=PARTS, help=argparse.SUPPRESS)  # internal: run one part here
    ap.add_argument("--budget", type=float, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    mode = "cpu" if args.cpu_rehearsal else "gpu"
    args.out.mkdir(parents=True, exist_ok=True)
    if args.part:
        return _run_part_here(args.part, args.out, args.budget or BUDGETS[mode][args.part], mode)
    names = [n.strip() for n in args.parts.split(",") if n.strip()]
    unknown = [n for n in names if n not in PARTS]
    if unknown or not names:
        ap.error(f"--parts: unknown part(s) {unknown}; choose from {', '.join(PARTS)}")
    if mode == "gpu":
        import torch

        if not torch.cuda.is_available():
            print("gpu_check: no CUDA device here; run with --cpu-rehearsal", file=sys.stderr)
            return 2
    report: dict[str, Any] = {"check": "gpu_check", "mode": "gpu" if mode == "gpu" else "cpu-rehearsal",
                              "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                              "environment": _environment(mode), "budgets_s": {}, "parts": {}, "verdict": "running"}
    path = args.out / "report.json"
    for name in names:
        budget = BUDGETS[mode][name] * args.budget_scale
        report["budgets_s"][name] = budget
        print(f"gpu_check: {name} (budget {budget:.0f} s) ...", flush=True)
        report["parts"][name] = _run_part(name, args.out, budget, mode)
        report["verdict"] = _verdict(report["parts"])
        path.write_text(json.dumps(report, indent=1, default=str) + "\n", encoding="utf-8")
    text = table(report)
    print(text)
    (args.out / "report.txt").write_text(text + "\n", encoding="utf-8")
    print(f"wrote {path}")
    return 0 if all(p["status"] == "ok" for p in report["parts"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
