"""Codegen commands: ``schedlang import`` (PyTorch CSV to schedlang) and ``schedlang streams``
(check an instruction-stream file, or a PyTorch compute_comms CSV, for deadlocks and mismatched
messages).

Registered into :data:`schedlang.cli.COMMANDS` at import.
"""

from __future__ import annotations

import argparse

from schedlang.cli import COMMANDS, write_output
from schedlang.limits import limit_arg
from schedlang.source import SchedlangError


def _import_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", help="a PyTorch schedule CSV (one row per rank, e.g. 0F0,0F1,0I0,0W0)")
    p.add_argument("--format", default="auto", choices=("auto", "compute_only", "compute_comms"),
                   help="compute_only rejects communication actions (as PyTorch does); compute_comms and "
                        "auto skip them (default auto)")
    p.add_argument("-o", "--output", metavar="OUT.sched", help="write the program here instead of stdout")
    p.add_argument("--limit", dest="limits", action="append", type=limit_arg, metavar="NAME=N", help="raise a work limit (e.g. max_source_bytes=8000000)")


def _import_run(args: argparse.Namespace) -> int:
    from schedlang.export import import_torch
    from schedlang.load import read_text_file

    source, _ = import_torch(read_text_file(args.file).text, args.file, args.format, out_name=args.output or "<imported>")
    write_output(source, args.output)
    return 0


def _streams_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", help="an instruction-stream file (text or JSON, see schedlang.isa), or a PyTorch "
                                "compute_comms CSV (FILE.csv)")
    p.add_argument("--sends", default="buffered", choices=("buffered", "rendezvous"),
                   help="blocking semantics of sends (default buffered, the ISA's)")
    p.add_argument("--recvs", choices=("blocking", "posted"),
                   help="receives block where they stand (default for streams, the ISA's) or only post, "
                        "the consumer waiting (default for a PyTorch CSV, as its runtime does)")


def _streams_run(args: argparse.Namespace) -> int:
    from schedlang import isa
    from schedlang.codegen import check_deadlock

    try:
        if args.file.endswith(".csv"):
            from schedlang.export import torch_csv_to_streams

            with open(args.file, encoding="utf-8") as fh:
                streams = torch_csv_to_streams(fh.read(), args.file)
        else:
            streams = isa.load(args.file)
    except OSError as exc:
        raise SchedlangError(f"cannot read '{args.file}': {exc.strerror}") from None
    except isa.IsaError as exc:
        raise SchedlangError(f"{args.file}: {exc}") from None
    recvs = args.recvs or ("posted" if args.file.endswith(".csv") else "blocking")
    check_deadlock(streams, args.sends, recvs)
    n = sum(len(rs.instrs) for rs in streams.ranks)
    how = f"{args.sends} sends" + (", posted receives" if recvs == "posted" else "")
    print(f"{args.file}: ok: {streams.num_ranks} ranks, {n} instructions, no deadlock ({how})")
    return 0


COMMANDS["import"] = ("import a PyTorch schedule CSV as a schedlang program with explicit orders",
                      _import_args, _import_run)
COMMANDS["streams"] = ("check instruction streams: matched sends/receives, no deadlock",
                       _streams_args, _streams_run)
