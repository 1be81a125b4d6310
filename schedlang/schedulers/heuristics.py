"""Fixed-pattern schedules as generic Python schedulers: ``gpipe``, ``1f1b``, ``zb-h1``, ``zb-h2``,
``looped-bfs``, ``interleaved-1f1b``, ``interleaved-zb``.

Each works from the program itself (its ops, their roles and the placement), not from a
hard-wired shape, so ``--scheduler 1f1b`` can schedule any compatible program: user kinds named
anything, as long as the roles are F and BW (fused backward) or F, B and W (split backward).
They are the warm starts of the optimizer. Where the standard library has the same schedule in
the DSL (``std:gpipe``, ``std:looped-bfs``, ``std:1f1b``, ``std:zb-h1``, ``std:zb-h2``,
``std:interleaved-1f1b``, ``std:interleaved-zb``), both give the same orders (tests/test_library_diff.py checks it).

Orders are built as lists of (kind, stage, microbatch) items; an item whose op does not exist
(outside the shape, or excluded by a ``where``) is skipped, like ``?`` in the DSL.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass

from schedlang.ir import Orders, Program, Role, Value
from schedlang.schedulers.base import Scheduler
from schedlang.source import SchedlangError

Item = tuple[str, int, int]  # (kind, stage, microbatch)


@dataclass(frozen=True)
class Kinds:
    """The op kinds of a program by role: ``backward`` is ``(BW,)`` or ``(B, W)``."""

    f: str
    backward: tuple[str, ...]
    b: str | None  # the split kinds, when the program has them
    w: str | None


def kinds_of(program: Program) -> Kinds | None:
    """The F / backward kinds of a program, or None when its roles do not fit these patterns
    (a USER kind, several kinds of one role, or both a fused and a split backward)."""
    by_role: dict[Role, list[str]] = {}
    for k in program.kinds:
        by_role.setdefault(k.role, []).append(k.name)
    if Role.USER in by_role or any(len(v) != 1 for v in by_role.values()) or Role.F not in by_role:
        return None
    f = by_role[Role.F][0]
    if Role.BW in by_role and Role.B not in by_role and Role.W not in by_role:
        return Kinds(f, (by_role[Role.BW][0],), None, None)
    if Role.B in by_role and Role.W in by_role and Role.BW not in by_role:
        b, w = by_role[Role.B][0], by_role[Role.W][0]
        return Kinds(f, (b, w), b, w)
    return None


def chain_placement(program: Program) -> bool:
    """One stage per rank (any permutation of ranks)."""
    return program.num_stages == program.num_ranks


def looped_placement(program: Program) -> bool:
    """Stage s on rank s % p with the same number of stages on every rank (Megatron's layout)."""
    p = program.num_ranks
    return program.num_stages % p == 0 and all(r == s % p for s, r in enumerate(program.placement))


def to_orders(program: Program, per_rank: Sequence[Sequence[Item]], origin: str) -> Orders:
    """Turn per-rank item lists into :class:`Orders`, skipping items with no op."""
    index = program.op_index()
    ranks = []
    for items in per_rank:
        ranks.append(tuple((index[it],) for it in items if it in index))
    return Orders(tuple(ranks), origin=origin)


def _require(program: Program, kinds: Kinds | None, ok: bool, name: str, need: str) -> Kinds:
    if kinds is None or not ok:
        raise SchedlangError(f"scheduler '{name}' needs {need}; '{program.name}' has "
                             f"{program.num_stages} stage(s) on {program.num_ranks} rank(s), placement "
                             f"{list(program.placement)}, kinds "
                             f"{', '.join(f'{k.name}:{k.role.value}' for k in program.kinds)}", program.schedule_span)
    return kinds


# ------------------------------------------------------------------ gpipe and looped BFS


def gpipe(program: Program, args: Mapping[str, Value]) -> Orders:
    """Fill-drain: every rank runs all its forwards (stage by stage, ascending; microbatches in
    order), then all its backwards (stages descending, microbatches in order). With several stages
    per rank it is a breadth-first order; :func:`looped_bfs` is torch's variant of it."""
    kinds = _require(program, kinds_of(program), True, "gpipe", "F and BW (or F, B, W) kinds")
    M = program.num_microbatches
    per_rank = []
    for r in range(program.num_ranks):
        stages = program.stages_on(r)
        items: list[Item] = [(kinds.f, s, i) for s in stages for i in range(M)]
        items += [(k, s, i) for s in reversed(stages) for i in range(M) for k in kinds.backward]
        per_rank.append(items)
    return to_orders(program, per_rank, "gpipe")


def looped_bfs(program: Program, args: Mapping[str, Value]) -> Orders:
    """Looped BFS as torch's ScheduleLoopedBFS runs it (placement s % p): all forwards chunk by
    chunk (microbatches in order), then the backwards chunk by chunk in reverse, each chunk's
    microbatches in reverse order (m-1 ... 0)."""
    kinds = _require(program, kinds_of(program), looped_placement(program), "looped-bfs",
                     "stage s on rank s % p (place s => s % p) with v stages on every rank")
    M = program.num_microbatches
    per_rank = []
    for r in range(program.num_ranks):
        stages = program.stages_on(r)
        items: list[Item] = [(kinds.f, s, i) for s in stages for i in range(M)]
        items += [(k, s, i) for s in reversed(stages) for i in reversed(range(M)) for k in kinds.backward]
        per_rank.append(items)
    return to_orders(program, per_rank, "looped-bfs")


# ------------------------------------------------------------------ 1F1B


def one_f_one_b(program: Program, args: Mapping[str, Value]) -> Orders:
    """1F1B (PipeDream-flush): the stage s rank runs S-1-s warm-up forwards, then one forward and
    one backward in turn (B then W together when the backward is split), then the cool-down."""
    kinds = _require(program, kinds_of(program), chain_placement(program), "1f1b", "one stage per rank")
    S, M = program.num_stages, program.num_microbatches
    per_rank: list[list[Item]] = [[] for _ in range(program.num_ranks)]
    for s in range(S):
        warm = min(S - 1 - s, M)
        items: list[Item] = [(kinds.f, s, i) for i in range(warm)]
        for i in range(M - warm):
            items.append((kinds.f, s, i + warm))
            items += [(k, s, i) for k in kinds.backward]
        items += [(k, s, i) for i in range(M - warm, M) for k in kinds.backward]
        per_rank[program.placement[s]] = items
    return to_orders(program, per_rank, "1f1b")


# ------------------------------------------------------------------ ZB-H1 / ZB-H2


def zb_steps(f: str, b: str, w: str, stage: int, M: int, lag_b: int, lag_w: int) -> Iterator[Item]:
    """The ZB-H rule: at step x issue F(x), B(x - lag_b), W(x - lag_w) (Qi et al., ICLR 2024, the Zero Bubble paper)."""
    for x in range(M + lag_w):
        yield (f, stage, x)
        yield (b, stage, x - lag_b)
        yield (w, stage, x - lag_w)


def _zb_h(program: Program, name: str, factor: int) -> Orders:
    kinds = _require(program, kinds_of(program), chain_placement(program), name,
                     "one stage per rank and split B / W kinds")
    if kinds.b is None or kinds.w is None:
        _require(program, None, False, name, "split B / W kinds (import std:fbw)")
    assert kinds.b is not None and kinds.w is not None
    S, M = program.num_stages, program.num_microbatches
    per_rank: list[list[Item]] = [[] for _ in range(program.num_ranks)]
    for s in range(S):
        per_rank[program.placement[s]] = list(
            zb_steps(kinds.f, kinds.b, kinds.w, s, M, factor * (S - 1 - s), factor * (S - 1)))
    return to_orders(program, per_rank, name)


def zb_h1(program: Program, args: Mapping[str, Value]) -> Orders:
    """ZB-H1: L_B = S-1-s, L_W = S-1 (peak p*M_B, bubble (p-1)(T_F+T_B-T_W))."""
    return _zb_h(program, "zb-h1", 1)


def zb_h2(program: Program, args: Mapping[str, Value]) -> Orders:
    """ZB-H2: L_B = 2(S-1-s), L_W = 2(S-1) (peak (2p-1)*M_B, bubble (p-1)(T_F+T_B-2T_W))."""
    return _zb_h(program, "zb-h2", 2)


# ------------------------------------------------------------------ interleaved 1F1B


def interleaved_group(p: int, M: int) -> int:
    """Microbatches per group: M split into M // p equal groups when that divides M (torch's
    ScheduleInterleaved1F1B, Megatron's microbatch groups), else p (with holes)."""
    rounds = max(1, M // p)
    return M // rounds if M >= p and M % rounds == 0 else p


def _interleaved_indices(p: int, v: int, g: int, r: int) -> tuple[Callable[[int], tuple[int, int]],
                                                                  Callable[[int], tuple[int, int]]]:
    """Rank r's k-th forward and k-th backward of an interleaved order in groups of g
    microbatches, as (stage, microbatch): forwards run the chunks 0..v-1 in turn for each group,
    backwards the chunks v-1..0."""

    def fwd(k: int) -> tuple[int, int]:
        return (k % (g * v) // g) * p + r, k // (g * v) * g + k % g

    def bwd(k: int) -> tuple[int, int]:
        return (v - 1 - k % (g * v) // g) * p + r, k // (g * v) * g + k % g

    return fwd, bwd


def interleaved_items(f: str, backward: Sequence[str], p: int, v: int, M: int, r: int) -> list[Item]:
    """Megatron's interleaved order on rank r (stage of chunk c = c*p + r), in groups of g
    microbatches, M rounded up to a multiple of g (missing microbatches are dropped later);
    v == 1 gives 1F1B."""
    g = interleaved_group(p, M)
    mp = (M + g - 1) // g * g
    total = mp * v
    warm = min(p - 1 - r, M) if v == 1 else min(total, 2 * (p - 1 - r) + (v - 1) * g)

    fwd, bwd = _interleaved_indices(p, v, g, r)

    items: list[Item] = []
    for k in range(total + warm):
        if k < total:
            items.append((f, *fwd(k)))
        if k >= warm:
            s, i = bwd(k - warm)
            items += [(kind, s, i) for kind in backward]
    return items


def interleaved(program: Program, args: Mapping[str, Value]) -> Orders:
    """Interleaved 1F1B (Megatron virtual stages, placement s % p); any m (see std:interleaved-1f1b)."""
    kinds = _require(program, kinds_of(program), looped_placement(program), "interleaved-1f1b",
                     "stage s on rank s % p (place s => s % p) with v stages on every rank")
    p, M = program.num_ranks, program.num_microbatches
    v = program.num_stages // p
    per_rank = [interleaved_items(kinds.f, kinds.backward, p, v, M, r) for r in range(p)]
    return to_orders(program, per_rank, "interleaved-1f1b")


def interleaved_zb_items(f: str, b: str, w: str, p: int, v: int, M: int, r: int) -> list[Item]:
    """torch's ScheduleInterleavedZeroBubble order on rank r: the interleaved groups of
    :func:`interleaved_items` with (v-1)g + p-1-r warm-up forwards, each backward split into B
    and W, and the W of backward number j issued right after backward j + r (the first r
    backwards run as in 1F1B, without their W), the remaining Ws at the end."""
    g = interleaved_group(p, M)
    total = (M + g - 1) // g * g * v
    warm = min(total, (v - 1) * g + p - 1 - r)

    fwd, bwd = _interleaved_indices(p, v, g, r)

    items: list[Item] = []
    for k in range(total + warm):
        if k < total:
            items.append((f, *fwd(k)))
        j = k - warm
        if j >= 0:
            items.append((b, *bwd(j)))
            if j >= r:
                items.append((w, *bwd(j - r)))
    items += [(w, *bwd(j)) for j in range(max(0, total - r), total)]
    return items


def interleaved_zb(program: Program, args: Mapping[str, Value]) -> Orders:
    """torch's interleaved zero bubble (placement s % p, split B / W); any m (see
    std:interleaved-zb)."""
    kinds = _require(program, kinds_of(program), looped_placement(program), "interleaved-zb",
                     "stage s on rank s % p (place s => s % p) with v stages on every rank")
    if kinds.b is None or kinds.w is None:
        _require(program, None, False, "interleaved-zb", "split B / W kinds (import std:fbw)")
    assert kinds.b is not None and kinds.w is not None
    p, M = program.num_ranks, program.num_microbatches
    v = program.num_stages // p
    per_rank = [interleaved_zb_items(kinds.f, kinds.b, kinds.w, p, v, M, r) for r in range(p)]
    return to_orders(program, per_rank, "interleaved-zb")


# ------------------------------------------------------------------ registration


def fits_memory(program: Program, orders: Orders) -> bool:
    """Whether ``orders`` keep every rank within the program's memory limit."""
    if program.mem_limit is None:
        return True
    for r, slots in enumerate(orders.ranks):
        level = 0.0
        for slot in slots:
            level += sum(program.ops[k].mem for k in slot)
            if level > program.mem_limit[r] + 1e-9 * max(1.0, abs(program.mem_limit[r])):
                return False
    return True


def _applies(pred: Callable[[Program], bool], fn: Callable[[Program, Mapping[str, Value]], Orders],
             split: bool = False) -> Callable[[Program], bool]:
    """Shape and kinds fit, and (under a memory limit) the fixed order stays within it."""

    def applies(program: Program) -> bool:
        k = kinds_of(program)
        if k is None or not pred(program) or (split and k.b is None):
            return False
        return fits_memory(program, fn(program, {}))

    return applies


SCHEDULERS = [
    Scheduler("gpipe", "GPipe fill-drain: all forwards, then all backwards",
              gpipe, warm_start=True, applies=_applies(lambda _p: True, gpipe)),
    Scheduler("looped-bfs", "torch's looped BFS: forwards chunk by chunk, backwards reversed (placement s % p)",
              looped_bfs, warm_start=True, applies=_applies(looped_placement, looped_bfs)),
    Scheduler("1f1b", "1F1B / PipeDream-flush: S-1-s warm-up forwards, then F and B(+W) in turn",
              one_f_one_b, warm_start=True, applies=_applies(chain_placement, one_f_one_b)),
    Scheduler("zb-h1", "Zero Bubble ZB-H1: 1F1B with W delayed by p-1 steps (peak p*M_B)",
              zb_h1, warm_start=True, applies=_applies(chain_placement, zb_h1, split=True)),
    Scheduler("zb-h2", "Zero Bubble ZB-H2: B delayed 2(p-1-r), W 2(p-1) steps (peak (2p-1)*M_B)",
              zb_h2, warm_start=True, applies=_applies(chain_placement, zb_h2, split=True)),
    Scheduler("interleaved-1f1b", "Megatron interleaved 1F1B over v stages per rank (placement s % p)",
              interleaved, warm_start=True, applies=_applies(looped_placement, interleaved)),
    Scheduler("interleaved-zb", "torch's interleaved zero bubble: interleaved 1F1B with B / W split, W lagging r",
              interleaved_zb, warm_start=True, applies=_applies(looped_placement, interleaved_zb, split=True)),
]
