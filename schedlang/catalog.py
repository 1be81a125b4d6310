"""The catalogue of built-ins: every standard-library program and module, and every scheduler.

Three groups, each entry with a one-line summary and the file that defines it: the
standard-library programs that have a schedule (``std:NAME``, written in the DSL or calling a
scheduler), the registered schedulers (``--scheduler NAME``; ``warm_start`` marks the fast
heuristics the optimizer may start from), and the standard-library modules that only declare ops
and rules for others to import. A program's summary is the first sentence of its header comment,
whole (keep it short). ``schedlang list`` prints this catalogue.
"""

from __future__ import annotations

import inspect
import os
import re
from dataclasses import dataclass

from schedlang import syntax as S

_SENTENCE_END = re.compile(r"\.\s+(?=[A-Z(])")  # not "w.r.t. the"


@dataclass(frozen=True)
class Entry:
    """One built-in: a line of ``schedlang list``."""

    group: str  # "schedule", "scheduler" or "module"
    name: str
    summary: str
    source: str
    params: tuple[str, ...] = ()
    warm_start: bool = False

    def as_dict(self) -> dict[str, object]:
        return {"group": self.group, "name": self.name, "summary": self.summary, "source": self.source,
                "params": list(self.params), "warm_start": self.warm_start}


def header_summary(text: str) -> str:
    """The first sentence of a file's leading comment block (see the module docstring)."""
    lines = []
    for line in text.splitlines():
        if not line.startswith("#"):
            break
        lines.append(line.lstrip("#").strip())
    header = " ".join(x for x in lines if x)
    end = _SENTENCE_END.search(header)
    sentence = header if end is None else header[: end.start() + 1]
    return sentence.rstrip(".")


def _relative(path: str) -> str:
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return os.path.relpath(path, root) if path.startswith(root) else path


def std_entries() -> list[Entry]:
    """The standard library: programs with a schedule first, then import-only modules."""
    from schedlang.load import _std_text, std_names
    from schedlang.parse import parse_module
    from schedlang.source import Source

    stdlib_dir = os.path.join(os.path.dirname(os.path.abspath(__file__)), "stdlib")
    out = []
    for name in std_names():
        text = _std_text(name) or ""
        module = parse_module(Source(f"std:{name}", text))
        has_schedule = any(isinstance(d, S.ScheduleDecl) for d in module.items)
        params = tuple(d.name for d in module.items if isinstance(d, S.ParamDecl))
        out.append(Entry("schedule" if has_schedule else "module", f"std:{name}", header_summary(text),
                         _relative(os.path.join(stdlib_dir, f"{name}.sched")), params))
    return out


def scheduler_entries() -> list[Entry]:
    """The registered schedulers with the module that defines each."""
    from schedlang.schedulers import SCHEDULERS

    out = []
    for name, sched in sorted(SCHEDULERS.items()):
        try:
            src = _relative(inspect.getsourcefile(sched.fn) or "?")
        except TypeError:
            src = "?"
        out.append(Entry("scheduler", name, sched.summary, src, tuple(sched.args), sched.warm_start))
    return out


def all_entries() -> list[Entry]:
    """Everything: programs with a schedule, then schedulers, then import-only modules."""
    entries = std_entries()
    return ([e for e in entries if e.group == "schedule"] + scheduler_entries()
            + [e for e in entries if e.group == "module"])
