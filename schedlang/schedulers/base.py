"""What a scheduler is: its arguments, its registration record, and the one rule for the memory
limit it schedules under (a leaf: every scheduler module imports it, and it imports no scheduler)."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace

from schedlang.ir import Orders, Program, Value
from schedlang.source import Note, SchedlangError, Span

SchedulerFn = Callable[[Program, Mapping[str, Value]], Orders]


@dataclass(frozen=True)
class Arg:
    """A scheduler argument: its type (``int``, ``float``, ``bool``, ``str``-like names are ints/floats
    in the DSL), default and one line of help."""

    type: type
    default: Value | None
    help: str = ""


@dataclass(frozen=True)
class Scheduler:
    """A registered scheduler. ``warm_start`` marks fast heuristics the optimizer may start from;
    ``applies`` says whether it can schedule a given program (shape, placement, op roles) with
    its default arguments. ``warm_variants``: further argument sets the optimizer also tries as
    warm starts (each named ``NAME:VALUE,...``), for a heuristic whose variants suit different
    memory limits."""

    name: str
    summary: str
    fn: SchedulerFn
    args: Mapping[str, Arg] = field(default_factory=dict)
    warm_start: bool = False
    applies: Callable[[Program], bool] = field(default=lambda _p: True)
    warm_variants: tuple[Mapping[str, Value], ...] = ()


def _fmt(x: float) -> str:
    return "inf" if math.isinf(x) else f"{x:g}"


def scheduler_limits(program: Program, limits: Sequence[float], span: Span | None,
                     what: str = "mem_limit") -> Program:
    """``program`` with its memory limit tightened to the scheduler's per-rank ``limits``.

    The rule (the same for every scheduler): each of ``limits`` must be at most the program's
    limit on its rank (no program limit: anything goes); the result's ``mem_limit`` is
    ``limits`` and its ``mem_limit_span`` is ``span`` (the argument that set them), so a
    scheduler's "limit too small" error points there. A looser value is a
    :class:`~schedlang.source.SchedlangError` at ``span`` with a note at the program's limit.
    """
    R = program.num_ranks
    assert len(limits) == R, (len(limits), R)
    own = program.mem_limit
    if own is not None:
        for r, (mine, theirs) in enumerate(zip(limits, own, strict=True)):
            if mine > theirs + 1e-9 * max(1.0, abs(theirs)):
                notes = (Note(program.mem_limit_span, "the program's limit is set here"),) \
                    if program.mem_limit_span is not None else ()
                raise SchedlangError(
                    f"the scheduler's {what} ({_fmt(mine)} on rank {r}) is looser than the "
                    f"program's mem_limit ({_fmt(theirs)}): a scheduler may only tighten the "
                    "program's limit; lower the argument or raise the program's mem_limit",
                    span, notes)
    if all(math.isinf(x) for x in limits):
        return program
    return replace(program, mem_limit=tuple(float(x) for x in limits), mem_limit_span=span)
