"""``schedlang run``: train a model with a compiled schedule on real processes.

The command compiles the program (user errors are located diagnostics, before any process
starts), generates the instruction streams, launches one worker per rank through torchrun
(``python -m torch.distributed.run --standalone --nproc-per-node N``) or
``--launcher spawn``, prints the loss of every step, then the measured bubble rate next to the
simulated one, and with ``--trace PATH`` writes one Chrome/Perfetto trace of all ranks.

:func:`runner_from_program` builds a :class:`~schedlang.runtime.executor.PipelineRunner` from a
compiled :class:`~schedlang.ir.Program` in one call (this module may import the compiler; the
runtime package itself imports only :mod:`schedlang.isa`).
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from typing import Any

from schedlang.cli import COMMANDS, add_program_args, load_program
from schedlang.ir import Program
from schedlang.train import summarize_timelines

__all__ = ["add_model_args", "runner_from_program", "summarize_timelines"]


def runner_from_program(program: Program, rank: int, stage_modules: Mapping[int, Any], loss_fn: Any,
                        optimizer_factory: Any = None, **options: Any) -> Any:
    """A ``PipelineRunner`` for ``rank`` of a scheduled, verified program (codegen included)."""
    from schedlang.codegen import codegen
    from schedlang.runtime.executor import PipelineRunner

    return PipelineRunner(codegen(program), rank, stage_modules, loss_fn, optimizer_factory, **options)


def _run_args(p: argparse.ArgumentParser) -> None:
    add_program_args(p)
    p.add_argument("--nproc", type=int, help="worker processes (default: the schedule's ranks; must match)")
    add_model_args(p)
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


def add_model_args(p: argparse.ArgumentParser) -> None:
    """``--model`` and ``--split``, the same for ``schedlang run`` and ``schedlang profile``."""
    p.add_argument("--model", default="schedlang.runtime.models:tiny_gpt", metavar="MODULE:FACTORY",
                   help="FACTORY(num_stages, num_microbatches) in MODULE (found from the current folder) or "
                        "in path/to/file.py; it returns an nn.Sequential, a list of blocks, an nn.Module with "
                        "split points or a ModelSpec (docs/models.md; default: a tiny GPT on bundled text)")
    p.add_argument("--split", metavar="NAME,...",
                   help="submodules that begin stages 1, 2, ... (e.g. transformer.h.2,transformer.h.4), "
                        "cut by torch.distributed.pipelining's tracer")


def _run_run(args: argparse.Namespace) -> int:
    from schedlang import api

    prog = load_program(args)
    result = api.run(prog, args.model, args.split, steps=args.steps, nproc=args.nproc,
                         launcher=args.launcher, split_backward=args.split_backward, prepost=args.prepost,
                         timeout=args.timeout, trace=args.trace, echo=True)
    measured = result.measured
    if measured:
        print(f"bubble rate: measured {measured['bubble_rate']:.4f} (mean of {measured['steps']} steps after "
              f"the first; step {measured['makespan_s'] * 1e3:.2f} ms)  simulated {result.simulated_bubble_rate:.4f}")
    if args.trace:
        print(f"trace: {args.trace} ({len(result.events)} events, {prog.num_ranks} ranks)")
    return 0


COMMANDS["run"] = ("train a model with a schedule on real processes (torch.distributed)", _run_args, _run_run)
