"""Measured timelines: one event per executed instruction, Chrome/Perfetto traces, bubble rate.

Each rank records the start and end of every instruction it runs (``time.perf_counter_ns``,
which is the system-wide monotonic clock on Linux, so ranks on one machine share a time base).
:func:`chrome_trace` merges the ranks' events into one trace (one track per rank, one complete
event per instruction with its stage and microbatch in ``args``); :func:`measured_bubble` applies
the simulator's definition of the bubble rate to the measured compute events. Both use the
compiler's one trace writer and bubble computation, :mod:`schedlang.traceformat` (a light module:
with :mod:`schedlang.isa`, the only compiler modules the runtime imports).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from schedlang.isa import COMPUTE_OPS, Opcode
from schedlang.traceformat import (
    complete_event,
    rank_tracks,
    span_bubble,
    trace_document,
    trace_text,
)

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


def event_name(op: Opcode, kind: str = "") -> str:
    """Name an event after its opcode (USER ops after their kind)."""
    return kind if op is Opcode.USER and kind else op.value


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
    """Bubble rate of one step's events, by the simulator's definition
    (:func:`schedlang.traceformat.span_bubble`).

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
        spans.append((max(e.end_ns for e in evs) - min(e.start_ns for e in evs)) / 1e9)
        busy.append(sum(e.end_ns - e.start_ns for e in evs) / 1e9)
    everything = [e for evs in per_rank.values() for e in evs]
    makespan = max(e.end_ns for e in everything) - min(e.start_ns for e in everything)
    fig = span_bubble(busy, spans)
    return MeasuredBubble(makespan / 1e9, fig.cost, tuple(busy), fig.bubble, fig.bubble_rate)


def _trace_events(events: Sequence[Event]) -> list[dict[str, Any]]:
    t0 = min((e.start_ns for e in events), default=0)
    out = rank_tracks(sorted({e.rank for e in events}))
    for e in events:
        out.append(complete_event(e.rank, e.name, e.stage, e.mb, (e.start_ns - t0) / 1e3,
                                  max(e.end_ns - e.start_ns, 0) / 1e3, step=e.step, index=e.index,
                                  cat=e.cat))
    return out


def chrome_trace(events: Sequence[Event], meta: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A Chrome/Perfetto trace (JSON object format) of measured events, in the compiler's layout
    (:mod:`schedlang.traceformat`): one track per rank, one complete event per instruction."""
    return trace_document(_trace_events(events), meta)


def write_chrome_trace(path: str, events: Sequence[Event], meta: Mapping[str, Any] | None = None) -> None:
    """Write :func:`chrome_trace` to ``path`` (one event per line, as the compiler writes it)."""
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(trace_text(_trace_events(events), meta))
