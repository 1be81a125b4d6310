"""Named schedulers: algorithms that turn a lowered program into per-rank orders.

Registered by name in :data:`SCHEDULERS` (one explicit dict). Each :class:`Scheduler` declares its
arguments with a type and a default, so unknown or mistyped arguments get the same located errors
whichever scheduler is called. Heavy dependencies (ortools) are imported inside the scheduler
function, never at module import.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from schedlang.evaluate import format_value, type_name
from schedlang.ir import Orders, Program, SchedulerCall, Value
from schedlang.source import SchedlangError

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


def _load() -> dict[str, Scheduler]:
    from schedlang.schedulers import (
        chimera,  # library (issue 3)
        heuristics,  # library (issue 3)
        ilp,  # optimizer (issue 8); imports ortools only when it runs
        list_sched,
        torch_peer,  # library (issue 3)
        v_blocks,  # library (issue 16)
        zb_auto,
        zb_v,
    )

    table = [list_sched.SCHEDULER, *heuristics.SCHEDULERS, zb_auto.SCHEDULER, zb_v.SCHEDULER, v_blocks.SCHEDULER, chimera.SCHEDULER, torch_peer.SCHEDULER, ilp.SCHEDULER]
    return {s.name: s for s in table}


SCHEDULERS: dict[str, Scheduler] = _load()


def _coerce(name: str, spec: Arg, v: Value) -> Value:
    if spec.type is float and isinstance(v, (int, float)) and not isinstance(v, bool):
        return float(v)
    if spec.type is int and type(v) is int:
        return v
    if spec.type is bool and isinstance(v, bool):
        return v
    if spec.type is tuple and isinstance(v, tuple):
        return v
    if spec.type is str and isinstance(v, str):
        return v
    raise TypeError(f"argument '{name}' must be {spec.type.__name__}, got {type_name(v)} {format_value(v)}")


def resolve(call: SchedulerCall) -> tuple[Scheduler, dict[str, Value]]:
    """Look up the scheduler a call names and check its arguments (defaults filled in)."""
    sched = SCHEDULERS.get(call.name)
    if sched is None:
        import difflib

        near = difflib.get_close_matches(call.name, list(SCHEDULERS), n=1)
        hint = f" (did you mean '{near[0]}'?)" if near else ""
        raise SchedlangError(f"unknown scheduler '{call.name}'{hint}; 'schedlang list' shows them all",
                             call.span)
    args: dict[str, Value] = {}
    for i, (name, value) in enumerate(call.args):
        span = call.arg_spans[i] if i < len(call.arg_spans) else call.span
        spec = sched.args.get(name)
        if spec is None:
            known = ", ".join(sched.args) or "none"
            raise SchedlangError(f"scheduler '{sched.name}' has no argument '{name}' (arguments: {known})", span)
        try:
            args[name] = _coerce(name, spec, value)
        except TypeError as exc:
            raise SchedlangError(str(exc), span) from None
    for name, spec in sched.args.items():
        if name not in args and spec.default is not None:
            args[name] = spec.default
    return sched, args
