"""``ilp``: the CP-SAT optimizer.

Three pieces: :mod:`.model` builds the model (pure, inspectable), :mod:`.solve` solves it (seeded,
within a wall-clock time limit for the whole run, or CP-SAT's deterministic time when
``deterministic``; reports objective, bound, gap, which clock ran and where the time went),
:mod:`.apply` turns a solution into orders. Around them: :mod:`.options` declares every argument and default once
(:class:`IlpOptions`); :mod:`.bounds` derives the structural lower bounds that make the gap
meaningful (and :mod:`.relax`, when asked, relaxations keeping two ranks exact that raise them); :mod:`.cpsat` is the solver plumbing the searches share; :mod:`.lns` is the search
loop and :mod:`.periodic` searches the steady state directly for a better start under tight
memory limits. Imports point one way: ``solve`` -> ``lns``, ``periodic`` -> ``cpsat`` ->
``model``.

Use it from the DSL (``schedule "ilp"(objective = "span", time_limit = 60)``), the command line
(``--scheduler ilp:objective=makespan,time_limit=10``) or Python (:func:`optimize`, which also
returns the :class:`~schedlang.schedulers.ilp.solve.Report` and reports progress to a callback). ortools is imported only when the
optimizer runs.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping

from schedlang.ir import Orders, Program, SchedulerCall, Value
from schedlang.schedulers.base import Arg, Scheduler
from schedlang.schedulers.ilp.options import ArgError, IlpOptions, option_table
from schedlang.schedulers.ilp.solve import Report, optimize
from schedlang.source import SchedlangError, Span

__all__ = ["SCHEDULER", "IlpOptions", "Report", "optimize", "run"]


def _arg_span(program: Program, name: str) -> Span | None:
    call = program.schedule
    if not isinstance(call, SchedulerCall):
        return None
    for i, (k, _) in enumerate(call.args):
        if k == name and i < len(call.arg_spans):
            return call.arg_spans[i]
    return call.span


def run(program: Program, args: Mapping[str, Value]) -> Orders:
    """The scheduler function: :func:`optimize` with the call's arguments (an
    :class:`IlpOptions`); a summary line goes to stderr unless ``progress = false``. Errors about
    an argument point at it (the objective; the memory limit, which the schedule pass resolved
    into ``program.mem_limit`` with its span)."""
    assert "mem_limit" not in args, "the schedule pass resolves the mem_limit argument"
    try:
        orders, _ = optimize(program, IlpOptions.from_args(args),
                             progress=sys.stderr if args.get("progress", True) else None)
    except ArgError as exc:
        span = _arg_span(program, exc.arg)
        if exc.arg == "mem_limit":
            span = program.mem_limit_span
        raise SchedlangError(exc.message, span, exc.notes) from None
    return orders


SCHEDULER = Scheduler(
    name="ilp",
    summary="CP-SAT optimizer under the memory limit, warm-started from the best heuristic, with a proved gap",
    fn=run,
    args={
        **{name: Arg(kind, default, help) for name, kind, default, help in option_table()},
        "progress": Arg(bool, True, "progress lines on stderr"),
    },
)
