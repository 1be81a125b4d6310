"""Chrome / Perfetto trace of a simulated schedule (``--emit chrome-trace``).

The output is the Chrome "JSON object" trace format, which https://ui.perfetto.dev and
``chrome://tracing`` open directly. It is written by :mod:`schedlang.traceformat`, the one trace writer, which the runtime's
measured traces (``schedlang.runtime.timeline.chrome_trace``) use too, so a planned and a measured
timeline can be opened side by side and compared event by event:

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
events, for tests and for comparing a plan with a measurement; :func:`timeline_from_trace` turns
one into a program and its timing, which ``schedlang render TRACE.json`` draws like a schedule.
"""

from __future__ import annotations

import json
from typing import Any

from schedlang.ir import Program
from schedlang.simulate import Simulation, simulate
from schedlang.traceformat import complete_event, rank_tracks, span_bubble, trace_text

TRACE_SOURCE = "schedlang-simulate"


def trace_events(program: Program, sim: Simulation | None = None, unit_us: float = 1000.0) -> list[dict[str, Any]]:
    """The trace events (metadata first, then one complete event per op, rank by rank)."""
    sim = sim or simulate(program)
    events = rank_tracks(range(program.num_ranks))
    for r, slots in enumerate(program.orders.ranks):
        for pos, slot in enumerate(slots):
            for k in slot:
                op = program.ops[k]
                events.append(complete_event(
                    r, op.kind, op.stage, op.mb, round(sim.start[k] * unit_us, 3),
                    round((sim.end[k] - sim.start[k]) * unit_us, 3), step=0, index=pos,
                    extra={"role": program.role(op).value, "label": op.label}))
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
    return trace_text(trace_events(program, sim, unit_us), other)


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


# ------------------------------------------------------------------ traces back to timelines


def _compute_events(doc: Any) -> list[dict[str, Any]]:
    """Complete events that are computation: not waits, not point-to-point or sync instructions."""
    from schedlang.isa import COMPUTE_OPS, Opcode

    other = {op.value for op in Opcode} - {op.value for op in COMPUTE_OPS}
    events = doc["traceEvents"] if isinstance(doc, dict) else doc
    out = []
    for e in events:
        if e.get("ph") != "X" or e.get("cat", "instr") not in ("instr", "F", "B", "W", "BW", "USER"):
            continue
        args = e.get("args", {})
        kind = str(args.get("op", e.get("name", "")))
        if kind in other or "stage" not in args or "mb" not in args:
            continue
        out.append(e)
    return out


def timeline_from_trace(text: str, name: str = "trace") -> tuple[Program, Simulation]:
    """A program and its timing rebuilt from a Chrome trace (planned or measured), for drawing.

    Every compute event becomes an op (kind from ``args.op``, stage, microbatch, rank from
    ``pid``); events of one rank with the same start and duration form one slot; times are read
    back in cost units (``otherData.unit_us``, default 1000 us) and shifted so the first event
    starts at 0. The program has no dependencies and no memory (a trace records neither); the
    simulation's figures (makespan, spans, bubble rate) follow the simulator's definitions.
    Raises :class:`SchedlangError` for a file that is not such a trace.
    """
    from schedlang.ir import DEFAULT_ROLES, Op, OpKind, Orders, Role
    from schedlang.simulate import RankStats
    from schedlang.source import SchedlangError

    try:
        doc = json.loads(text)
        events = _compute_events(doc)
        unit = float(doc.get("otherData", {}).get("unit_us", 1000.0)) if isinstance(doc, dict) else 1000.0
    except KeyError as exc:
        raise SchedlangError(f"'{name}' is not a Chrome trace: no {exc} field") from None
    except (ValueError, TypeError, AttributeError) as exc:
        raise SchedlangError(f"'{name}' is not a Chrome trace: {exc}") from None
    except RecursionError:  # json nests one Python frame per bracket
        raise SchedlangError(f"'{name}' is not a Chrome trace: it is nested too deeply") from None
    if not events:
        raise SchedlangError(f"'{name}' has no compute events (complete events with args op, stage and mb)")
    t0 = min(float(e["ts"]) for e in events)
    rows: dict[int, list[tuple[float, float, str, int, int]]] = {}
    for e in events:
        a = e["args"]
        begin = (float(e["ts"]) - t0) / unit
        rows.setdefault(int(e["pid"]), []).append(
            (begin, begin + float(e["dur"]) / unit, str(a.get("op", e["name"])), int(a["stage"]), int(a["mb"])))
    num_ranks = max(rows) + 1
    ops: list[Op] = []
    kinds: dict[str, OpKind] = {}
    placement: dict[int, int] = {}
    ranks: list[list[tuple[int, ...]]] = [[] for _ in range(num_ranks)]
    start: list[float] = []
    end: list[float] = []
    for r in sorted(rows):
        prev: tuple[float, float] | None = None
        for s, t, kind, stage, mb in sorted(rows[r], key=lambda x: x[0]):  # stable: a slot keeps its order
            kinds.setdefault(kind, OpKind(kind, DEFAULT_ROLES.get(kind, Role.USER)))
            placement.setdefault(stage, r)
            ops.append(Op(len(ops), kind, stage, mb, r, t - s, 0.0))
            start.append(s)
            end.append(t)
            if prev == (s, t):
                ranks[r][-1] += (len(ops) - 1,)
            else:
                ranks[r].append((len(ops) - 1,))
            prev = (s, t)
    num_stages = max(placement) + 1
    program = Program(
        name=name, params=(), num_ranks=num_ranks, num_stages=num_stages,
        num_microbatches=max(o.mb for o in ops) + 1,
        placement=tuple(placement.get(s, 0) for s in range(num_stages)),
        kinds=tuple(kinds.values()), ops=tuple(ops), edges=(), overlap="max",
        schedule=Orders(tuple(tuple(x) for x in ranks), origin="trace"))
    stats = []
    for r in range(num_ranks):
        slots = ranks[r]
        busy = sum(end[s[0]] - start[s[0]] for s in slots)
        first = start[slots[0][0]] if slots else 0.0
        last = end[slots[-1][0]] if slots else 0.0
        stats.append(RankStats(r, busy, last - first, last - first - busy, 0.0, first, last))
    fig = span_bubble([x.busy for x in stats], [x.span for x in stats])
    return program, Simulation(max(end), fig.cost, fig.bubble, fig.bubble_rate, tuple(stats),
                               tuple(start), tuple(end))
