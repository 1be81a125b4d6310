"""The one memory-limit rule (the schedule pass): a scheduler's mem_limit argument may only
tighten the program's limit; a looser one is a located error at the argument."""

from __future__ import annotations

import pytest

from schedlang import api
from schedlang.simulate import simulate
from schedlang.source import SchedlangError

HEAD = 'import "std:fbw"\nparam p = 2\nparam m = 4\nranks p\nmicrobatches m\nmem_limit 4\n'


def _peak(text: str) -> float:
    return max(r.peak_memory for r in simulate(api.schedule(api.loads(text))).ranks)


@pytest.mark.parametrize("call", [
    '"list"(mem_limit = 100)', '"zb-auto"(mem_limit = 100)',
    '"ilp"(mem_limit = 100, progress = false, time_limit = 1)',
])
def test_looser_argument_is_an_error_at_the_argument(call: str) -> None:
    # the bug: ilp(mem_limit = 100) under 'mem_limit 4' printed "optimal" and then failed
    # verification with an unlocated error
    with pytest.raises(SchedlangError) as exc:
        api.schedule(api.loads(HEAD + f"schedule {call}\n"))
    err = exc.value
    assert err.message.startswith("the scheduler's mem_limit (100 on rank 0) is looser than the "
                                  "program's mem_limit (4)")
    assert err.location == (7, call.index("mem_limit") + len("schedule ") + 1)
    assert [n.message for n in err.notes] == ["the program's limit is set here"]
    assert err.notes[0].span is not None and err.notes[0].span.line == 6


@pytest.mark.parametrize("name", ["list", "zb-auto", "ilp"])
def test_tighter_argument_wins(name: str) -> None:
    extra = ", progress = false, time_limit = 1" if name == "ilp" else ""
    assert _peak(HEAD + f'schedule "{name}"(mem_limit = 3{extra})\n') <= 3
    assert _peak(HEAD + f'schedule "{name}"(mem_limit = 4{extra})\n') <= 4


def test_argument_without_a_program_limit_sets_it() -> None:
    text = HEAD.replace("mem_limit 4\n", "") + 'schedule "list"(mem_limit = 2.5)\n'
    assert _peak(text) <= 2.5
    free = HEAD.replace("mem_limit 4\n", "") + 'schedule "list"\n'
    assert _peak(free) > 2.5  # the argument changed something


def test_per_rank_program_limit() -> None:
    # 4.5 is tighter than rank 1's 5 but looser than rank 0's 4
    text = HEAD.replace("mem_limit 4", "mem_limit [4, 5]") + 'schedule "list"(mem_limit = 4.5)\n'
    with pytest.raises(SchedlangError, match=r"\(4.5 on rank 0\) is looser than the program's mem_limit \(4\)"):
        api.schedule(api.loads(text))


def test_too_small_argument_points_at_the_argument() -> None:
    # the scheduler's own "cannot hold" error points at the argument that set the limit
    text = HEAD + 'schedule "zb-auto"(mem_limit = 0.5)\n'
    with pytest.raises(SchedlangError, match="zb-auto: the memory limit 0.5") as exc:
        api.schedule(api.loads(text))
    assert exc.value.location == (7, 20)
    text = HEAD + 'schedule "ilp"(mem_limit = 0.5, progress = false)\n'
    with pytest.raises(SchedlangError, match="least feasible limit is 1") as exc:
        api.schedule(api.loads(text))
    assert exc.value.location == (7, 16)


def test_zb_v_mb_limit_follows_the_same_rule() -> None:
    # per-stage costs: M_B = 2 per rank (two chunks of mem_f 1): mb_limit 3 asks for 6 > the program's 4
    base = dict(p=2, m=4, costs_per="stage")
    with pytest.raises(SchedlangError, match=r"the scheduler's mb_limit \(6 on rank 0\) is looser"):
        api.compile("std:zb-v", scheduler="zb-v:mb_limit=3", mem_limit=4.0, **base)
    prog = api.compile("std:zb-v", scheduler="zb-v:mb_limit=1.5", mem_limit=4.0, **base)
    assert max(r.peak_memory for r in simulate(prog).ranks) <= 3.0


def test_optimize_api_and_command_line_follow_the_same_rule(capsys: pytest.CaptureFixture[str]) -> None:
    from schedlang.cli import main
    from schedlang.schedulers.ilp import optimize

    prog = api.load("std:zb-h1", p=2, m=2, mem_limit=4.0)
    with pytest.raises(SchedlangError, match=r"the scheduler's mem_limit \(100 on rank 0\) is looser"):
        optimize(prog, mem_limit=100, time_limit=1, progress=None)
    orders, _ = optimize(prog, mem_limit=3, time_limit=1, progress=None)
    assert max(r.peak_memory for r in simulate(prog.with_orders(orders)).ranks) <= 3
    assert main(["optimize", "std:zb-h1", "--set", "p=2", "--set", "m=2", "--set", "mem_limit=4",
                 "--mem-limit", "100", "--quiet"]) == 1
    assert "is looser than the program's mem_limit (4)" in capsys.readouterr().err
