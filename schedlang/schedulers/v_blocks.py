"""``v-blocks``: V-Half and V-Min built the way "Pipeline Parallelism with Controllable Memory"
(Qi et al., 2024) builds them: a repeating building block with its memory schedule, then greedy
squeezing.

The V placement (chunk 0 of rank r is stage r, chunk 1 is stage 2p-1-r). Each rank runs, per
microbatch, four ops in fixed slots of a 6-slot period: the forward of chunk 0 (``F0``), the
forward of chunk 1 (``F1``), the backward of chunk 1 (``B1``) and of chunk 0 (``B0``); the two
other slots are for the Ws. The block fixes the slots of microbatch 0 on every rank; microbatch j
is the block shifted by 6j. The block's lifespans set the memory: V-Half keeps about half of
1F1B's activations in flight, V-Min about a third (the paper's figure 4):

- V-Min, rank r: F0 at r, F1 at 2p-1-r, B1 at 2p+d+r, B0 at 4p+d-1-r (d = 2 when 3 divides p,
  else 0, so no two ops of a rank meet in one slot modulo 6);
- V-Half, rank r: F0 at 2r, F1 at 3p-2-r, B1 at 3p+d-1+2r, B0 at 6p+d-2-r (d = 3 for even p).

The repeated blocks leave the warm-up and cool-down sparse. Squeezing (the paper's "squeeze"
step) walks the ops in slot order and moves each one to the earliest free slot after its
dependencies, as long as the rank's memory peak (an F holds one unit until its W) does not grow;
the steady state between the first B0 of rank 0 and the last F0 is kept as built. It runs twice:
first with each W placed as an op (in the first free slot after its B), then with the Ws taken
out again and the warm-up kept. After each pass the slots are renumbered by an as-soon-as-possible
run with unit times. Finally every W goes into the first free slot after its B (chunk 1's before
chunk 0's when both wait), and each rank runs its ops in slot order.

Requires: the V placement with 2p stages on p ranks and split F / B / W kinds. Any m >= 1.
"""

from __future__ import annotations

from collections.abc import Mapping

from schedlang.ir import Orders, Program, Value
from schedlang.schedulers.base import Arg, Scheduler
from schedlang.schedulers.heuristics import fits_memory, kinds_of
from schedlang.schedulers.zb_v import v_placement
from schedlang.source import SchedlangError

PERIOD = 6
PATTERNS = ("half", "min")

# op types of one rank, in the order used for tie-breaks: F0, F1, B1, B0, then the W types
F0, F1, B1, B0 = range(4)
MEMORY = (1, 1, 0, 0, -1)  # units per type (an F holds its chunk's activations until its W)

Slots = list[list[int]]  # per type, the slot of each microbatch


def block(pattern: str, p: int) -> list[list[int]]:
    """The slots of microbatch 0 on each rank: ``[F0, F1, B1, B0]`` (see the module docstring)."""
    if pattern == "min":
        d = 2 if p % 3 == 0 else 0
        return [[r, 2 * p - 1 - r, 2 * p + d + r, 4 * p + d - 1 - r] for r in range(p)]
    d = 3 if p % 2 == 0 else 0
    return [[2 * r, 3 * p - 2 - r, 3 * p + d - 1 + 2 * r, 6 * p + d - 2 - r] for r in range(p)]


def _merge(rank: Slots, ntypes: int) -> list[tuple[int, int, int]]:
    """The (slot, type, microbatch) of the first ``ntypes`` types, in slot order."""
    return sorted((t, k, j) for k in range(ntypes) for j, t in enumerate(rank[k]))


def place_w(rank: Slots, split: bool) -> Slots:
    """Add the Ws of the four compute types: each free slot (and then the slots after the last op)
    takes the oldest waiting W, chunk 1's (after B1) before chunk 0's (after B0) when ``split``;
    without ``split`` all Ws are one type."""
    out = [list(x) for x in rank[:4]] + ([[], []] if split else [[]])
    waiting = [0, 0]
    t = -1
    taken = {s for s, _, _ in _merge(rank, 4)}
    ops = iter(_merge(rank, 4))
    nxt = next(ops, None)
    last = max(taken) if taken else -1
    for t in range(last + 1):
        if nxt is not None and nxt[0] == t:
            if nxt[1] in (B1, B0):
                waiting[nxt[1] - B1 if split else 0] += 1
            nxt = next(ops, None)
            continue
        for w in range(2):
            if waiting[w]:
                out[4 + w].append(t)
                waiting[w] -= 1
                break
    for w in range(2):
        while waiting[w]:
            t += 1
            out[4 + w].append(t)
            waiting[w] -= 1
    return out


def peak(rank: Slots) -> int:
    """A rank's activation peak in units: F +1, W -1; without W types, each free slot frees one
    waiting W (as :func:`place_w` would place them)."""
    explicit = len(rank) > 4
    events = _merge(rank, len(rank))
    at = {s: k for s, k, _ in events}
    last = events[-1][0] if events else -1
    level = best = waiting = 0
    for t in range(last + 1):
        k = at.get(t)
        if k is not None:
            level += MEMORY[min(k, 4)]
            if k in (B1, B0):
                waiting += 1
        elif not explicit and waiting:
            level -= 1
            waiting -= 1
        best = max(best, level)
    return best


def _deps(ranks: list[Slots], r: int, k: int, j: int) -> int:
    """The latest slot among the ops (r, k, j) waits for."""
    p = len(ranks)
    d = -1
    if k in (F0, B1) and r > 0:  # F0 flows down the ranks, and so does chunk 1's backward
        d = max(d, ranks[r - 1][k][j])
    if k in (F1, B0) and r + 1 < p:  # F1 flows up, and so does chunk 0's backward
        d = max(d, ranks[r + 1][k][j])
    if 0 < k < 4:  # F1 after F0, B1 after F1, B0 after B1 on the same rank (the V's turns)
        d = max(d, ranks[r][k - 1][j])
    if k == 4:  # a merged W after the j-th backward of the rank
        d = max(d, sorted(ranks[r][B1] + ranks[r][B0])[j])
    if j > 0:
        d = max(d, ranks[r][k][j - 1])
    return d


def _unit_asap(ranks: list[Slots]) -> list[Slots]:
    """Renumber the slots: run every rank's ops in slot order, as soon as possible, unit times."""
    p, ntypes = len(ranks), len(ranks[0])
    events = sorted((t, r, k, j) for r in range(p) for k in range(ntypes) for j, t in enumerate(ranks[r][k]))
    end: dict[tuple[int, int, int], int] = {}
    free = [0] * p
    out: list[Slots] = [[[0] * len(ranks[r][k]) for k in range(ntypes)] for r in range(p)]
    for _, r, k, j in events:
        start = free[r]
        if k in (F0, B1) and r > 0:
            start = max(start, end[(r - 1, k, j)])
        if k in (F1, B0) and r + 1 < p:
            start = max(start, end[(r + 1, k, j)])
        if 0 < k < 4:
            start = max(start, end[(r, k - 1, j)])
        if j > 0:
            start = max(start, end[(r, k, j - 1)])
        end[(r, k, j)] = free[r] = start + 1
        out[r][k][j] = start
    return out


def squeeze(ranks: list[Slots], with_w: bool) -> list[Slots]:
    """One squeezing pass (see the module docstring); returns the renumbered slots with Ws."""
    ranks = [place_w(x, split=False) if with_w else [list(y) for y in x] for x in ranks]
    ntypes = len(ranks[0])
    limit = max(peak(x) for x in ranks)
    p = len(ranks)
    occupied: list[set[int]] = [set() for _ in range(p)]
    events = sorted((t, r, k, j) for r in range(p) for k in range(ntypes) for j, t in enumerate(ranks[r][k]))
    m = len(ranks[0][F0])
    phase = 0  # 0: warm-up, 1: steady state (kept), 2: cool-down
    for _, r, k, j in events:
        slot = ranks[r][k][j]  # events are in slot order, and ops only move earlier
        if k == B0 and r == 0 and phase == 0:
            phase = 1
        if phase == 1:
            if k == F0 and j == m - 1:
                phase = 2
            occupied[r].add(slot)
            continue
        if phase == 0 and not with_w:
            occupied[r].add(slot)
            continue
        first = _deps(ranks, r, k, j) + 1
        for t in range(first, slot):
            if t in occupied[r]:
                continue
            ranks[r][k][j] = t
            if peak(ranks[r]) <= limit:
                break
        else:
            ranks[r][k][j] = slot
        occupied[r].add(ranks[r][k][j])
    if not with_w:
        ranks = [place_w(x, split=False) for x in ranks]
    return _unit_asap(ranks)


def v_block_slots(pattern: str, p: int, m: int) -> list[Slots]:
    """Per rank, the final slots of the six op types ``F0 F1 B1 B0 W1 W0`` (W1: chunk 1's)."""
    ranks = [[[t + PERIOD * j for j in range(m)] for t in b] for b in block(pattern, p)]
    ranks = [x[:4] for x in squeeze(ranks, with_w=True)]
    ranks = [x[:4] for x in squeeze(ranks, with_w=False)]
    return [place_w(x, split=True) for x in ranks]


def v_blocks(program: Program, args: Mapping[str, Value]) -> Orders:
    """Order ``program`` by the V-Half or V-Min building block (see the module docstring)."""
    pattern = args.get("pattern", "half")
    kinds = kinds_of(program)
    if kinds is None or kinds.b is None or kinds.w is None or not v_placement(program):
        raise SchedlangError("scheduler 'v-blocks' needs the V placement (2p stages, stage s on rank s for s < p, "
                             "else 2p-1-s) and split F / B / W kinds (import std:fbw)", program.schedule_span)
    if pattern not in PATTERNS:
        raise SchedlangError(f"scheduler 'v-blocks': pattern must be one of {', '.join(PATTERNS)}, got {pattern!r}",
                             program.schedule_span)
    p, m = program.num_ranks, program.num_microbatches
    index = program.op_index()
    ranks = []
    for r, slots in enumerate(v_block_slots(str(pattern), p, m)):
        s0, s1 = r, 2 * p - 1 - r
        what = [(kinds.f, s0), (kinds.f, s1), (kinds.b, s1), (kinds.b, s0), (kinds.w, s1), (kinds.w, s0)]
        items = sorted((t, k, j) for k, ts in enumerate(slots) for j, t in enumerate(ts))
        ranks.append(tuple((index[(what[k][0], what[k][1], j)],) for _, k, j in items))
    return Orders(tuple(ranks), origin=f"v-blocks:{pattern}")


SCHEDULER = Scheduler(
    name="v-blocks",
    summary="V-Half / V-Min from the paper's building blocks, squeezed (V placement, split F / B / W)",
    fn=v_blocks,
    warm_start=True,
    applies=lambda prog: (v_placement(prog) and (k := kinds_of(prog)) is not None and k.b is not None
                          and fits_memory(prog, v_blocks(prog, {}))),
    args={"pattern": Arg(str, "half", "the building block: half (about 1/2 of 1F1B's memory) or min (about 1/3)")},
    warm_variants=({"pattern": "min"},),  # V-Min's block: the start under a third of 1F1B's memory
)
