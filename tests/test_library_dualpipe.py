"""std:dualpipe against DeepSeek's DualPipe order (deepseek-ai/DualPipe, dualpipe/dualpipe.py).

DeepSeek's schedule is the control flow of ``DualPipe.step``: eight steps of forward, backward,
overlapped forward-backward and weight chunks per rank, with counters per direction and a FIFO
queue of deferred weight gradients. It needs CUDA and a process group, so it cannot run here;
:func:`deepseek_order` below restates that control flow step by step (the step sizes, the middle
ranks' unoverlapped first main step, the zero-bubble switch in step 6) as a recorder that writes
down which op each call runs. The DSL program must give the same per-rank orders for every even
p and m the generator accepts (p in {2, 4, 6, 8}, m from 2p to 4p).

Mapping: direction 0 (down, rank 0 -> p-1) chunk k is microbatch 2k on stage r; direction 1 (up)
chunk k is microbatch 2k+1 on stage 2p-1-r. A full backward is B then W; an overlapped
forward-backward is one ``F & B`` slot, then the backward's W.
"""

from __future__ import annotations

import pytest

from schedlang.api import compile as compile_program
from schedlang.api import orders
from schedlang.simulate import simulate
from schedlang.source import SchedlangError


def deepseek_order(p: int, m: int, r: int) -> list[str]:  # noqa: C901 - one function per step reads like the source
    half, h, mh = p // 2, min(r, p - 1 - r), m // 2
    second = r >= half
    middle = r in (half - 1, half)
    f_next, b_next = [0, 0], [0, 0]
    queue: list[str] = []
    out: list[str] = []

    def label(kind: str, phase: int, k: int) -> str:
        d = phase ^ second  # the direction: 0 down, 1 up
        stage = r if d == 0 else 2 * p - 1 - r
        return f"{kind}[{stage},{2 * k + d}]"

    def fwd(phase: int) -> str:
        k = f_next[phase]
        f_next[phase] += 1
        return label("F", phase, k)

    def bwd(phase: int) -> tuple[str, str]:
        k = b_next[phase]
        b_next[phase] += 1
        return label("B", phase, k), label("W", phase, k)

    def forward_chunk(phase: int) -> None:
        out.append(fwd(phase))

    def backward_chunk(phase: int, zb: bool = False) -> None:
        b, w = bwd(phase)
        out.append(b)
        if zb:
            queue.append(w)
        else:
            out.append(w)

    def forward_backward_chunk(phase0: int, phase1: int) -> None:
        f = fwd(phase0)
        b, w = bwd(phase1)
        out.extend([f"{f}&{b}", w])

    def weight_chunk() -> None:
        out.append(queue.pop(0))

    for _ in range((half - h - 1) * 2):  # step 1
        forward_chunk(0)
    for _ in range(h + 1):  # step 2
        forward_chunk(0)
        forward_chunk(1)
    for _ in range(half - h - 1):  # step 3
        backward_chunk(1, zb=True)
        weight_chunk()
        forward_chunk(1)
    for i in range(mh - p + h + 1):  # step 4
        if i == 0 and middle:
            forward_chunk(0)
            backward_chunk(1)
        else:
            forward_backward_chunk(0, 1)
        forward_backward_chunk(1, 0)
    for _ in range(half - h - 1):  # step 5
        backward_chunk(1)
        forward_backward_chunk(1, 0)
    zb = False
    for i in range(h + 1):  # step 6
        if i == (h + 1) // 2 and h % 2 == 1:
            zb = True
        backward_chunk(1, zb)
        if i == (h + 1) // 2 and h % 2 == 0:
            zb = True
        backward_chunk(0, zb)
    for _ in range(half - h - 1):  # step 7
        weight_chunk()
        backward_chunk(0, zb=True)
    for _ in range(h + 1):  # step 8
        weight_chunk()
    assert not queue
    return out


@pytest.mark.parametrize("p", [2, 4, 6, 8])
def test_dualpipe_is_deepseeks(p: int) -> None:
    for m in range(2 * p, 4 * p + 1, 2):
        got = orders(compile_program("std:dualpipe", p=p, m=m))  # compile verifies: complete, deadlock-free
        assert got == {r: deepseek_order(p, m, r) for r in range(p)}, (p, m)


def test_dualpipe_figures() -> None:
    # DeepSeek's table: activation memory PP + 1 (here in one slice's M_B: F allocates 1, W frees
    # the rest); uniform costs with F & B overlapped
    for p in (4, 8):
        sim = simulate(compile_program("std:dualpipe", p=p, m=2 * p))
        assert [r.peak_memory for r in sim.ranks] == [p + 1.0] * p
        assert sim.makespan == 5.5 * p and sim.bubble == 1.0
    # the same model as the others: m microbatches through p slices, F + B + W each
    prog = compile_program("std:dualpipe", p=4, m=8)
    assert sum(o.time for o in prog.ops) == 4 * 8 * 3.0


@pytest.mark.parametrize(("kw", "message"), [
    ({"p": 3, "m": 6}, "dualpipe needs an even number of ranks (p % 2 == 0)"),
    ({"p": 4, "m": 6}, "dualpipe needs an even m with m >= 2p"),
    ({"p": 4, "m": 9}, "dualpipe needs an even m with m >= 2p"),
])
def test_dualpipe_shapes(kw: dict[str, int], message: str) -> None:
    with pytest.raises(SchedlangError) as info:
        compile_program("std:dualpipe", params=kw)
    assert info.value.message == message and info.value.span is not None
