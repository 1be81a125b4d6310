"""``schedlang profile``: measure a model's per-layer and per-stage costs and write them as
pipeline parameters.

The command reads the program only for its shape (number of stages and microbatches; it is not
scheduled), builds the model with the same ``--model``/``--split`` options ``schedlang run``
uses (checked the same way), cuts one microbatch off the factory's first batch, and times each layer's and each
stage's F, B and W with :func:`schedlang.api.profile` on this machine's device (CUDA when
available, else the CPU). The result is one ``NAME=[v0, v1, ...]`` line per parameter (``tf``,
``tb``, ``tw`` in ms, ``mem_f``, ``mem_w`` in bytes, or with ``--mem-unit activation`` in units
of one microbatch's activations on stage 0; one value per stage), the format ``--params FILE``
reads back::

    schedlang profile std:zb-h1 --set p=4 -o costs.txt
    schedlang optimize std:zb-h1 --set p=4 --params costs.txt --set mem_limit=...

Reliable figures: the profile runs with ``--threads`` intra-op threads (default 1, as each
``schedlang run`` worker does; an unpinned thread pool makes small CPU ops vary a hundredfold),
``--warmup`` untimed runs, then ``--repeats`` timed runs whose median it keeps; a figure whose
coefficient of variation exceeds ``--cv-limit`` gets a warning on stderr.

W: by default B and W are timed as the runtime's autograd split runs them (the first stage's B
does nothing and its W is the whole backward); with ``--split-backward kernels`` the model's
``nn.Linear``/``nn.LayerNorm`` layers are swapped for :mod:`schedlang.kernels` split layers
first, so W is the deferred kernels' time. ``--partition`` chooses the stages (see
:mod:`schedlang.partition`); the cuts and each stage's predicted time are printed. The
communication time ``tc`` is not measured.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from schedlang.cli.common import (
    Command,
    add_model_args,
    add_program_args,
    load_program,
    write_output,
)
from schedlang.source import SchedlangError


def add_partition_args(p: argparse.ArgumentParser) -> None:
    """``--partition`` and ``--layers-from`` (profile, run, tune)."""
    p.add_argument("--partition", default="params", metavar="auto|step|params|CUTS",
                   help="how the model's layers are cut into stages: balanced parameter counts (params, "
                        "the default), the slowest stage minimised from a per-layer profile (auto), the "
                        "program's simulated step minimised (step; not for tune), or comma-separated "
                        "layer indices where stages 1, 2, ... begin")
    p.add_argument("--layers-from", type=int, metavar="N",
                   help="build the model for N stages and cut its layers (default: the pipeline's stages)")


def _profile_args(p: argparse.ArgumentParser) -> None:
    add_program_args(p, scheduler=False)
    add_model_args(p)
    p.add_argument("--split-backward", choices=["autograd", "kernels"], default="autograd",
                   help="split B and W as the runtime's autograd split does, or with schedlang.kernels layers")
    add_partition_args(p)
    p.add_argument("--repeats", type=int, default=10, help="timed runs per figure; the median is kept (default 10)")
    p.add_argument("--warmup", type=int, default=3, help="untimed runs first (default 3)")
    p.add_argument("--min-time", type=float, default=0.1, metavar="S",
                   help="keep timing a layer or stage past --repeats until its timed runs add up to S "
                        "seconds, so short figures rest on many runs (default 0.1)")
    p.add_argument("--threads", type=int, default=1,
                   help="intra-op threads while profiling (torch.set_num_threads; default 1, as each "
                        "`schedlang run` worker uses)")
    p.add_argument("--cv-limit", type=float, default=0.1, metavar="X",
                   help="warn about a time whose coefficient of variation over the runs exceeds X (default 0.1)")
    p.add_argument("--mem-unit", choices=["bytes", "activation"], default="bytes",
                   help="memory in bytes, or in units of one microbatch's activations on stage 0 (the "
                        "unit the built-in schedules' memory limits use)")
    p.add_argument("--json", action="store_true", help="print the measurements as JSON instead")
    p.add_argument("-o", "--output", metavar="PATH", help="write the parameters to PATH (tables go to stdout)")


def step_cost(args: argparse.Namespace) -> Any:
    """For ``--partition step``: the program's simulated step as a function of per-stage times."""
    if args.partition != "step":
        return None
    from schedlang import api

    return api.step_time_cost(args.file, sets=args.sets, params_file=args.params,
                              scheduler=getattr(args, "scheduler", None))


def warn_noisy(rows: list[dict[str, Any]], limit: float, what: str = "stage") -> int:
    """One warning line on stderr per time that varied more than ``limit`` between runs."""
    from schedlang.kernels.profile import noisy_figures

    noisy = noisy_figures(rows, limit)
    per_row: dict[int, list[str]] = {}
    for s, name, cv in noisy:
        per_row.setdefault(s, []).append(f"{name} {100 * cv:.0f}%")
    for s, figures in per_row.items():
        print(f"warning: {what} {s}: the timed runs vary by more than {100 * limit:.0f}% ({', '.join(figures)}; "
              "robust coefficient of variation); these medians may not hold: profile on an idle "
              "machine or with more --repeats", file=sys.stderr)
    return len(noisy)


def partition_line(prof: Any) -> str:
    """The cuts and each stage's predicted time (the sum of its layers' F, B and W)."""
    from schedlang.partition import stage_times

    times = stage_times(prof.layers, prof.cuts)
    return (f"partition {prof.partition}: cuts {','.join(map(str, prof.cuts)) or '-'} over "
            f"{len(prof.layers)} layers (model built for {prof.layers_from} stages); predicted per-stage "
            f"F+B+W ms: {', '.join(f'{t:.3f}' for t in times)}")


def _profile_run(args: argparse.Namespace) -> int:
    from schedlang import api
    from schedlang.term import Column, Table, use_colour

    api.check_profile_options(args.repeats, args.warmup, args.threads, args.min_time)
    if args.cv_limit <= 0:
        raise SchedlangError("--cv-limit must be positive")
    api.check_output_path(args.output)
    prog = load_program(args, scheduled=False)
    prof = api.profile(prog, args.model, split=args.split, split_backward=args.split_backward, repeats=args.repeats,
                       warmup=args.warmup, min_time=args.min_time, threads=args.threads, partition=args.partition,
                       layers_from=args.layers_from, step_cost=step_cost(args))
    from schedlang.kernels.profile import (  # needs torch: checked
        PARAM_NAMES,
        format_params,
        in_activation_units,
    )
    from schedlang.kernels.profile import TIME_NAMES as TIMES

    warn_noisy(list(prof.layers), args.cv_limit, "layer")
    warn_noisy(list(prof.stages), args.cv_limit)
    stages, layers = list(prof.stages), list(prof.layers)
    unit = "bytes per microbatch"
    if args.mem_unit == "activation":
        if stages[0]["mem_f"] <= 0:
            raise SchedlangError("--mem-unit activation: stage 0 saves no activations")
        unit = f"units of stage 0's activations per microbatch ({int(stages[0]['mem_f'])} bytes)"
        layers = [dict(r, mem_f=r["mem_f"] / stages[0]["mem_f"], mem_w=r["mem_w"] / stages[0]["mem_f"])
                  for r in layers]
        stages = in_activation_units(stages)
    if args.json:
        doc = prof.as_dict()
        doc.update(stages=stages, layers=[dict(r, name=n) for r, n in zip(layers, prof.layer_names, strict=True)])
        doc["units"]["memory"] = "bytes" if args.mem_unit == "bytes" else "activation"
        write_output(json.dumps(doc, indent=1) + "\n", args.output)
        return 0
    modes = ", ".join(f"stage {r['stage']} {r['mode']}" for r in stages)
    header = (f"# schedlang profile {args.file}: {len(stages)} stages, model {args.model}, "
              f"device {stages[0]['device']}, {stages[0]['threads']} thread(s); W: {modes}\n"
              f"# {partition_line(prof)}\n"
              f"# times in ms (median of at least {args.repeats} runs, or {args.min_time:g} s of them, after "
              f"{args.warmup} warm-up), memory in {unit}\n")
    mem_digits = 4 if args.mem_unit == "activation" else 0
    # a program with a fused backward (1F1B, GPipe, ...) also gets its measured time
    param_names = (*PARAM_NAMES, "tbw") if "tbw" in dict(prog.params) else PARAM_NAMES
    write_output(header + format_params(stages, param_names, mem_digits=mem_digits), args.output)
    if args.output and args.output != "-":
        colour = use_colour(sys.stdout)
        mem_fmt = (lambda v: f"{v:.4g}") if args.mem_unit == "activation" else (lambda v: str(int(v)))
        for what, rows, names in (("layer", layers, prof.layer_names), ("stage", stages, None)):
            table = Table([Column(what, fmt=str)] + ([Column("name", "<", str)] if names else [])
                          + [Column(f"{h} ms", fmt=lambda v: f"{v:.4g}") for h in TIMES]
                          + [Column(f"cv {h}", fmt=lambda v: f"{100 * v:.1f}%") for h in TIMES]
                          + [Column(h, fmt=mem_fmt) for h in ("mem_f", "mem_w")] + [Column("W", "<", str)])
            for i, r in enumerate(rows):
                table.add(i, *([names[i]] if names else []), *(r[h] for h in TIMES),
                          *(r["cv"][h] for h in TIMES), r["mem_f"], r["mem_w"], r["mode"])
            sys.stdout.write(table.render(colour))
        print(partition_line(prof))
        print(f"parameters written to {args.output}; use them with --params {args.output}")
    return 0


PROFILE = Command("measure T_F, T_B, T_W and memory per layer and stage of a model; write them as parameters",
                  _profile_args, _profile_run)
