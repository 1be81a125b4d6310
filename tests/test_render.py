"""Render tests: the picture's content matches the simulation (SVG boxes, PNG pixels, trace events)."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings

from schedlang import api
from schedlang import testing as sst
from schedlang.cli import main
from schedlang.render import Style, Text, layout, op_boxes, render_svg
from schedlang.trace import chrome_trace, read_trace, timeline_from_trace

SVG = "{http://www.w3.org/2000/svg}"

INTERLEAVED = """
import "std:fbw"
param p = 2
param m = 3
ranks p
stages 2 * p
microbatches m
place s => s % p
op R[s, i] role USER time 0.25 mem 0 where s == 0
dep F[s, i] -> R[s, i] where s == 0
comm 0.5
schedule "list"
"""


def _groups(root: ET.Element) -> dict[str, ET.Element]:
    return {g.get("class", ""): g for g in root.iter(f"{SVG}g")}


def _check_svg(prog, svg: str) -> None:  # type: ignore[no-untyped-def]
    sim = api.simulate(prog)
    root = ET.fromstring(svg)
    groups = _groups(root)
    ops_g = groups["ops"]
    x0, scale = float(ops_g.get("data-x0", "nan")), float(ops_g.get("data-scale", "nan"))
    rows = {int(r.get("data-rank", -1)): (float(r.get("data-y", 0)), float(r.get("data-h", 0)))
            for r in groups["rows"].iter(f"{SVG}rect")}
    assert sorted(rows) == list(range(prog.num_ranks))
    assert [rows[r][0] for r in sorted(rows)] == sorted(rows[r][0] for r in rows)  # rank 0 on top
    boxes = list(ops_g.iter(f"{SVG}rect"))
    assert len(boxes) == len(prog.ops)
    assert sorted(int(b.get("data-op", -1)) for b in boxes) == list(range(len(prog.ops)))
    for b in boxes:
        k = int(b.get("data-op", -1))
        op = prog.ops[k]
        assert int(b.get("data-rank", -1)) == op.rank
        x, w = float(b.get("x", 0)), float(b.get("width", 0))
        assert x == pytest.approx(x0 + sim.start[k] * scale, abs=0.006)
        assert x + w == pytest.approx(x0 + sim.end[k] * scale, abs=0.012)
        y, h = float(b.get("y", 0)), float(b.get("height", 0))
        ry, rh = rows[op.rank]
        assert ry - 1e-6 <= y and y + h <= ry + rh + 1e-2


@pytest.mark.parametrize("name,params", [("std:1f1b", {"p": 4, "m": 8, "tc": 0.3}), ("std:gpipe", {"p": 3, "m": 5})])
def test_svg_one_box_per_op_in_its_row_and_time(name: str, params: dict[str, float]) -> None:
    prog = api.compile(name, **params)
    _check_svg(prog, render_svg(prog, memory=True))


def test_svg_interleaved_user_kind_and_comm() -> None:
    prog = api.schedule(api.loads(INTERLEAVED))
    svg = render_svg(prog, memory=True)
    _check_svg(prog, svg)
    groups = _groups(ET.fromstring(svg))
    cross = [e for e in prog.edges if prog.ops[e.src].rank != prog.ops[e.dst].rank and e.latency > 0]
    assert cross and len(list(groups["comm"].iter(f"{SVG}line"))) == len(cross)
    kinds = {b.get("data-kind"): b.get("fill") for b in groups["ops"].iter(f"{SVG}rect")
             if prog.ops[int(b.get("data-op", -1))].stage == 0}
    assert set(kinds) == {"F", "B", "W", "R"} and len(set(kinds.values())) == 4  # distinct colours
    assert len(list(groups["memory"].iter(f"{SVG}polyline"))) == prog.num_ranks


def test_svg_idle_gaps_cover_exactly_the_idle_time() -> None:
    prog = api.compile("std:1f1b", p=4, m=6, tc=0.2)
    sim = api.simulate(prog)
    groups = _groups(ET.fromstring(render_svg(prog)))
    scale = float(groups["ops"].get("data-scale", "nan"))
    idle = [0.0] * prog.num_ranks
    for rect in groups["idle"].iter(f"{SVG}rect"):
        y = float(rect.get("y", 0))
        r = next(r for r, (ry, _) in enumerate((float(x.get("data-y", 0)), 0) for x in groups["rows"]) if ry == y)
        idle[r] += float(rect.get("width", 0)) / scale
    for r, stats in enumerate(sim.ranks):
        assert idle[r] == pytest.approx(stats.idle, abs=1e-2 * (1 + stats.idle))


def test_title_reports_bubble_makespan_peak() -> None:
    prog = api.compile("std:1f1b", p=4, m=8)
    sim = api.simulate(prog)
    root = ET.fromstring(render_svg(prog))
    title = " ".join(t.text or "" for t in _groups(root)["title"].iter(f"{SVG}text"))
    assert f"bubble rate {sim.bubble_rate * 100:.2f}%" in title
    assert f"makespan {sim.makespan:.6g}" in title
    assert f"peak memory {max(r.peak_memory for r in sim.ranks):.6g}" in title


def test_labels_thin_out_at_scale() -> None:
    prog = api.compile("std:1f1b", p=32, m=128)
    st = Style()
    scene = layout(prog, style=st)
    labels = scene.groups.get("op-labels", [])
    boxes = op_boxes(scene)
    assert len(boxes) == len(prog.ops)
    assert 0 < len(labels) < len(prog.ops) / 2  # some fit, most do not
    centres = {(round(b.x + b.w / 2, 3), b.y): b for b in boxes}
    for t in labels:  # every label shown sits in the middle of a box wide enough for it
        assert isinstance(t, Text)
        box = next(b for (cx, y), b in centres.items() if cx == round(t.x, 3) and y <= t.y <= y + b.h)
        assert t.text == str(prog.ops[int(dict(box.data)["op"])].mb)
        assert len(t.text) * t.size * st.char_w <= box.w
        assert int(t.text) % 10 == 0  # thinned to every tenth microbatch
    small = layout(api.compile("std:1f1b", p=4, m=8), style=st)  # roomy boxes: every op labelled
    assert len(small.groups["op-labels"]) == len(op_boxes(small)) == 64


def test_png_size_and_pixels(tmp_path: Path) -> None:
    image = pytest.importorskip("PIL.Image")
    prog = api.compile("std:1f1b", p=4, m=8)
    sim = api.simulate(prog)
    out = tmp_path / "s.png"
    assert main(["render", "std:1f1b", "-o", str(out), "--width", "1200"]) == 0
    scene = layout(prog, style=Style(width=1200))
    img = image.open(out).convert("RGB")
    assert img.size == (1200, scene.height)
    _, y, h = scene.rows[0]
    cy = int(y + h / 2)
    for k in prog.orders.ranks[0][0] + prog.orders.ranks[0][-1]:
        x = int(scene.x0 + (sim.start[k] + 0.1) * scene.scale) + 1
        assert img.getpixel((x, int(y) + 2)) != (255, 255, 255)
    right = int(scene.x0 + sim.makespan * scene.scale) + 5  # past the last op: background
    assert img.getpixel((right, cy)) == (255, 255, 255)


def test_trace_one_complete_event_per_op_and_rank_tracks() -> None:
    prog = api.compile("std:1f1b", p=4, m=8, tc=0.25)
    sim = api.simulate(prog)
    text = chrome_trace(prog)
    doc = json.loads(text)
    xs = [e for e in doc["traceEvents"] if e["ph"] == "X"]
    assert len(xs) == len(prog.ops)
    names = {e["pid"]: e["args"]["name"] for e in doc["traceEvents"] if e["ph"] == "M" and e["name"] == "process_name"}
    assert names == {r: f"rank {r}" for r in range(prog.num_ranks)}
    seen = set()
    for e in xs:
        k = prog.find(e["args"]["op"], e["args"]["stage"], e["args"]["mb"])
        assert k is not None and k.id not in seen
        seen.add(k.id)
        assert e["pid"] == k.rank and e["args"]["label"] == k.label and e["name"] == f"{k.kind}{k.stage}.{k.mb}"
        assert e["cat"] == "instr" and e["args"]["role"] == prog.role(k).value
        assert e["ts"] == pytest.approx(sim.start[k.id] * 1000)
        assert e["dur"] == pytest.approx((sim.end[k.id] - sim.start[k.id]) * 1000)
    per_rank = read_trace(text)
    for r, slots in enumerate(prog.orders.ranks):
        assert [e["args"]["label"] for e in per_rank[r]] == [prog.ops[k].label for s in slots for k in s]


def test_emitters_registered(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["compile", "std:gpipe", "--set", "p=2", "--set", "m=2", "--emit", "chrome-trace"]) == 0
    assert len([e for e in json.loads(capsys.readouterr().out)["traceEvents"] if e["ph"] == "X"]) == 8
    assert main(["compile", "std:gpipe", "--set", "p=2", "--set", "m=2", "--emit", "svg"]) == 0
    assert len(list(ET.fromstring(capsys.readouterr().out).iter(f"{SVG}rect"))) > 8


def test_render_bad_output_is_a_user_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["render", "std:gpipe", "-o", str(tmp_path / "x.txt")]) == 1
    assert "use .svg or .png" in capsys.readouterr().err
    assert main(["render", "std:gpipe", "--format", "png"]) == 1
    assert "needs -o" in capsys.readouterr().err


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sst.scheduled_programs(max_ranks=4, max_microbatches=4))
def test_svg_matches_simulation_on_random_pipelines(program) -> None:  # type: ignore[no-untyped-def]
    _check_svg(program, render_svg(program, memory=True))
    doc = json.loads(chrome_trace(program))
    assert sum(1 for e in doc["traceEvents"] if e["ph"] == "X") == len(program.ops)


@pytest.mark.parametrize("name", ["dualpipe-v", "zb-v", "interleaved-1f1b", "chimera"])
def test_svg_of_multi_chunk_builtins(name: str) -> None:
    prog = api.compile(f"std:{name}")
    _check_svg(prog, render_svg(prog))


def test_goldens(golden) -> None:  # type: ignore[no-untyped-def]
    """Small pictures and traces, byte for byte (pytest --update-goldens rewrites them)."""
    prog = api.compile("std:zb-h1", p=2, m=2, tc=0.25)
    golden.check("ux/zb-h1-p2-m2.svg", render_svg(prog, memory=True))
    golden.check("ux/zb-h1-p2-m2.trace.json", chrome_trace(prog))


def test_planned_trace_matches_the_runtime_format() -> None:
    """A measured trace built by the runtime from the same timeline has the same events."""
    timeline = pytest.importorskip("schedlang.runtime.timeline")
    prog = api.compile("std:zb-h1", p=3, m=4, tc=0.5)
    sim = api.simulate(prog)
    events = []
    for r, slots in enumerate(prog.orders.ranks):
        for pos, slot in enumerate(slots):
            for k in slot:
                op = prog.ops[k]
                events.append(timeline.Event(rank=r, step=0, index=pos, name=op.kind, stage=op.stage, mb=op.mb,
                                             start_ns=round(sim.start[k] * 1e6), end_ns=round(sim.end[k] * 1e6)))
    measured = read_trace(json.dumps(timeline.chrome_trace(events)))
    planned = read_trace(chrome_trace(prog))
    assert sorted(measured) == sorted(planned) == list(range(prog.num_ranks))
    for r in planned:
        assert [(e["name"], e["pid"], e["tid"]) for e in planned[r]] == [(e["name"], e["pid"], e["tid"]) for e in measured[r]]
        for a, b in zip(planned[r], measured[r], strict=True):
            assert a["ts"] == pytest.approx(b["ts"]) and a["dur"] == pytest.approx(b["dur"])
            assert all(a["args"][key] == b["args"][key] for key in ("op", "stage", "mb", "step", "index"))


@pytest.mark.parametrize("name,params", [("std:dualpipe-v", {}), ("std:1f1b", {"p": 3, "m": 5, "tc": 0.5})])
def test_trace_draws_like_its_program(name: str, params: dict[str, float]) -> None:
    """A planned trace read back gives the same timeline and the same boxes as the program."""
    prog = api.compile(name, **params)
    sim = api.simulate(prog)
    tprog, tsim = timeline_from_trace(chrome_trace(prog), "t")
    assert len(tprog.ops) == len(prog.ops) and tprog.num_ranks == prog.num_ranks
    assert (tsim.makespan, tsim.cost, tsim.bubble_rate) == pytest.approx((sim.makespan, sim.cost, sim.bubble_rate))
    assert [r.busy for r in tsim.ranks] == pytest.approx([r.busy for r in sim.ranks])
    st = Style(width=1200)

    def boxes(p, s):  # type: ignore[no-untyped-def]
        return sorted((round(b.x, 6), round(b.y, 6), round(b.w, 6), round(b.h, 6), b.fill, dict(b.data)["kind"])
                      for b in op_boxes(layout(p, s, style=st)))

    assert boxes(tprog, tsim) == boxes(prog, sim)


def test_render_cli_draws_a_trace(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    trace = tmp_path / "plan.json"
    assert main(["compile", "std:zb-h1", "--set", "p=3", "--emit", "chrome-trace", "-o", str(trace)]) == 0
    assert main(["render", str(trace), "-o", str(tmp_path / "plan.svg")]) == 0
    root = ET.fromstring((tmp_path / "plan.svg").read_text())
    assert len(list(_groups(root)["ops"].iter(f"{SVG}rect"))) == len(api.compile("std:zb-h1", p=3).ops)
    assert main(["render", str(trace), "--memory"]) == 1
    assert "--memory does not apply to a trace" in capsys.readouterr().err
    (tmp_path / "bad.json").write_text('{"x": 1}')
    assert main(["render", str(tmp_path / "bad.json")]) == 1
    assert "not a Chrome trace" in capsys.readouterr().err


def test_measured_trace_skips_communication() -> None:
    timeline = pytest.importorskip("schedlang.runtime.timeline")
    ev = timeline.Event
    events = [ev(0, 0, 0, "F", 0, 0, 0, 1_000_000), ev(0, 0, 1, "SEND_ACT", 0, 0, 1_000_000, 1_100_000),
              ev(1, 0, 0, "RECV_ACT", 1, 0, 0, 1_200_000, cat="wait"), ev(1, 0, 1, "F", 1, 0, 1_200_000, 2_200_000),
              ev(1, 0, 2, "BW", 1, 0, 2_200_000, 4_200_000), ev(0, 0, 2, "BW", 0, 0, 4_300_000, 6_300_000)]
    prog, sim = timeline_from_trace(json.dumps(timeline.chrome_trace(events)), "measured")
    assert [o.label for o in prog.ops] == ["F[0,0]", "BW[0,0]", "F[1,0]", "BW[1,0]"]
    assert sim.makespan == pytest.approx(6.3) and sim.ranks[0].idle == pytest.approx(3.3)
