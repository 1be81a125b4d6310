"""``schedlang run``: train a model with a compiled schedule on real processes.

The command compiles the program (user errors are located diagnostics, before any process
starts), then :func:`schedlang.api.run` generates the instruction streams and launches one worker
per rank through torchrun (``python -m torch.distributed.run --standalone --nproc-per-node N``)
or ``--launcher spawn``; the workers print the loss of every step, then this command prints the
measured bubble rate next to the simulated one, and with ``--trace PATH`` writes one
Chrome/Perfetto trace of all ranks.
"""

from __future__ import annotations

import argparse
import sys

from schedlang.cli.common import Command, add_program_args, load_program
from schedlang.cli.profile import add_partition_args, partition_line, step_cost
from schedlang.source import SchedlangError


def _run_args(p: argparse.ArgumentParser) -> None:
    add_program_args(p)
    p.add_argument("--nproc", type=int, help="worker processes (default: the schedule's ranks; must match)")
    p.add_argument("--model", default="schedlang.runtime.models:tiny_gpt", metavar="MODULE:FACTORY",
                   help="FACTORY(num_stages, num_microbatches) -> schedlang.runtime.models.ModelSpec "
                        "(default: a tiny GPT on bundled text)")
    p.add_argument("--steps", type=int, default=10, help="training steps (default 10)")
    p.add_argument("--trace", metavar="PATH", help="write a Chrome/Perfetto trace of all ranks to PATH")
    p.add_argument("--split-backward", choices=["autograd", "kernels"], default="autograd",
                   help="how B and W are split: generic autograd, or schedlang.kernels layers")
    p.add_argument("--launcher", choices=["torchrun", "spawn"], default="torchrun")
    p.add_argument("--prepost", type=int, default=4, metavar="K",
                   help="post each receive K instructions before its place in the stream (default 4; "
                        "0 = exactly where the stream says)")
    p.add_argument("--timeout", type=float, default=60.0,
                   help="seconds an instruction may take before every rank stops (default 60)")
    add_partition_args(p)


def _run_run(args: argparse.Namespace) -> int:
    from schedlang import api

    prog = load_program(args)
    nproc = api.check_run(prog, nproc=args.nproc, steps=args.steps, model=args.model)
    part = api.partition_for(prog, args.model, args.partition, layers_from=args.layers_from,
                             split_backward=args.split_backward, step_cost=step_cost(args))
    print(f"{prog.name}: {prog.num_ranks} ranks, {prog.num_stages} stages, {prog.num_microbatches} "
          f"microbatches; model {args.model}; {args.steps} steps", flush=True)
    if part is not None:
        print(partition_line(part), flush=True)
    res = api.run(prog, model=args.model, steps=args.steps, nproc=nproc, split_backward=args.split_backward,
                  launcher=args.launcher, prepost=args.prepost, timeout=args.timeout,
                  cuts=part.cuts if part is not None else None,
                  layers_from=part.layers_from if part is not None else None)
    for line in res.failures:
        print(line, file=sys.stderr)
    if res.exit_code != 0:
        print(f"schedlang run: the workers failed (exit status {res.exit_code})", file=sys.stderr)
        return 1
    measured = res.measured
    if measured:
        print(f"bubble rate: measured {measured['bubble_rate']:.4f} (mean of {measured['steps']} steps after "
              f"the first; step {measured['makespan_s'] * 1e3:.2f} ms)  simulated {res.simulated_bubble_rate:.4f}")
    if args.trace:
        from schedlang.runtime.timeline import write_chrome_trace

        meta = {"program": prog.name, "simulated_bubble_rate": res.simulated_bubble_rate, **measured}
        try:
            write_chrome_trace(args.trace, list(res.events), meta)
        except OSError as exc:
            raise SchedlangError(f"cannot write '{args.trace}': {exc.strerror}") from None
        print(f"trace: {args.trace} ({len(res.events)} events, {nproc} ranks)")
    return 0


RUN = Command("train a model with a schedule on real processes (torch.distributed)", _run_args, _run_run)
