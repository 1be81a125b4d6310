"""What a scheduler is: its arguments and its registration record (a leaf: every scheduler
module imports it, and it imports no scheduler)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from schedlang.ir import Orders, Program, Value

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
    ``applies`` says whether it can schedule a given program (shape, placement, op roles)."""

    name: str
    summary: str
    fn: SchedulerFn
    args: Mapping[str, Arg] = field(default_factory=dict)
    warm_start: bool = False
    applies: Callable[[Program], bool] = field(default=lambda _p: True)
