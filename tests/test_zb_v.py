"""ZB-V's round-based greedy reads the latency of the edge an op waits on (not the largest of all
edges)."""

from __future__ import annotations

from schedlang import api
from schedlang.schedulers.heuristics import kinds_of
from schedlang.schedulers.zb_v import _VRounds, default_limits
from schedlang.simulate import simulate
from schedlang.verify import verify

# a V program (p = 2, four stages) whose first activation edge takes 3 and every other 0.25
MIXED = '''import "std:costs"
param p = 2
param m = 4
ranks p
stages 2 * p
microbatches m
place s => s < p ? s : 2 * p - 1 - s
op F[s, i] time 1 mem 1
op B[s, i] time 1 mem -0.5
op W[s, i] time 1 mem -0.5
dep F[s, i] -> F[s + 1, i] latency (s == 0 ? 3 : 0.25)
dep F[s, i] -> B[s, i] where s == num_stages - 1
dep B[s, i] -> B[s - 1, i] latency 0.25
dep B[s, i] -> W[s, i]
schedule "zb-v"
'''


def test_comm_is_the_latency_of_the_edge_in_question() -> None:
    prog = api.loads(MIXED)
    kinds = kinds_of(prog)
    assert kinds is not None
    g = _VRounds(prog, default_limits(prog, 2.0), kinds, True, True, None)

    def f(s: int, i: int) -> int:
        op = prog.find("F", s, i)
        assert op is not None
        return op.id

    def b(s: int, i: int) -> int:
        op = prog.find("B", s, i)
        assert op is not None
        return op.id

    assert g._comm(f(0, 0), f(1, 0)) == 3.0
    assert g._comm(f(1, 0), f(2, 0)) == 0.25  # the largest latency was returned for every edge
    assert g._comm(f(2, 1), f(3, 1)) == 0.25
    assert g._comm(b(3, 0), b(2, 0)) == 0.25
    assert g._comm(f(0, 0), f(2, 0)) == 0.0  # no such edge
    assert g._comm(f(0, 0), None) == 0.0


def test_mixed_latencies_schedule_verifies() -> None:
    prog = api.schedule(api.loads(MIXED))
    verify(prog)
    sim = simulate(prog)
    # the work is 2 ranks x 4 microbatches x 2 chunks x (F + B + W) = 24 per rank, and the
    # first microbatch's F[0] -> F[1] takes 3 before rank 1 can start
    assert sim.makespan >= 24 + 1
    assert max(r.peak_memory for r in sim.ranks) <= 2 * 2.0 + 1e-9
