"""Codegen commands: ``schedlang import`` (PyTorch CSV to schedlang) and ``schedlang streams``
(check an instruction-stream file or a PyTorch CSV with the one stream checker; the work is
:func:`schedlang.stream_files.check_stream_file`).

Registered into :data:`schedlang.cli.COMMANDS` at import.
"""

from __future__ import annotations

import argparse

from schedlang.cli import COMMANDS, write_output


def _import_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", help="a PyTorch schedule CSV (one row per rank, e.g. 0F0,0F1,0I0,0W0)")
    p.add_argument("--format", default="auto", choices=("auto", "compute_only", "compute_comms"),
                   help="compute_only rejects communication actions (as PyTorch does); compute_comms and "
                        "auto skip them (default auto)")
    p.add_argument("-o", "--output", metavar="OUT.sched", help="write the program here instead of stdout")


def _import_run(args: argparse.Namespace) -> int:
    from schedlang.export import import_torch
    from schedlang.stream_files import read_source

    text = read_source(args.file).text
    source, _ = import_torch(text, args.file, args.format, out_name=args.output or "<imported>")
    write_output(source, args.output)
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
    from schedlang.stream_files import check_stream_file

    print(check_stream_file(args.file, args.sends, args.recvs))
    return 0


COMMANDS["import"] = ("import a PyTorch schedule CSV as a schedlang program with explicit orders",
                      _import_args, _import_run)
COMMANDS["streams"] = ("check instruction streams: shape, data flow, matched sends/receives, no deadlock",
                       _streams_args, _streams_run)
