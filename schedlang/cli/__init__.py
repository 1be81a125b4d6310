"""The ``schedlang`` command: argument parsing and printing over :mod:`schedlang.api`.

One module per command group (:mod:`~schedlang.cli.core`: check, simulate, compile;
:mod:`~schedlang.cli.library`: list; :mod:`~schedlang.cli.codegen`: import, streams;
:mod:`~schedlang.cli.runtime`: run; :mod:`~schedlang.cli.ux`: render, compare;
:mod:`~schedlang.cli.ilp`: optimize; :mod:`~schedlang.cli.profile`: profile;
:mod:`~schedlang.cli.serve`: serve; :mod:`~schedlang.cli.tune`: tune), each exposing
:class:`~schedlang.cli.common.Command` values listed in :data:`COMMANDS` below. To add a command,
write its arguments and its run function in its group's module (the work itself goes in the
library, reached through :mod:`schedlang.api`) and add one line here.

Every user error is printed as a located diagnostic on stderr with exit status 1; a bad argument
(an unknown ``--emit`` format among them) is a usage error from argument parsing (status 2); a
Python traceback is shown only for internal errors, and only with ``SCHEDLANG_DEBUG=1``.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from collections.abc import Sequence

from schedlang import __version__, limits
from schedlang.cli import codegen, core, ilp, library, profile, runtime, serve, tune, ux
from schedlang.cli.common import Command, config_output
from schedlang.source import SchedlangError

EXIT_USER = 1
EXIT_INTERNAL = 3

# The command table, in the order `schedlang --help` lists it.
COMMANDS: dict[str, Command] = {
    "check": core.CHECK,
    "simulate": core.SIMULATE,
    "compile": core.COMPILE,
    "list": library.LIST,
    "import": codegen.IMPORT,
    "streams": codegen.STREAMS,
    "run": runtime.RUN,
    "render": ux.RENDER,
    "compare": ux.COMPARE,
    "optimize": ilp.OPTIMIZE,
    "profile": profile.PROFILE,
    "serve": serve.SERVE,
    "tune": tune.TUNE,
}


def build_parser() -> argparse.ArgumentParser:
    """The parser of every command in :data:`COMMANDS`."""
    parser = argparse.ArgumentParser(
        prog="schedlang",
        description="schedlang: write, optimize, simulate and run pipeline-parallel training schedules.",
    )
    parser.add_argument("--version", action="version", version=f"schedlang {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, command in COMMANDS.items():
        sp = sub.add_parser(name, help=command.help, description=command.help)
        command.add_arguments(sp)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns the exit status (argparse exits by itself on a usage error)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 2
    try:
        with limits.using(dict(getattr(args, "limits", None) or [])):
            config_output(args)
            return COMMANDS[args.command].run(args)
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
    """The console entry point."""
    sys.exit(main())
