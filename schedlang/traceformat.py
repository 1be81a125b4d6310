"""The Chrome / Perfetto trace format and the bubble figures, shared by the compiler and the runtime.

One writer and one bubble computation for both sides: the compiler's planned traces
(:mod:`schedlang.trace`), its simulator (:mod:`schedlang.simulate`) and the runtime's measured
timelines (``schedlang.runtime.timeline``) all build their traces and bubble figures here, so a
planned and a measured timeline have the same layout and are measured by the same definition.

This module is light on purpose: it imports only the standard library (no lark, no ortools, no
torch). Besides the instruction-stream format (:mod:`schedlang.isa`) it is the only part of the
compiler the runtime imports.

Trace layout (Chrome's "JSON object" format, which https://ui.perfetto.dev and
``chrome://tracing`` open): ``{"traceEvents": [...], "displayTimeUnit": "ms", "otherData":
{...}}``; one track per rank (``pid`` = rank, ``tid`` = 0) named ``"rank R"`` and sorted by rank,
its thread named ``"compute"``; one complete event (``"ph": "X"``) per executed op or
instruction, named after its kind, stage and microbatch (``"F1.3"``), with ``ts`` / ``dur`` in
microseconds and ``op``, ``stage``, ``mb``, ``step``, ``index`` in ``args``. :func:`trace_text`
writes one event per line (compact for large schedules, yet diffable line by line).

Bubble (the Zero Bubble paper's definition, Qi et al., ICLR 2024): ``cost`` is the largest
per-rank span (first start to last end), ``bubble`` is cost minus the busiest rank's work, and
``bubble_rate`` is bubble / cost (0 when cost is 0); a rank's start offset is not counted.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["SpanBubble", "complete_event", "event_label", "rank_tracks", "span_bubble",
           "trace_document", "trace_text"]


@dataclass(frozen=True, slots=True)
class SpanBubble:
    """``cost`` (the largest span), ``bubble`` (cost - the largest busy time) and their ratio."""

    cost: float
    bubble: float
    bubble_rate: float


def span_bubble(busy: Sequence[float], spans: Sequence[float]) -> SpanBubble:
    """The bubble figures of ranks with these busy times and spans (see the module docstring);
    all zero for no ranks."""
    if not spans:
        return SpanBubble(0.0, 0.0, 0.0)
    cost = max(spans)
    bubble = cost - max(busy, default=0.0)
    if -1e-9 * cost < bubble < 0:  # a rank busy all its span, its times summed in another order
        bubble = 0.0
    return SpanBubble(cost, bubble, bubble / cost if cost > 0 else 0.0)


def event_label(name: str, stage: int, mb: int) -> str:
    """``"F1.3"`` (kind, stage, microbatch); ``"F1"`` without a microbatch, ``"F"`` without a
    stage (negative numbers mean none)."""
    if stage < 0:
        return name
    return f"{name}{stage}.{mb}" if mb >= 0 else f"{name}{stage}"


def rank_tracks(ranks: Iterable[int]) -> list[dict[str, Any]]:
    """The metadata events that name and sort one track per rank."""
    out: list[dict[str, Any]] = []
    for r in ranks:
        out.append({"ph": "M", "name": "process_name", "pid": r, "tid": 0, "args": {"name": f"rank {r}"}})
        out.append({"ph": "M", "name": "process_sort_index", "pid": r, "tid": 0, "args": {"sort_index": r}})
        out.append({"ph": "M", "name": "thread_name", "pid": r, "tid": 0, "args": {"name": "compute"}})
    return out


def complete_event(rank: int, name: str, stage: int, mb: int, ts_us: float, dur_us: float, *,
                   step: int, index: int, cat: str = "instr",
                   extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """One complete event: ``name`` is the op's kind (or the instruction's opcode); ``extra``
    adds fields to ``args`` after the standard ones."""
    return {
        "ph": "X", "name": event_label(name, stage, mb), "cat": cat, "pid": rank, "tid": 0,
        "ts": ts_us, "dur": dur_us,
        "args": {"op": name, "stage": stage, "mb": mb, "step": step, "index": index, **(extra or {})},
    }


def trace_document(events: Sequence[dict[str, Any]], other: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The trace as a JSON-ready object."""
    return {"traceEvents": list(events), "displayTimeUnit": "ms", "otherData": dict(other or {})}


def trace_text(events: Sequence[dict[str, Any]], other: Mapping[str, Any] | None = None) -> str:
    """The trace as JSON text, one event per line."""
    body = ",\n".join(json.dumps(e, separators=(",", ":")) for e in events)
    return (f'{{"traceEvents":[\n{body}\n],\n"displayTimeUnit":"ms",\n'
            f'"otherData":{json.dumps(dict(other or {}), separators=(",", ":"))}}}\n')
