"""Codegen commands: ``schedlang import`` (PyTorch CSV to schedlang) and ``schedlang streams``
(check an instruction-stream file or a PyTorch CSV with the one stream checker).

The work is :func:`schedlang.api.import_torch_csv` and :func:`schedlang.api.check_streams`.
"""

from __future__ import annotations

import argparse

from schedlang.cli.common import Command, add_emit_arg, add_limit_arg, write_output


def _import_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", help="a PyTorch schedule CSV (one row per rank, e.g. 0F0,0F1,0I0,0W0)")
    p.add_argument("--format", default="auto", choices=("auto", "compute_only", "compute_comms"),
                   help="compute_only rejects communication actions (as PyTorch does); compute_comms and "
                        "auto skip them (default auto)")
    p.add_argument("-o", "--output", metavar="OUT.sched", help="write the program here instead of stdout")
    add_limit_arg(p, "max_source_bytes=8000000")
    add_emit_arg(p, "write the imported schedule in this format",
                 "the program as imported, importing std:fbw or std:fused; sched writes it self-contained")


def _import_run(args: argparse.Namespace) -> int:
    from schedlang import api

    source, program = api.import_torch_csv(args.file, args.format, out_name=args.output or "<imported>")
    write_output(source if args.emit is None else api.emit(program, args.emit), args.output)
    return 0


def _streams_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", help="an instruction-stream file (text or JSON, see schedlang.isa), or a PyTorch "
                                "schedule CSV (FILE.csv; a compute-only one is checked with the "
                                "communication PyTorch adds)")
    p.add_argument("--sends", default="buffered", choices=("buffered", "rendezvous"),
                   help="blocking semantics of sends (default buffered, the ISA's)")
    p.add_argument("--recvs", choices=("blocking", "posted"),
                   help="receives block where they stand (default for streams, the ISA's) or only post, "
                        "the consumer waiting (default for a PyTorch CSV, as its runtime does)")


def _streams_run(args: argparse.Namespace) -> int:
    from schedlang import api

    print(api.check_streams(args.file, args.sends, args.recvs))
    return 0


IMPORT = Command("import a PyTorch schedule CSV as a schedlang program with explicit orders",
                 _import_args, _import_run)
STREAMS = Command("check instruction streams: shape, data flow, matched sends/receives, no deadlock",
                  _streams_args, _streams_run)
