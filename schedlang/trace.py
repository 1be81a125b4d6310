"""Chrome / Perfetto trace of a simulated schedule (``--emit chrome-trace``).

The output is the Chrome "JSON object" trace format, which https://ui.perfetto.dev and
``chrome://tracing`` open directly. It follows the layout of the runtime's measured traces
(``schedlang.runtime.timeline.chrome_trace``), so a planned and a measured timeline can be opened
side by side and compared event by event:

- ``{"traceEvents": [...], "displayTimeUnit": "ms", "otherData": {...}}``, one event per line.
- One track per rank: ``pid`` = rank, ``tid`` = 0. Metadata events (``"ph": "M"``) name the
  process ``"rank R"`` (``process_name``), sort it by rank (``process_sort_index``) and name the
  thread ``"compute"`` (``thread_name``).
- One complete event (``"ph": "X"``) per op, rank by rank in order: ``name`` is the kind, the
  stage, a dot and the microbatch (``"F1.3"``: kind ``F``, stage 1, microbatch 3, as the runtime
  names an executed instruction); ``cat`` is ``"instr"``; ``ts`` and ``dur`` are in
  microseconds; ``args`` holds ``op`` (the kind), ``stage``, ``mb``, ``step`` (0), ``index`` (the
  slot's position in the rank's order; ops overlapped in one slot share it), ``role`` (``F``,
  ``B``, ``W``, ``BW``, ``USER``) and ``label`` (``"F[1,3]"``).
- Times: schedlang costs have no unit of their own; the trace reads one cost unit as
  ``unit_us`` microseconds (default 1000, i.e. costs in milliseconds, as in the Zero Bubble
  paper's profiles). ``otherData`` records ``unit_us``, the program name, its shape and the
  simulated makespan and bubble rate, and ``"source": "schedlang-simulate"``.

:func:`read_trace` parses such a file (or a measured one) back into per-rank lists of complete
events, for tests and for comparing a plan with a measurement.
"""

from __future__ import annotations

import json
from typing import Any

from schedlang.ir import Program
from schedlang.simulate import Simulation, simulate

TRACE_SOURCE = "schedlang-simulate"


def trace_events(program: Program, sim: Simulation | None = None, unit_us: float = 1000.0) -> list[dict[str, Any]]:
    """The trace events (metadata first, then one complete event per op, rank by rank)."""
    sim = sim or simulate(program)
    events: list[dict[str, Any]] = []
    for r in range(program.num_ranks):
        events.append({"ph": "M", "name": "process_name", "pid": r, "tid": 0, "args": {"name": f"rank {r}"}})
        events.append({"ph": "M", "name": "process_sort_index", "pid": r, "tid": 0, "args": {"sort_index": r}})
        events.append({"ph": "M", "name": "thread_name", "pid": r, "tid": 0, "args": {"name": "compute"}})
    for r, slots in enumerate(program.orders.ranks):
        for pos, slot in enumerate(slots):
            for k in slot:
                op = program.ops[k]
                events.append({
                    "ph": "X", "name": f"{op.kind}{op.stage}.{op.mb}", "cat": "instr", "pid": r, "tid": 0,
                    "ts": round(sim.start[k] * unit_us, 3),
                    "dur": round((sim.end[k] - sim.start[k]) * unit_us, 3),
                    "args": {"op": op.kind, "stage": op.stage, "mb": op.mb, "step": 0, "index": pos,
                             "role": program.role(op).value, "label": op.label},
                })
    return events


def chrome_trace(program: Program, unit_us: float = 1000.0) -> str:
    """The whole trace as JSON text (see the module docstring for the format)."""
    sim = simulate(program)
    other = {
        "source": TRACE_SOURCE, "program": program.name, "unit_us": unit_us,
        "num_ranks": program.num_ranks, "num_stages": program.num_stages,
        "num_microbatches": program.num_microbatches,
        "makespan": sim.makespan, "bubble_rate": sim.bubble_rate,
    }
    # One event per line: compact for large schedules, yet diffable line by line.
    events = ",\n".join(json.dumps(e, separators=(",", ":")) for e in trace_events(program, sim, unit_us))
    return (f'{{"traceEvents":[\n{events}\n],\n"displayTimeUnit":"ms",\n'
            f'"otherData":{json.dumps(other, separators=(",", ":"))}}}\n')


def read_trace(text: str) -> dict[int, list[dict[str, Any]]]:
    """Complete (``"X"``) events of a trace, grouped by ``pid`` (rank) and sorted by start time."""
    doc = json.loads(text)
    events = doc["traceEvents"] if isinstance(doc, dict) else doc
    out: dict[int, list[dict[str, Any]]] = {}
    for e in events:
        if e.get("ph") == "X":
            out.setdefault(int(e["pid"]), []).append(e)
    for evs in out.values():
        evs.sort(key=lambda e: (e["ts"], e.get("args", {}).get("index", 0)))
    return out
