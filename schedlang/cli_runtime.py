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
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from schedlang.api import check_output_path
from schedlang.cli import COMMANDS, add_program_args, load_program
from schedlang.ir import Program
from schedlang.limits import nonneg_int, positive_float
from schedlang.source import SchedlangError

__all__ = ["runner_from_program", "summarize_timelines"]


def runner_from_program(program: Program, rank: int, stage_modules: Mapping[int, Any], loss_fn: Any,
                        optimizer_factory: Any = None, **options: Any) -> Any:
    """A ``PipelineRunner`` for ``rank`` of a scheduled, verified program (codegen included)."""
    from schedlang.codegen import codegen
    from schedlang.runtime.executor import PipelineRunner

    return PipelineRunner(codegen(program), rank, stage_modules, loss_fn, optimizer_factory, **options)


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
    p.add_argument("--prepost", type=nonneg_int, default=4, metavar="K",
                   help="post each receive K instructions before its place in the stream (default 4; "
                        "0 = exactly where the stream says)")
    p.add_argument("--timeout", type=positive_float, default=60.0,
                   help="seconds an instruction may take before every rank stops (default 60)")


def _launch_torchrun(nproc: int, worker_args: list[str]) -> int:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
           "-m", "schedlang.runtime.worker", *worker_args]
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    return subprocess.run(cmd, env=env).returncode


def _launch_spawn(nproc: int, worker_args: list[str], timeout: float) -> int:
    from schedlang.runtime.launch import spawn
    from schedlang.runtime.worker import worker_main

    results = spawn(worker_main, nproc, (worker_args,), timeout=timeout, join_timeout=10 * timeout,
                    check=False)
    code = 0
    for r in results:
        if r.exitcode != 0:
            code = 1
            lines = [ln for ln in r.stderr.splitlines() if "schedlang runtime:" in ln or "Error" in ln]
            print(f"rank {r.rank}: exit {r.exitcode}: {r.error or (lines[-1] if lines else '')}", file=sys.stderr)
    return code


def summarize_timelines(out_dir: str) -> tuple[list[Any], dict[str, Any]]:
    """Read the workers' timelines; return all events and the measured bubble (steps after the first)."""
    from schedlang.runtime.timeline import Event, measured_bubble

    events: list[Event] = []
    for path in sorted(Path(out_dir).glob("rank*.json")):
        doc = json.loads(path.read_text(encoding="utf-8"))
        events.extend(Event.from_dict(e) for e in doc["events"])
    steps = sorted({e.step for e in events})
    measured = [measured_bubble([e for e in events if e.step == s]) for s in steps[1:] or steps]
    if not measured:
        return events, {}
    n = len(measured)
    return events, {
        "steps": n,
        "bubble_rate": sum(b.bubble_rate for b in measured) / n,
        "cost_s": sum(b.cost for b in measured) / n,
        "makespan_s": sum(b.makespan for b in measured) / n,
    }


def _check_model(spec: str) -> None:
    """Import the model factory here first: a typo is a plain error, not a crash on every rank."""
    from schedlang.runtime.worker import load_factory

    try:
        factory = load_factory(spec)
    except (ValueError, ImportError, AttributeError) as exc:
        raise SchedlangError(f"--model {spec}: {exc}") from None
    if not callable(factory):
        raise SchedlangError(f"--model {spec}: not a callable factory")


def _run_run(args: argparse.Namespace) -> int:
    from schedlang import isa
    from schedlang.codegen import codegen
    from schedlang.simulate import simulate

    check_output_path(args.trace)
    prog = load_program(args)
    nproc = args.nproc if args.nproc is not None else prog.num_ranks
    if nproc != prog.num_ranks:
        raise SchedlangError(f"--nproc {nproc}, but the schedule has {prog.num_ranks} ranks "
                             f"(set the program's rank parameter, e.g. --set p={nproc})")
    if args.steps < 1:
        raise SchedlangError("--steps must be at least 1")
    _check_model(args.model)
    streams = codegen(prog)
    sim = simulate(prog)
    with tempfile.TemporaryDirectory(prefix="schedlang-run-") as tmp:
        path = os.path.join(tmp, "streams.json")
        Path(path).write_text(isa.to_json(streams), encoding="utf-8")
        worker_args = ["--streams", path, "--model", args.model, "--steps", str(args.steps), "--out", tmp,
                       "--split-backward", args.split_backward, "--timeout", str(args.timeout),
                       "--prepost", str(args.prepost)]
        print(f"{prog.name}: {prog.num_ranks} ranks, {prog.num_stages} stages, {prog.num_microbatches} "
              f"microbatches; model {args.model}; {args.steps} steps", flush=True)
        if args.launcher == "torchrun":
            code = _launch_torchrun(nproc, worker_args)
        else:
            code = _launch_spawn(nproc, worker_args, args.timeout)
        if code != 0:
            print(f"schedlang run: the workers failed (exit status {code})", file=sys.stderr)
            return 1
        events, measured = summarize_timelines(tmp)
    if measured:
        print(f"bubble rate: measured {measured['bubble_rate']:.4f} (mean of {measured['steps']} steps after "
              f"the first; step {measured['makespan_s'] * 1e3:.2f} ms)  simulated {sim.bubble_rate:.4f}")
    if args.trace:
        from schedlang.runtime.timeline import write_chrome_trace

        meta = {"program": prog.name, "simulated_bubble_rate": sim.bubble_rate, **measured}
        try:
            write_chrome_trace(args.trace, events, meta)
        except OSError as exc:
            raise SchedlangError(f"cannot write '{args.trace}': {exc.strerror}") from None
        print(f"trace: {args.trace} ({len(events)} events, {nproc} ranks)")
    return 0


COMMANDS["run"] = ("train a model with a schedule on real processes (torch.distributed)", _run_args, _run_run)
