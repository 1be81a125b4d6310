"""Benchmark the split linear kernels (F, B, W) of ``schedlang.kernels.matmul`` against torch.

Ops, for ``x`` (M, K), ``w`` (N, K), ``dy`` (M, N):

- F: ``linear_forward(x, w, b)``            vs ``torch.nn.functional.linear``
- B: ``linear_backward_input(dy, w)``       vs ``torch.matmul(dy, w)``
- W: ``linear_backward_weight(x, dy, dw, db)`` accumulating into fp32 buffers
                                            vs ``dw.add_(dy.T @ x); db.add_(dy.sum(0))``

With CUDA: every shape and dtype is timed (median of CUDA-event timed runs after warm-up) and the
table shows ms, TFLOP/s and the Triton/torch time ratio, plus the max abs error against torch.
Without CUDA: the kernels run under ``TRITON_INTERPRET=1`` (set here before the kernel modules
are imported) on small shapes only, and the table reports correctness (max abs error) only: the
interpreter's speed says nothing about the kernels' speed, so no time is reported.

Writes the rows as JSON to ``benchmarks/results/kernels.json`` (or ``--out``).

Usage: ``python benchmarks/kernels.py [--quick] [--repeats N] [--out PATH]``
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

CUDA = torch.cuda.is_available()
if not CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")

import triton  # noqa: E402
from schedlang.kernels import matmul as mm  # noqa: E402
from schedlang.kernels._util import interpreted  # noqa: E402

# (M tokens, N out features, K in features): GPT-style layers at h=2304 (the 1.5B model of the
# Zero Bubble paper: s*b = 6144 tokens) and h=4096, plus square shapes.
GPU_SHAPES = [
    (2048, 2048, 2048),
    (4096, 4096, 4096),
    (6144, 6912, 2304),  # QKV projection, h=2304
    (6144, 9216, 2304),  # MLP up, h=2304
    (6144, 2304, 9216),  # MLP down, h=2304
    (3072, 16384, 4096),  # MLP up, h=4096
]
GPU_QUICK = GPU_SHAPES[:2]
CPU_SHAPES = [(37, 48, 80), (64, 64, 64), (100, 72, 130)]
DTYPES = [torch.float32, torch.bfloat16]
OPS = ("F", "B", "W")
DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "kernels.json"


def _time_cuda(fn: Callable[[], Any], repeats: int, warmup: int = 3) -> float:
    """Median milliseconds of ``fn`` over ``repeats`` CUDA-event timed runs."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def _cases(
    m: int, n: int, k: int, dtype: torch.dtype, device: str
) -> dict[str, tuple[Callable[[], Any], Callable[[], Any], Callable[[], tuple[float, float]]]]:
    """Per op: (Triton call, torch call, function returning (max abs error, max abs of torch)).

    The error compares each Triton kernel with its torch reference (``*_ref``); 16-bit outputs
    of F and B are rounded to 16 bits on both sides, so an error of one 16-bit ulp at the
    output's magnitude is expected there.
    """
    gen = torch.Generator(device=device).manual_seed(0)

    def rnd(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, device=device, generator=gen).to(dtype)

    x, w, b, dy = rnd(m, k), rnd(n, k), rnd(n), rnd(m, n)
    dw = torch.zeros(n, k, device=device)
    db = torch.zeros(n, device=device)
    dw_t, db_t = dw.clone(), db.clone()

    def w_triton() -> None:
        mm.linear_backward_weight(x, dy, dw, db)

    def w_torch() -> None:
        dw_t.add_(dy.t() @ x)
        db_t.add_(dy.sum(0))

    def err(a: torch.Tensor, ref: torch.Tensor) -> tuple[float, float]:
        return float((a.float() - ref.float()).abs().max()), float(ref.float().abs().max())

    def w_err() -> tuple[float, float]:
        got = mm.linear_backward_weight(x, dy, with_bias=True)
        want = mm.linear_backward_weight_ref(x, dy, with_bias=True)
        assert got[1] is not None and want[1] is not None
        (ew, mw), (eb, mb) = err(got[0], want[0]), err(got[1], want[1])
        return max(ew, eb), max(mw, mb)

    return {
        "F": (
            lambda: mm.linear_forward(x, w, b),
            lambda: torch.nn.functional.linear(x, w, b),
            lambda: err(mm.linear_forward(x, w, b), mm.linear_forward_ref(x, w, b)),
        ),
        "B": (
            lambda: mm.linear_backward_input(dy, w),
            lambda: torch.matmul(dy, w),
            lambda: err(mm.linear_backward_input(dy, w), mm.linear_backward_input_ref(dy, w)),
        ),
        "W": (w_triton, w_torch, w_err),
    }


def run(shapes: list[tuple[int, int, int]], repeats: int) -> list[dict[str, Any]]:
    """Benchmark every shape x dtype x op; return one row per combination."""
    device = "cuda" if CUDA else "cpu"
    rows = []
    for m, n, k in shapes:
        for dtype in DTYPES:
            for op, (tri, ref, error) in _cases(m, n, k, dtype, device).items():
                abs_err, ref_max = error()
                row: dict[str, Any] = {
                    "op": op,
                    "m": m,
                    "n": n,
                    "k": k,
                    "dtype": str(dtype).removeprefix("torch."),
                    "max_abs_err": abs_err,
                    "ref_abs_max": ref_max,
                    "rel_err": abs_err / ref_max if ref_max else 0.0,
                }
                if CUDA:
                    flops = 2.0 * m * n * k
                    t_tri, t_ref = _time_cuda(tri, repeats), _time_cuda(ref, repeats)
                    row.update(
                        triton_ms=t_tri,
                        torch_ms=t_ref,
                        triton_tflops=flops / t_tri / 1e9,
                        torch_tflops=flops / t_ref / 1e9,
                        speed_vs_torch=t_ref / t_tri,
                    )
                rows.append(row)
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    """Render rows as a fixed-width text table."""
    head = f"{'op':<3}{'M':>7}{'N':>7}{'K':>7}  {'dtype':<9}{'max_abs_err':>12}{'|torch|max':>11}{'rel_err':>10}"
    if CUDA:
        head += f"{'triton ms':>11}{'torch ms':>10}{'tri TF/s':>10}{'torch TF/s':>11}{'speed':>7}"
    lines = [head, "-" * len(head)]
    for r in rows:
        line = f"{r['op']:<3}{r['m']:>7}{r['n']:>7}{r['k']:>7}  {r['dtype']:<9}"
        line += f"{r['max_abs_err']:>12.3e}{r['ref_abs_max']:>11.2f}{r['rel_err']:>10.1e}"
        if CUDA:
            line += f"{r['triton_ms']:>11.3f}{r['torch_ms']:>10.3f}"
            line += f"{r['triton_tflops']:>10.1f}{r['torch_tflops']:>11.1f}"
            line += f"{r['speed_vs_torch']:>6.2f}x"
        lines.append(line)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark, print the table, write the JSON file."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer shapes")
    parser.add_argument("--repeats", type=int, default=20, help="timed runs per case (GPU)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON output path")
    args = parser.parse_args(argv)

    if CUDA:
        torch.backends.cuda.matmul.allow_tf32 = False  # fp32 torch baseline stays IEEE
        shapes = GPU_QUICK if args.quick else GPU_SHAPES
        mode = f"compiled on {torch.cuda.get_device_name()}"
        note = "times are medians of CUDA-event timed runs; speed = torch ms / triton ms"
    else:
        shapes = CPU_SHAPES[:1] if args.quick else CPU_SHAPES
        mode = "TRITON_INTERPRET=1 on CPU" if interpreted() else "CPU without interpreter"
        note = (
            "no CUDA device: kernels ran under the Triton interpreter; correctness only, "
            "speed is not meaningful here and is not reported"
        )
        if not interpreted():
            raise SystemExit("no CUDA and TRITON_INTERPRET disabled: the kernels cannot run")
    rows = run(shapes, args.repeats)
    print(f"schedlang.kernels linear F/B/W vs torch -- {mode}")
    print(f"note: {note}")
    print(table(rows))
    result = {
        "benchmark": "kernels",
        "mode": mode,
        "note": note,
        "torch": torch.__version__,
        "triton": triton.__version__,
        "python": platform.python_version(),
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
