"""The library against PyTorch's own schedules (torch.distributed.pipelining, torch 2.13):
the orders its Schedule classes compute, mapped onto schedlang programs by scheduler ``torch``
(schedlang/schedulers/torch_peer.py; F -> F, I -> B, W -> W, full B -> B then W, OVERLAP_F_B ->
one overlapped slot). These classes' order builders are private APIs, so the version is pinned.

- std:dualpipe-v is exactly torch's ScheduleDualPipeV (DeepSeek's DualPipeV);
- std:looped-bfs is exactly torch's ScheduleLoopedBFS (each chunk's backwards in reverse
  microbatch order), for every p, m, v;
- std:interleaved-zb is exactly torch's ScheduleInterleavedZeroBubble wherever torch accepts the
  shape (v >= 2, m >= p, m a multiple of m // p), for p in 2..8;
- std:interleaved-1f1b is exactly torch's ScheduleInterleaved1F1B wherever torch accepts the
  shape (v >= 2, m >= p, m a multiple of m // p);
- std:zb-v is never worse than torch's ScheduleZBVZeroBubble (span cost), at the same peak memory
  budget, on uniform and on the Zero Bubble paper's profiled costs.
"""

from __future__ import annotations

import itertools

import pytest

torch = pytest.importorskip("torch")
if not torch.__version__.startswith("2.13"):
    pytest.skip("pinned to torch 2.13 (private schedule APIs)", allow_module_level=True)

from schedlang.api import compile as compile_program  # noqa: E402
from schedlang.api import orders  # noqa: E402
from schedlang.simulate import simulate  # noqa: E402
from schedlang.testing import PAPER_PROFILES  # noqa: E402


@pytest.mark.slow
def test_dualpipe_v_is_torchs() -> None:
    for p in (1, 2, 3, 4, 5):
        for m in range(2 * p, 3 * p + 2):
            ours = compile_program("std:dualpipe-v", params={"p": p, "m": m})
            theirs = compile_program("std:dualpipe-v", params={"p": p, "m": m}, scheduler="torch:schedule=DualPipeV")
            assert ours.orders.ranks == theirs.orders.ranks, (p, m)


def test_looped_bfs_is_torchs() -> None:
    for p, v, m in itertools.product((1, 2, 3, 4, 5), (1, 2, 3), (1, 2, 3, 4, 5, 7, 8, 9, 12)):
        kw = {"p": p, "m": m, "v": v}
        ours = compile_program("std:looped-bfs", params=kw)
        theirs = compile_program("std:looped-bfs", params=kw, scheduler="torch:schedule=LoopedBFS")
        assert ours.orders.ranks == theirs.orders.ranks, kw
    # the backwards of a chunk run from the last microbatch to the first
    rank0 = orders(compile_program("std:looped-bfs", p=2, m=3, v=2))[0]
    assert rank0 == ["F[0,0]", "F[0,1]", "F[0,2]", "F[2,0]", "F[2,1]", "F[2,2]",
                     "BW[2,2]", "BW[2,1]", "BW[2,0]", "BW[0,2]", "BW[0,1]", "BW[0,0]"]


def test_interleaved_zb_is_torchs() -> None:
    checked = 0
    for p, v, m in itertools.product((2, 3, 4, 5, 6, 8), (2, 3), range(1, 33)):
        rounds = max(1, m // p)
        if m < p or m % rounds:
            continue  # torch rejects these shapes (or groups them differently); ours still runs them
        kw = {"p": p, "m": m, "v": v}
        ours = compile_program("std:interleaved-zb", params=kw)
        theirs = compile_program("std:interleaved-zb", params=kw, scheduler="torch:schedule=InterleavedZeroBubble")
        assert ours.orders.ranks == theirs.orders.ranks, kw
        checked += 1
    assert checked == 174


@pytest.mark.slow
def test_interleaved_is_torchs() -> None:
    checked = 0
    for p, v, m in itertools.product((1, 2, 3, 4, 5), (2, 3), range(1, 21)):
        rounds = max(1, m // p)
        if m < p or m % rounds:
            continue  # torch rejects these shapes (or pads differently); ours still runs them
        kw = {"p": p, "m": m, "v": v}
        ours = compile_program("std:interleaved-1f1b", params=kw)
        theirs = compile_program("std:interleaved-1f1b", params=kw, scheduler="torch:schedule=Interleaved1F1B")
        assert ours.orders.ranks == theirs.orders.ranks, kw
        checked += 1
    assert checked > 60


@pytest.mark.slow
@pytest.mark.parametrize("costs", ["uniform", "1.5B", "6.2B"])
def test_zb_v_no_worse_than_torchs(costs: str) -> None:
    for p, m in ((2, 4), (3, 7), (4, 8), (4, 12), (8, 24)):
        kw: dict[str, object] = {"p": p, "m": m}
        if costs != "uniform":
            # a model slice's costs (what one rank holds under 1F1B): each chunk gets half
            t = PAPER_PROFILES[costs]
            kw |= {"tf": t["tf"], "tb": t["tb"], "tw": t["tw"], "tc": t["tc"]}
        ours = simulate(compile_program("std:zb-v", params=kw))
        theirs = simulate(compile_program("std:zb-v", params=kw, scheduler="torch:schedule=ZBVZeroBubble"))
        assert ours.cost <= theirs.cost + 1e-9, (costs, p, m)
        assert max(r.peak_memory for r in ours.ranks) <= p * 1.0 + 1e-9  # 1F1B's p * M_B (mem_f = 1)
