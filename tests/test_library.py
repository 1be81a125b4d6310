"""The schedule library against the literature: closed forms of the Zero Bubble paper (Zero
Bubble, Qi et al., ICLR 2024) over Hypothesis-generated shapes and times, the paper's profiled
times with comm, and the invariants of the automatic search (zb-auto).

Conditions used (comm 0). The closed forms hold for T_W <= min(T_F, T_B) (the paper's regime:
W is the smallest op) and:

- 1F1B: bubble (p-1)(T_F+T_B+T_W) for every m >= 1; peak of rank 0 min(m, p) * M_B.
- ZB-H1: bubble (p-1)(T_F+T_B-T_W) for m >= p. For every m >= 1 the simulator gives
  (p-1)(T_F+T_B) - min(m-1, p-1) T_W: with m < p, rank 0 only has m-1 Ws to put into its
  bubble. Peak of rank 0: min(m, p) * M_B.
- ZB-H2: bubble (p-1)(T_F+T_B-2T_W) for m >= 2p-1; for every m >= 1
  (p-1)(T_F+T_B) - min(m-1, 2(p-1)) T_W. Peak of rank 0: min(m, 2p-1) * M_B.

The general forms for small m are ours (found with the simulator, then checked here over
Hypothesis inputs); at the paper's m (>= p, >= 2p-1) they reduce to its closed forms.
"""

from __future__ import annotations

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from schedlang.api import compile as compile_program
from schedlang.simulate import Simulation, simulate
from schedlang.source import SchedlangError
from schedlang.testing import PAPER_PROFILES

times = st.integers(1, 12).map(lambda x: x / 4)
mem_w_frac = st.sampled_from([0.0, 0.5, 1.0])


def _sim(name: str, **kw: object) -> Simulation:
    return simulate(compile_program(f"std:{name}", params=kw))


@pytest.mark.slow
@given(p=st.integers(1, 8), m=st.integers(1, 24), tf=times, tb=times, tw=times, mw=mem_w_frac)
@settings(max_examples=60, deadline=None)
def test_closed_forms_comm_zero(p: int, m: int, tf: float, tb: float, tw: float, mw: float) -> None:
    assume(tw <= min(tf, tb))
    kw = dict(p=p, m=m, tf=tf, tb=tb, tw=tw, tc=0.0, mem_f=2.0, mem_w=2.0 * mw)
    one = _sim("1f1b", **kw)
    h1 = _sim("zb-h1", **kw)
    h2 = _sim("zb-h2", **kw)
    assert one.bubble == pytest.approx((p - 1) * (tf + tb + tw))
    assert h1.bubble == pytest.approx((p - 1) * (tf + tb) - min(m - 1, p - 1) * tw)
    assert h2.bubble == pytest.approx((p - 1) * (tf + tb) - min(m - 1, 2 * (p - 1)) * tw)
    if m >= p:  # the paper's closed forms
        assert h1.bubble == pytest.approx((p - 1) * (tf + tb - tw))
    if m >= 2 * p - 1:
        assert h2.bubble == pytest.approx((p - 1) * (tf + tb - 2 * tw))
    assert one.ranks[0].peak_memory == pytest.approx(min(m, p) * 2.0)
    assert h1.ranks[0].peak_memory == pytest.approx(min(m, p) * 2.0)
    assert h2.ranks[0].peak_memory == pytest.approx(min(m, 2 * p - 1) * 2.0)


@pytest.mark.slow
@given(p=st.integers(2, 7), m=st.integers(1, 21), tf=times, tb=times, tw=times)
@settings(max_examples=40, deadline=None)
def test_small_m_is_never_worse_than_1f1b(p: int, m: int, tf: float, tb: float, tw: float) -> None:
    # Outside the paper's regime (any T_W, m < p) the closed forms do not hold; what does: the
    # split backward never makes the bubble worse than 1F1B's, and ZB-H2 is no worse than ZB-H1.
    kw = dict(p=p, m=m, tf=tf, tb=tb, tw=tw, tc=0.0)
    one, h1, h2 = (_sim(n, **kw).bubble for n in ("1f1b", "zb-h1", "zb-h2"))
    assert h1 <= one + 1e-9
    if tw <= min(tf, tb):
        assert h2 <= h1 + 1e-9


@pytest.mark.slow
@given(p=st.integers(2, 7), extra=st.integers(1, 12), tf=times, tb=times, tw=times, c=st.integers(0, 8))
@settings(max_examples=40, deadline=None)
def test_closed_forms_with_comm(p: int, extra: int, tf: float, tb: float, tw: float, c: int) -> None:
    # With comm c (and 2c <= T_W <= min(T_F, T_B), m > p for ZB-H1): ZB-H2's bubble grows by
    # exactly the round trip of the first microbatch, 2(p-1)c (the comm term of the paper's lower
    # bound, appendix B); ZB-H1's by 4(p-1)c: one round trip's comm at the start of the step and
    # one at the end. Both forms are ours, found with the simulator and checked here. For ZB-H1
    # the optimizer's structural bound explains the 4(p-1)c: at the limit p*M_B its start bound
    # (p-1)(T_B + 2c) plus its end bound make exactly this bubble, so ZB-H1 is optimal there
    # (tests/test_ilp.py, test_hand_worked_bound_1p5b_p8_m24_limit_pmb).
    tc = c / 16
    assume(tw <= min(tf, tb) and 2 * tc <= tw)
    m = p + extra
    kw = dict(p=p, m=m, tf=tf, tb=tb, tw=tw, tc=tc)
    h1, h2 = _sim("zb-h1", **kw), _sim("zb-h2", **kw)
    assert h1.bubble == pytest.approx((p - 1) * (tf + tb - tw + 4 * tc))
    assert h2.bubble == pytest.approx((p - 1) * (tf + tb + 2 * tc) - min(m - 1, 2 * (p - 1)) * tw)
    # the paper's lower bound for rank 0 (k forwards before the first B returns: p for ZB-H1)
    assert h1.ranks[0].idle >= (p - 1) * tb + 2 * (p - 1) * tc - 1e-9


# The paper's profiled times (Qi et al., ICLR 2024), p = 8, m = 24, comm included.
PAPER = [
    # name, 1F1B bubble rate, ZB-H1 = ZB-1p bubble rate, ZB-2p bubble rate (4 decimals)
    ("1.5B", 0.2431, 0.1585, 0.0433),
    ("6.2B", 0.2347, 0.1323, 0.0029),
]


@pytest.mark.parametrize(("model", "r1f1b", "rh1", "r2p"), PAPER)
def test_paper_profiles(model: str, r1f1b: float, rh1: float, r2p: float) -> None:
    t = PAPER_PROFILES[model]
    p, m = 8, 24
    kw = dict(p=p, m=m, **t)
    tf, tb, tw, tc = t["tf"], t["tb"], t["tw"], t["tc"]
    h1, h2 = _sim("zb-h1", **kw), _sim("zb-h2", **kw)
    assert h1.bubble == pytest.approx((p - 1) * (tf + tb - tw + 4 * tc))
    assert h2.bubble == pytest.approx((p - 1) * (tf + tb - 2 * tw + 2 * tc))
    one = _sim("1f1b", **kw)
    one_p, two_p = _sim("zb-1p", **kw), _sim("zb-2p", **kw)
    # 1F1B's bubble with comm has no closed form here; it is at least the comm-free one
    assert one.bubble >= (p - 1) * (tf + tb + tw)
    # the figures this library gives (bubble rate as the paper defines it), pinned: they are our
    # simulator's, not figures copied from the paper (its table could not be re-checked here).
    # ZB-H1 / ZB-H2 are the closed forms above; ZB-1p equals ZB-H1 with M_W = M_B / 2.
    assert round(one.bubble_rate, 4) == r1f1b
    assert round(h1.bubble_rate, 4) == rh1
    assert round(one_p.bubble_rate, 4) <= rh1
    assert round(two_p.bubble_rate, 4) == r2p
    # memory: 1F1B and ZB-1p p*M_B, ZB-H2 (2p-1)*M_B, ZB-2p within 2p*M_B
    mem_f = 1.0
    assert one.ranks[0].peak_memory == p * mem_f
    assert max(r.peak_memory for r in one_p.ranks) <= p * mem_f
    assert h2.ranks[0].peak_memory == (2 * p - 1) * mem_f
    assert max(r.peak_memory for r in two_p.ranks) <= 2 * p * mem_f


# ------------------------------------------------------------------ zb-auto


@pytest.mark.slow
@given(p=st.integers(1, 6), m=st.integers(1, 18), tf=times, tb=times, tw=times,
       tc=st.sampled_from([0.0, 0.125, 0.5]), mw=mem_w_frac)
@settings(max_examples=40, deadline=None)
def test_zb_auto_beats_handcrafted_within_limit(p: int, m: int, tf: float, tb: float, tw: float, tc: float,
                                                 mw: float) -> None:
    # In the paper's regime (T_W <= min(T_F, T_B), 2 T_comm <= T_W) the greedy alone is no worse
    # than the handcrafted schedule with the same memory. Outside it, it can be (e.g. T_W > T_F
    # with T_comm > T_F), which is why zb-auto also keeps ZB-H1 / ZB-H2 as candidates.
    assume(tw <= min(tf, tb) and 2 * tc <= tw)
    kw = dict(p=p, m=m, tf=tf, tb=tb, tw=tw, tc=tc, mem_f=1.0, mem_w=mw)
    h1, h2 = _sim("zb-h1", **kw), _sim("zb-h2", **kw)
    for factor, hand in ((1, h1), (2, h2)):
        limit = factor * p * 1.0
        # the greedy alone (handcrafted=false): no handcrafted order among its candidates
        z = simulate(compile_program("std:zb-h1", scheduler=f"zb-auto:mem_limit={limit},handcrafted=false", params=kw))
        assert z.bubble <= hand.bubble + 1e-9
        assert max(r.peak_memory for r in z.ranks) <= limit + 1e-9


@pytest.mark.slow
@given(p=st.integers(2, 5), m=st.integers(2, 12), data=st.data())
@settings(max_examples=25, deadline=None)
def test_zb_auto_uneven_stages(p: int, m: int, data: st.DataObject) -> None:
    # per-stage times: the greedy alone stays valid and within the limit (compile verifies); it
    # can lose to ZB-H1 here, so zb-auto keeps ZB-H1 / ZB-H2 as candidates (never worse)
    tf = [data.draw(times) for _ in range(p)]
    tb = [data.draw(times) for _ in range(p)]
    tw = [data.draw(times) for _ in range(p)]
    kw = dict(p=p, m=m, tf=tf, tb=tb, tw=tw, tc=0.25)
    h1, h2 = _sim("zb-h1", **kw), _sim("zb-h2", **kw)
    for limit, hand in ((float(p), h1), (2.0 * p, h2)):
        greedy = simulate(compile_program("std:zb-h1", scheduler=f"zb-auto:mem_limit={limit},handcrafted=false", params=kw))
        assert max(r.peak_memory for r in greedy.ranks) <= limit + 1e-9
        z = simulate(compile_program("std:zb-h1", scheduler=f"zb-auto:mem_limit={limit}", params=kw))
        assert max(r.peak_memory for r in z.ranks) <= limit + 1e-9
        assert z.bubble <= min(hand.bubble, greedy.bubble) + 1e-9


def test_zb_auto_limit_too_small_is_a_located_error() -> None:
    with pytest.raises(SchedlangError) as exc:
        compile_program("std:zb-h1", p=4, m=8, mem_limit=0.5, scheduler="zb-auto")
    assert "zb-auto: the memory limit 0.5 of rank 0 cannot hold" in exc.value.message
    assert exc.value.span is not None
    # ZB-1p's own limit (p * M_B = 4) is looser than the program's: the one memory-limit rule
    # (the schedule pass) rejects it at the scheduler's argument
    with pytest.raises(SchedlangError) as exc:
        compile_program("std:zb-1p", p=4, m=8, mem_limit=0.5)
    assert "the scheduler's mem_limit (4 on rank 0) is looser than the program's" in exc.value.message
    assert exc.value.span is not None and "zb-1p" in exc.value.span.source.name


# ------------------------------------------------------------------ shapes a schedule cannot take


@pytest.mark.parametrize(("name", "params", "message"), [
    ("zb-v", {"v": 3}, "zb-v needs exactly two chunks per rank (v = 2)"),
    ("v-half", {"v": 1}, "v-half needs exactly two chunks per rank (v = 2)"),
    ("v-min", {"v": 4}, "v-min needs exactly two chunks per rank (v = 2)"),
    ("dualpipe-v", {"v": 3}, "dualpipe-v needs exactly two chunks per rank (v = 2)"),
    ("dualpipe-v", {"p": 4, "m": 7}, "dualpipe-v needs at least 2p microbatches (m >= 2 * p)"),
])
def test_unsupported_shapes_are_located_errors(name: str, params: dict[str, int], message: str) -> None:
    from schedlang.load import read_source

    with pytest.raises(SchedlangError) as exc:
        compile_program(f"std:{name}", params=params)
    assert exc.value.message == message
    # located at the require(...) call that says so
    lines = read_source(f"std:{name}").text.splitlines()
    line = next(n for n, text in enumerate(lines, 1) if "require(" in text and message in text)
    span = exc.value.span
    assert span is not None and span.line == line and lines[line - 1][span.col - 1:].startswith("require(")


@pytest.mark.parametrize(("program", "scheduler", "needs"), [
    ("std:1f1b", "zb-h1", "split B / W kinds"),
    ("std:interleaved-1f1b", "1f1b", "one stage per rank"),
    ("std:1f1b", "interleaved-1f1b", None),  # v = 1 is a looped placement too: it applies
    ("std:zb-h1", "zb-v", "needs the V placement"),
    ("std:zb-v", "chimera", "two opposite pipelines"),
    ("std:1f1b", "zb-auto", "split F / B / W kinds"),
])
def test_scheduler_on_wrong_shape(program: str, scheduler: str, needs: str | None) -> None:
    from schedlang.api import load, with_scheduler
    from schedlang.schedulers import SCHEDULERS

    prog = load(program)
    assert SCHEDULERS[scheduler].applies(prog) is (needs is None)
    if needs is None:
        compile_program(program, scheduler=scheduler)
        return
    with pytest.raises(SchedlangError) as exc:
        compile_program(program, scheduler=scheduler)
    assert needs in exc.value.message
    assert with_scheduler(prog, scheduler).schedule is not None


def test_require_builtin() -> None:
    from schedlang.api import loads

    src = 'param n = 3\nlet ok = require(n % 2 == 0, "n must be even")\nranks 1\nmicrobatches 1\nop F[s, i] time 1\n'
    with pytest.raises(SchedlangError) as exc:
        loads(src)
    assert exc.value.message == "n must be even"
    span = exc.value.span
    assert span is not None and (span.line, span.col) == (2, 10)
    assert loads(src, n=4).num_ranks == 1
    with pytest.raises(SchedlangError, match="require\\(\\) takes a condition first"):
        loads(src.replace("n % 2 == 0", "n"))
    with pytest.raises(SchedlangError, match="takes 2 arguments, got 1"):
        loads(src.replace(', "n must be even"', ""))


# ------------------------------------------------------------------ the V family


@pytest.mark.slow
@given(p=st.integers(1, 6), extra=st.integers(0, 6), t=st.sampled_from([0.5, 1.0, 2.0]), mw=mem_w_frac)
@settings(max_examples=25, deadline=None)
def test_zb_v_zero_bubble_with_equal_times(p: int, extra: int, t: float, mw: float) -> None:
    # Zero Bubble paper: ZB-V with T_F = T_B = T_W has zero bubble at p*M_B (M_B = mem_f: a model
    # slice's activations, both chunks of a rank)
    sim = _sim("zb-v", p=p, m=2 * p + extra, tf=t, tb=t, tw=t, mem_f=1.0, mem_w=mw)
    assert sim.bubble == pytest.approx(0.0, abs=1e-9)
    assert max(r.peak_memory for r in sim.ranks) <= p + 1e-9


@pytest.mark.slow
@given(p=st.integers(1, 6), m=st.integers(1, 14), tf=times, tb=times, tw=times,
       tc=st.sampled_from([0.0, 0.25]), name=st.sampled_from(["zb-v", "v-half", "v-min"]))
@settings(max_examples=30, deadline=None)
def test_v_family_within_budget(p: int, m: int, tf: float, tb: float, tw: float, tc: float, name: str) -> None:
    # any costs: valid (compile verifies) and within the budget of microbatches per rank
    import math

    budget = {"zb-v": p, "v-half": math.ceil(p / 2) + 1, "v-min": math.ceil(p / 3) + 1}[name]
    sim = _sim(name, p=p, m=m, tf=tf, tb=tb, tw=tw, tc=tc, mem_f=1.0, mem_w=0.5)
    assert max(r.peak_memory for r in sim.ranks) <= budget + 1e-9  # in M_B = mem_f (both chunks of a rank)
