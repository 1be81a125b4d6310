"""The worker process of ``schedlang run``: one rank trains a model with a compiled schedule.

Started by torchrun (``python -m torch.distributed.run ... -m schedlang.runtime.worker ARGS``,
rank and world size from the environment) or by :func:`schedlang.runtime.launch.spawn`
(:func:`worker_main`). It reads the streams (isa JSON), builds the model from the ``--model``
factory (``FACTORY(num_stages, num_microbatches)``, cut and completed by
:mod:`schedlang.runtime.intake`), keeps the stages of its rank, trains ``--steps`` steps, prints
the loss of every step on the rank that holds the last stage, and writes its timeline to
``OUT/rank{R}.json``. A failure prints one line naming the rank and instruction, writes it to
``OUT/fault-rank{R}.json`` (``origin`` true on the rank where it happened) and exits 1.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

__all__ = ["default_device", "load_factory", "main", "make_runner", "on_device", "prepare_stages", "read_faults", "worker_main"]


def load_factory(spec: str) -> Any:
    """Import ``MODULE:FACTORY`` or ``path/to/file.py:FACTORY`` (:func:`schedlang.runtime.intake.load_factory`)."""
    from schedlang.runtime.intake import load_factory as load

    return load(spec)


def default_device() -> Any:
    """This process's CUDA device when there is one, else the CPU."""
    import torch

    return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")


def prepare_stages(mods: dict[int, Any], split_backward: str) -> dict[int, Any]:
    """The stage modules as the runner needs them: with ``split_backward="kernels"``, a stage the
    factory built from plain ``nn.Linear``/``nn.LayerNorm`` gets them swapped for
    :mod:`schedlang.kernels` split layers (same parameters), so W really is deferred."""
    if split_backward != "kernels":
        return mods
    from schedlang.kernels.layers import split_modules
    from schedlang.runtime.models import to_split_layers

    return {s: m if any(True for _ in split_modules(m)) else to_split_layers(m) for s, m in mods.items()}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="schedlang.runtime.worker")
    p.add_argument("--streams", required=True, help="isa streams (JSON or text)")
    p.add_argument("--model", default="schedlang.runtime.models:tiny_gpt")
    p.add_argument("--split", default=None, help="comma-separated module names that begin stages 1, 2, ...")
    p.add_argument("--fingerprint", default=None,
                   help="the initial weights' digest the launching process checked (a mismatch is an error)")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--quiet", action="store_true", help="do not print the losses (they are in OUT/rank{R}.json)")
    p.add_argument("--out", required=True, help="directory for rank{R}.json timelines")
    p.add_argument("--split-backward", default="autograd", choices=["autograd", "kernels"])
    p.add_argument("--timeout", type=float, default=60.0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--prepost", type=int, default=4, help="post receives this many instructions early")
    return p


def worker_main(rank: int, world_size: int, argv: Sequence[str]) -> dict[str, Any]:
    """Train as ``rank`` (the process group is already initialised); return the step losses.

    Any failure is also written to ``OUT/fault-rank{R}.json`` before it propagates.
    """
    args = _parser().parse_args(list(argv))
    try:
        return _train(rank, world_size, args)
    except BaseException as exc:
        _write_fault(args.out, rank, exc)
        raise


def make_runner(streams: Any, rank: int, model: Any, split: Sequence[str] | None = None, *,
                split_backward: str = "autograd", **options: Any) -> tuple[Any, Any]:
    """This rank's :class:`PipelineRunner` for ``model`` (a factory spec, or a
    :class:`~schedlang.runtime.intake.PreparedModel` already built for the streams) and the
    prepared model.

    The factory is called for the schedule's model parts (one per stage of a chain; several
    chains, as in Chimera, run replicas of the parts); each local stage gets its own copy of its
    part, and tied parameters are passed on. ``fingerprint`` (an option) is the digest of the
    initial weights the launching process checked: a different model here is an error. The
    other ``options`` go to the runner.
    """
    from schedlang.runtime.executor import PipelineRunner
    from schedlang.runtime.intake import ModelError, fingerprint, prepare_model

    expect = options.pop("fingerprint", None)
    prepared = (prepare_model(model, streams.num_parts, streams.num_microbatches, split)
                if isinstance(model, str) else model)
    if len(prepared.stages) != streams.num_parts:
        raise ValueError(f"{prepared.name} has {len(prepared.stages)} stages for {streams.num_parts} model parts")
    if expect is not None and fingerprint(prepared.stages) != expect:
        raise ModelError(f"model {prepared.name}: rank {rank} built other initial weights than the launching "
                         "process checked; the factory must build the same model every time it is called "
                         "(intake seeds torch's generator; seed any other randomness yourself)")
    device = options.pop("device", None) or default_device()
    mods = prepare_stages({s: on_device(copy.deepcopy(prepared.stages[streams.part(s)]), device)
                           for s in streams.stream(rank).stages}, split_backward)
    runner = PipelineRunner(streams, rank, mods, prepared.loss_fn, prepared.optimizer,
                            split_backward=split_backward, device=device, tied=prepared.tied, **options)
    return runner, prepared


def on_device(module: Any, device: Any) -> Any:
    """``module.to(device)``; a traced stage also makes its tensor-creating operations use it."""
    from schedlang.runtime.intake import TracedStage

    module = module.to(device)
    return module.retarget(device) if isinstance(module, TracedStage) else module


def _train(rank: int, world_size: int, args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from schedlang.isa import load

    torch.set_num_threads(args.threads)
    streams = load(args.streams)
    if streams.num_ranks != world_size:
        raise ValueError(f"the schedule has {streams.num_ranks} ranks but {world_size} processes run")
    split = [s for s in args.split.split(",") if s] if args.split else None
    runner, model = make_runner(streams, rank, args.model, split, split_backward=args.split_backward,
                                timeout=args.timeout, prepost=args.prepost, fingerprint=args.fingerprint)
    losses = []
    # one rank prints: the lowest one holding a loss stage (several do with several chains)
    printer = min(streams.placement[s] for s in streams.loss_stages)
    for step in range(args.steps):
        x, y = model.batch(step)
        loss = runner.step(x, y)
        if loss is not None:
            losses.append(float(loss))
            if rank == printer and not args.quiet:
                print(f"step {step + 1:>3}: loss {float(loss):.4f}", flush=True)
    runner.close()
    with open(os.path.join(args.out, f"rank{rank}.json"), "w", encoding="utf-8") as fh:
        json.dump({"rank": rank, "events": [e.as_dict() for e in runner.events], "losses": losses}, fh)
    return {"losses": losses}


def _write_fault(out: str, rank: int, exc: BaseException) -> None:
    from schedlang.runtime.fault import PipelineError

    if isinstance(exc, PipelineError):
        doc = {"origin": exc.origin is not None, "message": str(exc), **(exc.origin or {"rank": rank})}
    else:
        doc = {"origin": True, "message": str(exc), "rank": rank, "instruction": None, "instr": None,
               "step": None, "error": f"{type(exc).__name__}: {exc}"}
    try:
        with open(os.path.join(out, f"fault-rank{rank}.json"), "w", encoding="utf-8") as fh:
            json.dump(doc, fh)
    except OSError:
        pass  # the report is a courtesy; the exit status still says the rank failed


def read_faults(out: str) -> str | None:
    """One line for the parent: the fault where it happened (the lowest such rank), else any.

    ``rank R, instruction I: ExceptionType: message (the instruction, step S)`` (S from 1), or
    ``rank R: ExceptionType: message`` for a failure outside the instruction stream.
    """
    docs = []
    for name in sorted(os.listdir(out)) if os.path.isdir(out) else []:
        if name.startswith("fault-rank") and name.endswith(".json"):
            try:
                with open(os.path.join(out, name), encoding="utf-8") as fh:
                    docs.append(json.load(fh))
            except (OSError, ValueError):
                continue
    if not docs:
        return None
    origins = sorted((d for d in docs if d.get("origin")), key=lambda d: int(d.get("rank", 0)))
    if not origins:
        return str(min(docs, key=lambda d: int(d.get("rank", 0)))["message"])
    d = origins[0]
    if d.get("instruction") is None:
        return f"rank {d['rank']}: {d['error']}"
    # steps count from 1, as the loss lines do
    return f"rank {d['rank']}, instruction {d['instruction']}: {d['error']} ({d['instr']}, step {d['step'] + 1})"


def main(argv: Sequence[str] | None = None) -> int:
    """torchrun entry point: rank and world size come from the environment."""
    import torch
    import torch.distributed as dist
    from schedlang.runtime.fault import PipelineError

    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    args = _parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", rank)))
    dist.init_process_group(backend, timeout=datetime.timedelta(seconds=args.timeout))
    try:
        worker_main(rank, world, sys.argv[1:] if argv is None else argv)
    except PipelineError as exc:
        print(f"schedlang runtime: {exc}", file=sys.stderr, flush=True)
        return 1
    except Exception as exc:
        print(f"schedlang runtime: rank {rank}: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
        return 1
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
