"""``schedlang optimize``: run the CP-SAT optimizer on a program and report what it proved.

    schedlang optimize std:zb-h1 --set p=8 --set m=24 --time-limit 30 --mem-limit 16
    schedlang optimize pipe.sched --objective makespan --json -o orders.txt

The time limit is wall-clock seconds for the whole run (``--deterministic``: CP-SAT's
deterministic time, reproducible). Progress goes to stderr while it runs (each phase as it
starts, each better schedule); then the report (status, objective, bound, gap, bubble
rate, warm start, every heuristic's figure) is printed, as a table or one JSON object, and the
orders are written with ``-o`` (``--emit`` format; default ``sched``, a program ``schedlang check``
accepts, for ``-o FILE.sched``, else ``orders``).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING

from schedlang.cli.common import (
    Command,
    add_emit_arg,
    add_program_args,
    emit_choice,
    load_program,
    write_output,
)
from schedlang.limits import positive_float
from schedlang.schedulers.ilp.options import IlpOptions

if TYPE_CHECKING:
    from schedlang.schedulers.ilp.cpsat import ProgressEvent

_DEFAULTS = IlpOptions()


def _args(p: argparse.ArgumentParser) -> None:
    add_program_args(p, scheduler=False)
    p.add_argument("--objective", default=_DEFAULTS.objective, help="span (the paper's cost) or makespan")
    p.add_argument("--time-limit", type=positive_float, default=_DEFAULTS.time_limit,
                   help="seconds for the whole run, wall clock (with --deterministic: CP-SAT's deterministic time)")
    p.add_argument("--deterministic", action="store_true", default=_DEFAULTS.deterministic,
                   help="reproducible: the time limit counts CP-SAT's deterministic time, so the same seed and "
                        "workers give the same orders")
    p.add_argument("--wall-limit", type=float, default=_DEFAULTS.wall_limit,
                   help="with --deterministic: a wall-clock cap in seconds (default 4 * time limit + 10; 0: none)")
    p.add_argument("--mem-limit", type=float, default=_DEFAULTS.mem_limit,
                   help="per-rank memory limit (default: the program's)")
    p.add_argument("--seed", type=int, default=_DEFAULTS.seed,
                   help=f"CP-SAT random seed (default {_DEFAULTS.seed})")
    p.add_argument("--workers", type=int, default=_DEFAULTS.workers,
                   help=f"CP-SAT search workers (default {_DEFAULTS.workers})")
    p.add_argument("--no-lns", action="store_true", help="one full CP-SAT solve, no neighbourhood rounds")
    p.add_argument("--no-periodic", action="store_true",
                   help="start from the heuristics only (no periodic steady-state search)")
    p.add_argument("--relax", type=float, default=_DEFAULTS.relax, metavar="S",
                   help="seconds of the time limit for the bound that keeps two ranks exact on the first "
                        "microbatches (default 0: off; slow, but it can prove what the other bounds cannot)")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    p.add_argument("--json", action="store_true", help="print the report as one JSON object")
    add_emit_arg(p, "format of the orders written with -o")
    p.add_argument("-o", "--output", metavar="PATH", help="write the optimized orders here")


def _on_stderr(event: ProgressEvent) -> None:
    print(event.text(), file=sys.stderr, flush=True)


def _run(args: argparse.Namespace) -> int:
    from schedlang import api

    api.check_output_path(args.output)
    program = load_program(args, scheduled=False)
    options = IlpOptions(objective=args.objective, time_limit=args.time_limit, mem_limit=args.mem_limit,
                         seed=args.seed, workers=args.workers, lns=not args.no_lns,
                         deterministic=args.deterministic, wall_limit=args.wall_limit,
                         periodic=not args.no_periodic, relax=args.relax)
    optimized, rep = api.optimize(program, options, progress=None if args.quiet else _on_stderr)
    if args.json:
        print(json.dumps(rep.as_dict(), indent=1))
    else:
        print(rep.summary())
        print(f"bound: {rep.bound_detail}")
        print("starts: " + ", ".join(f"{k} {v:.6g}" for k, v in rep.candidates.items()))
    if args.output:
        write_output(api.emit(optimized, emit_choice(args.emit, args.output)), args.output)
    return 0


OPTIMIZE = Command("optimize the schedule with CP-SAT under the memory limit; report the proved gap",
                   _args, _run)
