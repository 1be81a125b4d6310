"""Structural lower bounds on a pipeline's span cost and makespan, valid for every schedule.

CP-SAT's own bound stays near "no bubble" for minutes on these problems, so the optimizer feeds it
these instead (as ``obj >= bound``) and reports its gap against them.

For every rank ``r`` (``busy_r`` = the sum of its op times):

1. **Work**: ``span_r >= busy_r``.
2. **Start round trip** (appendix B of the zero-bubble paper, Qi et al., ICLR 2024). On a rank
   with one stage of interchangeable microbatches and ops F, B (or fused BW) and optionally W,
   every ``B[s, j]`` starts at least ``RT`` after ``F[s, j]`` starts, where ``RT`` is the longest
   dependency path from the start of ``F[s, 0]`` to the start of ``B[s, 0]`` (the forwards down
   the pipeline, the backwards back, the comm both ways). From the rank's first op ``t0`` to
   ``t0 + RT`` it can run only forwards, and with nothing freed yet at most
   ``k = floor(limit / M_F)`` of them: idle ``>= RT - min(k, m) * T_F``.
3. **End round trip** (the mirror): let ``t`` be the start of the rank's last forward. ``B`` of that
   microbatch starts at ``t + RT`` or later, so within ``[t, t + RT]`` the rank can run only that
   forward and the ``B``/``W`` of microbatches whose memory it still holds at ``t``: if ``a`` of
   them still wait for ``B`` (``M_F`` each) and ``b`` only for ``W`` (``M_W`` each), then
   ``(1 + a) M_F + b M_W <= limit`` and the work is at most ``T_F + a (T_B + T_W) + b T_W``; the
   idle is at least ``RT`` minus the best such work (a small knapsack over ``a``).
   When ``m > k`` the two windows are disjoint (the ``(k+1)``-th forward needs a ``B`` first,
   which cannot start before ``t0 + RT``), so the idles add; otherwise the larger one counts.

4. **Throughput through another rank** (a one-machine relaxation, any placement). Let ``t0`` be
   the start of rank ``r``'s first op and ``t1`` the end of its last. An op ``k`` on rank ``q``
   that depends on some op ``u`` of rank ``r`` starts at least ``head(k)`` = the longest path
   from the start of ``u`` to the start of ``k`` after ``t0`` (``u`` starts no earlier than
   ``t0``); one that some op ``u`` of rank ``r`` depends on ends at least ``tail(k)`` = the
   longest path from the end of ``k`` to the end of ``u`` before ``t1``. Ops of one rank run one
   at a time, so for any set ``K`` of such ops on rank ``q``:
   ``span_r >= min head + sum of times + min tail`` over ``K``. It is maximised over the sets
   ``{k : head(k) >= H}`` and ``{k : tail(k) >= T}``. Example: with few microbatches the
   backwards return to rank 0 no faster than the last rank can do one F and one B per
   microbatch (1.5B profile, p = 4, m = 8: ZB-2p's rank-0 span, 415.63 ms, is this bound).

5. **Memory pacing** (same shape as items 2 and 3, FIFO). When ``F[s, j]`` starts, the earlier
   microbatches still holding memory are the latest ``a`` (waiting for ``B``, ``M_F`` each) and the
   ``b`` before them (waiting for ``W``, ``M_W`` each), with ``(1 + a) M_F + b M_W <= limit``. So
   ``B[j-a-1]`` has started, and ``F[j] >= F[j-a-1] + RT + T_B``; and ``W[j-a-b-1]`` has started,
   so ``F[j] >= F[j-a-b-1] + RT + T_B + T_W`` (RT as in item 2; each op ends before ``F[j]`` starts
   on the one rank). Also ``F[j] >= F[j-1] + T_F``, and ``F[j] - F[0]`` is at least the work
   that starts before it (``j`` forwards, ``j - a`` B, ``j - a - b`` W), plus the start round trip's
   idle once ``B[0]`` is among them. A DP over ``j`` takes, for the least ``F[j] - F[0]``, the
   least such value over the states ``(a, b)`` the limit allows (``F[0]`` is the rank's first op);
   the span adds, after ``F[m-1]``, what is left and the end round trip (as in item 3). Example:
   uniform costs (T = 1, comm 0.1), p = 4, three forwards fit on rank 0: ``F[j] - F[j-3] >= 9.6``,
   3.2 per microbatch where the work is 3.

6. **Blocks** (items 1 to 3 and 5, split). The microbatches ``j .. m-1`` alone, with the start times
   they have, are a valid schedule of the same pipeline with ``m - j`` microbatches (dropping whole
   microbatches frees time and never adds memory), and its span on the rank runs from ``F[j]`` to
   the rank's last op. So ``span_r >= (F[j] - F[0]) + S(m - j)``, where ``F[j] - F[0]`` is at
   least item 5's DP value and ``S(n)``, the bound for ``n`` microbatches, is the best of items 1
   to 3, 5 and this one again (a recursion over ``n``). It counts the round trips at both ends of
   a short last block, which the single DP over all ``m`` misses. Example: uniform costs (comm
   0.1), p = 4, m = 8, three forwards fit on rank 0: ``F[3] - F[0] >= 9.6`` (item 5), and the
   last five microbatches alone need their work, 15, plus the idle of their start round trip,
   ``7.6 - 3``, and of their end round trip, ``7.6 - 5``: 31.8 in all, where items 1 to 5 give
   31.2 (CP-SAT proves 32.6 optimal).

7. **Relaxations keeping two ranks exact** (relax.py, optional: they cost CP-SAT solves). Keep
   rank ``r`` and one other rank running one op at a time under their memory, let every other
   rank's ops overlap freely, and solve on the first ``n`` microbatches: ``gaps[k]``, the least
   ``F[k] - F[0]`` over ``k + 1`` microbatches, bounds every ``F[j+k] - F[j]`` and enters item 5's
   DP (``lb[j] >= lb[j-k] + gaps[k]``); ``spans[n]``, the least span over ``n`` microbatches,
   enters item 6's block bounds (and is a bound itself when ``n = m``). It catches what items 5
   and 6 cannot: memory states their DP counts that no order of the rank's F, B and W slots
   reaches, and rhythms that ask another rank for two ops at once. Example: uniform costs (comm 0.1), p = 4, m = 8, limit
   0.75 p*M_B: with ranks 0 and 2 exact, ``F[7] - F[0] >= 23`` (item 5: 22.2), and then the span
   of rank 0 is at least 32.6, the optimum (items 1 to 6: 31.8).

So ``span_r >= busy_r + idle_r`` (items 1 to 3) and ``span_r >=`` items 4 to 7; the span cost is at least
the maximum over ranks. For the makespan: the critical path, and per rank the earliest its first op
can start plus that span bound plus the least time after its last op.

**Several stages on a rank** (V shapes, interleaving, any placement along the chain of stages).
Items 2, 3, 5 and 6 run on the rank's *first chunk*, the stage whose F comes first in every
microbatch and whose B comes last: F, B, W and RT above are that stage's (RT now runs through the
rank's other chunks too), and the other chunks change three things. (a) Their F and B of a
microbatch run before its first-chunk B, so item 5 counts them as work for the ``j - a``
microbatches whose B has started, and the round-trip windows of items 2 and 3 let each microbatch
in the window run them (and their W) instead of idling. (b) The end window also runs the other
chunks' W still pending for microbatches done with the first chunk, as many as the memory left over
holds (each holds its W memory while it waits). (c) The memory those chunks hold is otherwise left
out (a microbatch holds at least its first-chunk memory), which only loosens the bound. Item 5 runs
a second time on the *last chunk's* forwards, where the pacing is tighter: when ``F[last, j]``
starts, microbatch ``j`` holds every chunk's forward memory (all its forwards on the rank came
before, none of its backwards), so ``M_F`` of the new microbatch becomes their sum there, its RT
runs to the first chunk's B, the work counted is the other chunks' B, and the span adds the
least time from the rank's first op to ``F[last, 0]``. Example: V shape, p = 2, m = 2, every
time 1, no comm, forwards allocate 1 and B frees half, limit 2: rank 0's last-chunk forwards are
at least 6 apart (at ``F[3, 1]`` microbatch 1 holds 2, the limit, so ``W[0, 0]`` has started; it
starts at least ``RT + T_B = 4 + 1`` after ``F[3, 0]`` and ends before ``F[3, 1]``), the first is
at least 3 after the rank's first op, and the last is followed by at least 6 (what is left, 5, and
1 of idle before ``B[0, 1]``): 15 (CP-SAT proves 17 optimal; the work is 12).

Other rank shapes (user op kinds, stages not on one chain, microbatches not interchangeable) get
items 1 and 4. Item 4 needs ops on one rank never to overlap (``overlap sum``, the default); with
``overlap max`` it is skipped.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace

from schedlang.ir import Program, Role

EPS = 1e-9


@dataclass(frozen=True)
class RankBound:
    """How the bound on one rank's span was obtained."""

    rank: int
    busy: float
    round_trip: float = 0.0
    forwards_fit: int = 0
    start_idle: float = 0.0
    end_idle: float = 0.0
    idle: float = 0.0
    additive: bool = True  # the two windows are disjoint (else the larger idle counts)
    throughput: float = 0.0  # item 4's bound on the span, and the rank it goes through
    via: int = -1
    pacing: float = 0.0  # item 5's bound on the span
    blocks: float = 0.0  # item 6's bound on the span, and the first microbatch of its last block
    split: int = 0
    last_chunk: bool = False  # item 5 was best paced on the last chunk's forwards (several stages)
    relaxed: float = 0.0  # item 7: the relaxation's own bound on the span of all m microbatches
    windows: bool = False  # items 5 and 6 used item 7's figures

    @property
    def span(self) -> float:
        return max(self.busy + self.idle, self.throughput, self.pacing, self.blocks, self.relaxed)


@dataclass(frozen=True)
class Windows:
    """Item 7's figures for one rank, from relaxations solved on the first few microbatches
    (relax.py): ``gaps[k]`` <= ``F[k] - F[0]`` (its first chunk's forwards) over every schedule of
    ``k + 1`` (or more) microbatches, ``spans[n]`` <= the rank's span over every schedule of ``n``
    microbatches."""

    gaps: Mapping[int, float] = field(default_factory=dict)
    spans: Mapping[int, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Bound:
    """A lower bound on an objective, with the per-rank parts it came from."""

    objective: str
    value: float
    ranks: tuple[RankBound, ...] = field(default=())
    critical_path: float = 0.0

    def describe(self) -> str:
        parts = [f"{self.objective} >= {self.value:.6g}"]
        worst = max(self.ranks, key=lambda b: b.span, default=None)
        if worst is not None and worst.relaxed > max(worst.throughput, worst.busy + worst.idle, worst.pacing,
                                                     worst.blocks) + EPS:
            parts.append(f"(rank {worst.rank}: a relaxation keeping it and other ranks one op at a time "
                         f"under their memory; work {worst.busy:.6g})")
        elif worst is not None and worst.windows and worst.blocks > max(worst.throughput, worst.busy + worst.idle,
                                                                         worst.pacing) + EPS:
            parts.append(f"(rank {worst.rank}: memory and the ranks it waits for pace its forwards up to "
                         f"F[{worst.split}] (relaxations on the first microbatches); the microbatches from "
                         f"{worst.split} on need their own start and end round trips; work {worst.busy:.6g})")
        elif worst is not None and worst.blocks > max(worst.throughput, worst.busy + worst.idle, worst.pacing) + EPS:
            parts.append(f"(rank {worst.rank}: memory paces its forwards up to F[{worst.split}], at most "
                         f"{worst.forwards_fit} in flight, round trip {worst.round_trip:.6g}; the microbatches "
                         f"from {worst.split} on need their own start and end round trips; work {worst.busy:.6g})")
        elif worst is not None and worst.pacing > max(worst.throughput, worst.busy + worst.idle) + EPS:
            if worst.last_chunk:
                parts.append(f"(rank {worst.rank}: memory paces the forwards of its last stage, when a "
                             f"microbatch holds all its forward memory; work {worst.busy:.6g})")
            else:
                parts.append(f"(rank {worst.rank}: memory paces its forwards, at most {worst.forwards_fit} "
                             f"in flight, round trip {worst.round_trip:.6g}; work {worst.busy:.6g})")
        elif worst is not None and worst.throughput > worst.busy + worst.idle + EPS:
            parts.append(f"(rank {worst.rank}: the ops it waits for on rank {worst.via} take "
                         f"{worst.throughput:.6g} from its first op to its last, work {worst.busy:.6g})")
        elif worst is not None and worst.idle > 0:
            join = " + " if worst.additive else " or "
            parts.append(f"(rank {worst.rank}: work {worst.busy:.6g} + idle {worst.start_idle:.6g} at the start"
                         f"{join}{worst.end_idle:.6g} at the end, round trip {worst.round_trip:.6g},"
                         f" {worst.forwards_fit} forwards fit)")
        return " ".join(parts)


@dataclass(frozen=True)
class _Shape:
    """What items 2, 3, 5 and 6 need of a rank: its first chunk's F, B (or BW) and W per
    microbatch, and what its other chunks (stages) add to each microbatch (none on a rank with
    one stage)."""

    stage: int
    f: int  # op id of F[s, 0]
    b: int  # op id of B[s, 0] (or BW)
    tf: float
    tb: float
    tw: float
    mf: float  # memory one F allocates
    mw: float  # memory held between B and W
    w: int | None  # op id of W[s, 0]
    extra: float = 0.0  # the other chunks' F and B (or BW) per microbatch: all run before B[s, j]
    rest: float = 0.0  # the other chunks' W per microbatch
    rest_op: float = 0.0  # the longest of those W
    rest_mem: float = math.inf  # the least memory a microbatch holds while one of them waits
    rest_ops: int = 0  # how many there are per microbatch
    entry: float = 0.0  # memory a microbatch holds once F[s, j] starts (mf, but for the last chunk)
    lead: float = 0.0  # least time from the rank's first op to F[s, 0]

    @property
    def work(self) -> float:
        """The rank's work per microbatch."""
        return self.tf + self.tb + self.tw + self.extra + self.rest


def _chunk(p: Program, s: int) -> _Shape | None:
    """The shape of stage ``s`` alone: one F, one B or BW, optionally one W (after a B), and
    memory that F allocates, B frees down to what W frees."""
    by_role: dict[Role, list[str]] = {}
    for k in p.kinds:
        if p.find(k.name, s, 0) is not None:
            by_role.setdefault(k.role, []).append(k.name)
    if Role.USER in by_role or any(len(v) != 1 for v in by_role.values()):
        return None
    fk = by_role.get(Role.F)
    bk = by_role.get(Role.B) or by_role.get(Role.BW)
    if not fk or not bk or (Role.B in by_role and Role.BW in by_role):
        return None
    if Role.W in by_role and Role.B not in by_role:
        return None
    f, b = p.find(fk[0], s, 0), p.find(bk[0], s, 0)
    w = p.find(by_role[Role.W][0], s, 0) if Role.W in by_role else None
    assert f is not None and b is not None
    mw = -w.mem if w is not None else 0.0
    if f.mem <= 0 or mw < -EPS or b.mem > EPS or abs(f.mem + b.mem - mw) > 1e-6 * max(1.0, f.mem):
        return None
    return _Shape(s, f.id, b.id, f.time, b.time, w.time if w is not None else 0.0, f.mem, max(0.0, mw),
                  w.id if w is not None else None, entry=f.mem)


def _rank_shape(p: Program, r: int, fifo_ok: bool) -> tuple[_Shape, _Shape | None] | None:
    """The rank's shape, or None when items 2, 3, 5 and 6 do not apply. With several stages on the
    rank, the first chunk is the stage whose F comes before every other stage's F (of one
    microbatch) and whose B comes after every other stage's B (V shapes, interleaving, any
    placement along one chain of stages); the other chunks' ops count as work, and their pending
    W as memory held (their F memory is left out, which only loosens the bound)."""
    if not fifo_ok:
        return None
    chunks = [_chunk(p, s) for s in p.stages_on(r)]
    if not chunks or any(c is None for c in chunks):
        return None
    shapes = [c for c in chunks if c is not None]
    if len(shapes) == 1:
        return shapes[0], None
    after_f = {c.f: p.longest_from(c.f) for c in shapes}  # paths from each chunk's F[., 0]
    firsts = [c for c in shapes if all(after_f[c.f][o.f] > -math.inf for o in shapes)]
    if len(firsts) != 1:
        return None
    head = firsts[0]
    others = [c for c in shapes if c is not head]
    if any(p.longest_from(o.b)[head.b] == -math.inf for o in others):
        return None
    held = [o for o in others if o.w is not None]
    first = replace(head, extra=sum(o.tf + o.tb for o in others), rest=sum(o.tw for o in held),
                    rest_op=max((o.tw for o in held), default=0.0),
                    rest_mem=min((o.mw for o in held), default=math.inf), rest_ops=len(held))
    # the last chunk's forward: every other forward of the microbatch comes before it and every
    # backward after it, so when it starts the microbatch holds all its chunks' forward memory
    lasts = [c for c in shapes if all(after_f[o.f][c.f] > -math.inf for o in shapes)]
    if len(lasts) != 1 or lasts[0] is head or any(after_f[lasts[0].f][o.b] == -math.inf for o in shapes):
        return first, None
    tail = lasts[0]
    return first, replace(first, f=tail.f, tf=tail.tf, extra=sum(o.tb for o in others),
                          entry=sum(o.mf for o in shapes), lead=after_f[head.f][tail.f])


def _window_work(sh: _Shape, a: int, b: int, others: int, limit: float) -> float:
    """The most work a rank can run between the start of a forward ``F[s, j]`` (its first chunk)
    and the earliest start of ``B[s, j]``, when ``a`` earlier microbatches still wait for ``B`` and
    ``b`` only for ``W`` then, and ``others`` earlier ones are done with the first chunk: that F
    and its other chunks' ops; B, W and the other chunks' ops of the ``a``; W and the other chunks'
    W of the ``b``; and the other chunks' W still pending for the ``others``, as many as the
    memory left over holds."""
    work = sh.tf + sh.extra + sh.rest + a * (sh.tb + sh.tw + sh.extra + sh.rest) + b * (sh.tw + sh.rest)
    if sh.rest_ops and others > 0:
        room = limit - sh.entry - a * sh.mf - b * sh.mw
        if sh.rest_mem <= EPS or not math.isfinite(room):
            return math.inf
        work += min(others * sh.rest_ops, max(0.0, room) / sh.rest_mem) * sh.rest_op
    return work


def _end_work(sh: _Shape, m: int, limit: float) -> float:
    """The most work a rank can do in the window after its last forward starts (item 3)."""
    best = -math.inf
    for a in range(m):
        room = limit - sh.entry - a * sh.mf
        if room < -EPS * max(1.0, abs(limit)):
            break
        rest = m - 1 - a
        top = rest if sh.mw <= 0 or not math.isfinite(room) else min(rest, math.floor(room / sh.mw + EPS))
        for b in ([top] if not sh.rest_ops else range(top + 1)):
            best = max(best, _window_work(sh, a, b, rest - b, limit))
    return best if best > -math.inf else sh.tf + sh.extra + sh.rest


def rank_bound(p: Program, r: int, limit: float, fifo_ok: bool, windows: Windows | None = None) -> RankBound:
    """The span bound of one rank (module docstring, items 1 to 3, 5 and 6; with ``windows``,
    item 7's figures enter items 5 and 6)."""
    busy = sum(o.time for o in p.ops if o.rank == r)
    shapes = _rank_shape(p, r, fifo_ok)
    if shapes is None:
        return RankBound(r, busy)
    sh, last = shapes
    rt = p.longest_from(sh.f)[sh.b]
    if rt == -math.inf or (sh.w is not None and p.longest_from(sh.b)[sh.w] == -math.inf):
        return RankBound(r, busy)  # B not after F, or W not after B: the argument needs both
    m = p.num_microbatches
    k = m if not math.isfinite(limit) else math.floor(limit / sh.mf + EPS)
    start_idle, end_idle, idle = _round_trip_idle(sh, rt, m, limit)
    gaps = dict(windows.gaps) if windows is not None else {}
    spans = dict(windows.spans) if windows is not None else {}
    lb, pace = _pacing(sh, rt, m, limit, gaps)
    pace_m, on_last = pace(m, True), False
    if last is not None:  # several stages: pace the last chunk's forwards as well
        first_pace, last_pace = pace, _pacing(last, p.longest_from(last.f)[last.b], m, limit)[1]

        def pace(n: int, exact: bool) -> float:
            return max(first_pace(n, exact), last.lead + last_pace(n, exact) if n >= 2 else 0.0)
        last_m = last.lead + last_pace(m, True) if m >= 2 else 0.0
        pace_m, on_last = max(pace_m, last_m), last_m > pace_m + EPS
    blocks, split = _blocks(sh, rt, m, limit, lb, pace, pace_m, spans)
    return RankBound(r, busy, rt, min(k, m), start_idle, end_idle, idle, m > k, pacing=pace_m,
                     blocks=blocks, split=split, last_chunk=on_last, relaxed=spans.get(m, 0.0),
                     windows=bool(gaps or spans))


def _round_trip_idle(sh: _Shape, rt: float, n: int, limit: float) -> tuple[float, float, float]:
    """Items 2 and 3 for ``n`` microbatches: (start idle, end idle, the idle they give together)."""
    k = n if not math.isfinite(limit) else math.floor(limit / sh.mf + EPS)
    start_idle = max(0.0, rt - min(k, n) * (sh.tf + sh.extra + sh.rest))
    end_idle = max(0.0, rt - _end_work(sh, n, limit))
    return start_idle, end_idle, start_idle + end_idle if n > k else max(start_idle, end_idle)


BLOCK_SIZES = 128  # item 6 tries last blocks of 1 .. this many microbatches (any subset is valid)


def _blocks(sh: _Shape, rt: float, m: int, limit: float, lb: Sequence[float],
            pace: Callable[[int, bool], float], pace_m: float,
            spans: Mapping[int, float] | None = None) -> tuple[float, int]:
    """Item 6: (the bound on the span of ``m`` microbatches, the first microbatch of the last
    block; (0, 0) when no split beats items 1 to 5 and ``spans[m]``). Last blocks have at most
    :data:`BLOCK_SIZES` microbatches, whose own bounds use item 5's quicker form and ``spans``
    (item 7: bounds on the span of ``n`` microbatches)."""
    spans = spans or {}
    if not lb:
        return 0.0, 0
    work = sh.work

    def alone(n: int, p5: float) -> float:
        return max(n * work + _round_trip_idle(sh, rt, n, limit)[2], p5, spans.get(n, 0.0))

    small = min(m - 1, BLOCK_SIZES)
    best = [0.0] * (small + 1)  # S(n) for the block sizes
    for n in range(1, small + 1):
        best[n] = max([alone(n, pace(n, False))] + [lb[n - size] + best[size] for size in range(1, n)])
    top, split = alone(m, pace_m), 0
    for size in range(1, small + 1):
        v = lb[m - size] + best[size]
        if v > top + EPS * max(1.0, v):
            top, split = v, m - size
    return (top, split) if split else (0.0, 0)


def _pacing(sh: _Shape, rt: float, m: int, limit: float,
            gaps: Mapping[int, float] | None = None) -> tuple[list[float], Callable[[int, bool], float]]:
    """Item 5 for a rank of this shape under ``limit``: ``lb[j]``, the least ``F[j] - F[0]`` (``j <
    m``), and ``span(n, exact)``, a bound on the span of ``n <= m`` microbatches: the least over
    every memory state at ``F[n-1]`` when ``exact``, else a quicker one at most that (the state's
    two parts minimised apart). ``lb`` is empty when the limit does not pace (unlimited, or not
    even one forward fits). ``gaps[k]`` (item 7) bounds ``F[j] - F[j-k]`` for every ``j``
    (microbatches ``j-k .. j`` alone are a schedule of ``k + 1``): ``lb[j] >= lb[j-k] + gaps[k]``."""
    gaps = gaps or {}
    tol = EPS * max(1.0, abs(limit))
    if not math.isfinite(limit) or m < 2:
        return [], lambda n, exact: 0.0
    amax = math.floor((limit - sh.entry + tol) / sh.mf)  # the most earlier forwards waiting for B
    if amax < 0:
        return [], lambda n, exact: 0.0
    has_w = sh.w is not None
    tw = sh.tw if has_w else 0.0
    via_b, via_w = rt + sh.tb, rt + sh.tb + tw

    def bmax(a: int) -> int:
        if not has_w:
            return 0
        if sh.mw <= EPS:
            return m
        return max(0, math.floor((limit - sh.entry - a * sh.mf + tol) / sh.mw))

    lb = [0.0] * m  # least F[j] - F[0] over every schedule

    def need(j: int, a: int, b: int) -> float:
        """Least F[j] - F[0] when ``a`` earlier microbatches wait for B and ``b`` for W at F[j]."""
        work = j * sh.tf + (j - a) * (sh.tb + sh.extra) + (j - a - b) * tw  # ops that start before F[j]
        v = max(lb[j - 1] + sh.tf, work)
        if j - a - 1 >= 0:
            # B[0] came first, and the B and W counted in ``work`` all start after F[0] + RT (until
            # then the rank can run only first-chunk forwards and other chunks' ops)
            v = max(v, lb[j - a - 1] + via_b, rt + (j - a) * sh.tb + (j - a - b) * tw)
        if has_w and j - a - b - 1 >= 0:
            v = max(v, lb[j - a - b - 1] + via_w)
        return v

    for j in range(1, m):
        # each term only shrinks as b grows, so the largest b the limit (and j) allows is the least
        lb[j] = min(need(j, a, min(bmax(a), j - a)) for a in range(min(amax, j) + 1))
        lb[j] = max([lb[j]] + [lb[j - k] + g for k, g in gaps.items() if 1 <= k <= j])

    def tail(j: int, a: int, b: int) -> float:
        """Least time from the start of the last F (``F[j]``) to the end: what is left, and until
        its B can start (RT later) only the work of :func:`_window_work` can run."""
        left = sh.tf + sh.extra + sh.rest + (a + 1) * sh.tb + (a + b + 1) * tw
        return left + max(0.0, rt - _window_work(sh, a, b, j - a - b, limit))

    def span(n: int, exact: bool) -> float:
        if n < 2:
            return 0.0
        j = n - 1
        if exact:
            return min(need(j, a, b) + tail(j, a, b) for a in range(min(amax, j) + 1)
                       for b in range(min(bmax(a), j - a) + 1))
        # need only shrinks with b: its least, and the least tail, apart (on a rank with one
        # stage tail only grows with b, so its least is at b = 0)
        return min(need(j, a, min(bmax(a), j - a))
                   + min(tail(j, a, b) for b in (range(min(bmax(a), j - a) + 1) if sh.rest_ops else (0,)))
                   for a in range(min(amax, j) + 1))

    return lb, span


def _heads_tails_of_rank(p: Program, r: int) -> tuple[list[float], list[float]]:
    """Item 4's ``head`` and ``tail`` of every op relative to rank ``r`` (``-inf``: unrelated)."""
    on = [o.id for o in p.ops if o.rank == r]
    head = list(p.longest_from(*on))
    # the longest path from the start of k to the end of an op of rank r, less k's own time
    reach = p.longest_to(*on)
    tail = [x - p.ops[k].time if x > -math.inf else -math.inf for k, x in enumerate(reach)]
    return head, tail


def _one_machine(items: list[tuple[float, float, float]]) -> float:
    """max over head- and tail-threshold subsets of min head + sum of times + min tail."""
    best = 0.0
    for key in (0, 2):
        ordered = sorted(items, key=lambda it: it[key], reverse=True)
        total, low_h, low_t = 0.0, math.inf, math.inf
        for h, t, q in ordered:  # subsets {head >= H} (key 0) or {tail >= T} (key 2)
            total += t
            low_h, low_t = min(low_h, h), min(low_t, q)
            best = max(best, low_h + total + low_t)
    return best


def throughput_bound(p: Program, r: int) -> tuple[float, int]:
    """Item 4 for rank ``r``: the best bound over the ranks its ops wait for, and that rank."""
    if p.overlap != "sum":
        return 0.0, -1
    head, tail = _heads_tails_of_rank(p, r)
    per_rank: dict[int, list[tuple[float, float, float]]] = {}
    for o in p.ops:
        if head[o.id] > -math.inf and tail[o.id] > -math.inf:
            per_rank.setdefault(o.rank, []).append((head[o.id], o.time, tail[o.id]))
    best, via = 0.0, -1
    for q, items in sorted(per_rank.items()):
        value = _one_machine(items)
        if value > best + EPS:
            best, via = value, q
    return best, via


def lower_bound(p: Program, limits: Sequence[float], objective: str = "span",
                windows: Mapping[int, Windows] | None = None) -> Bound:
    """A lower bound on ``objective`` (``span`` or ``makespan``) for every valid schedule;
    ``windows`` (per rank, from :func:`~.relax.windows`) adds item 7."""
    from schedlang.schedulers.ilp.model import fifo_is_safe

    fifo_ok = fifo_is_safe(p)
    got = windows or {}
    ranks = tuple(replace(b, throughput=tp, via=via)
                  for b in (rank_bound(p, r, limits[r], fifo_ok, got.get(r)) for r in range(p.num_ranks))
                  for tp, via in [throughput_bound(p, b.rank)])
    span = max((b.span for b in ranks), default=0.0)
    if objective == "span":
        return Bound("span", span, ranks)
    head, tail = p.heads(), p.tails()
    cp = max((head[k] + tail[k] for k in range(len(p.ops))), default=0.0)
    best = cp
    for b in ranks:
        on = [o.id for o in p.ops if o.rank == b.rank]
        if on:
            after = min(tail[k] - p.ops[k].time for k in on)
            best = max(best, min(head[k] for k in on) + b.span + after)
    return Bound("makespan", best, ranks, cp)
