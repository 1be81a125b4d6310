"""Measured timelines: one event per executed instruction, Chrome/Perfetto traces, bubble rate.

Each rank records the start and end of every instruction it runs (``time.perf_counter_ns``,
which is the system-wide monotonic clock on Linux, so ranks on one machine share a time base).
:func:`chrome_trace` merges the ranks' events into one trace (one track per rank, one complete
event per instruction with its stage and microbatch in ``args``); :func:`measured_bubble` applies
the simulator's definition of the bubble rate to the measured compute events.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from schedlang.isa import COMPUTE_OPS, Op

__all__ = ["Event", "MeasuredBubble", "chrome_trace", "measured_bubble", "write_chrome_trace"]

_COMPUTE_NAMES = frozenset(op.value for op in COMPUTE_OPS)


@dataclass(frozen=True, slots=True)
class Event:
    """One executed instruction (or a wait for a receive, ``cat == "wait"``)."""

    rank: int
    step: int
    index: int
    name: str
    stage: int
    mb: int
    start_ns: int
    end_ns: int
    cat: str = "instr"

    @property
    def is_compute(self) -> bool:
        """Compute instructions count as busy time; everything else is bubble."""
        return self.cat == "instr" and self.name in _COMPUTE_NAMES

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @staticmethod
    def from_dict(d: Mapping[str, Any]) -> Event:
        return Event(**d)


def event_name(op: Op, kind: str = "") -> str:
    """Name an event after its opcode (USER ops after their kind)."""
    return kind if op is Op.USER and kind else op.value


@dataclass(frozen=True, slots=True)
class MeasuredBubble:
    """The simulator's figures, measured: ``cost`` is the largest per-rank span, seconds."""

    makespan: float
    cost: float
    busy: tuple[float, ...]
    bubble: float
    bubble_rate: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def measured_bubble(events: Iterable[Event]) -> MeasuredBubble:
    """Bubble rate of one step's events, as the simulator defines it (REFERENCE.md, section 1).

    ``cost`` = max over ranks of (end of the last compute - start of the first compute);
    ``bubble`` = cost - the busiest rank's compute time; ``bubble_rate`` = bubble / cost.
    Communication and waiting count as bubble.
    """
    per_rank: dict[int, list[Event]] = {}
    for e in events:
        if e.is_compute:
            per_rank.setdefault(e.rank, []).append(e)
    if not per_rank:
        return MeasuredBubble(0.0, 0.0, (), 0.0, 0.0)
    spans, busy = [], []
    for rank in sorted(per_rank):
        evs = per_rank[rank]
        spans.append(max(e.end_ns for e in evs) - min(e.start_ns for e in evs))
        busy.append(sum(e.end_ns - e.start_ns for e in evs))
    everything = [e for evs in per_rank.values() for e in evs]
    makespan = max(e.end_ns for e in everything) - min(e.start_ns for e in everything)
    cost = max(spans)
    bubble = cost - max(busy)
    return MeasuredBubble(makespan / 1e9, cost / 1e9, tuple(b / 1e9 for b in busy), bubble / 1e9,
                          bubble / cost if cost > 0 else 0.0)


def chrome_trace(events: Sequence[Event], meta: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A Chrome/Perfetto trace (JSON object format): one process track per rank."""
    t0 = min((e.start_ns for e in events), default=0)
    out: list[dict[str, Any]] = []
    for rank in sorted({e.rank for e in events}):
        out.append({"name": "process_name", "ph": "M", "pid": rank, "tid": 0,
                    "args": {"name": f"rank {rank}"}})
        out.append({"name": "process_sort_index", "ph": "M", "pid": rank, "tid": 0,
                    "args": {"sort_index": rank}})
    for e in events:
        label = e.name if e.stage < 0 else f"{e.name}{e.stage}.{e.mb}" if e.mb >= 0 else f"{e.name}{e.stage}"
        out.append({
            "name": label, "cat": e.cat, "ph": "X", "pid": e.rank, "tid": 0,
            "ts": (e.start_ns - t0) / 1e3, "dur": max(e.end_ns - e.start_ns, 0) / 1e3,
            "args": {"op": e.name, "stage": e.stage, "mb": e.mb, "step": e.step, "index": e.index},
        })
    return {"traceEvents": out, "displayTimeUnit": "ms", "otherData": dict(meta or {})}


def write_chrome_trace(path: str, events: Sequence[Event], meta: Mapping[str, Any] | None = None) -> None:
    """Write :func:`chrome_trace` to ``path``."""
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(chrome_trace(events, meta), fh)
