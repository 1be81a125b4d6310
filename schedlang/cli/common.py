"""What every command shares: the program arguments, the ``--emit`` argument, and output."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import NamedTuple, TextIO

from schedlang.ir import Program, format_program
from schedlang.source import SchedlangError


class Command(NamedTuple):
    """One subcommand: its help line, how it adds its arguments, and what it runs."""

    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


def add_program_args(p: argparse.ArgumentParser, *, scheduler: bool = True) -> None:
    """Arguments every command that reads a program takes."""
    p.add_argument("file", help="a .sched file, or std:NAME for a built-in")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="NAME=VALUE",
                   help="override a parameter (repeatable); VALUE is a literal: 8, 1.5, [1, 2], true")
    p.add_argument("--params", metavar="FILE",
                   help="read overrides from FILE (NAME=VALUE lines, as `schedlang profile` writes); "
                        "--set wins over it")
    p.add_argument("--config", metavar="FILE",
                   help="read parameters from a JSON or YAML file (the 1F1B visualizer's num_stages, num_batches, "
                        "forward_times, backward_times, p2p_time, output_file, or parameter names); "
                        "--params and --set win over it")
    p.add_argument("--import-root", metavar="DIR",
                   help="let imports reach .sched files under DIR (default: the file's folder)")
    add_limit_arg(p)
    if scheduler:
        p.add_argument("--scheduler", metavar="NAME[:ARG=VALUE,...]",
                       help="replace the program's schedule clause with a named scheduler")


def add_model_args(p: argparse.ArgumentParser) -> None:
    """``--model`` and ``--split``, the same for ``schedlang run`` and ``schedlang profile``."""
    p.add_argument("--model", default="schedlang.runtime.models:tiny_gpt", metavar="MODULE:FACTORY",
                   help="FACTORY(num_stages, num_microbatches) in MODULE (found from the current folder) or "
                        "in path/to/file.py; it returns an nn.Sequential, a list of blocks, an nn.Module with "
                        "split points or a ModelSpec (docs/models.md; default: a tiny GPT on bundled text)")
    p.add_argument("--split", metavar="NAME,...",
                   help="submodules that begin stages 1, 2, ... (e.g. transformer.h.2,transformer.h.4), "
                        "cut by torch.distributed.pipelining's tracer")


def add_limit_arg(p: argparse.ArgumentParser, example: str = "max_ops=5000000") -> None:
    """``--limit NAME=N`` (repeatable): raise or lower a work limit of :mod:`schedlang.limits`."""
    from schedlang.limits import limit_arg

    p.add_argument("--limit", dest="limits", action="append", type=limit_arg, metavar="NAME=N",
                   help=f"raise a work limit (e.g. {example}; see schedlang.limits)")


def emit_format(name: str) -> str:
    """argparse ``type`` of ``--emit``: an unknown format is rejected while parsing, before any work."""
    from schedlang import emitters

    if name not in emitters.EMITTERS:
        raise argparse.ArgumentTypeError(
            f"unknown format '{name}' (formats: {', '.join(emitters.EMITTERS)})")
    return name


def add_emit_arg(p: argparse.ArgumentParser, help_text: str,
                 default_text: str = "sched for -o FILE.sched, else orders") -> None:
    """``--emit FORMAT`` (default None: see :func:`emit_choice`); the subcommand's help lists
    every format with what it is."""
    from schedlang import emitters

    p.add_argument("--emit", default=None, type=emit_format, metavar="FORMAT",
                   help=f"{help_text} (default: {default_text}; formats below)")
    width = max(len(n) for n in emitters.EMITTERS) + 2
    lines = [f"  {e.name:<{width}}{e.summary}" for e in emitters.EMITTERS.values()]
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = "--emit formats:\n" + "\n".join(lines)


def emit_choice(emit: str | None, output: str | None) -> str:
    """The ``--emit`` format to write: the one given, else ``sched`` for an ``-o`` path ending in
    ``.sched`` (a program file), else ``orders``."""
    if emit is not None:
        return emit
    return "sched" if output is not None and output.endswith(".sched") else "orders"


def print_warning(warning: SchedlangError) -> None:
    """A front-end warning, located, on stderr."""
    print(warning.render("warning"), file=sys.stderr)


def load_program(args: argparse.Namespace, *, scheduled: bool = True,
                 dump_after: str | None = None, out: TextIO | None = None) -> Program:
    """:func:`schedlang.api.load_program` with the program arguments of ``args``; warnings go to
    stderr and ``--dump-after`` IR to ``out`` (default stdout)."""
    from schedlang import api

    def dump(name: str, prog: Program) -> None:
        stream = out or sys.stdout
        stream.write(f"# IR after {name}\n{format_program(prog)}")

    return api.load_program(args.file, sets=args.sets, params_file=getattr(args, "params", None),
                            scheduler=getattr(args, "scheduler", None), scheduled=scheduled,
                            dump_after=dump_after, dump=dump, on_warning=print_warning,
                            config_file=getattr(args, "config", None),
                            import_root=getattr(args, "import_root", None))


def config_output(args: argparse.Namespace) -> None:
    """A ``--config`` file's ``output_file`` becomes the command's ``-o`` when none was given,
    before the command reads it; a command that writes no file says that it ignores it."""
    if not getattr(args, "config", None):
        return
    from schedlang.config import read_config

    output = read_config(args.config).output
    if output is None or getattr(args, "output", None) is not None:
        return
    if hasattr(args, "output"):
        args.output = output
    else:
        print(f"{args.config}: warning: output_file '{output}' is not used: this command writes no file",
              file=sys.stderr)


def write_output(text: str, path: str | None) -> None:
    """``text`` to ``path``, or to stdout for none or ``-``."""
    if path is None or path == "-":
        sys.stdout.write(text)
        return
    try:
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(text)
    except OSError as exc:
        raise SchedlangError(f"cannot write '{path}': {exc.strerror}") from None
