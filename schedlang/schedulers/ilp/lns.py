"""The search: one full CP-SAT solve, then large-neighbourhood rounds until the time limit.

A round keeps the per-rank order of every op outside a neighbourhood (they may still move in
time) and lets CP-SAT reorder the ops inside it freely, starting from the incumbent (hints) with
the incumbent's value as the upper bound. Neighbourhoods cycle deterministically through
sliding time windows (the ops whose incumbent start lies in a window) of two widths and through
pairs of adjacent ranks. Every sub-solve has a slice of the deterministic time budget, so the
whole search is reproducible. The full solve's best bound (with the structural bound as
``obj >= bound``) is the proof; rounds only improve the incumbent.

When a whole cycle of neighbourhoods passes without improving the incumbent (on small models a
cycle is a few rounds; on large ones it is longer than the budget), the rest of the budget goes to
a closing full solve whose upper bound is the incumbent: with the tighter bound CP-SAT proves far
sooner, and it may still improve the incumbent. Uniform costs, p = 4, m = 8, limit 2p*M_B: the
first solve, bounded by the warm start's 24.6, does not prove 24.2 optimal in its share; the
closing solve does, and the search ends after 26 of its 60 deterministic seconds (a fresh model
bounded by 24.2 proves it in 1).
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Sequence

from schedlang.schedulers.ilp.apply import orders_from_starts
from schedlang.schedulers.ilp.cpsat import (
    Problem,
    Progress,
    fifo_relabel,
    horizon,
    model_value,
    solve_model,
)
from schedlang.schedulers.ilp.model import build_model
from schedlang.simulate import simulate

Neighbourhood = Callable[[Sequence[int]], set[int]]  # the incumbent's start times -> op ids set free

FULL_SHARE = 0.3  # of the time limit, for the first full solve
ROUND_TIME = 2.0  # deterministic seconds per neighbourhood round (at most)


def search(problem: Problem, hint: list[int], *, time_limit: float, seed: int, workers: int,
           deterministic: bool, lns: bool, shown: Progress,
           deadline: float | None = None) -> tuple[list[int], int, float, int, str, bool]:
    """Returns (best start times, proved bound, deterministic time used, rounds, status of the full
    solve, whether the wall-clock ``deadline`` (a ``time.perf_counter()`` value) cut the search)."""

    def wall_left() -> float | None:
        return None if deadline is None else deadline - time.perf_counter()

    sc = problem.sc
    best = list(hint)
    upper = model_value(problem, best)
    lower = problem.lower
    if upper <= lower:
        return best, lower, 0.0, 0, "OPTIMAL", False

    def seen(obj: float, bnd: float) -> None:
        shown.line("solution", sc.to_time(int(obj)), sc.to_time(max(int(bnd), lower)))

    model = build_model(problem.iprog, sc, objective=problem.objective, upper=upper, lower=lower,
                        horizon=horizon(problem, upper), fifo=problem.fifo, hint=best)
    budget = time_limit * (FULL_SHARE if lns else 1.0)
    status, starts, bound, used = solve_model(model, time_limit=budget, seed=seed, workers=workers,
                                              deterministic=deterministic, on_solution=seen, wall=wall_left())
    wall = wall_left()
    capped = wall is not None and wall <= 0 and status != "OPTIMAL" and used < budget - 0.05
    best, upper = _keep_better(problem, starts, best, upper)
    bound = max(bound, lower)
    if status == "OPTIMAL" or upper <= bound or not lns:
        return best, bound, used, 0, status, capped
    rounds, since = 0, 0  # since: rounds since the incumbent last improved
    cycle = _cycle(problem)
    for hood in itertools.cycle(cycle):
        left = time_limit - used
        if left <= 0.05 or upper <= bound:
            break
        wall = wall_left()
        if wall is not None and wall <= 0:
            capped = True
            break
        if since >= len(cycle):  # a whole cycle found nothing: close with a full solve
            closing = build_model(problem.iprog, sc, objective=problem.objective, upper=upper, lower=bound,
                                  horizon=horizon(problem, upper), fifo=problem.fifo, hint=best)
            st, got, proved, dt = solve_model(closing, time_limit=left, seed=seed, workers=workers,
                                              deterministic=deterministic, on_solution=seen, wall=wall)
            used += dt
            best, upper = _keep_better(problem, got, best, upper)
            bound = max(bound, upper if st == "OPTIMAL" else proved)
            wall = wall_left()
            capped = capped or (wall is not None and wall <= 0 and st != "OPTIMAL" and dt < left - 0.05)
            break
        free = hood(best)
        fixed = _fixed_orders(problem, best, free)
        sub = build_model(problem.iprog, sc, objective=problem.objective, upper=upper, lower=bound,
                          horizon=horizon(problem, upper), fifo=problem.fifo, hint=best, fixed_order=fixed)
        _, got, _, dt = solve_model(sub, time_limit=min(ROUND_TIME, left), seed=seed + rounds, workers=1,
                                    deterministic=deterministic, wall=wall)
        used += dt
        rounds += 1
        previous = upper
        best, upper = _keep_better(problem, got, best, upper)
        if upper < previous:
            shown.line(f"lns#{rounds}", sc.to_time(upper), sc.to_time(bound))
        since = 0 if upper < previous else since + 1
    return best, bound, used, rounds, status, capped


def _keep_better(problem: Problem, got: list[int] | None, best: list[int], upper: int) -> tuple[list[int], int]:
    """The solution ``got`` (compressed) and its value if it is no worse than ``upper``, else the
    incumbent."""
    if got is None:
        return best, upper
    got = compress(problem, got)
    val = model_value(problem, got)
    return (got, val) if val <= upper else (best, upper)


def compress(problem: Problem, starts: Sequence[int]) -> list[int]:
    """Start times of the same per-rank orders run as early as possible (the simulator's rule,
    at the model's integer times), in FIFO form: never later than ``starts`` op by op, the same
    memory profile, so still a solution of the model; often a better one."""
    orders = orders_from_starts(problem.iprog, starts, problem.topo)
    asap = simulate(problem.iprog.with_orders(orders)).start
    out = fifo_relabel(problem.iprog, asap) if problem.fifo else [int(round(x)) for x in asap]
    return out if model_value_le(problem, out, starts) else list(starts)


def model_value_le(problem: Problem, a: Sequence[int], b: Sequence[int]) -> bool:
    """True if start times ``a`` are no worse than ``b`` (in model units)."""
    return bool(model_value(problem, a) <= model_value(problem, b))


def _fixed_orders(problem: Problem, starts: Sequence[int], free: set[int]) -> dict[int, list[int]]:
    p = problem.iprog
    pos = {k: i for i, k in enumerate(problem.topo)}
    out: dict[int, list[int]] = {}
    for r in range(p.num_ranks):
        chain = [o.id for o in p.ops if o.rank == r and o.id not in free]
        chain.sort(key=lambda k: (starts[k], pos[k]))
        out[r] = chain
    return out


def _cycle(problem: Problem) -> list[Neighbourhood]:
    """One cycle of neighbourhood choosers (incumbent -> set of free op ids), which the search
    repeats: time windows of two widths, then pairs of ranks."""
    p = problem.iprog
    n = len(p.ops)
    R = p.num_ranks
    widths = [max(8, min(n, 160)), max(8, min(n, 80))]

    def window(lo_frac: float, size: int) -> Neighbourhood:
        def pick(starts: Sequence[int]) -> set[int]:
            order = sorted(range(n), key=lambda k: (starts[k], k))
            lo = int(lo_frac * max(0, n - size))
            return set(order[lo:lo + size])
        return pick

    def ranks(r0: int, cnt: int) -> Neighbourhood:
        def pick(_starts: Sequence[int]) -> set[int]:
            chosen = {(r0 + i) % R for i in range(cnt)}
            return {o.id for o in p.ops if o.rank in chosen}
        return pick

    cycle: list[Neighbourhood] = []
    for size in widths:
        steps = max(1, 2 * (n // size))
        cycle += [window(i / steps, size) for i in range(steps + 1)]
    if R > 2:
        cycle += [ranks(r, 2) for r in range(R - 1)]
    return cycle
