"""Worker for the PyTorch interop tests: runs schedule CSVs in ``_PipelineScheduleRuntime``.

Each process of a ``torch.multiprocessing.spawn`` group joins a gloo group, then for every job
(a CSV, its format, stage count, placement and microbatch count) builds exactly the stages its
row names (small float64 MLP blocks, identical initial weights on every process), runs a few
training steps with different data each step, and compares its stages' gradients (and, after an
SGD step, parameters) with a single-process reference of the whole model. Results go to one JSON
file per rank (``ok`` or the error text per job), so one bad job does not hide the others.
"""

from __future__ import annotations

import copy
import json
import os
import traceback
from datetime import timedelta
from typing import Any

DIM = 5
ROWS_PER_MB = 2
STEPS = 2


def _blocks(num_stages: int) -> Any:
    import torch

    torch.manual_seed(1234)
    return [torch.nn.Sequential(torch.nn.Linear(DIM, DIM), torch.nn.Tanh()).double() for _ in range(num_stages)]


def _data(step: int, m: int) -> tuple[Any, Any]:
    import torch

    g = torch.Generator().manual_seed(100 + step)  # different data every step (stale buffers show)
    x = torch.randn(m * ROWS_PER_MB, DIM, generator=g, dtype=torch.float64)
    y = torch.randn(m * ROWS_PER_MB, DIM, generator=g, dtype=torch.float64)
    return x, y


def _reference_step(blocks: list[Any], x: Any, y: Any, m: int) -> None:
    """Gradients PyTorch's schedules produce with scale_grads=True: mean over microbatch losses."""
    import torch

    for b in blocks:
        b.zero_grad()
    total = 0.0
    for xm, ym in zip(x.chunk(m), y.chunk(m), strict=True):
        out = xm
        for b in blocks:
            out = b(out)
        total = total + torch.nn.functional.mse_loss(out, ym)
    (total / m).backward()


def run_job(rank: int, job: dict[str, Any]) -> str:
    import torch
    from torch.distributed.pipelining import PipelineStage
    from torch.distributed.pipelining.schedules import _PipelineScheduleRuntime

    S, m, placement = job["num_stages"], job["num_microbatches"], job["placement"]
    ref = _blocks(S)
    mine = [s for s in range(S) if placement[s] == rank]
    mods = {s: copy.deepcopy(ref[s]) for s in mine}
    stages = [PipelineStage(mods[s], s, S, torch.device("cpu")) for s in mine]
    sched = _PipelineScheduleRuntime(stages, n_microbatches=m, loss_fn=torch.nn.functional.mse_loss)
    sched._load_csv(job["csv"], format=job["format"])
    opt = torch.optim.SGD([p for s in mine for p in mods[s].parameters()], lr=0.1)
    ref_opt = torch.optim.SGD([p for b in ref for p in b.parameters()], lr=0.1)
    for step in range(STEPS):
        x, y = _data(step, m)
        opt.zero_grad()
        args = (x,) if 0 in mine else ()
        sched.step(*args, target=y if S - 1 in mine else None)
        _reference_step(ref, x, y, m)
        for s in mine:
            for (name, p), q in zip(mods[s].named_parameters(), ref[s].parameters(), strict=True):
                if p.grad is None or not torch.allclose(p.grad, q.grad, rtol=1e-9, atol=1e-12):
                    diff = None if p.grad is None else float((p.grad - q.grad).abs().max())
                    return f"step {step}: stage {s} {name}: gradient differs from the reference (max abs diff {diff})"
        opt.step()
        ref_opt.step()
    return "ok"


def worker(rank: int, world: int, port: int, jobs: list[dict[str, Any]], out_dir: str) -> None:
    import torch.distributed as dist

    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=timedelta(seconds=60))
    results: dict[str, str] = {}
    try:
        for job in jobs:
            try:
                results[job["name"]] = run_job(rank, job)
            except Exception:
                results[job["name"]] = traceback.format_exc(limit=4)
                break  # a failed collective leaves the group in an unknown state
            dist.barrier()
    finally:
        with open(os.path.join(out_dir, f"rank{rank}.json"), "w", encoding="utf-8") as fh:
            json.dump(results, fh)
        dist.destroy_process_group()
