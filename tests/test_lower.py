"""Lowering: every language construct produces the IR it should."""

from __future__ import annotations

from pathlib import Path

import pytest

from schedlang.api import load, loads, orders, schedule, simulate
from schedlang.ir import Role
from schedlang.source import SchedlangError

BASE = """
import "std:fbw"
param p = 2
param m = 3
ranks p
microbatches m
"""


def test_placements_linear_interleaved_vshape_list() -> None:
    for place, expected in [
        ("place s => s % p", (0, 1, 0, 1)),
        ("place s => s < p ? s : 2 * p - 1 - s", (0, 1, 1, 0)),
        ("place [1, 0, 0, 1]", (1, 0, 0, 1)),
    ]:
        prog = loads(BASE + "stages 2 * p\n" + place)
        assert prog.placement == expected
        assert prog.num_stages == 4
        assert all(o.rank == expected[o.stage] for o in prog.ops)


def test_ops_edges_and_roles_of_fbw() -> None:
    prog = loads(BASE, tf=[1.0, 2.0], tc=0.5, mem_f=4.0, mem_w=1.0)
    assert len(prog.ops) == 3 * 2 * 3
    assert {k.name: k.role for k in prog.kinds} == {"F": Role.F, "B": Role.B, "W": Role.W}
    f1 = prog.find("F", 1, 2)
    assert f1 is not None and f1.time == 2.0 and f1.mem == 4.0 and f1.rank == 1
    b0 = prog.find("B", 0, 0)
    assert b0 is not None and b0.mem == -3.0
    lat = {(prog.ops[e.src].label, prog.ops[e.dst].label): e.latency for e in prog.edges}
    assert lat[("F[0,0]", "F[1,0]")] == 0.5  # crosses ranks: comm time
    assert lat[("F[1,0]", "B[1,0]")] == 0.0  # same rank
    assert lat[("B[1,0]", "B[0,0]")] == 0.5
    assert ("B[0,0]", "W[0,0]") in lat
    assert len(prog.edges) == 3 * (1 + 1 + 1 + 2)


def test_where_latency_and_cross_microbatch_rules() -> None:
    prog = loads(BASE + """
op R[s, i] role USER time 0.5 mem 0 where i % 2 == 0
dep F[s, i] -> F[s, i + 1] latency 0.25
dep R[s, i] -> B[s, i]
""")
    assert [o.label for o in prog.ops if o.kind == "R"] == ["R[0,0]", "R[0,2]", "R[1,0]", "R[1,2]"]
    assert prog.kind("R").role is Role.USER
    lat = {(prog.ops[e.src].label, prog.ops[e.dst].label): e.latency for e in prog.edges}
    assert lat[("F[0,0]", "F[0,1]")] == 0.25
    assert ("R[1,2]", "B[1,2]") in lat and ("R[1,1]", "B[1,1]") not in lat


def test_fixed_source_index_in_rule() -> None:
    prog = loads(BASE + "dep W[0, 0] -> F[0, m - 1]\n")
    w = prog.find("W", 0, 0)
    f = prog.find("F", 0, 2)
    assert w is not None and f is not None
    assert any(e.src == w.id and e.dst == f.id for e in prog.edges)


def test_orders_with_loops_conditionals_optional_and_overlap() -> None:
    prog = schedule(loads(BASE + """
overlap max
schedule {
  rank r in 0..p {
    for x in 0..m + 2 {
      F[r, x]?
      if x >= 1 and x - 1 < m { B[r, x - 1] } elif false { W[r, 0] } else { }
    }
    W[r, 0] & W[r, 1]
    W[r, 2]
  }
}
"""))
    o = orders(prog)
    assert o[0][:4] == ["F[0,0]", "F[0,1]", "B[0,0]", "F[0,2]"]
    assert o[0][-2:] == ["W[0,0]&W[0,1]", "W[0,2]"]
    sim = simulate(prog)
    slot = prog.orders.ranks[0][-2]
    assert sim.end[slot[0]] - sim.start[slot[0]] == 1.0  # overlap max: the longer of the two


def test_stage_of_and_rank_of_in_orders() -> None:
    # looped BFS on an interleaved placement, written with stage_of / num_stages_on
    src = BASE + """
stages 2 * p
place s => s % p
let last = rank_of(num_stages - 1)
schedule {
  rank r in 0..p {
    for c in 0..num_stages_on(r) { for i in 0..m { F[stage_of(r, c), i] } }
    for c in 0..num_stages_on(r) { for i in 0..m { B[stage_of(r, 1 - c), i] W[stage_of(r, 1 - c), i] } }
  }
}
"""
    prog = schedule(loads(src))
    assert dict(prog.params)["p"] == 2
    o = orders(prog)
    assert o[1][:6] == ["F[1,0]", "F[1,1]", "F[1,2]", "F[3,0]", "F[3,1]", "F[3,2]"]
    assert o[1][6:8] == ["B[3,0]", "W[3,0]"]
    bad = src.replace("stage_of(r, 1 - c)", "stage_of(r, c)")
    with pytest.raises(SchedlangError, match="deadlock"):
        schedule(loads(bad))  # backward of the early chunk first cannot run: the verifier says why
    with pytest.raises(SchedlangError, match="rank 0 holds 2 stage"):
        loads(src.replace("stage_of(r, c), i] } }\n    for", "stage_of(r, 2), i] } }\n    for"))


def test_parameter_overrides_propagate_to_derived_defaults() -> None:
    prog = loads("param p = 2\nparam m = 2 * p\nranks p\nmicrobatches m\nop F[s, i] time 1\n", p=3)
    assert prog.num_ranks == 3 and prog.num_microbatches == 6
    assert dict(prog.params) == {"p": 3, "m": 6}


def test_imports_override_and_relative_paths(tmp_path: Path) -> None:
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "base.sched").write_text('import "std:1f1b"\nparam m = 5\n')
    main = tmp_path / "main.sched"
    main.write_text('import "lib/base.sched"\nparam p = 3\nop BW[s, i] time 7 mem -1\n')
    prog = load(str(main))
    assert (prog.num_ranks, prog.num_microbatches) == (3, 5)
    bw = prog.find("BW", 0, 0)
    assert bw is not None and bw.time == 7
    sched = schedule(prog)
    assert len(orders(sched)[0]) == 10


def test_import_cycle_is_reported(tmp_path: Path) -> None:
    (tmp_path / "a.sched").write_text('import "b.sched"\n')
    (tmp_path / "b.sched").write_text('import "a.sched"\n')
    with pytest.raises(SchedlangError, match="import cycle"):
        load(str(tmp_path / "a.sched"))


def test_mem_limit_list_and_inf() -> None:
    assert loads(BASE).mem_limit is None
    prog = loads(BASE + "mem_limit [4, 5]\n".replace("mem_limit [4, 5]", "mem_limit [4, 5]"))
    assert prog.mem_limit == (4.0, 5.0)


def test_a_rule_of_the_users_file_that_matches_nothing_is_warned_about() -> None:
    prog = loads(BASE + "dep F[s, i] -> W[s, i] where s > 5\n", name="w.sched")
    assert [w.location for w in prog.warnings] == [(7, 1)]
    assert "adds no dependency" in prog.warnings[0].render("warning")
    assert loads(BASE, p=1).warnings == ()  # library rules that are empty for one stage stay quiet
