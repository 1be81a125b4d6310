"""The ``schedule`` pass: run the scheduler a program names.

Requires: a lowered program. Guarantees: the result has explicit :class:`~schedlang.ir.Orders`
(unchanged if it already had them); a program without any schedule clause is an error, as is an
unknown scheduler or argument (located at the call).
"""

from __future__ import annotations

from dataclasses import replace

from schedlang.ir import Orders, Program, SchedulerCall
from schedlang.source import SchedlangError


def schedule_pass(program: Program) -> Program:
    """Replace a :class:`SchedulerCall` with the orders its scheduler produces."""
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
    orders = scheduler.fn(program, args)
    return replace(program, schedule=replace(orders, origin=sched.name))
