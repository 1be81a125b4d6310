"""Named schedulers: algorithms that turn a lowered program into per-rank orders.

Registered by name in :data:`SCHEDULERS` (one explicit dict): the heuristics of
:mod:`schedlang.schedulers.table` plus the optimizer, ``ilp``, which starts from those heuristics
(the table is apart so that the optimizer can read it without importing the registry). Each :class:`Scheduler` declares its
arguments with a type and a default, so unknown or mistyped arguments get the same located errors
whichever scheduler is called. Heavy dependencies (ortools) are imported inside the scheduler
function, never at module import.
"""

from __future__ import annotations

from schedlang.evaluate import format_value, type_name
from schedlang.ir import SchedulerCall, Value
from schedlang.schedulers.base import Arg, Scheduler, SchedulerFn
from schedlang.source import SchedlangError

__all__ = ["SCHEDULERS", "Arg", "Scheduler", "SchedulerFn", "resolve"]

def _load() -> dict[str, Scheduler]:
    from schedlang.schedulers import ilp  # imports ortools only when it runs
    from schedlang.schedulers.table import HEURISTICS

    return {**HEURISTICS, ilp.SCHEDULER.name: ilp.SCHEDULER}


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
