"""``ilp``: the CP-SAT optimizer (issue 8).

Three pieces, as STYLE.md asks: :mod:`.model` builds the model (pure, inspectable),
:mod:`.solve` solves it (seeded, deterministic time limit; reports objective, bound and gap;
:mod:`.lns` holds the search loop), :mod:`.apply` turns a solution into orders. :mod:`.bounds`
derives the structural lower bounds that make the gap meaningful; :mod:`.periodic` searches the
steady state directly for a better start under tight memory limits.

Use it from the DSL (``schedule "ilp"(objective = "span", time_limit = 60)``), the command line
(``--scheduler ilp:objective=makespan,time_limit=10``) or Python (:func:`optimize`, which also
returns the :class:`~schedlang.schedulers.ilp.solve.Report`). ortools is imported only when the
optimizer runs.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping

from schedlang.ir import Orders, Program, SchedulerCall, Value
from schedlang.schedulers import Arg, Scheduler
from schedlang.schedulers.ilp.solve import ArgError, Report, optimize
from schedlang.source import SchedlangError, Span

__all__ = ["SCHEDULER", "Report", "optimize", "run"]


def _num(args: Mapping[str, Value], name: str, default: float) -> float:
    v = args.get(name, default)
    assert isinstance(v, (int, float)) and not isinstance(v, bool)
    return float(v)


def _arg_span(program: Program, name: str) -> Span | None:
    call = program.schedule
    if not isinstance(call, SchedulerCall):
        return None
    for i, (k, _) in enumerate(call.args):
        if k == name and i < len(call.arg_spans):
            return call.arg_spans[i]
    return call.span


def run(program: Program, args: Mapping[str, Value]) -> Orders:
    """The scheduler function: :func:`optimize` with the call's arguments; the report goes to
    ``schedlang.schedulers.ilp.solve.last_report`` and (a summary line) to stderr. Errors about
    an argument point at it (the objective; the memory limit, which the schedule pass resolved
    into ``program.mem_limit`` with its span)."""
    assert "mem_limit" not in args, "the schedule pass resolves the mem_limit argument"
    try:
        orders, _ = _optimize(program, args, None)
    except ArgError as exc:
        span = _arg_span(program, exc.arg)
        if exc.arg == "mem_limit":
            span = program.mem_limit_span
        raise SchedlangError(exc.message, span, exc.notes) from None
    return orders


def _optimize(program: Program, args: Mapping[str, Value], limit: Value | None) -> tuple[Orders, Report]:
    return optimize(
        program,
        objective=str(args.get("objective", "span")),
        time_limit=_num(args, "time_limit", 60.0),
        mem_limit=float(limit) if isinstance(limit, (int, float)) and not isinstance(limit, bool) else None,
        seed=int(_num(args, "seed", 0)),
        workers=int(_num(args, "workers", 1)),
        fifo=bool(args.get("fifo", True)),
        lns=bool(args.get("lns", True)),
        deterministic=bool(args.get("deterministic", True)),
        progress=sys.stderr if args.get("progress", True) else None,
        wall_limit=_num(args, "wall_limit", -1.0) if "wall_limit" in args else None,
        periodic=bool(args.get("periodic", True)),
    )


SCHEDULER = Scheduler(
    name="ilp",
    summary="CP-SAT optimizer under the memory limit, warm-started from the best heuristic, with a proved gap",
    fn=run,
    args={
        "objective": Arg(str, "span", "span (the paper's cost: the largest per-rank span) or makespan"),
        "time_limit": Arg(float, 60.0, "CP-SAT deterministic time budget (about seconds)"),
        "mem_limit": Arg(float, None, "per-rank memory limit (at most the program's; default: the program's)"),
        "seed": Arg(int, 0, "random seed"),
        "workers": Arg(int, 1, "CP-SAT workers (>1 interleaves subsolvers deterministically)"),
        "fifo": Arg(bool, True, "microbatches of one op kind and stage in order (when lossless)"),
        "lns": Arg(bool, True, "large-neighbourhood search after the first full solve"),
        "deterministic": Arg(bool, True, "deterministic time limit (false: wall-clock seconds)"),
        "wall_limit": Arg(float, None, "wall-clock cap in seconds on a deterministic search "
                                       "(default 4 * time_limit + 10; 0: none)"),
        "periodic": Arg(bool, True, "also start from the best periodic schedule (steady state "
                                    "searched directly; a quarter of the time limit)"),
        "progress": Arg(bool, True, "progress lines on stderr"),
    },
)
