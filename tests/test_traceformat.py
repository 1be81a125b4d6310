"""One trace writer and one bubble computation: the compiler's planned traces and the runtime's
measured ones come from :mod:`schedlang.traceformat`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from schedlang import api
from schedlang.ir import Program
from schedlang.trace import chrome_trace, trace_events
from schedlang.traceformat import span_bubble


def _measured(prog: Program) -> list[Any]:
    timeline = pytest.importorskip("schedlang.runtime.timeline")
    sim = api.simulate(prog)
    out = []
    for r, slots in enumerate(prog.orders.ranks):
        for pos, slot in enumerate(slots):
            for k in slot:
                op = prog.ops[k]
                out.append(timeline.Event(rank=r, step=0, index=pos, name=op.kind, stage=op.stage, mb=op.mb,
                                          start_ns=round(sim.start[k] * 1e6), end_ns=round(sim.end[k] * 1e6)))
    return out


def test_span_bubble() -> None:
    fig = span_bubble([3.0, 2.0], [4.0, 5.0])
    assert (fig.cost, fig.bubble, fig.bubble_rate) == (5.0, 2.0, 0.4)
    assert span_bubble([], []).cost == 0.0
    assert span_bubble([0.0], [0.0]).bubble_rate == 0.0
    # a rank busy its whole span, its op times summed in another order than the span's: the
    # rounding (0.1 + 0.2 + 0.3 > 0.6) is no bubble, and never "-0.0000" in a printed rate
    busy = 0.1 + 0.2 + 0.3
    assert busy > 0.6
    fig = span_bubble([busy], [0.6])
    assert fig.bubble == 0.0 and f"{fig.bubble_rate:.4f}" == "0.0000"


def test_measured_bubble_is_the_simulators() -> None:
    timeline = pytest.importorskip("schedlang.runtime.timeline")
    prog = api.compile("std:zb-h1", p=3, m=4, tc=0.5, tw=0.5)
    sim = api.simulate(prog)
    b = timeline.measured_bubble(_measured(prog))  # costs read as milliseconds
    assert b.cost == pytest.approx(sim.cost * 1e-3)
    assert b.busy == pytest.approx(tuple(r.busy * 1e-3 for r in sim.ranks))
    assert b.bubble_rate == pytest.approx(sim.bubble_rate)
    assert b.makespan == pytest.approx(sim.makespan * 1e-3)


def test_runtime_writes_the_compilers_layout(tmp_path: Path) -> None:
    timeline = pytest.importorskip("schedlang.runtime.timeline")
    prog = api.compile("std:1f1b", p=2, m=3, tc=0.25)
    events = _measured(prog)
    path = tmp_path / "measured.json"
    timeline.write_chrome_trace(str(path), events, {"program": prog.name})
    text = path.read_text(encoding="utf-8")
    assert json.loads(text) == timeline.chrome_trace(events, {"program": prog.name})
    measured = json.loads(text)["traceEvents"]
    # one event per line, as the compiler writes it
    assert [json.loads(line.rstrip(",")) for line in text.splitlines()[1:1 + len(measured)]] == measured
    planned = trace_events(prog)
    # the same metadata events, and the same complete events but for the compiler's extra args
    assert [e for e in measured if e["ph"] == "M"] == [e for e in planned if e["ph"] == "M"]
    mx = [e for e in measured if e["ph"] == "X"]
    px = [e for e in planned if e["ph"] == "X"]
    assert len(mx) == len(px) == len(prog.ops)
    for a, b in zip(mx, px, strict=True):
        assert {k: v for k, v in a.items() if k not in ("ts", "dur", "args")} == \
            {k: v for k, v in b.items() if k not in ("ts", "dur", "args")}
        assert a["args"] == {k: v for k, v in b["args"].items() if k not in ("role", "label")}
        assert (a["ts"], a["dur"]) == pytest.approx((b["ts"], b["dur"]))
    json.loads(chrome_trace(prog))
