"""Codegen: per-rank instruction streams, their text/JSON forms, and the deadlock check.

Goldens pin the streams of the built-ins; Hypothesis checks, over generated pipelines (linear,
interleaved, V and random placements; fused or split backward; user op kinds with cross-rank
ordering edges) and random valid orders, that codegen output passes the deadlock check, that each
rank's sends match the peer's receives in order, and that every receive precedes its use.
"""

from __future__ import annotations

import random
from collections import Counter

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schedlang import api, isa
from schedlang.cli import main
from schedlang.codegen import BATCHINGS, RECV_PLACEMENTS, codegen, messages
from schedlang.ir import Orders, Program, Role
from schedlang.isa import Instr, Opcode
from schedlang.isa_check import StreamError, check_streams, find_deadlock
from schedlang.source import SchedlangError
from schedlang.verify import verify
from schedlang.weights import weight_plan

GOLDEN_BUILTINS = [
    ("gpipe", {"p": 3, "m": 3}),
    ("1f1b", {"p": 3, "m": 4}),
    ("zb-h1", {"p": 3, "m": 4}),
    ("zb-h2", {"p": 2, "m": 3}),
    ("interleaved-1f1b", {"p": 2, "m": 4, "v": 2}),
    ("looped-bfs", {"p": 2, "m": 3}),
    ("zb-v", {"p": 2, "m": 4}),
    ("dualpipe-v", {"p": 2, "m": 4}),
    ("chimera", {"p": 2, "m": 4}),
]


def _compile(name: str, params: dict[str, int]) -> Program:
    try:
        return api.compile(f"std:{name}", **params)
    except SchedlangError as exc:  # a built-in added by another engineer with other parameters
        pytest.skip(f"std:{name} does not compile with {params}: {exc.message}")


# ------------------------------------------------------------------ goldens


@pytest.mark.parametrize(("name", "params"), GOLDEN_BUILTINS, ids=[n for n, _ in GOLDEN_BUILTINS])
def test_builtin_streams_golden(golden, name: str, params: dict[str, int]) -> None:
    prog = _compile(name, params)
    streams = codegen(prog)
    check_streams(streams)
    golden.check(f"codegen/{name}.streams.txt", isa.to_text(streams))


def test_1f1b_steady_state_is_batched() -> None:
    """In 1F1B's steady state rank 0 sends an activation and receives a gradient from rank 1 with no
    compute in between: one BATCH, which is what keeps rendezvous sends from deadlocking."""
    streams = codegen(api.compile("std:1f1b", p=4, m=8))
    batches = [i for i in streams.ranks[0].instrs if i.op is Opcode.BATCH]
    assert batches and all({p.op for p in b.parts} == {Opcode.SEND_ACT, Opcode.RECV_GRAD} for b in batches)
    check_streams(streams, sends="rendezvous")
    unbatched = isa.Streams(**{**_fields(streams), "ranks": tuple(
        isa.RankStream(rs.rank, rs.stages, tuple(isa.flatten(rs.instrs))) for rs in streams.ranks)})
    check_streams(unbatched)  # buffered sends: batching changes nothing
    with pytest.raises(StreamError, match="rendezvous"):
        check_streams(unbatched, sends="rendezvous")


def _fields(s: isa.Streams) -> dict[str, object]:
    return {"num_ranks": s.num_ranks, "num_stages": s.num_stages, "num_microbatches": s.num_microbatches,
            "placement": s.placement, "ranks": s.ranks, "version": s.version, "meta": s.meta}


# ------------------------------------------------------------------ round trips and parse errors


@pytest.mark.parametrize(("name", "params"), GOLDEN_BUILTINS, ids=[n for n, _ in GOLDEN_BUILTINS])
def test_text_and_json_round_trip(name: str, params: dict[str, int]) -> None:
    streams = codegen(_compile(name, params))
    text = isa.to_text(streams)
    assert isa.parse_text(text) == streams
    assert isa.to_text(isa.parse_text(text)) == text
    doc = isa.to_json(streams)
    assert isa.from_json(doc) == streams
    assert isa.to_json(isa.from_json(doc)) == doc


@pytest.mark.parametrize(("text", "line", "what"), [
    ("schedlang-isa 3\n", 1, "unsupported version"),
    ("schedlang-isa 1\npipeline ranks=1 stages=1 microbatches=1\n  F stage=0\n", 3, "outside a rank"),
    ("schedlang-isa 1\npipeline ranks=1 stages=1 microbatches=1\nrank 0\n  FOO stage=0\n", 4, "unknown instruction"),
    ("schedlang-isa 1\npipeline ranks=1 stages=1 microbatches=1\nrank 0\n  F stage=x\n", 4, "integer"),
    ("schedlang-isa 1\npipeline ranks=1 stages=1 microbatches=1\nrank 0\n  END\n", 4, "END without BATCH"),
    ("schedlang-isa 1\npipeline ranks=1 stages=1 microbatches=1\npipeline ranks=2 stages=2 microbatches=1\n", 3,
     "second 'pipeline' header"),
])
def test_text_parse_errors_have_lines(text: str, line: int, what: str) -> None:
    with pytest.raises(isa.IsaError, match=what) as info:
        isa.parse_text(text)
    assert info.value.line == line


# ------------------------------------------------------------------ deadlock check on hand-made streams


def _streams(*ranks: list[Instr], stages: int = 2) -> isa.Streams:
    placement = tuple(range(len(ranks)))
    return isa.Streams(len(ranks), stages, 1, placement,
                       tuple(isa.RankStream(r, (r,), tuple(ins)) for r, ins in enumerate(ranks)))


ACT01 = (Instr(Opcode.SEND_ACT, 0, 0, peer=1, peer_stage=1), Instr(Opcode.RECV_ACT, 1, 0, peer=0, peer_stage=0))
GRAD10 = (Instr(Opcode.SEND_GRAD, 1, 0, peer=0, peer_stage=0), Instr(Opcode.RECV_GRAD, 0, 0, peer=1, peer_stage=1))


def test_handmade_deadlock_reports_cycle(golden) -> None:
    # each rank receives before it sends what the other one waits for
    s = _streams([GRAD10[1], Instr(Opcode.F, 0, 0), ACT01[0]],
                 [ACT01[1], Instr(Opcode.F, 1, 0), GRAD10[0]])
    waits = find_deadlock(s)
    assert waits is not None
    assert {(w.rank, w.index, w.on) for w in waits} == {(0, 0, 1), (1, 0, 0)}
    with pytest.raises(StreamError) as info:
        check_streams(s, flow=False)
    assert (info.value.rank, info.value.index) == (0, 0)
    golden.check("codegen/deadlock_cycle.txt", SchedlangError(info.value.message).render() + "\n")


def test_three_rank_cycle() -> None:
    def send(a: int, b: int) -> Instr:
        return Instr(Opcode.SEND_ACT, a, 0, peer=b, peer_stage=b)

    def recv(a: int, b: int) -> Instr:  # rank b receives from rank a
        return Instr(Opcode.RECV_ACT, b, 0, peer=a, peer_stage=a)

    s = _streams([recv(2, 0), send(0, 1)], [recv(0, 1), send(1, 2)], [recv(1, 2), send(2, 0)], stages=3)
    waits = find_deadlock(s)
    assert waits is not None and sorted(w.rank for w in waits) == [0, 1, 2]
    assert all(w.instr.op is Opcode.RECV_ACT for w in waits)


def test_rendezvous_only_deadlock() -> None:
    # both ranks send first: fine with buffered sends, a deadlock when a send waits for its receive
    s = _streams([ACT01[0], Instr(Opcode.F, 0, 0), GRAD10[1]], [GRAD10[0], Instr(Opcode.F, 1, 0), ACT01[1]])
    check_streams(s, flow=False)
    with pytest.raises(StreamError, match=r"ranks (0 -> 1 -> 0|1 -> 0 -> 1)"):
        check_streams(s, sends="rendezvous", flow=False)
    batched = _streams([Instr(Opcode.BATCH, parts=(ACT01[0], GRAD10[1]))], [Instr(Opcode.BATCH, parts=(GRAD10[0], ACT01[1]))])
    check_streams(batched, sends="rendezvous", flow=False)


def test_posted_receives_wait_at_the_consumer() -> None:
    # rank 0 receives before the forward whose activation rank 1 needs: a blocking receive hangs,
    # a posted one (irecv) does not, since rank 0 only waits for it at its backward
    s = _streams([GRAD10[1], Instr(Opcode.F, 0, 0), ACT01[0], Instr(Opcode.B, 0, 0)],
                 [ACT01[1], Instr(Opcode.F, 1, 0), Instr(Opcode.B, 1, 0), GRAD10[0]])
    with pytest.raises(StreamError, match="ranks (0 -> 1 -> 0|1 -> 0 -> 1)"):
        check_streams(s, flow=False)
    check_streams(s, recvs="posted", flow=False)
    check_streams(s, sends="rendezvous", recvs="posted", flow=False)
    # with the backward first, even a posted receive cannot help
    s = _streams([GRAD10[1], Instr(Opcode.B, 0, 0), Instr(Opcode.F, 0, 0), ACT01[0]],
                 [ACT01[1], Instr(Opcode.F, 1, 0), Instr(Opcode.B, 1, 0), GRAD10[0]])
    waits = find_deadlock(s, recvs="posted")
    assert waits is not None and {(w.rank, w.instr.op) for w in waits} == {(0, Opcode.B), (1, Opcode.F)}


def test_waiting_on_a_finished_rank() -> None:
    s = _streams([Instr(Opcode.F, 0, 0)], [ACT01[1], Instr(Opcode.F, 1, 0)])
    with pytest.raises(StreamError, match="rank 0 sends nothing but rank 1 receives act of stage 0 microbatch 0 "
                       r"at instruction 0 \(.*; rank 0 sends 0 messages to rank 1, which receives 1\)"):
        check_streams(s, flow=False)
    waits = find_deadlock(s)
    assert waits is not None and waits[-1].on == 0


def test_out_of_order_messages_are_reported() -> None:
    send0, send1 = Instr(Opcode.SEND_ACT, 0, 0, peer=1, peer_stage=1), Instr(Opcode.SEND_ACT, 0, 1, peer=1, peer_stage=1)
    recv0, recv1 = Instr(Opcode.RECV_ACT, 1, 0, peer=0, peer_stage=0), Instr(Opcode.RECV_ACT, 1, 1, peer=0, peer_stage=0)
    s = isa.Streams(2, 2, 2, (0, 1), (isa.RankStream(0, (0,), (send0, send1)), isa.RankStream(1, (1,), (recv1, recv0))))
    with pytest.raises(StreamError, match="rank 0 -> rank 1: message 0 does not match"):
        check_streams(s, flow=False)


def test_codegen_reorders_receives_to_match_sends() -> None:
    """Rank 1 consumes microbatch 1 before microbatch 0: its receives still follow rank 0's send
    order (microbatch 0's activation is received early and kept)."""
    prog = api.loads("""
        import "std:fused"
        ranks 2
        microbatches 2
        schedule {
          rank 0 { F[0, 0] F[0, 1] BW[0, 1] BW[0, 0] }
          rank 1 { F[1, 1] BW[1, 1] F[1, 0] BW[1, 0] }
        }""")
    verify(prog)
    streams = codegen(prog)
    check_streams(streams)
    r1 = list(isa.flatten(streams.ranks[1].instrs))
    recvs = [i.mb for i in r1 if i.op is Opcode.RECV_ACT]
    assert recvs == [0, 1]
    assert r1.index(Instr(Opcode.RECV_ACT, 1, 0, peer=0, peer_stage=0)) < r1.index(Instr(Opcode.F, 1, 1))


# ------------------------------------------------------------------ op mapping


def test_user_kinds_overlap_and_reductions() -> None:
    prog = api.loads("""
        import "std:fbw"
        ranks 2
        microbatches 2
        op R[s, i] role USER time 0.5 mem 0
        dep F[s, i] -> R[s, i]
        dep R[s, i] -> F[s + 1, i]
        schedule {
          rank 0 { F[0, 0] R[0, 0] F[0, 1] R[0, 1] B[0, 0] W[0, 0] B[0, 1] W[0, 1] }
          rank 1 { F[1, 0] R[1, 0] F[1, 1] & B[1, 0] R[1, 1] W[1, 0] B[1, 1] W[1, 1] }
        }""")
    verify(prog)
    streams = codegen(prog)
    check_streams(streams)
    r1 = streams.ranks[1].instrs
    assert Instr(Opcode.FB, 1, 1, stage2=1, mb2=0, kind="B") in r1
    assert Instr(Opcode.USER, 1, 0, kind="R") in r1
    # R[0,i] -> F[1,i] is an ordering constraint only: no message for it
    assert all(m.grad or prog.ops[m.src].kind == "F" for m in messages(prog))
    ops = [i.op for i in r1]
    assert ops.count(Opcode.REDUCE_GRAD) == 1 and ops[-1] is Opcode.OPT_STEP
    assert ops.index(Opcode.REDUCE_GRAD) > max(k for k, o in enumerate(ops) if o is Opcode.W)


# ------------------------------------------------------------------ properties over generated pipelines


@st.composite
def pipelines(draw: st.DrawFn) -> str:
    p = draw(st.integers(1, 4))
    v = draw(st.integers(1, 2))
    m = draw(st.integers(1, 4))
    S = p * v
    place = draw(st.sampled_from(["linear", "interleaved", "v", "random"]))
    if place == "linear":
        placement = [s * p // S for s in range(S)]
    elif place == "interleaved":
        placement = [s % p for s in range(S)]
    elif place == "v":
        placement = [s if s < p else 2 * p - 1 - s for s in range(S)] if v == 2 else list(range(S))
    else:
        extra = draw(st.lists(st.integers(0, p - 1), min_size=S - p, max_size=S - p))
        placement = draw(st.permutations(list(range(p)) + extra))  # every rank holds a stage
    lib = draw(st.sampled_from(["fbw", "fused"]))
    lines = [f'import "std:{lib}"', f"ranks {p}", f"stages {S}", f"microbatches {m}",
             f"place [{', '.join(map(str, placement))}]"]
    if draw(st.booleans()):  # a user kind with cross-rank ordering edges
        lines += ["op R[s, i] role USER time 0.5 mem 0", "dep F[s, i] -> R[s, i]",
                  "dep R[s, i] -> F[s + 1, i] where s % 2 == 0"]
    lines.append('schedule "list"(priority = "BFW")')
    return "\n".join(lines) + "\n"


def _random_orders(prog: Program, rng: random.Random, overlap: bool) -> Program:
    """The projection of a random topological order onto the ranks (valid by construction), with
    some adjacent forward/backward pairs merged into overlapped slots when that stays valid."""
    indeg = Counter(e.dst for e in prog.edges)
    ready = [o.id for o in prog.ops if indeg[o.id] == 0]
    succs = prog.succs()
    ranks: list[list[tuple[int, ...]]] = [[] for _ in range(prog.num_ranks)]
    while ready:
        k = ready.pop(rng.randrange(len(ready)))
        ranks[prog.ops[k].rank].append((k,))
        for d, _ in succs[k]:
            indeg[d] -= 1
            if indeg[d] == 0:
                ready.append(d)
    out = prog.with_orders(Orders(tuple(tuple(r) for r in ranks), origin="random"))
    verify(out)
    if not overlap:
        return out
    for r in range(prog.num_ranks):
        for j in range(len(ranks[r]) - 1):
            a, b = prog.ops[ranks[r][j][0]], prog.ops[ranks[r][j + 1][0]]
            if {prog.role(a), prog.role(b)} in ({Role.F, Role.B}, {Role.F, Role.BW}) and len(ranks[r][j]) == 1:
                trial = [list(x) for x in ranks]
                trial[r][j:j + 2] = [(a.id, b.id)]
                cand = prog.with_orders(Orders(tuple(tuple(x) for x in trial), origin="random"))
                try:
                    verify(cand)
                except SchedlangError:
                    continue
                return cand
    return out


def _assert_streams_sound(prog: Program, streams: isa.Streams) -> None:
    check_streams(streams)  # includes: every channel's sends match the peer's receives in order
    check_streams(streams, recvs="posted")  # what irecv-based runtimes do: weaker, must pass too
    incoming = {(prog.ops[m.dst].stage, prog.ops[m.dst].mb, m.grad) for m in messages(prog)}
    # each compute slot appears once, in the rank's order
    for r, rs in enumerate(streams.ranks):
        compute = [i for i in rs.instrs if i.op.is_compute]
        assert len(compute) >= len(prog.orders.ranks[r])
        got: set[tuple[int, int]] = set()
        for i in isa.flatten(rs.instrs):
            if i.op.is_recv:
                got.add((i.stage, i.mb) if i.op is Opcode.RECV_ACT else (-1 - i.stage, i.mb))
            needs = []
            if i.op in (Opcode.F, Opcode.FB):
                needs.append((i.stage, i.mb, "act"))
            if i.op in (Opcode.B, Opcode.BW):
                needs.append((i.stage, i.mb, "grad"))
            if i.op is Opcode.FB:
                needs.append((i.stage2, i.mb2, "grad"))
            for s, mb, what in needs:  # a cross-rank input must have been received before use
                if (s, mb, what == "grad") in incoming:
                    key = (s, mb) if what == "act" else (-1 - s, mb)
                    assert key in got, f"rank {r} uses {what} of {s},{mb} before receiving it"
        reductions = [i.stage for i in rs.instrs if i.op is Opcode.REDUCE_GRAD]
        plan = weight_plan(prog)
        if plan is None:
            assert sorted(reductions) == sorted(prog.stages_on(r))
        else:  # an asynchronous policy: one UPDATE per update group of the plan, no reductions
            updates = [i.stage for i in rs.instrs if i.op is Opcode.UPDATE]
            assert not reductions
            assert sorted(updates) == sorted(s for s in prog.stages_on(r) for _ in plan.groups[s])
    n_msgs = len(messages(prog))
    sends = sum(1 for rs in streams.ranks for i in isa.flatten(rs.instrs) if i.op.is_send)
    assert sends == n_msgs
    assert isa.parse_text(isa.to_text(streams)) == streams
    assert isa.from_json(isa.to_json(streams)) == streams


OPTIONS = st.tuples(st.sampled_from(RECV_PLACEMENTS), st.sampled_from(BATCHINGS))


@pytest.mark.slow
@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pipelines(), st.randoms(use_true_random=False), st.booleans(), OPTIONS, st.booleans())
def test_codegen_sound_on_random_valid_orders(src: str, rng: random.Random, overlap: bool,
                                              options: tuple[str, str], zero_costs: bool) -> None:
    """Random valid orders (some with overlapped slots), both receive placements and batchings;
    zero op times and latencies stress the eager placement's ties."""
    prog = api.loads(src, tf=0.0, tb=0.0, tw=0.0, tc=0.0) if zero_costs else api.loads(src)
    prog = _random_orders(prog, rng, overlap)
    _assert_streams_sound(prog, codegen(prog, *options))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pipelines(), st.permutations("BFW"), OPTIONS)
def test_codegen_sound_on_list_schedules(src: str, prio: list[str], options: tuple[str, str]) -> None:
    src = src.replace('priority = "BFW"', f'priority = "{"".join(prio)}"')
    prog = api.schedule(api.loads(src))
    _assert_streams_sound(prog, codegen(prog, *options))


def test_eager_receives_come_no_later_than_lazy_ones() -> None:
    prog = api.compile("std:zb-h2", p=4, m=8)
    earlier = 0
    for r in range(4):
        eager = list(isa.flatten(codegen(prog, "eager").ranks[r].instrs))
        lazy = list(isa.flatten(codegen(prog, "lazy").ranks[r].instrs))

        def computes_before(stream: list[Instr], ins: Instr) -> int:
            return sum(1 for i in stream[:stream.index(ins)] if i.op.is_compute)

        recvs = [i for i in lazy if i.op.is_recv]
        assert sorted(recvs, key=str) == sorted((i for i in eager if i.op.is_recv), key=str)
        assert all(computes_before(eager, i) <= computes_before(lazy, i) for i in recvs)
        earlier += sum(computes_before(eager, i) < computes_before(lazy, i) for i in recvs)
    assert earlier > 0


# ------------------------------------------------------------------ command line


def test_cli_emit_and_streams_check(tmp_path, capsys) -> None:
    out = tmp_path / "s.json"
    assert main(["compile", "std:1f1b", "--set", "p=2", "--set", "m=2", "--emit", "json", "-o", str(out)]) == 0
    assert isa.load(str(out)) == codegen(api.compile("std:1f1b", p=2, m=2))
    assert main(["streams", str(out), "--sends", "rendezvous"]) == 0
    assert "no deadlock" in capsys.readouterr().out
    bad = tmp_path / "bad.txt"
    bad.write_text("schedlang-isa 1\npipeline ranks=2 stages=2 microbatches=1 placement=0,1\n"
                   "rank 0 stages=0\n  F stage=0 mb=0\n  RECV_GRAD stage=0 mb=0 peer=1 peer_stage=1\n"
                   "  SEND_ACT stage=0 mb=0 peer=1 peer_stage=1\n  BW stage=0 mb=0\n  REDUCE_GRAD stage=0\n  OPT_STEP\n"
                   "rank 1 stages=1\n  RECV_ACT stage=1 mb=0 peer=0 peer_stage=0\n  F stage=1 mb=0\n  BW stage=1 mb=0\n"
                   "  SEND_GRAD stage=1 mb=0 peer=0 peer_stage=0\n  REDUCE_GRAD stage=1\n  OPT_STEP\n")
    assert main(["streams", str(bad)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"{bad}:5:3: error: deadlock (buffered sends): ranks 0 -> 1 -> 0 wait on each other\n"), err
    assert "Traceback" not in err
    assert main(["compile", "std:1f1b", "--emit", "streams"]) == 0
    assert capsys.readouterr().out.startswith("schedlang-isa 1\n")


def _all_builtins() -> list[str]:
    from pathlib import Path

    libs = {"costs", "fbw", "fused"}
    return sorted(p.stem for p in (Path(api.__file__).parent / "stdlib").glob("*.sched") if p.stem not in libs)


@pytest.mark.parametrize("name", _all_builtins())
@pytest.mark.parametrize(("p", "m"), [(2, 4), (4, 8), (8, 24)])
def test_every_builtin_generates_sound_streams(name: str, p: int, m: int) -> None:
    """Every built-in's streams are sound, and with the default eager receives and run batching
    they even survive rendezvous sends (a send that waits for its receive to be posted)."""
    prog = _compile(name, {"p": p, "m": m})
    streams = codegen(prog)
    _assert_streams_sound(prog, streams)
    check_streams(streams, sends="rendezvous")
    _assert_streams_sound(prog, codegen(prog, "lazy", "peer"))
