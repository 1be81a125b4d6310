"""The worker process of ``schedlang run``: one rank trains a model with a compiled schedule.

Started by torchrun (``python -m torch.distributed.run ... -m schedlang.runtime.worker ARGS``,
rank and world size from the environment) or by :func:`schedlang.runtime.launch.spawn`
(:func:`worker_main`). It reads the streams (isa JSON), builds the model from
``MODULE:FACTORY`` (``FACTORY(num_stages, num_microbatches) -> ModelSpec``, see
:mod:`schedlang.runtime.models`), keeps the stages of its rank, trains ``--steps`` steps, prints
the loss of every step on the rank that holds the last stage, and writes its timeline to
``OUT/rank{R}.json`` (with ``--measure-memory``, also the peak bytes of activations saved for
backward alive at once during the first step, :class:`SavedBytesMeter`). A failure prints one
line naming the rank and instruction and exits 1. ``--cuts`` (with ``--layers-from``) re-cuts
the factory's layers into the schedule's stages (:func:`build_spec`).
"""

from __future__ import annotations

import argparse
import copy
import datetime
import importlib
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

__all__ = ["build_spec", "default_device", "load_factory", "main", "prepare_stages", "worker_main"]


def load_factory(spec: str) -> Any:
    """Import ``MODULE:FACTORY``."""
    module, sep, name = spec.partition(":")
    if not sep or not module or not name:
        raise ValueError(f"--model expects MODULE:FACTORY, got {spec!r}")
    return getattr(importlib.import_module(module), name)


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


def build_spec(model: str, parts: int, num_microbatches: int, layers_from: int = 0, cuts: str = "") -> Any:
    """The factory's :class:`ModelSpec`; with ``cuts``, built for ``layers_from`` stages and its
    layers (:func:`schedlang.runtime.models.layers_of`) re-cut into ``parts`` stages there."""
    if not cuts and not layers_from:
        return load_factory(model)(parts, num_microbatches)
    from schedlang.runtime.models import layers_of, split_sequential

    spec = load_factory(model)(layers_from or parts, num_microbatches)
    points = [int(c) for c in cuts.split(",") if c.strip()]
    spec.stages = list(split_sequential(layers_of(spec.stages), parts, points))
    return spec


class SavedBytesMeter:
    """The peak, over a run, of the bytes of tensors saved for backward that are alive at once
    (distinct storages, parameters excluded): the activation memory a schedule's memory model
    predicts, measured. Use as ``with torch.autograd.graph.saved_tensors_hooks(m.pack, m.unpack)``.
    A storage counts from the first time autograd saves a tensor of it until autograd has freed
    every saved reference to it; output gradients and captured gradients are not counted."""

    def __init__(self, exclude: set[int]) -> None:
        self.exclude = exclude  # data pointers of parameters and buffers
        self.live: dict[int, list[int]] = {}  # data pointer -> [bytes, live saved references]
        self.current = 0
        self.peak = 0

    def pack(self, t: Any) -> Any:
        import weakref

        ptr = t.untyped_storage().data_ptr()
        if ptr in self.exclude:
            return t
        # save a detached alias: returning ``t`` itself would tie an op's saved output to its
        # own grad_fn in a cycle through C++ that Python's collector cannot free
        saved = t.detach()
        entry = self.live.get(ptr)
        if entry is None:
            entry = self.live[ptr] = [t.untyped_storage().nbytes(), 0]
            self.current += entry[0]
            self.peak = max(self.peak, self.current)
        entry[1] += 1
        weakref.finalize(saved, self._release, ptr)
        return saved

    @staticmethod
    def unpack(t: Any) -> Any:
        return t

    def _release(self, ptr: int) -> None:
        entry = self.live.get(ptr)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] == 0:
            self.current -= entry[0]
            del self.live[ptr]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="schedlang.runtime.worker")
    p.add_argument("--streams", required=True, help="isa streams (JSON or text)")
    p.add_argument("--model", default="schedlang.runtime.models:tiny_gpt")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--out", required=True, help="directory for rank{R}.json timelines")
    p.add_argument("--split-backward", default="autograd", choices=["autograd", "kernels"])
    p.add_argument("--timeout", type=float, default=60.0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--prepost", type=int, default=4, help="post receives this many instructions early")
    p.add_argument("--layers-from", type=int, default=0, metavar="N",
                   help="with --cuts: build the model for N stages, then re-cut its layers")
    p.add_argument("--quiet", action="store_true", help="do not print each step's loss")
    p.add_argument("--measure-memory", action="store_true",
                   help="record the peak of activations saved for backward during the first step")
    p.add_argument("--cuts", default="", help="comma-separated layer indices where stages 1, 2, ... begin")
    return p


def worker_main(rank: int, world_size: int, argv: Sequence[str]) -> dict[str, Any]:
    """Train as ``rank`` (the process group is already initialised); return the step losses."""
    import torch
    from schedlang.runtime.executor import PipelineRunner

    from schedlang.isa import load

    args = _parser().parse_args(list(argv))
    torch.set_num_threads(args.threads)
    streams = load(args.streams)
    if streams.num_ranks != world_size:
        raise ValueError(f"the schedule has {streams.num_ranks} ranks but {world_size} processes run")
    # one model part per stage of a chain; several chains (Chimera) run replicas of the parts
    parts = streams.num_parts
    spec = build_spec(args.model, parts, streams.num_microbatches, args.layers_from, args.cuts)
    if len(spec.stages) != parts:
        raise ValueError(f"{args.model} built {len(spec.stages)} stages for a {parts}-stage model")
    device = default_device()
    mods = prepare_stages({s: copy.deepcopy(spec.stages[streams.part(s)]).to(device)
                           for s in streams.stream(rank).stages}, args.split_backward)
    runner = PipelineRunner(streams, rank, mods, spec.loss_fn, spec.optimizer,
                            split_backward=args.split_backward, timeout=args.timeout, device=device,
                            prepost=args.prepost)
    meter = SavedBytesMeter({t.untyped_storage().data_ptr() for m in mods.values()
                             for t in [*m.parameters(), *m.buffers()]})
    losses = []
    # one rank prints: the lowest one holding a loss stage (several do with several chains)
    printer = min(streams.placement[s] for s in streams.loss_stages)
    for step in range(args.steps):
        x, y = spec.batch(step)
        if args.measure_memory and step == 0:  # the untimed first step: timed steps carry no hooks
            with torch.autograd.graph.saved_tensors_hooks(meter.pack, meter.unpack):
                loss = runner.step(x, y)
        else:
            loss = runner.step(x, y)
        if loss is not None:
            losses.append(float(loss))
            if rank == printer and not args.quiet:
                print(f"step {step + 1:>3}: loss {float(loss):.4f}", flush=True)
    runner.close()
    with open(os.path.join(args.out, f"rank{rank}.json"), "w", encoding="utf-8") as fh:
        doc = {"rank": rank, "events": [e.as_dict() for e in runner.events], "losses": losses}
        if args.measure_memory:
            doc["peak_saved_bytes"] = meter.peak
        json.dump(doc, fh)
    return {"losses": losses}


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
