"""The ``schedule`` pass: run the scheduler a program names.

Requires: a lowered program. Guarantees: the result has explicit :class:`~schedlang.ir.Orders`
(unchanged if it already had them); a program without any schedule clause is an error, as is an
unknown scheduler or argument (located at the call).

The memory limit is resolved here, once, for every scheduler
(:func:`schedlang.schedulers.base.scheduler_limits`, the one rule): the
program's ``mem_limit`` is the memory the ranks have, and the verifier checks every schedule
against it; a scheduler's ``mem_limit`` argument may only tighten it. A tighter argument wins on
every rank; one looser than the program's limit on some rank is a located error at the argument
(honouring it would produce orders the verifier rejects, and silently ignoring it would drop what
the user wrote). Schedulers read the resolved limit from the program they are given
(``program.mem_limit``; its span points at the argument when the argument won) and never see a
``mem_limit`` argument.
"""

from __future__ import annotations

from dataclasses import replace

from schedlang.ir import Orders, Program, SchedulerCall, Value
from schedlang.schedulers.base import scheduler_limits
from schedlang.source import SchedlangError, Span


def _arg_span(call: SchedulerCall, name: str) -> Span | None:
    for i, (k, _) in enumerate(call.args):
        if k == name:
            return call.arg_spans[i] if i < len(call.arg_spans) else call.span
    return call.span


def schedule_pass(program: Program) -> Program:
    """Replace a :class:`SchedulerCall` with the orders its scheduler produces (the scheduler
    sees the resolved memory limit, see the module docstring)."""
    sched = program.schedule
    if isinstance(sched, Orders):
        return program
    if sched is None:
        raise SchedlangError(
            f"'{program.name}' has no schedule: add a 'schedule {{ ... }}' block or "
            "'schedule \"NAME\"(...)', or pass --scheduler NAME", program.schedule_span)
    assert isinstance(sched, SchedulerCall)
    from schedlang.schedulers import resolve

    scheduler, args = resolve(sched)
    limit: Value | None = args.pop("mem_limit", None)
    target = program
    if limit is not None:
        assert isinstance(limit, float), limit  # resolve() coerced it
        target = scheduler_limits(program, [limit] * program.num_ranks, _arg_span(sched, "mem_limit"))
    orders = scheduler.fn(target, args)
    return replace(program, schedule=replace(orders, origin=sched.name))
