"""The heuristic schedulers, by name: every registered scheduler except the optimizer.

The optimizer (:mod:`schedlang.schedulers.ilp`) reads this table for its warm starts, and the
registry (:data:`schedlang.schedulers.SCHEDULERS`) adds the optimizer to it. To add a scheduler,
write its module (its ``SCHEDULER`` a :class:`~schedlang.schedulers.base.Scheduler`) and list it
here.
"""

from __future__ import annotations

from schedlang.schedulers import (
    chimera,
    heuristics,
    list_sched,
    torch_peer,
    v_blocks,
    zb_auto,
    zb_v,
)
from schedlang.schedulers.base import Scheduler

HEURISTICS: dict[str, Scheduler] = {s.name: s for s in (
    list_sched.SCHEDULER, *heuristics.SCHEDULERS, zb_auto.SCHEDULER, zb_v.SCHEDULER,
    v_blocks.SCHEDULER, chimera.SCHEDULER, torch_peer.SCHEDULER)}
