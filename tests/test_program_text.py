"""``--emit sched``: a scheduled program written as schedlang text compiles back to the same
pipeline (ops with ranks, times and memory; dependencies with latencies; placement; memory limit;
overlap) and the same per-rank orders. Every built-in at its default parameters, built-ins under
uneven costs, random pipelines with random valid orders, an optimized schedule and an imported
PyTorch CSV."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings

import schedlang.api as sl
from schedlang.cli import main
from schedlang.load import std_names
from schedlang.program_text import program_differences, program_text
from schedlang.simulate import simulate
from schedlang.testing import scheduled_programs

STD_SCHEDULES = [e.name for e in sl.builtins() if e.group == "schedule"]


def _round_trip(prog):
    text = program_text(prog)
    back = sl.schedule(sl.loads(text, "round-trip.sched"))
    return text, back


def test_every_schedule_is_listed() -> None:
    # the parametrised test below covers every std program that has a schedule
    assert len(STD_SCHEDULES) >= 14
    assert {f"std:{n}" for n in std_names()} >= set(STD_SCHEDULES)


@pytest.mark.parametrize("name", STD_SCHEDULES)
def test_builtin_round_trip(name: str) -> None:
    prog = sl.compile(name)
    text, back = _round_trip(prog)
    assert program_differences(prog, back) == [], text
    # the same costs give the same simulation, to the bit
    a, b = simulate(prog), simulate(back)
    assert (a.makespan, a.cost, a.bubble_rate) == (b.makespan, b.cost, b.bubble_rate)
    assert [r.peak_memory for r in a.ranks] == [r.peak_memory for r in b.ranks]
    # and writing it again gives the same declarations (the header comment names the source):
    # the printer is a fixed point on its own output
    def body(t: str) -> list[str]:
        return [ln for ln in t.splitlines() if not ln.startswith("#")]

    assert body(program_text(back)) == body(text)


UNEVEN = {
    "std:zb-h1": dict(p=3, m=5, tf=[1.5, 2.0, 1.25], tb=[1.0, 2.5, 3.0], tw=0.75, tc=0.125, mem_limit=[9, 9, 8]),
    "std:1f1b": dict(p=3, m=4, tf=[1.0, 2.0, 3.0], tc=0.5),
    "std:zb-v": dict(p=2, m=4, tf=[1.0, 1.5, 2.0, 2.5], tc=0.25),
    "std:interleaved-1f1b": dict(p=2, m=4, tc=0.3),
}


@pytest.mark.parametrize("name", sorted(UNEVEN))
def test_uneven_costs_round_trip(name: str) -> None:
    prog = sl.compile(name, **UNEVEN[name])
    text, back = _round_trip(prog)
    assert program_differences(prog, back) == [], text
    assert simulate(prog).makespan == simulate(back).makespan


def test_per_microbatch_times_and_partial_kinds() -> None:
    # a user op that exists on one stage, a time that varies by microbatch, a latency of its own
    src = """
import "std:fused"
param p = 2
param m = 4
ranks p
microbatches m
op L[s, i] role USER time i % 2 == 0 ? 0.5 : 1.0 mem 0 where s == num_stages - 1
dep F[s, i] -> L[s, i]
dep L[s, i] -> BW[s, i] latency 0.25 + i
overlap max
schedule "list"
"""
    prog = sl.schedule(sl.loads(src, "user.sched"))
    text, back = _round_trip(prog)
    assert program_differences(prog, back) == [], text
    assert "where s == 1" in text and "overlap max" in text


def test_differences_are_found() -> None:
    # the comparison the tests rely on does see a changed time, latency, limit and order
    from dataclasses import replace

    prog = sl.compile("std:zb-h1", p=2, m=2)
    ops = list(prog.ops)
    ops[0] = replace(ops[0], time=ops[0].time + 1)
    assert program_differences(prog, replace(prog, ops=tuple(ops))) == ["ops differ (12 vs 12)"]
    edges = list(prog.edges)
    edges[0] = replace(edges[0], latency=9.0)
    assert program_differences(prog, replace(prog, edges=tuple(edges))) == ["dependencies differ (10 vs 10)"]
    assert program_differences(prog, replace(prog, mem_limit=(3.0, 3.0)))[0].startswith("mem_limit")
    r0 = prog.orders.ranks[0]
    swapped = replace(prog.orders, ranks=(r0[1:2] + r0[:1] + r0[2:],) + prog.orders.ranks[1:])
    assert program_differences(prog, replace(prog, schedule=swapped)) == ["orders differ"]


def test_optimized_round_trip_and_cli(tmp_path, capsys) -> None:
    pytest.importorskip("ortools")
    prog = sl.load("std:zb-h1", p=2, m=3)
    opt, _ = sl.optimize(prog, time_limit=5, mem_limit=2.5, seed=0, workers=1)
    assert opt.mem_limit == (2.5, 2.5)  # the limit it was optimized under goes with it
    text, back = _round_trip(opt)
    assert program_differences(opt, back) == [], text
    assert "mem_limit 2.5" in text
    # `optimize -o X.sched` writes a program that `check` accepts (it used to write `rank 0: ...` lines)
    out = tmp_path / "opt.sched"
    assert main(["optimize", "std:zb-h1", "--set", "p=2", "--set", "m=3", "--time-limit", "5",
                 "--quiet", "--mem-limit", "2.5", "-o", str(out)]) == 0
    capsys.readouterr()
    assert main(["check", str(out)]) == 0
    assert "ok" in capsys.readouterr().out
    # same options, seed and one worker: the same solution, written and read back exactly
    assert program_differences(opt, sl.compile(str(out))) == []


def test_imported_csv_round_trip(tmp_path, capsys) -> None:
    csv = tmp_path / "mixed.csv"
    csv.write_text("0F0,0F1,0I0,0W0,,0B1\n1F0,1B0,1F1,1I1,1W1\n")
    _, prog = sl.import_torch_csv(str(csv))
    text, back = _round_trip(prog)
    assert program_differences(prog, back) == [], text
    out = tmp_path / "mixed.sched"
    assert main(["import", str(csv), "--emit", "sched", "-o", str(out)]) == 0
    assert program_differences(prog, sl.compile(str(out))) == []
    # other formats too: the imported schedule's orders
    assert main(["import", str(csv), "--emit", "orders"]) == 0
    assert capsys.readouterr().out.splitlines()[0] == "rank 0: F[0,0] F[0,1] B[0,0] W[0,0] BW[0,1]"


def test_compile_emit_sched_cli(tmp_path, capsys) -> None:
    assert main(["compile", "std:gpipe", "--set", "p=2", "--set", "m=2", "--emit", "sched"]) == 0
    text = capsys.readouterr().out
    assert text.startswith("# gpipe, orders from ")
    assert "p = 2, m = 2" in text
    # an -o path ending in .sched writes the program without --emit
    out = tmp_path / "g.sched"
    assert main(["compile", "std:gpipe", "--set", "p=2", "--set", "m=2", "-o", str(out)]) == 0
    assert out.read_text() == text
    # the values are built in: setting a parameter of the original is an error, not ignored
    assert main(["check", str(out), "--set", "p=4"]) == 1
    assert "has no parameter 'p'" in capsys.readouterr().err


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scheduled_programs())
def test_random_programs_round_trip(prog) -> None:  # type: ignore[no-untyped-def]
    # random pipelines (placements, per-stage costs, comm) with random valid orders
    text, back = _round_trip(prog)
    assert program_differences(prog, back) == [], text


def test_import_rejects_an_unknown_emit_format_before_reading(capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["import", "/no/such/file.csv", "--emit", "pdf"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "argument --emit: unknown format 'pdf'" in err and "cannot read" not in err
