"""``schedlang check``, ``simulate`` and ``compile``: read a program, report on it, write it out."""

from __future__ import annotations

import argparse
import json
import sys

from schedlang.cli.common import (
    Command,
    add_emit_arg,
    add_program_args,
    emit_choice,
    load_program,
    write_output,
)

# ------------------------------------------------------------------ check


def _check_args(p: argparse.ArgumentParser) -> None:
    add_program_args(p)


def _check_run(args: argparse.Namespace) -> int:
    from schedlang import api

    prog = load_program(args)
    print(f"{args.file}: ok: {api.describe(prog)}")
    return 0


# ------------------------------------------------------------------ simulate


def _simulate_args(p: argparse.ArgumentParser) -> None:
    add_program_args(p)
    p.add_argument("--json", action="store_true", help="print one JSON object")


def _simulate_run(args: argparse.Namespace) -> int:
    from schedlang import api

    prog = load_program(args)
    d = api.simulation_dict(prog)
    if args.json:
        print(json.dumps(d, indent=1))
        return 0
    from schedlang.term import Column, Table, use_colour

    def num(x: float) -> str:  # float noise such as 2e-13 idle reads as 0
        return f"{0.0 if abs(x) < 1e-9 * max(1.0, d['makespan']) else x:.6g}"

    print(f"{prog.name}: {prog.num_ranks} ranks, {prog.num_stages} stages, {prog.num_microbatches} microbatches")
    print(f"makespan {num(d['makespan'])}  cost {num(d['cost'])}  bubble {num(d['bubble'])}  "
          f"bubble rate {d['bubble_rate'] * 100:.2f}%")
    if "weights" in d:  # an asynchronous policy: a window of a flush-free stream
        steady = d["steady_time_per_mb"]
        print(f"weights {d['weights']}: weight versions per stage {' '.join(map(str, d['peak_versions']))}; "
              "steady state " + (f"{num(steady)} per microbatch" if steady is not None
                                 else "not reached in this window (raise the microbatches)"))
    table = Table([Column("rank", fmt=str)] + [Column(h, fmt=num) for h in ("busy", "span", "idle", "peak mem")])
    for r in d["ranks"]:
        table.add(r["rank"], r["busy"], r["span"], r["idle"], r["peak_memory"])
    sys.stdout.write(table.render(use_colour(sys.stdout)))
    return 0


# ------------------------------------------------------------------ compile


def _compile_args(p: argparse.ArgumentParser) -> None:
    add_program_args(p)
    add_emit_arg(p, "output format")
    p.add_argument("-o", "--output", metavar="PATH", help="write to PATH instead of stdout")
    p.add_argument("--dump-after", metavar="PASS", help="print the IR after PASS (lower, schedule, ...) to stdout")


def _compile_run(args: argparse.Namespace) -> int:
    from schedlang import api

    prog = load_program(args, dump_after=args.dump_after)
    write_output(api.emit(prog, emit_choice(args.emit, args.output)), args.output)
    return 0


CHECK = Command("parse, check and verify a program", _check_args, _check_run)
SIMULATE = Command("simulate a schedule: makespan, bubble rate, per-rank busy/idle/peak memory",
                   _simulate_args, _simulate_run)
COMPILE = Command("compile a program and emit IR, orders or other formats", _compile_args, _compile_run)
