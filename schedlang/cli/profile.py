"""``schedlang profile``: measure a model's per-stage costs and write them as pipeline parameters.

The command reads the program only for its shape (number of stages and microbatches; it is not
scheduled), builds the model with the same ``--model``/``--split`` options ``schedlang run``
uses (checked the same way), cuts one microbatch off the factory's first batch, and times each
stage's F, B and W with :func:`schedlang.api.profile` (:func:`schedlang.kernels.profile.profile_ops`)
on this machine's device (CUDA when available,
else the CPU). The result is one ``NAME=[v0, v1, ...]`` line per parameter (``tf``, ``tb``,
``tw`` in ms, ``mem_f``, ``mem_w`` in bytes; one value per stage), the format ``--params FILE``
reads back::

    schedlang profile std:zb-h1 --set p=4 -o costs.txt
    schedlang optimize std:zb-h1 --set p=4 --params costs.txt --set mem_limit=...

With ``--split-backward kernels`` the model's ``nn.Linear``/``nn.LayerNorm`` layers are swapped
for :mod:`schedlang.kernels` split layers first, so W is the deferred kernels' time (mode
``split``); otherwise W is estimated as a full backward minus B (mode ``estimate``). The
communication time ``tc`` is not measured.
"""

from __future__ import annotations

import argparse
import json
import sys

from schedlang.cli.common import (
    Command,
    add_model_args,
    add_program_args,
    load_program,
    write_output,
)


def _profile_args(p: argparse.ArgumentParser) -> None:
    add_program_args(p, scheduler=False)
    add_model_args(p)
    p.add_argument("--split-backward", choices=["autograd", "kernels"], default="autograd",
                   help="time W of plain layers as backward minus B (autograd), or of schedlang.kernels layers")
    p.add_argument("--repeats", type=int, default=5, help="timed runs per stage; the median is kept (default 5)")
    p.add_argument("--warmup", type=int, default=1, help="untimed runs first (default 1)")
    p.add_argument("--json", action="store_true", help="print the measurements as JSON instead")
    p.add_argument("-o", "--output", metavar="PATH", help="write the parameters to PATH (a table goes to stdout)")


def _profile_run(args: argparse.Namespace) -> int:
    from schedlang import api
    from schedlang.term import Column, Table, use_colour

    api.check_profile_options(args.repeats, args.warmup)
    api.check_output_path(args.output)
    prog = load_program(args, scheduled=False)
    rows = api.profile(prog, args.model, split=args.split, split_backward=args.split_backward,
                       repeats=args.repeats, warmup=args.warmup)
    if args.json:
        write_output(json.dumps(rows, indent=1) + "\n", args.output)
        return 0
    from schedlang.kernels.profile import format_params  # needs torch: after api.profile checked it

    modes = ", ".join(f"stage {r['stage']} {r['mode']}" for r in rows)
    header = (f"# schedlang profile {args.file}: {len(rows)} stages, model {args.model}, "
              f"device {rows[0]['device']}; W: {modes}\n"
              "# times in ms (median), memory in bytes per microbatch\n")
    write_output(header + format_params(rows), args.output)
    if args.output and args.output != "-":
        table = Table([Column("stage", fmt=str)] + [Column(h, fmt=lambda v: f"{v:.4g}") for h in ("tf", "tb", "tw")]
                      + [Column(h, fmt=lambda v: str(int(v))) for h in ("mem_f", "mem_w")] + [Column("W", "<", str)])
        for r in rows:
            table.add(r["stage"], r["tf"], r["tb"], r["tw"], r["mem_f"], r["mem_w"], r["mode"])
        sys.stdout.write(table.render(use_colour(sys.stdout)))
        print(f"parameters written to {args.output}; use them with --params {args.output}")
    return 0


PROFILE = Command("measure T_F, T_B, T_W and memory per stage of a model; write them as parameters",
                  _profile_args, _profile_run)
