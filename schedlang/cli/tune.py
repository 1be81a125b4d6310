"""``schedlang tune``: from a model to its fastest schedule, measured.

Profiles the model's layers, partitions them into balanced stages, schedules every candidate
(the built-ins that fit the memory limit, the zero-bubble searches and the CP-SAT optimizer
under it) on the measured costs, runs the best few (and 1F1B) for a few steps, and prints one
table: predicted and measured step time, the prediction's error, predicted and measured peak
memory, and the choice (the least measured step time). The chosen schedule is written as a
``.sched`` program with explicit orders (``PREFIX.sched``) and as PyTorch's compute-only schedule
CSV (``PREFIX.csv``) for ``torch.distributed.pipelining``. Progress goes to stderr; ``--json``
prints the result as JSON. See :mod:`schedlang.tune`.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time

from schedlang.cli.common import Command, write_output
from schedlang.cli.profile import add_partition_args
from schedlang.source import SchedlangError


def _tune_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="schedlang.runtime.models:tiny_gpt", metavar="MODULE:FACTORY",
                   help="model factory, as for `schedlang run` (default: the bundled tiny GPT)")
    p.add_argument("--nproc", type=int, default=4, help="pipeline ranks, one process each (default 4)")
    p.add_argument("--microbatches", type=int, help="microbatches per step (default 2 * nproc)")
    p.add_argument("--mem-limit", type=float, default=math.inf, metavar="X",
                   help="per-rank memory limit in units of one microbatch's activations on stage 0 "
                        "(as `schedlang profile --mem-unit activation` reports; default: none)")
    p.add_argument("--time-limit", type=float, default=10.0, metavar="S",
                   help="wall-clock seconds for the optimizer (default 10)")
    p.add_argument("--no-optimizer", action="store_true", help="leave the CP-SAT optimizer out")
    p.add_argument("--steps", type=int, default=5, help="training steps per candidate run; the first is not timed (default 5)")
    p.add_argument("--rounds", type=int, default=1,
                   help="run each chosen candidate this many times, taking turns; the median is over all their steps")
    p.add_argument("--top", type=int, default=3, help="run this many best-predicted candidates, plus 1F1B (default 3)")
    add_partition_args(p)
    p.set_defaults(partition="auto")
    p.add_argument("--split-backward", choices=["autograd", "kernels"], default="autograd",
                   help="how B and W are split, in the profile and the runs")
    p.add_argument("--repeats", type=int, default=10, help="timed profile runs per figure (default 10)")
    p.add_argument("--warmup", type=int, default=3, help="untimed profile runs first (default 3)")
    p.add_argument("--min-time", type=float, default=0.1, metavar="S",
                   help="profile each layer and stage for at least S seconds of timed runs (default 0.1)")
    p.add_argument("--threads", type=int, default=1, help="intra-op threads per process, in the profile and the runs (default 1)")
    p.add_argument("--tc", type=float, default=None,
                   help="communication time (ms) per message the prediction assumes (default: measured, one "
                        "stage output sent between two processes)")
    p.add_argument("--no-calibrate", dest="calibrate", action="store_false",
                   help="predict with the profiled op times and the measured message time as they are "
                        "(default: run 1F1B first and fit the ops' speed and what a message costs in a run "
                        "to it; off when --tc is given or the ranks share cores)")
    p.add_argument("--cores", type=float, default=None,
                   help="processors the ranks share (default: on a CPU, this machine's cores over --threads; "
                        "on GPUs none are shared); with fewer than --nproc the prediction shares them")
    p.add_argument("--launcher", choices=["torchrun", "spawn"], default="spawn",
                   help="how the workers of each measured run start (as for schedlang run; default spawn)")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds an instruction may take in a run")
    p.add_argument("-o", "--output", default="tuned", metavar="PREFIX",
                   help="write the choice to PREFIX.sched and PREFIX.csv (default: tuned)")
    p.add_argument("--json", action="store_true", help="print the result as JSON instead of the table")


def _fmt(v: float, spec: str = ".3f") -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)


def render_table(result: object, colour: bool = False) -> str:
    """The candidates as one table (what ``schedlang tune`` prints). ``compute x``: the busiest
    rank's measured compute time in a step over the predicted one (above 1: the ops ran slower
    than profiled, e.g. processes sharing cores)."""
    from schedlang.term import Column, Table

    table = Table([Column("schedule", "<", str), Column("pred ms", fmt=_fmt), Column("meas ms", fmt=_fmt),
                   Column("error", fmt=lambda v: "-" if math.isnan(v) else f"{v:+.0f}%"),
                   Column("pred peak", fmt=lambda v: _fmt(v, ".2f")), Column("meas peak", fmt=lambda v: _fmt(v, ".2f")),
                   Column("pred KiB", fmt=lambda v: _fmt(v / 1024, ".0f")),
                   Column("meas KiB", fmt=lambda v: _fmt(v / 1024, ".0f")),
                   Column("compute x", fmt=lambda v: _fmt(v, ".1f")), Column("", "<", str)])
    for c in result.candidates:  # type: ignore[attr-defined]
        note = "<- chosen" if c.chosen else (c.error or c.run_error or ("" if not math.isnan(c.measured_ms) else "not run"))
        if len(note) > 90:  # the whole reason is in --json
            note = note[:89] + "…"
        table.add(c.name, c.predicted_ms, c.measured_ms, c.error_pct, c.predicted_peak, c.measured_peak,
                  c.predicted_peak_bytes, c.measured_peak_bytes, c.measured_busy_ms / c.predicted_busy_ms, note)
    return table.render(colour)


def _tune_run(args: argparse.Namespace) -> int:
    from schedlang import api
    from schedlang.cli.profile import partition_line
    from schedlang.term import use_colour

    t0 = time.monotonic()

    def progress(line: str) -> None:
        print(f"[tune {time.monotonic() - t0:6.1f}s] {line}", file=sys.stderr, flush=True)

    result = api.tune(args.model, args.nproc, microbatches=args.microbatches, mem_limit=args.mem_limit,
                      time_limit=args.time_limit, steps=args.steps, top=args.top, layers_from=args.layers_from,
                      partition=args.partition, split_backward=args.split_backward, repeats=args.repeats,
                      warmup=args.warmup, min_time=args.min_time, threads=args.threads, tc=args.tc,
                      calibrate=args.calibrate,
                      cores=args.cores, launcher=args.launcher,
                      timeout=args.timeout, optimizer=not args.no_optimizer, rounds=args.rounds, progress=progress)
    written = []
    if result.chosen is not None:
        for ext, text in (("sched", result.sched_text), ("csv", result.csv_text)):
            if text:
                write_output(text, f"{args.output}.{ext}")
                written.append(f"{args.output}.{ext}")
    if args.json:
        doc = result.as_dict()
        doc["written"] = written
        sys.stdout.write(json.dumps(doc, indent=1) + "\n")
        return 0 if result.chosen is not None else 1
    for v, prof in sorted(result.profiles.items()):
        print(f"{v} chunk(s) per rank: {partition_line(prof)}")
    print(f"memory: peak in units of one microbatch's activations on stage 0 ({result.unit_bytes:.0f} bytes); "
          f"limit {'none' if math.isinf(result.mem_limit) else f'{result.mem_limit:g}'}; measured peak: "
          "activations saved for backward alive at once (max over ranks)")
    sys.stdout.write(render_table(result, use_colour(sys.stdout)))
    for note in result.notes:
        print(f"note: {note}")
    if result.chosen is None:
        raise SchedlangError("no candidate ran successfully; nothing was chosen")
    print(f"chosen: {result.chosen.name} ({_fmt(result.chosen.measured_ms)} ms measured); "
          f"written: {', '.join(written)}")
    return 0


TUNE = Command("profile a model, partition it, schedule every candidate, run the best and choose the fastest",
               _tune_args, _tune_run)
