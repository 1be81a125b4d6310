"""The ``schedlang`` command.

Subcommands are registered in :data:`COMMANDS` (name -> (help, add_arguments, run)). Every user
error is printed as a located diagnostic on stderr with exit status 1; a Python traceback is
shown only for internal errors, and only with ``SCHEDLANG_DEBUG=1``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import traceback
from collections.abc import Callable, Sequence
from typing import Any, TextIO

from schedlang import __version__, limits
from schedlang.ir import Program, format_orders, format_program
from schedlang.source import SchedlangError

EXIT_USER = 1
EXIT_INTERNAL = 3


# ------------------------------------------------------------------ shared helpers


def add_program_args(p: argparse.ArgumentParser, *, scheduler: bool = True) -> None:
    """Arguments every command that reads a program takes."""
    p.add_argument("file", help="a .sched file, or std:NAME for a built-in")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="NAME=VALUE",
                   help="override a parameter (repeatable); VALUE is a literal: 8, 1.5, [1, 2], true")
    p.add_argument("--params", metavar="FILE",
                   help="read overrides from FILE (NAME=VALUE lines, as `schedlang profile` writes); "
                        "--set wins over it")
    p.add_argument("--import-root", metavar="DIR", help="let imports reach .sched files under DIR (default: the file's folder)")
    p.add_argument("--limit", dest="limits", action="append", type=limits.limit_arg, metavar="NAME=N", help="raise a work limit (e.g. max_ops=5000000)")
    if scheduler:
        p.add_argument("--scheduler", metavar="NAME[:ARG=VALUE,...]",
                       help="replace the program's schedule clause with a named scheduler")


def load_program(args: argparse.Namespace, *, scheduled: bool = True,
                 dump_after: str | None = None, out: TextIO | None = None) -> Program:
    """Parse, check, lower (and by default schedule and verify) the program the arguments name."""
    from schedlang import api
    from schedlang.load import read_source
    from schedlang.passes import DEFAULT_PIPELINE, run_passes
    from schedlang.source import Span, cli_source
    from schedlang.verify import verify

    params: dict[str, Any] = {}
    spans: dict[str, Span] = {}
    if getattr(args, "params", None):
        for name, value, span in api.read_params_file(args.params):
            params[name], spans[name] = value, span
    for text in args.sets:
        name, value = api.parse_assignment(text)
        params[name] = value
        spans[name] = Span(cli_source(text), 1, 1, 1, len(name) + 1)
    program = api.lower_source(read_source(args.file), params, spans, import_root=getattr(args, "import_root", None))
    for warning in program.warnings:
        print(warning.render("warning"), file=sys.stderr)
    if getattr(args, "scheduler", None) is not None:
        program = api.with_scheduler(program, args.scheduler)
    if not scheduled:
        return program

    def dump(name: str, prog: Program) -> None:
        stream = out or sys.stdout
        stream.write(f"# IR after {name}\n{format_program(prog)}")

    program = run_passes(program, DEFAULT_PIPELINE, dump_after=dump_after, dump=dump)
    verify(program)
    return program


def write_output(text: str, path: str | None) -> None:
    if path is None or path == "-":
        sys.stdout.write(text)
        return
    try:
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(text)
    except OSError as exc:
        raise SchedlangError(f"cannot write '{path}': {exc.strerror}") from None


# ------------------------------------------------------------------ check


def _check_args(p: argparse.ArgumentParser) -> None:
    add_program_args(p)


def _check_run(args: argparse.Namespace) -> int:
    prog = load_program(args)
    print(f"{args.file}: ok: {prog.num_ranks} ranks, {prog.num_stages} stages, "
          f"{prog.num_microbatches} microbatches, {len(prog.ops)} ops, {len(prog.edges)} dependencies")
    return 0


# ------------------------------------------------------------------ simulate


def _simulate_args(p: argparse.ArgumentParser) -> None:
    add_program_args(p)
    p.add_argument("--json", action="store_true", help="print one JSON object")


def simulation_dict(prog: Program) -> dict[str, Any]:
    from schedlang.simulate import simulate

    sim = simulate(prog)
    return {"name": prog.name, "num_ranks": prog.num_ranks, "num_stages": prog.num_stages,
            "num_microbatches": prog.num_microbatches, "num_ops": len(prog.ops), **sim.as_dict()}


def _simulate_run(args: argparse.Namespace) -> int:
    prog = load_program(args)
    d = simulation_dict(prog)
    if args.json:
        print(json.dumps(d, indent=1))
        return 0
    from schedlang.term import Column, Table, use_colour

    def num(x: float) -> str:  # float noise such as 2e-13 idle reads as 0
        return f"{0.0 if abs(x) < 1e-9 * max(1.0, d['makespan']) else x:.6g}"

    print(f"{prog.name}: {prog.num_ranks} ranks, {prog.num_stages} stages, {prog.num_microbatches} microbatches")
    print(f"makespan {num(d['makespan'])}  cost {num(d['cost'])}  bubble {num(d['bubble'])}  "
          f"bubble rate {d['bubble_rate'] * 100:.2f}%")
    table = Table([Column("rank", fmt=str)] + [Column(h, fmt=num) for h in ("busy", "span", "idle", "peak mem")])
    for r in d["ranks"]:
        table.add(r["rank"], r["busy"], r["span"], r["idle"], r["peak_memory"])
    sys.stdout.write(table.render(use_colour(sys.stdout)))
    return 0


# ------------------------------------------------------------------ compile

# --emit formats: name -> function(program) -> text. Codegen and render add theirs here.
EMITTERS: dict[str, Callable[[Program], str]] = {
    "ir": format_program,
    "orders": format_orders,
}


def _compile_args(p: argparse.ArgumentParser) -> None:
    add_program_args(p)
    p.add_argument("--emit", default="orders", help="output format (ir, orders, ...; see --help)")
    p.add_argument("-o", "--output", metavar="PATH", help="write to PATH instead of stdout")
    p.add_argument("--dump-after", metavar="PASS", help="print the IR after PASS (lower, schedule, ...) to stdout")


def _compile_run(args: argparse.Namespace) -> int:
    _register_emitters()
    if args.emit not in EMITTERS:
        raise SchedlangError(f"unknown --emit format '{args.emit}' (formats: {', '.join(EMITTERS)})")
    prog = load_program(args, dump_after=args.dump_after)
    write_output(EMITTERS[args.emit](prog), args.output)
    return 0


def _register_emitters() -> None:
    """Emitters from modules that are optional or heavier to import; each registers itself."""
    for mod in ("schedlang.codegen", "schedlang.export", "schedlang.render"):
        try:
            __import__(mod)
        except ModuleNotFoundError as exc:
            if exc.name != mod:
                raise


# ------------------------------------------------------------------ registry and main

Command = tuple[str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]

COMMANDS: dict[str, Command] = {
    "check": ("parse, check and verify a program", _check_args, _check_run),
    "simulate": ("simulate a schedule: makespan, bubble rate, per-rank busy/idle/peak memory",
                 _simulate_args, _simulate_run),
    "compile": ("compile a program and emit IR, orders or other formats", _compile_args, _compile_run),
}


def _extra_commands() -> None:
    """Commands that live in their own modules register into COMMANDS when imported."""
    for mod in ("schedlang.cli_library", "schedlang.cli_codegen", "schedlang.cli_runtime",
                "schedlang.cli_ux", "schedlang.cli_ilp", "schedlang.cli_profile"):
        try:
            __import__(mod)
        except ModuleNotFoundError as exc:
            if exc.name != mod:
                raise


def build_parser() -> argparse.ArgumentParser:
    _extra_commands()
    parser = argparse.ArgumentParser(
        prog="schedlang",
        description="schedlang: write, optimize, simulate and run pipeline-parallel training schedules.",
    )
    parser.add_argument("--version", action="version", version=f"schedlang {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (help_text, add_args, _) in COMMANDS.items():
        sp = sub.add_parser(name, help=help_text, description=help_text)
        add_args(sp)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 2
    try:
        with limits.using(dict(getattr(args, "limits", None) or [])):
            return COMMANDS[args.command][2](args)
    except SchedlangError as exc:
        print(exc.render(), file=sys.stderr)
        return EXIT_USER
    except KeyboardInterrupt:
        print("schedlang: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
    except Exception as exc:  # an internal bug: say so plainly, never blame the user's input
        print(f"schedlang: internal error: {type(exc).__name__}: {exc}", file=sys.stderr)
        if os.environ.get("SCHEDLANG_DEBUG"):
            traceback.print_exc()
        else:
            print("(set SCHEDLANG_DEBUG=1 for the traceback; please report it)", file=sys.stderr)
        return EXIT_INTERNAL


def run() -> None:
    sys.exit(main())
