"""Asynchronous weight-update policies (``weights`` clause): language, weight plan, simulator.

The closed forms (PipeDream, SOSP 2019; PipeDream-2BW, ICML 2021), for the flush-free 1F1B order
with one stage per rank: stage ``s`` of PipeDream holds up to ``p - s`` weight versions (``p`` on
stage 0) and microbatch ``j`` uses version ``max(0, j - (p - 1 - s))`` there; 2BW holds 2 versions
on every stage. The steady state runs one microbatch per ``max_s(T_F + T_B + T_W)`` when the
communication time is 0.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schedlang import api, isa
from schedlang.codegen import codegen
from schedlang.ir import Program, Weights, format_program
from schedlang.isa_check import StreamError, check_streams
from schedlang.load import read_source
from schedlang.parse import parse_module
from schedlang.simulate import simulate
from schedlang.source import SchedlangError, Source
from schedlang.syntax import format_module
from schedlang.weights import weight_plan

PIPEDREAM = read_source("std:pipedream").text
LINES = PIPEDREAM.splitlines()
WEIGHTS_LINE = LINES.index("weights stash mem mem_weights") + 1
SCHEDULE_LINE = LINES.index("schedule {") + 1

times = st.integers(1, 12).map(lambda x: x / 4)


def _with_policy(clause: str, **params: object) -> Program:
    text = PIPEDREAM.replace("weights stash mem mem_weights", clause)
    return api.schedule(api.loads(text, "pd.sched", params))


def test_weights_clause_round_trips_and_lowers() -> None:
    text = "weights stash+vsync mem 2.5\nweights 2bw every 4\nweights flush\n"
    mod = parse_module(Source("w.sched", text))
    assert parse_module(Source("w.sched", format_module(mod))) == mod
    prog = api.compile("std:pipedream-2bw", p=3, every=5, mem_weights=0.5)
    assert prog.weights == Weights("2bw", 5, 0.5)
    assert "  weights 2bw every 5 mem 0.5\n" in format_program(prog)
    assert api.compile("std:pipedream").weights == Weights("stash", 0, 1.0)
    assert api.compile("std:1f1b").weights == Weights()
    assert "weights" not in format_program(api.compile("std:1f1b"))


@pytest.mark.parametrize(("clause", "where", "fragment"), [
    ("weights stsh", (WEIGHTS_LINE, 1), "unknown weight-update policy 'stsh' (use flush, stash, stash+vsync, 2bw)"),
    ("weights stash every 2", (WEIGHTS_LINE, 15), "'every' sets how many microbatches a 2bw update accumulates"),
    ("weights 2bw every 0", (WEIGHTS_LINE, 19), "'every' must be a positive integer"),
    ("weights 2bw mem -1", (WEIGHTS_LINE, 17), "the memory of a weight version must be a finite number >= 0"),
    ("weights 2bw every 1 every 2", (WEIGHTS_LINE, 21), "'every' given twice"),
    ("weights 2bw every 1", (SCHEDULE_LINE, 1), "F[0,2] needs weight version 1 of stage 0, but the order runs it after "
                                     "only 0 update(s)"),
])
def test_bad_weights_clause_is_located(clause: str, where: tuple[int, int], fragment: str) -> None:
    with pytest.raises(SchedlangError) as info:
        _with_policy(clause)
    err = info.value
    assert fragment in err.message
    assert err.span is not None and (err.span.line, err.span.col) == where


@given(p=st.integers(1, 6), extra=st.integers(0, 8))
@settings(max_examples=30, deadline=None)
def test_pipedream_versions_match_closed_form(p: int, extra: int) -> None:
    m = 2 * p - 1 + extra  # long enough for stage 0 to reach its steady state
    prog = api.compile("std:pipedream", p=p, m=m, mem_weights=0.5, mem_f=1.0)
    plan = weight_plan(prog)
    assert plan is not None
    assert plan.version == tuple(tuple(max(0, j - (p - 1 - s)) for j in range(m)) for s in range(p))
    assert plan.groups == tuple(tuple((j,) for j in range(m)) for _ in range(p))
    sim = simulate(prog)
    assert sim.peak_versions == tuple(p - s for s in range(p))
    # activations of p in-flight microbatches plus p - 1 stashed versions beyond the current one
    assert sim.ranks[0].peak_memory == pytest.approx(p * 1.0 + (p - 1) * 0.5)


@given(p=st.integers(1, 6), m=st.integers(1, 12))
@settings(max_examples=30, deadline=None)
def test_pipedream_short_windows_stay_within_the_bound(p: int, m: int) -> None:
    sim = simulate(api.compile("std:pipedream", p=p, m=m))
    assert all(1 <= v <= p - s for s, v in enumerate(sim.peak_versions))


@given(p=st.integers(1, 6), groups=st.integers(1, 4), slack=st.integers(0, 3))
@settings(max_examples=30, deadline=None)
def test_2bw_keeps_two_versions(p: int, groups: int, slack: int) -> None:
    every = p + slack
    m = every * groups
    prog = api.compile("std:pipedream-2bw", p=p, m=m, every=every, mem_weights=1.0, mem_f=0.0)
    plan = weight_plan(prog)
    assert plan is not None
    assert plan.version == tuple(tuple(max(0, j // every - 1) for j in range(m)) for _ in range(p))
    assert plan.groups == tuple(tuple(tuple(range(g * every, (g + 1) * every)) for g in range(groups))
                                for _ in range(p))
    sim = simulate(prog)
    assert sim.peak_versions == tuple(min(2, groups) for _ in range(p))
    assert all(r.peak_memory == pytest.approx(min(2, groups) - 1) for r in sim.ranks)


def test_vsync_uses_stage_0_versions_and_keeps_more() -> None:
    p, m = 4, 8
    plan = weight_plan(_with_policy("weights stash+vsync mem 1", p=p, m=m))
    assert plan is not None
    assert plan.version == tuple(tuple(max(0, j - (p - 1)) for j in range(m)) for _ in range(p))
    # stage s has made j - (p-1-s) updates at F[s, j] but must use version j - (p-1): it keeps the
    # versions of its in-flight microbatches plus its current one
    assert plan.peak_versions == (4, 4, 4, 4)


@given(p=st.integers(2, 5), tf=times, tb=times, tw=times, slow=st.integers(0, 4), policy=st.sampled_from(
    ["std:pipedream", "std:pipedream-2bw"]))
@settings(max_examples=40, deadline=None)
def test_steady_state_matches_closed_form_and_the_marginal_makespan(
        p: int, tf: float, tb: float, tw: float, slow: int, policy: str) -> None:
    m = 4 * p
    tfs = [tf] * p
    tfs[slow % p] = tf * 2
    params = dict(p=p, m=m, tf=tfs, tb=tb, tw=tw, tc=0.0)
    sim = simulate(api.compile(policy, params))
    period = max(f + tb + tw for f in tfs)
    assert sim.steady_time_per_mb == pytest.approx(period)
    # a continuous stream: m more microbatches cost m periods
    longer = simulate(api.compile(policy, {**params, "m": 2 * m}))
    assert longer.makespan - sim.makespan == pytest.approx(m * period)


def test_flush_programs_have_no_stream_figures() -> None:
    sim = simulate(api.compile("std:1f1b"))
    assert sim.weights == "flush" and sim.steady_time_per_mb is None
    assert "steady_time_per_mb" not in sim.as_dict()
    assert api.simulate(api.compile("std:pipedream")).as_dict()["peak_versions"] == [4, 3, 2, 1]


# ------------------------------------------------------------------ streams (isa version 2)


def _pd_streams(policy: str = "std:pipedream", **params: object) -> isa.Streams:
    return codegen(api.compile(policy, {"p": 2, "m": 4, **params}))


def _edit(streams: isa.Streams, rank: int, fn: Callable[[list[isa.Instr]], None]) -> isa.Streams:
    ranks = list(streams.ranks)
    instrs = list(ranks[rank].instrs)
    fn(instrs)
    ranks[rank] = isa.RankStream(ranks[rank].rank, ranks[rank].stages, tuple(instrs))
    return dataclasses.replace(streams, ranks=tuple(ranks))


def test_async_streams_carry_versions_and_updates() -> None:
    streams = _pd_streams()
    assert streams.version == 2 and streams.weights == "stash"
    text = isa.to_text(streams)
    assert text.startswith("schedlang-isa 2\npipeline ranks=2 stages=2 microbatches=4 placement=0,1 weights=stash\n")
    assert isa.parse_text(text) == streams and isa.from_json(isa.to_json(streams)) == streams
    plan = weight_plan(api.compile("std:pipedream", p=2, m=4))
    assert plan is not None
    for rs in streams.ranks:
        for ins in isa.flatten(rs.instrs):
            if ins.op in (isa.Opcode.F, isa.Opcode.BW):
                assert ins.ver == plan.version[ins.stage][ins.mb]
        assert sum(ins.op is isa.Opcode.UPDATE for ins in rs.instrs) == 4
        assert not any(ins.op in (isa.Opcode.REDUCE_GRAD, isa.Opcode.OPT_STEP) for ins in rs.instrs)
    check_streams(streams, sends="rendezvous", recvs="posted")
    # flush streams stay version 1, byte for byte what they were
    assert isa.to_text(codegen(api.compile("std:1f1b", p=2, m=4))).startswith("schedlang-isa 1\n")


def _first(instrs: list[isa.Instr], op: isa.Opcode, mb: int | None = None) -> int:
    return next(k for k, i in enumerate(instrs) if i.op is op and (mb is None or i.mb == mb))


def _set_ver(op: isa.Opcode, mb: int, ver: int) -> Callable[[list[isa.Instr]], None]:
    def fn(instrs: list[isa.Instr]) -> None:
        k = _first(instrs, op, mb)
        instrs[k] = dataclasses.replace(instrs[k], ver=ver)
    return fn


def _drop_last_update(instrs: list[isa.Instr]) -> None:
    del instrs[max(k for k, i in enumerate(instrs) if i.op is isa.Opcode.UPDATE)]


def _double_update(instrs: list[isa.Instr]) -> None:
    k = _first(instrs, isa.Opcode.UPDATE)
    instrs.insert(k, instrs[k])


@pytest.mark.parametrize(("edit", "message"), [
    (_set_ver(isa.Opcode.F, 0, 1), "rank 1, instruction 1 (F stage=1 mb=0 ver=1): uses weight version 1 of stage 1, "
                               "but only 0 UPDATE(s) of the stage have run"),
    (_set_ver(isa.Opcode.BW, 1, 0), "the backward of stage 1 microbatch 1 uses weight version 0, its forward used 1"),
    (_drop_last_update, "1 weight gradient(s) of stage 1 are never applied"),
    (_double_update, "UPDATE of stage 1 with no weight gradient to apply since its previous UPDATE"),
    (lambda ins: ins.append(isa.Instr(isa.Opcode.OPT_STEP)), "weights=stash streams have no OPT_STEP"),
    (_set_ver(isa.Opcode.SEND_GRAD, 0, 0), "only F, B, W and BW carry a weight version (ver=), not SEND_GRAD"),
])
def test_stream_checker_refuses_broken_versions(edit: Callable[[list[isa.Instr]], None], message: str) -> None:
    with pytest.raises(StreamError) as info:
        check_streams(_edit(_pd_streams(), 1, edit))
    assert message in str(info.value)


def test_old_and_mixed_stream_files() -> None:
    streams = _pd_streams()
    text = isa.to_text(streams)
    with pytest.raises(isa.IsaError, match="a version 1 stream file cannot hold a weight-update policy"):
        isa.parse_text(text.replace("schedlang-isa 2", "schedlang-isa 1", 1))
    with pytest.raises(isa.IsaError, match="unknown weight-update policy 'stale'"):
        isa.parse_text(text.replace("weights=stash", "weights=stale", 1))
    flush = dataclasses.replace(streams, weights="flush")
    with pytest.raises(StreamError, match="a weight version \\(ver=\\) in streams without an asynchronous"):
        check_streams(flush)


def test_run_says_how_it_trains_and_refuses_what_the_runtime_cannot_honour() -> None:
    note = api.weights_note(api.compile("std:pipedream"))
    assert note.startswith("weights stash: PipeDream weight stashing: each stage updates its weights after "
                           "every microbatch's backward")
    assert "updates once per 4 microbatches" in api.weights_note(api.compile("std:pipedream-2bw"))
    assert api.weights_note(api.compile("std:1f1b")) == ""
    with pytest.raises(SchedlangError, match="the runtime keeps weight versions only with --split-backward autograd"):
        api.run(api.compile("std:pipedream", p=1, m=2), split_backward="kernels", steps=1)


def test_export_to_pytorch_refuses_asynchronous_programs() -> None:
    from schedlang.export import check_exportable

    with pytest.raises(SchedlangError) as info:
        check_exportable(api.compile("std:pipedream"))
    assert "PyTorch's pipelining trains synchronously" in info.value.message
    assert info.value.span is not None and info.value.span.line == WEIGHTS_LINE


def test_memory_limit_counts_stashed_versions() -> None:
    # rank 0 holds 4 microbatches of activations (4) and 3 stashed versions (3 x 1): 7 > 6.5
    with pytest.raises(SchedlangError) as info:
        api.compile("std:pipedream", mem_limit=6.5)
    assert info.value.message == ("memory limit exceeded on rank 0: F[0,6] raises memory to 7 (3 of it stashed "
                                  "weight versions), over the limit 6.5")
    assert simulate(api.compile("std:pipedream", mem_limit=7)).ranks[0].peak_memory == 7


def _naive_peak_versions(prog: Program) -> list[int]:
    """Independent count: after every op, the versions <= current that an unfinished microbatch
    uses, plus the current one."""
    plan = weight_plan(prog)
    assert plan is not None
    updates = plan.update_ops()
    peak = [1] * prog.num_stages
    for r, slots in enumerate(prog.orders.ranks):
        done: set[tuple[int, int]] = set()
        cur = dict.fromkeys(prog.stages_on(r), 0)
        for k in (k for slot in slots for k in slot):
            op = prog.ops[k]
            if prog.role(op).value in ("W", "BW") and (op.kind == "W" or not any(kd.name == "W" for kd in prog.kinds)):
                done.add((op.stage, op.mb))
            if k in updates:
                cur[updates[k]] += 1
            for s in cur:
                live = {plan.version[s][j] for j in range(prog.num_microbatches)
                        if (s, j) not in done and plan.version[s][j] <= cur[s]} | {cur[s]}
                peak[s] = max(peak[s], len(live))
    return peak


@pytest.mark.parametrize("base", ["std:zb-h1", "std:interleaved-1f1b", "std:zb-v", "std:gpipe", "std:pipedream"])
@pytest.mark.parametrize("policy", ["stash", "stash+vsync", "2bw"])
def test_versions_kept_agree_with_a_naive_count(base: str, policy: str) -> None:
    text = f'import "{base}"\nweights {policy}\n'
    if base == "std:gpipe" and policy == "2bw":  # every forward runs before any update
        with pytest.raises(SchedlangError, match=r"F\[0,8\] needs weight version 1 of stage 0, but the order runs "
                                                 r"it after only 0 update\(s\)"):
            api.schedule(api.loads(text, "case.sched", {"p": 4, "m": 12}))
        return
    prog = api.schedule(api.loads(text, "case.sched", {"p": 4, "m": 12}))
    assert list(simulate(prog).peak_versions) == _naive_peak_versions(prog)
