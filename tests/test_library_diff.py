"""The schedule library, differential and exhaustive over small shapes:

- every fixed-pattern schedule that exists both as a DSL built-in and as a Python scheduler gives
  the same per-rank orders in both forms, over a grid of (p, m, v);
- every built-in compiles and verifies over a grid of (p, m, v) that includes m < p and m not a
  multiple of p, or fails with a located error exactly where the schedule does not exist;
- the Python schedulers work from roles and placement, not from kind names;
- the orders of every built-in at its default parameters are golden files
  (tests/golden/library/NAME.txt), and ``schedlang list`` names every built-in with its source.
"""

from __future__ import annotations

import itertools
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schedlang import testing as sst
from schedlang.api import compile as compile_program
from schedlang.api import loads, orders, schedule, with_scheduler
from schedlang.ir import format_orders
from schedlang.load import std_names
from schedlang.simulate import simulate
from schedlang.source import SchedlangError

PS = (1, 2, 3, 4, 5)
MS = (1, 2, 3, 4, 5, 7, 8, 9, 12)
VS = (1, 2, 3)

# (DSL built-in, Python scheduler, whether the built-in takes v)
PAIRS = [
    ("gpipe", "gpipe", False),
    ("looped-bfs", "looped-bfs", True),
    ("1f1b", "1f1b", False),
    ("zb-h1", "zb-h1", False),
    ("zb-h2", "zb-h2", False),
    ("interleaved-1f1b", "interleaved-1f1b", True),
    ("interleaved-zb", "interleaved-zb", True),
]


@pytest.mark.slow
@pytest.mark.parametrize(("builtin", "scheduler", "has_v"), PAIRS)
def test_dsl_and_python_give_the_same_orders(builtin: str, scheduler: str, has_v: bool) -> None:
    for p, m in itertools.product(PS, MS):
        for v in VS if has_v else (None,):
            kw = {"p": p, "m": m} | ({"v": v} if v is not None else {})
            dsl = compile_program(f"std:{builtin}", params=kw)
            py = compile_program(f"std:{builtin}", scheduler=scheduler, params=kw)
            assert dsl.orders.ranks == py.orders.ranks, (builtin, scheduler, kw)


@pytest.mark.slow
def test_interleaved_with_one_chunk_is_1f1b() -> None:
    for p, m in itertools.product(PS, MS):
        assert orders(compile_program("std:interleaved-1f1b", p=p, m=m, v=1)) == orders(
            compile_program("std:1f1b", p=p, m=m))


@given(p=st.integers(1, 5), k=st.integers(1, 4), v=st.integers(1, 4),
       tf=st.sampled_from([0.25, 0.5, 1.0, 2.0]), tb=st.sampled_from([0.25, 0.5, 1.0, 2.0]),
       tw=st.sampled_from([0.25, 0.5, 1.0, 2.0]))
@settings(max_examples=30, deadline=None)
def test_interleaved_bubble(p: int, k: int, v: int, tf: float, tb: float, tw: float) -> None:
    # Megatron's result: with m a multiple of p the bubble is (p-1) times one chunk's F+B+W, so
    # 1/v of 1F1B's, a chunk costing 1/v of a model slice (Narayanan et al., SC 2021, eq. 2); the
    # costs are a slice's, so std:1f1b on the same figures has v times the bubble
    sim = simulate(compile_program("std:interleaved-1f1b", p=p, m=k * p, v=v, tf=tf, tb=tb, tw=tw))
    assert sim.bubble == pytest.approx((p - 1) * (tf + tb + tw) / v)
    plain = simulate(compile_program("std:1f1b", p=p, m=k * p, tf=tf, tb=tb, tw=tw))
    assert plain.bubble == pytest.approx(v * sim.bubble)


# ------------------------------------------------------------------ every built-in, every shape


def _schedules() -> list[str]:
    from schedlang.catalog import std_entries

    return [e.name.removeprefix("std:") for e in std_entries() if e.group == "schedule"]


def _expected_error(name: str, p: int, m: int, v: int | None) -> str | None:
    """Where a built-in does not exist, and the message that says so."""
    if name in ("zb-v", "v-half", "v-min", "dualpipe-v") and v != 2:
        return f"{name} needs exactly two chunks per rank (v = 2)"
    if name == "dualpipe-v" and m < 2 * p:
        return "dualpipe-v needs at least 2p microbatches (m >= 2 * p)"
    if name == "dualpipe" and p % 2:
        return "dualpipe needs an even number of ranks (p % 2 == 0)"
    if name == "dualpipe" and (m % 2 or m < 2 * p):
        return "dualpipe needs an even m with m >= 2p"
    return None


@pytest.mark.slow
def test_every_builtin_verifies_or_errors_clearly() -> None:
    names = _schedules()
    assert len(names) >= 14
    checked = 0
    for name in names:
        from schedlang.api import load

        has_v = any(k == "v" for k, _ in load(f"std:{name}", p=2, m=4).params) if name not in (
            "zb-v", "v-half", "v-min", "dualpipe-v") else True
        for p, m in itertools.product((1, 2, 3, 4), (1, 2, 3, 5, 8, 9)):
            for v in (1, 2, 3) if has_v else (None,):
                kw = {"p": p, "m": m} | ({"v": v} if v is not None else {})
                want = _expected_error(name, p, m, v)
                try:
                    prog = compile_program(f"std:{name}", params=kw)  # compile verifies
                except SchedlangError as exc:
                    assert want is not None, f"std:{name} {kw}: {exc.render()}"
                    assert exc.message == want and exc.span is not None
                    continue
                assert want is None, f"std:{name} {kw} should have failed with: {want}"
                assert len(prog.orders.ranks) == p
                checked += 1
    assert checked > 300


# ------------------------------------------------------------------ generic Python schedulers

USER_KINDS = """
param p = 3
param m = 5
ranks p
microbatches m
op Fwd[s, i] role F time 1 + s mem 2
op Grad[s, i] role B time 2 mem -1
op WGrad[s, i] role W time 1 mem -1
dep Fwd[s, i] -> Fwd[s + 1, i]
dep Fwd[s, i] -> Grad[s, i] where s == num_stages - 1
dep Grad[s, i] -> Grad[s - 1, i]
dep Grad[s, i] -> WGrad[s, i]
"""


@pytest.mark.parametrize("scheduler", ["gpipe", "1f1b", "zb-h1", "zb-h2", "interleaved-1f1b", "zb-auto"])
def test_schedulers_work_from_roles_not_names(scheduler: str) -> None:
    # the same program with the standard names, scheduled the same way, gives the same orders
    prog = schedule(with_scheduler(loads(USER_KINDS), scheduler))
    std = loads(USER_KINDS.replace("Fwd", "F").replace("WGrad", "W").replace("Grad", "B"))
    ref = schedule(with_scheduler(std, scheduler))
    rename = {"Fwd": "F", "Grad": "B", "WGrad": "W"}
    got = {r: [rename[x.split("[")[0]] + "[" + x.split("[")[1] for x in xs] for r, xs in orders(prog).items()}
    assert got == orders(ref)


@pytest.mark.slow
@given(sst.programs(max_ranks=4, max_stages_per_rank=2, max_microbatches=6))
@settings(max_examples=60, deadline=None)
def test_library_schedulers_on_generated_programs(program) -> None:  # noqa: ANN001 - a Program
    # every library scheduler that says it applies gives a valid, deadlock-free, consistent schedule
    mine = {"gpipe", "1f1b", "zb-h1", "zb-h2", "interleaved-1f1b", "zb-auto", "zb-v", "chimera"}
    for name in sst.schedulers_for(program):
        if name in mine:
            sst.assert_scheduler_ok(program, name)


def test_applies_respects_the_memory_limit() -> None:
    from schedlang.schedulers import SCHEDULERS

    prog = loads(USER_KINDS + "mem_limit 6\n")
    assert not SCHEDULERS["gpipe"].applies(prog)  # all 5 forwards of rank 0 hold 10
    assert SCHEDULERS["1f1b"].applies(prog)  # at most 3 in flight on rank 0: 6
    sst.assert_scheduler_ok(prog, "1f1b")
    assert not SCHEDULERS["1f1b"].applies(loads(USER_KINDS + "mem_limit 5\n"))


# ------------------------------------------------------------------ goldens and the listing


@pytest.mark.parametrize("name", _schedules())
def test_builtin_orders_golden(name: str, golden) -> None:  # noqa: ANN001 - the golden fixture
    prog = compile_program(f"std:{name}")
    sim = simulate(prog)
    head = (f"# std:{name} at its defaults: bubble {sim.bubble:g}, makespan {sim.makespan:g}, "
            f"peak memory per rank {' '.join(f'{r.peak_memory:g}' for r in sim.ranks)}\n")
    golden.check(f"library/{name}.txt", head + format_orders(prog))


def test_list_names_every_builtin(capsys: pytest.CaptureFixture[str]) -> None:
    from schedlang.catalog import all_entries
    from schedlang.cli import main
    from schedlang.schedulers import SCHEDULERS

    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for name in std_names():
        assert f"std:{name} " in out
    for name in SCHEDULERS:
        assert f"\n  {name} " in out
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for e in all_entries():
        assert os.path.isfile(os.path.join(root, e.source)), e
        assert e.summary and len(e.summary) <= 100, e
    assert main(["list", "--json"]) == 0
    assert '"std:zb-h1"' in capsys.readouterr().out


@pytest.mark.parametrize("name", _schedules())
def test_builtins_take_per_stage_costs(name: str) -> None:
    # times and memory may be lists with one value per stage (at() in the op declarations)
    from schedlang.api import load

    n = load(f"std:{name}", p=4, m=8).num_stages
    tf = [1.0 + 0.25 * s for s in range(n)]
    tb = [2.0 - 0.125 * s for s in range(n)]
    mem_f = [1.0 + (s % 2) for s in range(n)]
    prog = compile_program(f"std:{name}", params={"p": 4, "m": 8, "tf": tf, "tb": tb, "mem_f": mem_f})
    by_stage = {o.stage: o.time for o in prog.ops if o.kind == "F"}
    assert by_stage == {s: tf[s] for s in by_stage}  # a list of one value per stage, as given
