"""``schedlang optimize``: run the CP-SAT optimizer on a program and report what it proved.

    schedlang optimize std:zb-h1 --set p=8 --set m=24 --time-limit 30 --mem-limit 16
    schedlang optimize pipe.sched --objective makespan --json -o orders.txt

Progress goes to stderr while it runs; then the report (status, objective, bound, gap, bubble
rate, warm start, every heuristic's figure) is printed, as a table or one JSON object, and the
orders are written with ``-o`` (``--emit`` format, default ``orders``).
"""

from __future__ import annotations

import argparse
import json
import sys

from schedlang.api import check_output_path
from schedlang.cli import COMMANDS, EMITTERS, add_program_args, load_program, write_output
from schedlang.limits import positive_float


def _args(p: argparse.ArgumentParser) -> None:
    add_program_args(p, scheduler=False)
    p.add_argument("--objective", default="span", help="span (the paper's cost) or makespan")
    p.add_argument("--time-limit", type=positive_float, default=60.0, help="CP-SAT deterministic time (about seconds)")
    p.add_argument("--wall-limit", type=float, default=None,
                   help="wall-clock cap in seconds (default 4 * time limit + 10; 0: none)")
    p.add_argument("--mem-limit", type=float, default=None, help="per-rank memory limit (default: the program's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--no-lns", action="store_true", help="one full CP-SAT solve, no neighbourhood rounds")
    p.add_argument("--no-periodic", action="store_true",
                   help="start from the heuristics only (no periodic steady-state search)")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    p.add_argument("--json", action="store_true", help="print the report as one JSON object")
    p.add_argument("--emit", default="orders", help="format of the orders written with -o")
    p.add_argument("-o", "--output", metavar="PATH", help="write the optimized orders here")


def _run(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from schedlang.schedulers.ilp import optimize

    check_output_path(args.output)
    program = load_program(args, scheduled=False)
    orders, rep = optimize(program, objective=args.objective, time_limit=args.time_limit,
                           mem_limit=args.mem_limit, seed=args.seed, workers=args.workers,
                           lns=not args.no_lns, progress=None if args.quiet else sys.stderr,
                           wall_limit=args.wall_limit, periodic=not args.no_periodic)
    if args.json:
        print(json.dumps(rep.as_dict(), indent=1))
    else:
        print(rep.summary())
        print(f"bound: {rep.bound_detail}")
        print("starts: " + ", ".join(f"{k} {v:.6g}" for k, v in rep.candidates.items()))
    if args.output:
        from schedlang.cli import _register_emitters

        _register_emitters()
        emit = EMITTERS.get(args.emit)
        if emit is None:
            from schedlang.source import SchedlangError

            raise SchedlangError(f"unknown --emit format '{args.emit}' (formats: {', '.join(EMITTERS)})")
        write_output(emit(replace(program, schedule=replace(orders, origin="ilp"))), args.output)
    return 0


COMMANDS["optimize"] = ("optimize the schedule with CP-SAT under the memory limit; report the proved gap",
                        _args, _run)
