"""One model's costs across the library: the cost parameters (std:costs) are a model slice's,
what one rank holds under 1F1B, and a schedule with v chunks per rank gives each chunk 1/v of
them, so every built-in computes the same model from the same figures.

- every built-in does the same total work and allocates the same activations per microbatch;
- ``compare std:1f1b std:zb-h1 std:zb-v std:interleaved-1f1b --set p=4 --set m=8`` gives the
  figures below (exact), zb-v below zb-h1's makespan at the same peak memory;
- lists of p values (one per slice) or p*v (one per stage, as given); any other length is an
  error located at the user's text (``--set``, a params file, the user's own declaration);
- ``costs_per = "stage"`` keeps the per-chunk form (every stage's figure as given);
- the fused backward of std:1f1b / std:gpipe takes ``tbw``, ``tb + tw`` unless set.
"""

from __future__ import annotations

import pytest

from schedlang.api import compile as compile_program
from schedlang.api import load
from schedlang.simulate import simulate
from schedlang.source import SchedlangError
from schedlang.testing import PAPER_PROFILES

ALL = ["1f1b", "gpipe", "zb-h1", "zb-h2", "zb-1p", "zb-2p", "zb-v", "v-half", "v-min", "dualpipe-v",
       "interleaved-1f1b", "interleaved-zb", "looped-bfs", "pipedream", "chimera", "dualpipe"]


@pytest.mark.parametrize("costs", ["uniform", "1.5B"])
def test_every_builtin_computes_the_same_model(costs: str) -> None:
    p, m = 4, 8
    kw: dict[str, object] = {"p": p, "m": m}
    tf, tb, tw = 1.0, 1.0, 1.0
    if costs != "uniform":
        t = PAPER_PROFILES[costs]
        tf, tb, tw = t["tf"], t["tb"], t["tw"]
        kw |= {"tf": tf, "tb": tb, "tw": tw}
    for name in ALL:
        prog = compile_program(f"std:{name}", params=kw)
        assert sum(o.time for o in prog.ops) == pytest.approx(p * m * (tf + tb + tw)), name
        # one microbatch's forwards through the whole model allocate p slices' activations
        # (pipedream's stashed weight versions are counted by its weights clause, not by its ops)
        assert sum(o.mem for o in prog.ops if o.kind == "F" and o.mb == 0) == pytest.approx(p), name


def _figures(name: str, **kw: object) -> tuple[float, float, float]:
    sim = simulate(compile_program(f"std:{name}", params={"p": 4, "m": 8, **kw}))
    return sim.makespan, sum(r.busy for r in sim.ranks), max(r.peak_memory for r in sim.ranks)


def test_compare_figures() -> None:
    # (makespan, total work, peak memory) of the comparison, uniform costs
    assert _figures("1f1b") == (33.0, 96.0, 4.0)
    assert _figures("zb-h1") == (27.0, 96.0, 4.0)
    assert _figures("zb-v") == (25.5, 96.0, 4.0)
    assert _figures("interleaved-1f1b") == (28.5, 96.0, 5.5)


def test_compare_command(capsys: pytest.CaptureFixture[str]) -> None:
    from schedlang.cli import main

    assert main(["compare", "std:1f1b", "std:zb-h1", "std:zb-v", "std:interleaved-1f1b",
                 "--set", "p=4", "--set", "m=8"]) == 0
    rows = {ln.split()[0]: ln.split() for ln in capsys.readouterr().out.splitlines() if ln.startswith("std:")}
    assert rows["std:zb-h1"][-7:-5] == ["27", "27"]  # makespan, cost
    assert rows["std:zb-v"][-7:-5] == ["25.5", "24"]
    assert rows["std:zb-v"][-5:-1] == ["4", "4", "4", "4"]  # the same peak as zb-h1's rank 0


def test_per_slice_and_per_stage_lists() -> None:
    slices = [1.0, 2.0, 3.0, 4.0]
    prog = compile_program("std:zb-v", p=4, m=8, tf=slices)
    # chain stage s is the model's chunk s of 8: half of slice s // 2
    assert {o.stage: o.time for o in prog.ops if o.kind == "F"} == {s: slices[s // 2] / 2 for s in range(8)}
    stages = [0.5 + s for s in range(8)]
    prog = compile_program("std:interleaved-1f1b", p=4, m=8, tf=stages)
    assert {o.stage: o.time for o in prog.ops if o.kind == "F"} == {s: stages[s] for s in range(8)}
    # 1F1B reads the slice list as its stages'
    prog = compile_program("std:1f1b", p=4, m=8, tf=slices)
    assert {o.stage: o.time for o in prog.ops if o.kind == "F"} == dict(enumerate(slices))


def test_per_stage_form_is_kept() -> None:
    # costs_per = "stage": every stage's figure as given (what the library did before: zb-v's
    # chunks each cost a whole slice)
    sim = simulate(compile_program("std:zb-v", p=4, m=8, costs_per="stage"))
    assert (sim.makespan, sim.bubble, [r.peak_memory for r in sim.ranks]) == (51.0, 0.0, [8.0] * 4)
    prog = compile_program("std:zb-v", p=4, m=8, costs_per="stage", tf=[float(s) for s in range(8)])
    assert {o.stage: o.time for o in prog.ops if o.kind == "F"} == {s: float(s) for s in range(8)}
    with pytest.raises(SchedlangError, match=r"tf: a list of 4 values for 4 rank\(s\) and 8 stage\(s\); give one value "
                                             r"per stage \(8\)"):
        compile_program("std:zb-v", p=4, m=8, costs_per="stage", tf=[1, 2, 3, 4])


def test_wrong_list_length_points_at_the_command_line(capsys: pytest.CaptureFixture[str]) -> None:
    from schedlang.cli import main

    assert main(["simulate", "std:zb-v", "--set", "tf=[1, 2, 3]"]) == 1
    err = capsys.readouterr().err
    assert err.splitlines()[0] == ("<command line>:1:1: error: tf: a list of 3 values for 4 rank(s) and 8 "
                                   "stage(s); give one value per model slice (4) or per stage (8)")
    assert "std:" not in err
    assert main(["simulate", "std:1f1b", "--set", "tb=[1, 2]"]) == 1  # through tbw = sum([tb, tw])
    err = capsys.readouterr().err
    assert err.splitlines()[0] == ("<command line>:1:1: error: tb: a list of 2 values for 4 rank(s) and 4 "
                                   "stage(s); give one value per stage (4)")
    assert main(["simulate", "std:1f1b", "--set", 'costs_per="chunk"']) == 1
    assert capsys.readouterr().err.splitlines()[0] == (
        "<command line>:1:1: error: costs_per must be one of 'slice', 'stage', got \"chunk\"")


def test_wrong_list_length_points_at_the_users_file(tmp_path) -> None:  # noqa: ANN001 - pytest's tmp_path
    path = tmp_path / "mine.sched"
    path.write_text('import "std:fbw"\nparam p = 2\nparam tf = [1, 2, 3]\nranks p\nstages 2 * p\n'
                    'microbatches 2\nplace s => s % p\nschedule "list"\n')
    with pytest.raises(SchedlangError) as info:
        compile_program(str(path))
    assert info.value.message == ("tf: a list of 3 values for 2 rank(s) and 4 stage(s); give one value per "
                                  "model slice (2) or per stage (4)")
    assert info.value.span is not None and (info.value.span.line, info.value.span.col) == (3, 12)
    # from Python there is no user text: no location rather than the library's text
    with pytest.raises(SchedlangError) as info:
        compile_program("std:zb-v", tf=[1, 2, 3])
    assert info.value.span is None


def test_replicas_read_the_slice_list() -> None:
    # chimera and dualpipe hold a whole slice per stage (two replicas per rank): nothing divided,
    # stage s reads slice s % p of a p-list
    for name in ("chimera", "dualpipe"):
        prog = compile_program(f"std:{name}", p=4, m=8, tf=[1.0, 2.0, 3.0, 4.0])
        assert {o.stage: o.time for o in prog.ops if o.kind == "F"} == {s: float(s % 4 + 1) for s in range(8)}
        assert {o.time for o in compile_program(f"std:{name}", p=4, m=8).ops} == {1.0}
        with pytest.raises(SchedlangError, match=r"tf: a list of 3 values for 4 rank\(s\) and 8 stage\(s\)"):
            compile_program(f"std:{name}", p=4, m=8, tf=[1, 2, 3])


def test_uneven_placement_needs_per_stage_lists(tmp_path) -> None:  # noqa: ANN001 - pytest's tmp_path
    src = ('import "std:fbw"\nparam tf = [1, 2]\nranks 2\nstages 3\nmicrobatches 2\n'
           'place s => s == 0 ? 0 : 1\nschedule "list"\n')
    path = tmp_path / "uneven.sched"
    path.write_text(src)
    with pytest.raises(SchedlangError, match="needs the same number of stages on every rank"):
        compile_program(str(path))
    # a number is divided among the stages of each rank: rank 1's two stages each get half
    prog = compile_program(str(path), tf=1.0)
    assert {o.stage: o.time for o in prog.ops if o.kind == "F"} == {0: 1.0, 1: 0.5, 2: 0.5}


def test_fused_backward_is_tbw() -> None:
    assert dict(load("std:1f1b").params)["tbw"] == 2.0  # tb + tw by default
    bw = {o.time for o in compile_program("std:1f1b", tb=2.0).ops if o.kind == "BW"}
    assert bw == {3.0}  # tb = 2 plus tw = 1: the fused backward runs both
    bw = {o.time for o in compile_program("std:1f1b", tb=2.0, tbw=2.0).ops if o.kind == "BW"}
    assert bw == {2.0}
    prog = compile_program("std:gpipe", p=2, m=2, tb=[1.0, 2.0], tw=0.5)
    assert {o.stage: o.time for o in prog.ops if o.kind == "BW"} == {0: 1.5, 1: 2.5}
    prog = compile_program("std:looped-bfs", p=2, m=2, v=2, tbw=4.0)
    assert {o.time for o in prog.ops if o.kind == "BW"} == {2.0}  # a chunk's half of the slice's
