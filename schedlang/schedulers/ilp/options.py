"""The optimizer's arguments and their defaults, declared once.

:class:`IlpOptions` is the single source: the ``ilp`` scheduler's argument table (names, types,
defaults, help) is derived from it, :func:`~schedlang.schedulers.ilp.solve.optimize` takes one, and
the ``optimize`` command reads its defaults. Where lines of progress go (a stream, or nowhere) is
not an option of the search: the scheduler's extra ``progress`` argument and the command's
``--quiet`` choose it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import MISSING, dataclass, field, fields
from typing import Any

from schedlang.ir import Value
from schedlang.source import Note, SchedlangError

OBJECTIVES = ("span", "makespan")


class ArgError(SchedlangError):
    """A user error about one argument (``arg``); the scheduler locates it at that argument."""

    def __init__(self, message: str, arg: str, notes: tuple[Note, ...] = ()) -> None:
        super().__init__(message, None, notes)
        self.arg = arg


def _opt(default: Any, kind: type, help: str) -> Any:
    return field(default=default, metadata={"type": kind, "help": help})


@dataclass(frozen=True)
class IlpOptions:
    """Every argument of the optimizer, with its default (see :func:`~.solve.optimize`)."""

    objective: str = _opt("span", str, "span (the paper's cost: the largest per-rank span) or makespan")
    time_limit: float = _opt(60.0, float, "seconds for the whole run: wall clock (deterministic = true: CP-SAT's "
                                           "deterministic time, about seconds)")
    mem_limit: float | None = _opt(None, float, "per-rank memory limit (default: the program's)")
    seed: int = _opt(0, int, "random seed")
    workers: int = _opt(1, int, "CP-SAT workers (>1 interleaves subsolvers deterministically)")
    fifo: bool = _opt(True, bool, "microbatches of one op kind and stage in order (when lossless)")
    lns: bool = _opt(True, bool, "large-neighbourhood search after the first full solve")
    deterministic: bool = _opt(False, bool, "reproducible: time_limit counts CP-SAT's deterministic time, so the "
                                            "same seed and workers give the same result")
    wall_limit: float | None = _opt(None, float, "wall-clock cap in seconds on a deterministic run "
                                                 "(default 4 * time_limit + 10; 0: none)")
    periodic: bool = _opt(True, bool, "also start from the best periodic schedule (steady state "
                                      "searched directly; a quarter of the time limit)")
    relax: float = _opt(0.0, float, "seconds of the time limit (deterministic: its unit) for bounds from "
                                    "relaxations that keep two ranks exact on the first microbatches "
                                    "(0: off)")

    def check(self) -> None:
        """Raise :class:`ArgError` (naming the argument) for a value no search can use."""
        if self.objective not in OBJECTIVES:
            raise ArgError(f"ilp: unknown objective '{self.objective}' (objectives: {', '.join(OBJECTIVES)})",
                           "objective")
        if not self.time_limit > 0:
            raise ArgError(f"ilp: time_limit must be positive, got {self.time_limit:g}", "time_limit")
        if not self.relax >= 0:
            raise ArgError(f"ilp: relax must be 0 (off) or positive seconds, got {self.relax:g}", "relax")
        if self.workers < 1:
            raise ArgError(f"ilp: workers must be at least 1, got {self.workers}", "workers")
        if self.wall_limit is not None and self.wall_limit < 0:
            raise ArgError(f"ilp: wall_limit must be 0 (none) or positive, got {self.wall_limit:g}", "wall_limit")
        if self.wall_limit is not None and not self.deterministic:
            raise ArgError("ilp: wall_limit caps a deterministic run (deterministic = true); without it "
                           "time_limit is already wall-clock seconds", "wall_limit")

    @property
    def wall_seconds(self) -> float:
        """The wall-clock cap on a deterministic run: the given one, else ``4 * time_limit + 10``
        (0: none). A wall-clock run has no other cap than its time limit (0 here)."""
        if not self.deterministic:
            return 0.0
        if self.wall_limit is not None:
            return self.wall_limit
        return 4 * self.time_limit + 10

    @classmethod
    def from_args(cls, args: Mapping[str, Value]) -> IlpOptions:
        """Options from a scheduler call's checked arguments (absent ones keep their defaults)."""
        given: dict[str, Any] = {}
        for f in fields(cls):
            if f.name not in args:
                continue
            v, kind = args[f.name], f.metadata["type"]
            if kind in (int, float):  # the scheduler's argument check let only numbers through
                assert isinstance(v, (int, float)) and not isinstance(v, bool), (f.name, v)
            given[f.name] = kind(v)
        return cls(**given)


def option_table() -> list[tuple[str, type, Value | None, str]]:
    """(name, type, default, help) of every option, in declaration order (for argument tables)."""
    out = []
    for f in fields(IlpOptions):
        assert f.default is not MISSING
        out.append((f.name, f.metadata["type"], f.default, f.metadata["help"]))
    return out
