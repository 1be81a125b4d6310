"""``schedlang list``: every built-in schedule and scheduler, one line each, with its source.

The entries come from :func:`schedlang.api.builtins` (see :mod:`schedlang.catalog`); ``--json``
prints the same as a list of objects.
"""

from __future__ import annotations

import argparse
import json
import sys

from schedlang.catalog import Entry
from schedlang.cli.common import Command


def format_entries(entries: list[Entry]) -> str:
    """The plain-text listing, grouped, with aligned columns."""
    titles = {"schedule": "Schedules (schedlang simulate std:NAME --set p=8 ...)",
              "scheduler": "Schedulers (--scheduler NAME[:ARG=VALUE,...]; * = warm start for the optimizer)",
              "module": "Modules to import (ops, rules and costs)"}
    width = max(len(e.name) for e in entries) + 2
    lines: list[str] = []
    for group, title in titles.items():
        rows = [e for e in entries if e.group == group]
        if not rows:
            continue
        lines.append(f"{title}:")
        for e in rows:
            mark = "*" if e.warm_start else " "
            lines.append(f"  {e.name:<{width}}{mark} {e.summary}  [{e.source}]")
        lines.append("")
    return "\n".join(lines)


def _list_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print a JSON list of objects")


def _list_run(args: argparse.Namespace) -> int:
    from schedlang import api

    entries = api.builtins()
    if args.json:
        sys.stdout.write(json.dumps([e.as_dict() for e in entries], indent=1) + "\n")
    else:
        sys.stdout.write(format_entries(entries))
    return 0


LIST = Command("list every built-in schedule (std:NAME) and scheduler, with its source", _list_args, _list_run)
