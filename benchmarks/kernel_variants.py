"""Where the split linear kernels lose to cuBLAS: F and W timed in variants, beside torch.

The GPU check's first run (one H100) found the W kernel (``dW += dY^T X``) at 0.22-0.39x of
cuBLAS in bf16 and the forward at 0.43-0.45x in fp32, while B ran at 0.75-0.84x. F reads the
weight transposed (``X @ W^T``: the weight's contiguous dimension is K), W reads ``dY``
transposed, and W with a bias summed ``dY``'s rows inside its K loop (now a kernel of its own).
Each variant isolates one of these, every copy it needs counted in its time:

- ``F``: as shipped (fp32 on a GPU copies ``W^T`` contiguous first, bf16 reads the view);
  ``F view``: the transposed weight read as a view; ``F copy``: the copy always made.
- ``W``: as shipped (with a bias: the matmul, then the column-sum kernel); ``W nobias``;
  ``W copy-dy nobias``: ``dY^T`` made contiguous first.
- ``B``: as shipped, for reference (both operands already in the kernel's preferred order).

Each is the median of CUDA-event timed runs after warm-up; ``speed`` is torch ms / variant ms
(above 1: faster than torch), the torch call being ``F.linear``, ``dy @ w`` and
``dw.add_(dy.T @ x)`` (plus ``db.add_(dy.sum(0))`` where the variant has a bias). Every variant's
result is checked against torch before it is timed. Needs CUDA; without it the same code runs
under ``TRITON_INTERPRET=1`` on one tiny shape (correctness only, no times). Writes
``benchmarks/results/kernel_variants.json`` (or ``--out``).

    python benchmarks/kernel_variants.py [--sizes 4096,8192] [--repeats 10] [--out PATH]
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

CUDA = torch.cuda.is_available()
if not CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")

from schedlang.kernels import matmul as mm  # noqa: E402

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "kernel_variants.json"


@functools.cache
def _load_kernels_benchmark() -> Any:
    """``benchmarks/kernels.py`` (its CUDA-event timer), loaded by path: this is a script folder."""
    spec = importlib.util.spec_from_file_location("kernels_benchmark", Path(__file__).resolve().parent / "kernels.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _time(fn: Callable[[], Any], repeats: int) -> float | None:
    """Median ms over CUDA-event timed runs after warm-up; without CUDA, one untimed run."""
    if CUDA:
        return float(_load_kernels_benchmark()._time_cuda(fn, repeats))
    fn()
    return None


def _variants(m: int, n: int, k: int, dtype: torch.dtype, device: str) -> list[tuple[str, Any, Any, Any]]:
    """(name, variant, torch call, check) for one shape and dtype; check returns (err, ref max)."""
    gen = torch.Generator(device=device).manual_seed(0)

    def rnd(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, device=device, generator=gen).to(dtype)

    x, w, b, dy = rnd(m, k), rnd(n, k), rnd(n), rnd(m, n)
    y = torch.empty(m, n, device=device, dtype=dtype)
    dw, db = torch.zeros(n, k, device=device), torch.zeros(n, device=device)
    dw_t, db_t = dw.clone(), db.clone()

    def f_view() -> torch.Tensor:
        mm._matmul(x, w.t(), y, bias=b)
        return y

    def f_copy() -> torch.Tensor:
        mm._matmul(x, w.t().contiguous(), y, bias=b)
        return y

    def w_copy() -> None:
        mm._matmul(dy.t().contiguous(), x, dw, accumulate=True)

    def w_torch(bias: bool) -> Callable[[], None]:
        def go() -> None:
            dw_t.add_(dy.t() @ x)
            if bias:
                db_t.add_(dy.sum(0))
        return go

    def err(got: torch.Tensor, want: torch.Tensor) -> tuple[float, float]:
        return float((got.float() - want.float()).abs().max()), float(want.float().abs().max())

    def w_check(fn: Callable[[], None], bias: bool) -> Callable[[], tuple[float, float]]:
        def check() -> tuple[float, float]:
            dw.zero_()
            db.zero_()
            fn()
            ref_w = dy.float().t() @ x.float()
            ew, mw = err(dw, ref_w)
            if bias:
                eb, mb = err(db, dy.float().sum(0))
                ew, mw = max(ew, eb), max(mw, mb)
            return ew, mw
        return check

    ref_f = x.float() @ w.float().t() + b.float()
    lin = torch.nn.functional.linear
    return [
        ("F", lambda: mm.linear_forward(x, w, b), lambda: lin(x, w, b),
         lambda: err(mm.linear_forward(x, w, b), ref_f)),
        ("F view", f_view, lambda: lin(x, w, b), lambda: err(f_view(), ref_f)),
        ("F copy", f_copy, lambda: lin(x, w, b), lambda: err(f_copy(), ref_f)),
        ("B", lambda: mm.linear_backward_input(dy, w), lambda: torch.matmul(dy, w),
         lambda: err(mm.linear_backward_input(dy, w), dy.float() @ w.float())),
        ("W", lambda: mm.linear_backward_weight(x, dy, dw, db), w_torch(True),
         w_check(lambda: mm.linear_backward_weight(x, dy, dw, db), True)),
        ("W nobias", lambda: mm.linear_backward_weight(x, dy, dw), w_torch(False),
         w_check(lambda: mm.linear_backward_weight(x, dy, dw), False)),
        ("W copy-dy nobias", w_copy, w_torch(False), w_check(w_copy, False)),
    ]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="4096,8192", help="M = N = K values, comma-separated (GPU only)")
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--out", default=str(DEFAULT_OUT))
    args = ap.parse_args(argv)
    if CUDA:
        torch.backends.cuda.matmul.allow_tf32 = False  # fp32 is IEEE on both sides
        sizes = [(s, s, s) for s in (int(v) for v in args.sizes.split(","))]
        device = "cuda"
    else:
        sizes, device = [(37, 48, 80)], "cpu"
    tol = {torch.float32: 1e-4, torch.bfloat16: 2e-2}
    rows = []
    for m, n, k in sizes:
        for dtype in (torch.float32, torch.bfloat16):
            for name, fn, ref, check in _variants(m, n, k, dtype, device):
                e, ref_max = check()
                ok = e <= tol[dtype] * max(1.0, ref_max)
                t_var, t_ref = _time(fn, args.repeats), _time(ref, args.repeats)
                rows.append({"variant": name, "m": m, "n": n, "k": k, "dtype": str(dtype).removeprefix("torch."),
                             "ok": ok, "max_abs_err": e, "ms": t_var, "torch_ms": t_ref,
                             "speed": (t_ref / t_var) if t_var and t_ref else None})
                r = rows[-1]
                speed = "" if r["speed"] is None else (f"{r['ms']:9.3f} ms  torch {r['torch_ms']:9.3f} ms  "
                                                       f"speed {r['speed']:5.2f}x")
                print(f"{name:17s} {m}x{n}x{k:<6d} {r['dtype']:9s} {'ok' if ok else 'WRONG':5s} "
                      f"err {e:.1e}  {speed}", flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    device_name = torch.cuda.get_device_name(0) if CUDA else "cpu (TRITON_INTERPRET=1)"
    out.write_text(json.dumps({"device": device_name, "torch": torch.__version__, "rows": rows}, indent=1) + "\n")
    print(f"wrote {out}")
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
