"""Step time of schedlang's runtime against PyTorch's ``_PipelineScheduleRuntime``, same schedule.

For each process count (2 and 4 CPU processes, gloo) and schedule, one spawned group trains the
same model (a stack of MLP blocks, one per stage, float32), on the same data, with the same
schedule, in both runtimes:

- schedlang: ``codegen`` streams run by :class:`schedlang.runtime.executor.PipelineRunner`;
- PyTorch: the compute-only CSV from :mod:`schedlang.export` loaded by
  ``_PipelineScheduleRuntime._load_csv`` (PyTorch adds the sends, receives and gradient
  reductions itself).

Each runtime does ``--warmup`` steps, then ``--steps`` timed steps (barrier, step, optimizer
step, barrier; the time of rank 0). The two runtimes alternate step by step so machine noise
hits both alike. Reported: median step time of each and the ratio schedlang / PyTorch
(below 1: schedlang is faster), plus the loss difference after the last step (both train the
same initial weights on the same data, so it must be ~0). Writes benchmarks/results/runtime.json.

    python benchmarks/runtime.py [--dim 256] [--rows 32] [--steps 10] [--warmup 3]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

SCHEDULES = ("gpipe", "1f1b", "zb-h1", "zb-h2")


def _blocks(num_stages: int, dim: int) -> list[Any]:
    import torch

    torch.manual_seed(0)
    return [torch.nn.Sequential(torch.nn.Linear(dim, 4 * dim), torch.nn.GELU(), torch.nn.Linear(4 * dim, dim))
            for _ in range(num_stages)]


def _data(step: int, rows: int, dim: int) -> tuple[Any, Any]:
    import torch

    g = torch.Generator().manual_seed(1000 + step)
    return torch.randn(rows, dim, generator=g), torch.randn(rows, dim, generator=g)


def _timed(fn: Any) -> float:
    import torch.distributed as dist

    dist.barrier()
    t0 = time.perf_counter()
    fn()
    dist.barrier()
    return time.perf_counter() - t0


def _bench_job(rank: int, world: int, job: dict[str, Any], opts: dict[str, Any]) -> dict[str, Any]:
    import torch
    from schedlang.runtime.executor import PipelineRunner
    from torch.distributed.pipelining import PipelineStage
    from torch.distributed.pipelining.schedules import _PipelineScheduleRuntime

    mse = torch.nn.functional.mse_loss
    streams, m = job["streams"], job["m"]
    S = streams.num_stages
    base = _blocks(S, opts["dim"])
    mine = list(streams.stream(rank).stages)
    ours = {s: copy.deepcopy(base[s]) for s in mine}
    ours_pp = {s: copy.deepcopy(base[s]) for s in mine}
    theirs = {s: copy.deepcopy(base[s]) for s in mine}
    runner = PipelineRunner(streams, rank, ours, mse, lambda ps: torch.optim.SGD(ps, lr=0.01),
                            record=False, fault_action="raise")
    runner_pp = PipelineRunner(streams, rank, ours_pp, mse, lambda ps: torch.optim.SGD(ps, lr=0.01),
                               record=False, fault_action="raise", prepost=opts["prepost"])
    stages = [PipelineStage(theirs[s], s, S, torch.device("cpu")) for s in mine]
    sched = _PipelineScheduleRuntime(stages, n_microbatches=m, loss_fn=mse)
    sched._load_csv(job["csv"], format="compute_only")
    opt = torch.optim.SGD([p for s in mine for p in theirs[s].parameters()], lr=0.01)
    first, last = 0 in mine, S - 1 in mine
    times: dict[str, list[float]] = {"schedlang": [], "schedlang_prepost": [], "torch": []}
    losses: dict[str, Any] = {}

    def ours_step(x: Any, y: Any) -> None:
        losses["schedlang"] = runner.step(x, y)

    def ours_pp_step(x: Any, y: Any) -> None:
        losses["schedlang_prepost"] = runner_pp.step(x, y)

    def torch_step(x: Any, y: Any) -> None:
        got: list[Any] = []
        sched.step(*((x,) if first else ()), target=y if last else None, losses=got)
        if got:
            losses["torch"] = torch.stack(got).mean()
        opt.step()
        opt.zero_grad(set_to_none=True)

    order = [("schedlang", ours_step), ("schedlang_prepost", ours_pp_step), ("torch", torch_step)]
    for step in range(opts["warmup"] + opts["steps"]):
        x, y = _data(step, m * opts["rows"], opts["dim"])
        for name, fn in order[step % 3:] + order[:step % 3]:  # rotate: noise hits all alike
            t = _timed(lambda fn=fn, x=x, y=y: fn(x, y))
            if step >= opts["warmup"]:
                times[name].append(t)
    runner.close()
    runner_pp.close()
    diff = None
    if last:
        diff = max(float((losses[k] - losses["torch"]).abs()) for k in ("schedlang", "schedlang_prepost"))
    return {"schedule": job["schedule"], "p": world, "m": m, "times": times, "loss_diff": diff}


def _worker(rank: int, world: int, jobs: list[dict[str, Any]], opts: dict[str, Any]) -> list[dict[str, Any]]:
    import torch.distributed as dist

    out = []
    for job in jobs:
        out.append(_bench_job(rank, world, job, opts))
        dist.barrier()
    return out


def _jobs(p: int, m: int, tmp: str) -> list[dict[str, Any]]:
    from schedlang import api
    from schedlang.codegen import codegen
    from schedlang.export import emit_torch_csv

    jobs = []
    for name in SCHEDULES:
        prog = api.compile(f"std:{name}", {"p": p, "m": m})
        path = os.path.join(tmp, f"{name}-p{p}.csv")
        Path(path).write_text(emit_torch_csv(prog), encoding="utf-8")
        jobs.append({"schedule": name, "m": m, "streams": codegen(prog), "csv": path})
    return jobs


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--rows", type=int, default=32, help="rows per microbatch")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--procs", default="2,4")
    ap.add_argument("--prepost", type=int, default=4,
                    help="schedlang: post receives this many instructions early (PipelineRunner prepost)")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "runtime.json"))
    args = ap.parse_args(argv)
    from schedlang.runtime.launch import spawn

    opts = {"dim": args.dim, "rows": args.rows, "steps": args.steps, "warmup": args.warmup,
            "prepost": args.prepost}
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for p in (int(x) for x in args.procs.split(",")):
            results = spawn(_worker, p, (_jobs(p, 2 * p, tmp), opts), timeout=300, join_timeout=1800)
            for res in results[0].value:
                last_rank = next(r for r in results if r.value[0]["loss_diff"] is not None)
                diff = next(x["loss_diff"] for x in last_rank.value if x["schedule"] == res["schedule"])
                med = {k: statistics.median(v) for k, v in res["times"].items()}
                rows.append({"procs": p, "schedule": res["schedule"], "microbatches": res["m"],
                             "schedlang_ms": med["schedlang"] * 1e3,
                             "schedlang_prepost_ms": med["schedlang_prepost"] * 1e3,
                             "torch_ms": med["torch"] * 1e3,
                             "ratio": med["schedlang"] / med["torch"],
                             "ratio_prepost": med["schedlang_prepost"] / med["torch"], "loss_diff": diff,
                             "all_ms": {k: [t * 1e3 for t in v] for k, v in res["times"].items()}})
    print(f"model: {args.dim}-wide MLP blocks (one per stage), {args.rows} rows per microbatch, float32, "
          f"gloo on CPU; median of {args.steps} steps after {args.warmup} warm-up; "
          f"'+prepost' posts receives {args.prepost} instructions early; ratio = schedlang / torch")
    print(f"{'procs':>5} {'schedule':>9} {'m':>3} {'schedlang ms':>13} {'+prepost ms':>12} {'torch ms':>10} "
          f"{'ratio':>7} {'ratio pp':>9} {'loss diff':>10}")
    for r in rows:
        print(f"{r['procs']:>5} {r['schedule']:>9} {r['microbatches']:>3} {r['schedlang_ms']:>13.2f} "
              f"{r['schedlang_prepost_ms']:>12.2f} {r['torch_ms']:>10.2f} {r['ratio']:>7.3f} "
              f"{r['ratio_prepost']:>9.3f} {r['loss_diff']:>10.2e}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"options": opts, "rows": rows}, indent=1), encoding="utf-8")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
