"""The worker process of ``schedlang run``: one rank trains a model with a compiled schedule.

Started by torchrun (``python -m torch.distributed.run ... -m schedlang.runtime.worker ARGS``,
rank and world size from the environment) or by :func:`schedlang.runtime.launch.spawn`
(:func:`worker_main`). It reads the streams (isa JSON), builds the model from the ``--model``
factory (``FACTORY(num_stages, num_microbatches)``, cut and completed by
:mod:`schedlang.runtime.intake`), keeps the stages of its rank, trains ``--steps`` steps, prints
the loss of every step on the rank that holds the last stage, and writes its timeline to
``OUT/rank{R}.json`` (with ``--measure-memory``, also the peak bytes of activations saved for
backward alive at once during the first step, :class:`SavedBytesMeter`). A failure prints one
line naming the rank and instruction, writes it to ``OUT/fault-rank{R}.json`` (``origin`` true on
the rank where it happened) and exits 1. ``--cuts`` (with ``--layers-from``) re-cuts the model's
layers into the schedule's stages (:func:`recut`).

Several nodes: torchrun's own rendezvous joins them (``--nnodes N --node-rank K
--rdzv-endpoint HOST:PORT --nproc-per-node P``); every node compiles its own copy of the
program, so before anything else the ranks exchange a hash of their streams and run options
(:func:`check_same_program`): when two differ, every rank stops with a message naming both.

Pipeline x data parallel (``--dp D``): ``p x D`` processes on a ``torch.distributed``
DeviceMesh of shape ``(D, p)`` with dimensions named ``"dp"`` and ``"pp"`` (global rank
``d * p + r`` is pipeline rank ``r`` of replica ``d``). Replica ``d`` trains on the ``d``-th of
``D`` equal shards of every batch; the runner averages each stage's gradients over ``"dp"`` with
one flat all-reduce per stage, started at the stage's ``REDUCE_GRAD`` (right after its last
backward) and waited for at the optimizer step. The printed loss is the mean over replicas,
i.e. the loss of the whole batch.

Placement (:func:`choose_backend`, :func:`placement`): with CUDA, local rank ``k`` uses device
``k`` and NCCL is the default backend; gloo is the CPU default; ``--backend`` overrides (gloo
on CUDA stages the tensors that cross ranks through host memory).
"""

from __future__ import annotations

import argparse
import copy
import datetime
import hashlib
import json
import os
import socket
import sys
from collections.abc import Sequence
from typing import Any

__all__ = ["ProgramMismatch", "check_same_program", "choose_backend", "default_device", "load_factory",
           "main", "make_runner", "on_device", "placement", "prepare_stages", "read_faults", "recut",
           "SavedBytesMeter", "worker_main"]

BACKENDS = ("gloo", "nccl")


class ProgramMismatch(RuntimeError):
    """Two ranks were started with different programs or run options."""


def choose_backend(requested: str | None, cuda: bool) -> str:
    """The process-group backend: ``requested`` when given, else NCCL with CUDA and gloo without."""
    if requested is None:
        return "nccl" if cuda else "gloo"
    if requested not in BACKENDS:
        raise ValueError(f"--backend must be one of {', '.join(BACKENDS)}, not {requested!r}")
    if requested == "nccl" and not cuda:
        raise ValueError("--backend nccl needs CUDA, and this machine has no CUDA device (use gloo)")
    return requested


def placement(local_rank: int, backend: str, cuda_devices: int) -> tuple[str, str]:
    """``(compute device, comm device)`` of the process with ``local_rank`` on its node.

    With CUDA, local rank ``k`` computes on ``cuda:k``. NCCL moves CUDA tensors itself but
    refuses two ranks on one GPU, so it needs a GPU per local rank. Gloo cannot move CUDA
    tensors: the tensors that cross ranks go through host memory, which also lets more
    processes than GPUs share them (local rank ``k`` on ``cuda:(k mod count)``). Without CUDA
    everything stays on the CPU.
    """
    if cuda_devices <= 0:
        return "cpu", "cpu"
    if backend == "nccl":
        if local_rank >= cuda_devices:
            raise ValueError(f"local rank {local_rank} has no GPU of its own: this node has {cuda_devices} "
                             f"CUDA device(s) and NCCL needs one per process (start at most {cuda_devices} "
                             "processes per node, or use --backend gloo)")
        return f"cuda:{local_rank}", f"cuda:{local_rank}"
    return f"cuda:{local_rank % cuda_devices}", "cpu"


def stream_hash(streams_json: str) -> str:
    """A short hash of a compiled schedule (its isa JSON text)."""
    return hashlib.sha256(streams_json.encode("utf-8")).hexdigest()[:16]


def _identity(rank: int, streams: Any, text: str, args: argparse.Namespace) -> dict[str, Any]:
    return {
        "rank": rank,
        "node": os.environ.get("GROUP_RANK", "0"),
        "host": socket.gethostname(),
        "program": dict(streams.meta).get("program", "?") if streams is not None else "?",
        "hash": stream_hash(text) if streams is not None else "unreadable",
        "options": f"model {args.model}, dp {args.dp}, {args.steps} steps, split-backward {args.split_backward}",
    }


def _describe(ident: dict[str, Any]) -> str:
    return (f"rank {ident['rank']} (node {ident['node']}, host {ident['host']}) runs program "
            f"'{ident['program']}' (streams {ident['hash']}; {ident['options']})")


def check_same_program(identity: dict[str, Any], group: Any = None) -> None:
    """Exchange ``identity`` (program, stream hash, run options) with every rank; raise
    :class:`ProgramMismatch` on every rank, naming the first rank that differs from rank 0
    and rank 0, when any does."""
    import torch.distributed as dist

    everyone: list[Any] = [None] * dist.get_world_size(group)
    dist.all_gather_object(everyone, identity, group=group)
    key = ("program", "hash", "options")
    first = everyone[0]
    for other in everyone[1:]:
        if any(other[k] != first[k] for k in key):
            raise ProgramMismatch(f"ranks run different programs: {_describe(first)}, but {_describe(other)}; "
                                  "start every node with the same program, parameters and options")


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


def recut(model: str, parts: int, num_microbatches: int, layers_from: int, cuts: str,
          split: Sequence[str] | None = None) -> Any:
    """The model built for ``layers_from`` stages (:func:`schedlang.runtime.intake.prepare_model`),
    its layers (:func:`schedlang.runtime.models.layers_of`) cut into ``parts`` stages where
    ``cuts`` (comma-separated layer indices) say (none: by balanced parameter counts)."""
    import dataclasses

    from schedlang.runtime.intake import prepare_model
    from schedlang.runtime.models import layers_of, split_sequential

    prepared = prepare_model(model, layers_from or parts, num_microbatches, split)
    points = [int(c) for c in cuts.split(",") if c.strip()] or None  # none: balanced parameter counts
    return dataclasses.replace(prepared, stages=list(split_sequential(layers_of(prepared.stages), parts, points)))


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
    p.add_argument("--split", default=None, help="comma-separated module names that begin stages 1, 2, ...")
    p.add_argument("--fingerprint", default=None,
                   help="the initial weights' digest the launching process checked (a mismatch is an error)")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--quiet", action="store_true", help="do not print the losses (they are in OUT/rank{R}.json)")
    p.add_argument("--layers-from", type=int, default=0, metavar="N",
                   help="with --cuts: build the model for N stages, then re-cut its layers")
    p.add_argument("--measure-memory", action="store_true",
                   help="record the peak of activations saved for backward during the first step")
    p.add_argument("--cuts", default="", help="comma-separated layer indices where stages 1, 2, ... begin")
    p.add_argument("--out", required=True, help="directory for rank{R}.json timelines")
    p.add_argument("--split-backward", default="autograd", choices=["autograd", "kernels"])
    p.add_argument("--timeout", type=float, default=60.0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--prepost", type=int, default=4, help="post receives this many instructions early")
    p.add_argument("--dp", type=int, default=1, help="data-parallel replicas of the pipeline")
    p.add_argument("--backend", choices=BACKENDS, default=None,
                   help="process-group backend (default: nccl with CUDA, else gloo)")
    p.add_argument("--save", metavar="DIR",
                   help="write each stage's final parameters to DIR/stage{S}.pt and the losses to DIR/losses.json")
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
    import torch.distributed as dist

    torch.set_num_threads(args.threads)
    streams = _read_and_agree(rank, world_size, args)
    p = streams.num_ranks
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    backend = dist.get_backend() if dist.is_initialized() else "gloo"
    device_name, comm_name = placement(local_rank, backend, torch.cuda.device_count() if torch.cuda.is_available() else 0)
    device = torch.device(device_name)
    group = dp_group = None
    replica, pp_rank = divmod(rank, p)
    if args.dp > 1:
        from torch.distributed.device_mesh import init_device_mesh

        mesh = init_device_mesh(device.type, (args.dp, p), mesh_dim_names=("dp", "pp"))
        group, dp_group = mesh.get_group("pp"), mesh.get_group("dp")
        replica, pp_rank = mesh.get_local_rank("dp"), mesh.get_local_rank("pp")
    split = [s for s in args.split.split(",") if s] if args.split else None
    model: Any = args.model
    fingerprint = args.fingerprint
    if args.cuts or args.layers_from:  # the parent checked the factory; these stages are re-cut from it
        model = recut(args.model, streams.num_parts, streams.num_microbatches, args.layers_from, args.cuts, split)
        fingerprint = None
    runner, spec = make_runner(streams, pp_rank, model, split, split_backward=args.split_backward,
                               timeout=args.timeout, device=device, prepost=args.prepost,
                               fingerprint=fingerprint, comm_device=comm_name, group=group,
                               dp_group=dp_group)
    mods = runner.modules
    meter = SavedBytesMeter({t.untyped_storage().data_ptr() for m in mods.values()
                             for t in [*m.parameters(), *m.buffers()]})
    losses = []
    # one rank prints: the lowest one holding a loss stage (several do with several chains)
    printer = min(streams.placement[s] for s in streams.loss_stages)
    for step in range(args.steps):
        x, y = spec.batch(step)
        if args.dp > 1:
            x, y = _shard(x, args.dp, replica, streams.num_microbatches, "inputs"), \
                _shard(y, args.dp, replica, streams.num_microbatches, "targets")
        if args.measure_memory and step == 0:  # the untimed first step: timed steps carry no hooks
            with torch.autograd.graph.saved_tensors_hooks(meter.pack, meter.unpack):
                loss = runner.step(x, y)
        else:
            loss = runner.step(x, y)
        if loss is not None:
            if dp_group is not None:  # every replica's loss stage holder: the mean is the whole batch's
                loss = loss.detach().to(torch.float64)
                dist.all_reduce(loss, group=dp_group)
                loss = loss / args.dp
            losses.append(float(loss))
            if rank == printer and not args.quiet:
                print(f"step {step + 1:>3}: loss {float(loss):.4f}", flush=True)
    runner.close()
    if args.save and replica == 0:
        os.makedirs(args.save, exist_ok=True)
        for s, mod in mods.items():
            torch.save({k: v.detach().cpu() for k, v in mod.state_dict().items()},
                       os.path.join(args.save, f"stage{s}.pt"))
        if rank == printer:
            with open(os.path.join(args.save, "losses.json"), "w", encoding="utf-8") as fh:
                json.dump(losses, fh)
    # the timeline of replica 0 (the others run the same streams): rank files are pipeline ranks
    events = [e.as_dict() for e in runner.events] if replica == 0 else []
    with open(os.path.join(args.out, f"rank{rank}.json"), "w", encoding="utf-8") as fh:
        doc: dict[str, Any] = {"rank": rank, "events": events, "losses": losses, "threads": torch.get_num_threads()}
        if args.measure_memory:
            doc["peak_saved_bytes"] = meter.peak
        json.dump(doc, fh)
    return {"losses": losses}


def _read_and_agree(rank: int, world_size: int, args: argparse.Namespace) -> Any:
    """Read the streams, agree with every other rank that all run the same program (before
    anything can fail on one rank alone: the others would wait in the exchange until the
    timeout), and check the process count."""
    from schedlang.isa import load, to_json

    streams, text, problem = None, "", None
    try:
        streams = load(args.streams)
        text = to_json(streams)  # the canonical form: a text and a JSON file of one schedule agree
    except Exception as exc:
        problem = f"cannot read the streams {args.streams}: {type(exc).__name__}: {exc}"
    identity = _identity(rank, streams, text, args)
    if world_size > 1:
        check_same_program(identity)
    if problem is not None or streams is None:
        raise ValueError(problem)
    if args.dp < 1:
        raise ValueError(f"--dp must be at least 1, not {args.dp}")
    if streams.num_ranks * args.dp != world_size:
        replicas = f" x {args.dp} data-parallel replicas" if args.dp > 1 else ""
        raise ValueError(f"the schedule has {streams.num_ranks} ranks{replicas} but {world_size} processes run")
    return streams


def _shard(x: Any, dp: int, replica: int, m: int, what: str) -> Any:
    """Replica ``replica``'s share of a batch: the ``replica``-th of ``dp`` equal parts of dim 0."""
    import torch

    if not isinstance(x, torch.Tensor):
        raise ValueError(f"--dp {dp}: the {what} must be a tensor to shard, not {type(x).__name__}")
    if x.shape[0] % (dp * m):
        raise ValueError(f"--dp {dp}: a batch of {x.shape[0]} {what} does not split into {dp} replicas "
                         f"x {m} microbatches")
    return x.chunk(dp)[replica]


def _write_fault(out: str, rank: int, exc: BaseException) -> None:
    from schedlang.runtime.fault import PipelineError

    if isinstance(exc, PipelineError):
        doc = {"origin": exc.origin is not None, "message": str(exc), **(exc.origin or {"rank": rank})}
    else:
        # a refusal before training (another node runs another program) says so, not a type name
        error = f"refuses to start: {exc}" if isinstance(exc, ProgramMismatch) else f"{type(exc).__name__}: {exc}"
        doc = {"origin": True, "message": str(exc), "rank": rank, "instruction": None, "instr": None,
               "step": None, "error": error}
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
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(argv)
    try:
        backend = choose_backend(args.backend, torch.cuda.is_available())
        if torch.cuda.is_available():
            device, _ = placement(int(os.environ.get("LOCAL_RANK", rank)), backend, torch.cuda.device_count())
            torch.cuda.set_device(torch.device(device))
    except ValueError as exc:
        print(f"schedlang runtime: rank {rank}: {exc}", file=sys.stderr, flush=True)
        return 1
    dist.init_process_group(backend, timeout=datetime.timedelta(seconds=args.timeout))
    try:
        worker_main(rank, world, argv)
    except (PipelineError, ProgramMismatch) as exc:
        print(f"schedlang runtime: {exc}" if isinstance(exc, PipelineError) else
              f"schedlang runtime: rank {rank} refuses to start: {exc}", file=sys.stderr, flush=True)
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
