"""``schedlang run``: train a model with a compiled schedule on real processes.

The command compiles the program (user errors are located diagnostics, before any process
starts), then :func:`schedlang.api.run` generates the instruction streams and launches one worker
per rank through torchrun (``python -m torch.distributed.run --standalone --nproc-per-node N``)
or ``--launcher spawn``; the workers print the loss of every step, then this command prints the
measured bubble rate (the mean over the steps after the first) next to the schedule simulated on
the op times measured in the same run (communication free) and on the program's own costs, and
with ``--trace PATH`` writes one Chrome/Perfetto trace of all ranks and all steps. ``--dp D`` runs D data-parallel replicas of the
pipeline; ``--nnodes N --node-rank K --rdzv-endpoint HOST:PORT --nproc-per-node P`` (torchrun's
names) start this node's share of a run across N nodes.
"""

from __future__ import annotations

import argparse

from schedlang.cli.common import Command, add_model_args, add_program_args, load_program
from schedlang.cli.profile import add_partition_args, partition_line, step_cost
from schedlang.limits import nonneg_int, positive_float, positive_int
from schedlang.source import SchedlangError


def _run_args(p: argparse.ArgumentParser) -> None:
    add_program_args(p)
    p.add_argument("--nproc", type=int, help="worker processes (default: the schedule's ranks; must match)")
    add_model_args(p)
    p.add_argument("--steps", type=int, default=10, help="training steps (default 10)")
    p.add_argument("--trace", metavar="PATH", help="write a Chrome/Perfetto trace of all ranks to PATH")
    p.add_argument("--split-backward", choices=["autograd", "kernels"], default="autograd",
                   help="how B and W are split: generic autograd, or schedlang.kernels layers")
    p.add_argument("--launcher", choices=["torchrun", "spawn"], default="torchrun",
                   help="how the workers start: torchrun (python -m torch.distributed.run --standalone, "
                        "the default) or spawn (torch.multiprocessing from this process; each failed "
                        "rank's error is reported)")
    p.add_argument("--prepost", type=nonneg_int, default=4, metavar="K",
                   help="post each receive K instructions before its place in the stream (default 4; "
                        "0 = exactly where the stream says)")
    p.add_argument("--timeout", type=positive_float, default=60.0,
                   help="seconds an instruction may take before every rank stops (default 60)")
    p.add_argument("--threads", type=positive_int, default=1,
                   help="intra-op threads per process (torch.set_num_threads; default 1)")
    p.add_argument("--dp", type=int, default=1, metavar="D",
                   help="data-parallel replicas of the pipeline: ranks x D processes, each replica "
                        "trains on its shard of every batch (default 1)")
    p.add_argument("--backend", choices=["gloo", "nccl"],
                   help="process-group backend (default: nccl with CUDA, gloo without)")
    p.add_argument("--save", metavar="DIR", help="write each stage's final parameters (stage{S}.pt) and "
                                                 "the losses (losses.json) to DIR")
    nodes = p.add_argument_group("several nodes (torchrun's rendezvous; run the same command on every node)")
    nodes.add_argument("--nnodes", type=int, default=1, help="number of nodes (default 1)")
    nodes.add_argument("--node-rank", type=int, default=0, help="this node's rank, 0..nnodes-1 (default 0)")
    nodes.add_argument("--rdzv-endpoint", metavar="HOST:PORT",
                       help="where node 0 hosts the rendezvous (needed with --nnodes > 1)")
    nodes.add_argument("--nproc-per-node", type=int, metavar="P",
                       help="processes on this node (default: all processes / nnodes)")
    add_partition_args(p)


def _run_run(args: argparse.Namespace) -> int:
    from schedlang import api

    api.check_output_path(args.trace)
    prog = load_program(args)
    layout = dict(dp=args.dp, nnodes=args.nnodes, node_rank=args.node_rank, rdzv_endpoint=args.rdzv_endpoint,
                  nproc_per_node=args.nproc_per_node, backend=args.backend)
    nproc = api.check_run(prog, nproc=args.nproc, steps=args.steps, model=args.model, launcher=args.launcher,
                          threads=args.threads, **layout)
    extra = f"; {args.dp} data-parallel replicas" if args.dp > 1 else ""
    if args.nnodes > 1:
        extra += f"; node {args.node_rank} of {args.nnodes} ({nproc // args.nnodes} processes here)"
    print(f"{prog.name}: {prog.num_ranks} ranks, {prog.num_stages} stages, {prog.num_microbatches} "
          f"microbatches; model {args.model}; {args.steps} steps{extra}", flush=True)
    part = api.partition_for(prog, args.model, args.partition, layers_from=args.layers_from,
                             split_backward=args.split_backward, step_cost=step_cost(args))
    if part is not None:
        print(partition_line(part), flush=True)
    note = api.weights_note(prog)
    if note:
        print(note, flush=True)
    res = api.run(prog, model=args.model, split=args.split, steps=args.steps, nproc=nproc,
                  split_backward=args.split_backward, launcher=args.launcher, prepost=args.prepost,
                  timeout=args.timeout, save=args.save, echo=True, threads=args.threads,
                  cuts=part.cuts if part is not None else None,
                  layers_from=part.layers_from if part is not None else None, **layout)
    measured = res.measured
    if measured:
        on_measured = ("-" if res.measured_times_bubble_rate is None
                       else f"{res.measured_times_bubble_rate:.4f}")
        print(f"bubble rate: measured {measured['bubble_rate']:.4f} (mean of {measured['steps']} steps after "
              f"the first; step {measured['makespan_s'] * 1e3:.2f} ms)  simulated {on_measured} on the "
              f"measured op times (communication free), {res.simulated_bubble_rate:.4f} on the program's costs")
    if args.trace:
        from schedlang.runtime.timeline import write_chrome_trace

        meta = {"program": prog.name, "simulated_bubble_rate": res.simulated_bubble_rate,
                "simulated_bubble_rate_on_measured_times": res.measured_times_bubble_rate, **measured,
                "note": TRACE_NOTE.format(steps=args.steps)}
        try:
            write_chrome_trace(args.trace, list(res.events), meta)
        except OSError as exc:
            raise SchedlangError(f"cannot write '{args.trace}': {exc.strerror}") from None
        print(f"trace: {args.trace} ({len(res.events)} events, {nproc} ranks, {TRACE_NOTE.format(steps=args.steps)})")
    return 0


# Why a bubble read off the whole trace differs from the printed one.
TRACE_NOTE = ("all {steps} steps, warm-up included: a bubble read off the whole trace (as schedlang "
              "render does) also counts the first step and the gaps between steps, so it is higher than "
              "the per-step mean above")


RUN = Command("train a model with a schedule on real processes (torch.distributed)", _run_args, _run_run)
