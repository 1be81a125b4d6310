"""``schedlang render`` and ``schedlang compare``: look at a schedule, and set schedules side by side.

``render FILE -o OUT.svg|OUT.png`` draws the pipeline picture (:func:`schedlang.api.render`).
A ``FILE.json`` is read as a Chrome trace instead (planned by ``compile --emit chrome-trace`` or
measured by the runtime) and drawn as recorded (:func:`schedlang.api.read_trace`).

``compare A B ... [--set NAME=VALUE] [--params FILE] [--scheduler S ...]`` lowers every program
with the same parameter overrides (each override applies to the programs that declare it; one
that no program declares is an error), schedules it with its own schedule clause or with each ``--scheduler``
given, simulates it, and prints one row per (program, scheduler): bubble rate, makespan, cost,
peak memory per rank and the time taken to lower and schedule it (``gen s``). ``--json`` prints a
list of objects (``peak_memory`` is a per-rank list), ``--csv`` a header and one line per row
(``peak_memory`` joined by ``;``). In the terminal the best bubble rate, makespan and peak are
green (on a TTY only). A combination that fails (a scheduler that does not apply to a program,
an infeasible memory limit) becomes a row with its error (``"error"`` in JSON and CSV, the full
located message on stderr) and the exit status is 1; with a single combination the error is
simply reported. The rows come from :func:`schedlang.api.compare_rows`.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import sys
from collections.abc import Callable
from typing import Any

from schedlang.cli.common import (
    Command,
    add_limit_arg,
    add_program_args,
    load_program,
    print_warning,
    write_output,
)
from schedlang.limits import picture_width
from schedlang.source import SchedlangError
from schedlang.term import Column, Table, fmt_num, paint, use_colour

# ------------------------------------------------------------------ render


def _render_args(p: argparse.ArgumentParser) -> None:
    add_program_args(p)
    p.add_argument("-o", "--output", metavar="OUT", help="OUT.svg or OUT.png (default: SVG on stdout)")
    p.description = ("draw a schedule as SVG or PNG: one row per rank, time across; FILE may also be a "
                     "Chrome trace (.json, planned or measured), drawn as recorded")
    p.add_argument("--memory", action="store_true", help="plot each rank's memory under its row")
    p.add_argument("--width", type=picture_width, default=None,
                   help="picture width in pixels, 200 to 20000 (default: from the schedule)")
    p.add_argument("--format", choices=("svg", "png"), help="output format (default: from OUT's extension)")


def _render_run(args: argparse.Namespace) -> int:
    from schedlang import api
    from schedlang.render import scene_png, scene_svg

    fmt = args.format
    if fmt is None:
        ext = os.path.splitext(args.output or "")[1].lower()
        if args.output and ext not in (".svg", ".png"):
            raise SchedlangError(f"cannot tell the format of '{args.output}': use .svg or .png, or --format")
        fmt = "png" if ext == ".png" else "svg"
    if fmt == "png" and (not args.output or args.output == "-"):
        raise SchedlangError("PNG output needs -o OUT.png (a file, not stdout)")
    if args.file.endswith(".json"):
        prog, sim = _trace_timeline(args)
        scene = api.render(prog, sim, width=args.width or 0)
    else:
        prog = load_program(args)
        scene = api.render(prog, memory=args.memory, width=args.width or 0)
    if fmt == "png":
        scene_png(scene, args.output)
    else:
        write_output(scene_svg(scene), args.output)
    if args.output and args.output != "-":
        print(f"wrote {args.output} ({scene.width}x{scene.height}, {len(prog.ops)} ops)", file=sys.stderr)
    return 0


def _trace_timeline(args: argparse.Namespace) -> tuple[Any, Any]:
    """The timeline of a Chrome trace file (planned by ``--emit chrome-trace`` or measured)."""
    from schedlang import api

    for flag, given in (("--set", args.sets), ("--scheduler", args.scheduler), ("--memory", args.memory),
                        ("--config", args.config)):
        if given:
            raise SchedlangError(f"{flag} does not apply to a trace ('{args.file}' is drawn as recorded)")
    return api.read_trace(args.file)


# ------------------------------------------------------------------ compare


def _compare_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("files", nargs="+", metavar="FILE", help="programs (.sched files or std:NAME)")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="NAME=VALUE",
                   help="override a parameter in every program that declares it (repeatable)")
    p.add_argument("--params", metavar="FILE",
                   help="read overrides from FILE (NAME=VALUE lines, as `schedlang profile` writes), each "
                        "applied to every program that declares it; --set wins over it")
    p.add_argument("--scheduler", dest="schedulers", action="append", default=[], metavar="NAME[:ARG=VALUE,...]",
                   help="schedule every program with this scheduler (repeatable; default: each program's own)")
    out = p.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help="print a JSON list, one object per row")
    out.add_argument("--csv", action="store_true", help="print CSV with a header line")
    p.add_argument("-o", "--output", metavar="PATH", help="write to PATH instead of stdout")
    add_limit_arg(p)


def _peak_cell(peaks: list[float]) -> str:
    if len(peaks) <= 8:
        return " ".join(fmt_num(x, 4) for x in peaks)
    hi = max(range(len(peaks)), key=lambda r: peaks[r])
    return f"max {fmt_num(peaks[hi], 4)} (rank {hi}), min {fmt_num(min(peaks), 4)}"


def compare_table(rows: list[dict[str, Any]]) -> Table:
    """The terminal table of :func:`schedlang.api.compare_rows`, best figures highlighted."""
    def opt(fmt: Callable[[Any], str]) -> Callable[[Any], str]:
        return lambda x: "-" if x is None else fmt(x)

    table = Table([Column("program", "<", str), Column("scheduler", "<", str), Column("p x m", "<", str),
                   Column("bubble rate", fmt=opt(lambda x: f"{x * 100:.2f}%")), Column("makespan", fmt=opt(fmt_num)),
                   Column("cost", fmt=opt(fmt_num)), Column("peak memory per rank", "<", str),
                   Column("gen s", fmt=opt(lambda x: f"{x:.3f}"))])
    for row in rows:
        if "error" in row:  # the located message goes to stderr
            table.add(row["program"], row["scheduler"], "-", None, None, None, "error (on stderr)", None)
            continue
        shape = f"{row['num_ranks']} x {row['num_microbatches']}"
        if row["num_stages"] != row["num_ranks"]:
            shape += f" ({row['num_stages']} stages)"
        table.add(row["program"], row["scheduler"], shape, row["bubble_rate"], row["makespan"], row["cost"],
                  _peak_cell(row["peak_memory"]), row["generation_s"])
    good = [r for r in rows if "error" not in r]
    if len(good) > 1:
        for col, key in ((3, lambda r: r["bubble_rate"]), (4, lambda r: r["makespan"]),
                         (6, lambda r: max(r["peak_memory"]))):
            best = min(key(r) for r in good)
            for i, r in enumerate(rows):
                if "error" not in r and key(r) <= best + 1e-12:
                    table.highlight(i, col, "green", "bold")
    for i, r in enumerate(rows):
        if "error" in r:
            table.highlight(i, 6, "red")
    return table


def _csv_text(rows: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    keys = ["program", "scheduler", "num_ranks", "num_stages", "num_microbatches", "num_ops", "bubble_rate",
            "makespan", "cost", "bubble", "peak_memory", "generation_s"]
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(keys + ["error"])
    for r in rows:
        if "error" in r:
            w.writerow([r["program"], r["scheduler"]] + [""] * (len(keys) - 2) + [r["error"].splitlines()[0]])
            continue
        w.writerow([";".join(repr(x) for x in r[k]) if k == "peak_memory" else
                    (repr(r[k]) if isinstance(r[k], float) else r[k]) for k in keys] + [""])
    return buf.getvalue()


def _compare_run(args: argparse.Namespace) -> int:
    from schedlang import api

    rows = api.compare_rows(args.files, args.sets, args.schedulers, params_file=args.params,
                            on_warning=print_warning)
    status = 1 if any("error" in r for r in rows) else 0
    for r in rows:
        if "error" in r:
            print(f"{r['program']} with {r['scheduler']}: {r['error']}", file=sys.stderr)
    if args.json:
        write_output(json.dumps(rows, indent=1) + "\n", args.output)
        return status
    if args.csv:
        write_output(_csv_text(rows), args.output)
        return status
    to_file = args.output is not None and args.output != "-"
    colour = not to_file and use_colour(sys.stdout)
    text = compare_table(rows).render(colour)
    for r in rows:
        if r["ignored_sets"]:
            note = f"note: {r['program']} does not declare {', '.join(r['ignored_sets'])}; left at its default"
            text += paint(note, "yellow", enabled=colour) + "\n"
    write_output(text, args.output)
    return status


RENDER = Command("draw a schedule as SVG or PNG: one row per rank, time across", _render_args, _render_run)
COMPARE = Command("compare programs or schedulers on the same costs: bubble, makespan, memory",
                  _compare_args, _compare_run)
