"""The search: one full CP-SAT solve, then large-neighbourhood rounds until the time limit.

A round keeps the per-rank order of every op outside a neighbourhood (they may still move in
time) and lets CP-SAT reorder the ops inside it freely, starting from the incumbent (hints) with
the incumbent's value as the upper bound. Neighbourhoods cycle deterministically through
sliding time windows (the ops whose incumbent start lies in a window) of two widths and through
pairs of adjacent ranks. Every sub-solve has a slice of what is left of the run's budget
(wall-clock, or deterministic time: then the whole search is reproducible). The full solve's best
bound (with the structural bound as ``obj >= bound``) is the proof; rounds only improve the
incumbent.

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
from collections.abc import Callable, Sequence

from schedlang.schedulers.ilp.apply import orders_from_starts
from schedlang.schedulers.ilp.cpsat import (
    Budget,
    Problem,
    Progress,
    SolveLimit,
    fifo_relabel,
    horizon,
    model_value,
    solve_model,
)
from schedlang.schedulers.ilp.model import IlpModel, build_model, restricted
from schedlang.simulate import simulate

Neighbourhood = Callable[[Sequence[int]], set[int]]  # the incumbent's start times -> op ids set free

FULL_SHARE = 0.3  # of what is left of the budget, for the first full solve
ROUND_TIME = 2.0  # seconds (deterministic or wall, the budget's unit) per neighbourhood round (at most)


def search(problem: Problem, hint: list[int], *, budget: Budget, seed: int, workers: int, lns: bool,
           shown: Progress) -> tuple[list[int], int, int, str]:
    """Returns (best start times, proved bound, rounds, status of the full solve). Every model
    build and solve happens under ``budget`` (see :class:`~.cpsat.Budget`: wall-clock or
    deterministic); its phases record the model building (``model``) and the solving
    (``search``)."""
    sc = problem.sc
    best = list(hint)
    upper = model_value(problem, best)
    lower = problem.lower
    if upper <= lower:
        return best, lower, 0, "OPTIMAL"
    if budget.left() <= 0.05:  # nothing left to search with: do not build the model either
        return best, lower, 0, "UNKNOWN"

    def seen(obj: float, bnd: float) -> None:
        shown.line("solution", sc.to_time(int(obj)), sc.to_time(max(int(bnd), lower)))

    def solve(model: IlpModel, limit: SolveLimit, seed: int, workers: int,
              on_solution: Callable[[float, float], None] | None = None) -> tuple[str, list[int] | None, int]:
        with budget.phase("search"):
            status, got, proved, dt = solve_model(model, limit=limit, seed=seed, workers=workers,
                                                  on_solution=on_solution)
        budget.charge(dt)
        return status, got, proved

    shown.line("model")
    with budget.phase("model"):
        # built once; every solve copies it and adds its own bounds, fixed orders and hint
        base = build_model(problem.iprog, sc, objective=problem.objective, upper=upper, lower=lower,
                           horizon=horizon(problem, upper), fifo=problem.fifo)
        model = restricted(base, upper=upper, lower=lower, hint=best)
    shown.line("search")
    limit = budget.solve_limit(budget.left() * FULL_SHARE if lns else None)
    status, starts, bound = solve(model, limit, seed, workers, seen)
    del model  # one copy in memory at a time
    with budget.phase("search"):
        best, upper = _keep_better(problem, starts, best, upper)
    bound = max(bound, lower)
    if status == "OPTIMAL" or upper <= bound or not lns:
        return best, bound, 0, status
    rounds, since = 0, 0  # since: rounds since the incumbent last improved
    cycle = _cycle(problem)
    for hood in itertools.cycle(cycle):
        if budget.left() <= 0.05 or upper <= bound:
            break
        if since >= len(cycle):  # a whole cycle found nothing: close with a full solve
            with budget.phase("model"):
                closing = restricted(base, upper=upper, lower=bound, hint=best)
            st, got, proved = solve(closing, budget.solve_limit(), seed, workers, seen)
            with budget.phase("search"):
                best, upper = _keep_better(problem, got, best, upper)
            bound = max(bound, upper if st == "OPTIMAL" else proved)
            break
        with budget.phase("model"):
            free = hood(best)
            fixed = _fixed_orders(problem, best, free)
            sub = restricted(base, upper=upper, lower=bound, hint=best, fixed_order=fixed)
        _, got, _ = solve(sub, budget.solve_limit(ROUND_TIME), seed + rounds, 1)
        del sub
        rounds += 1
        previous = upper
        with budget.phase("search"):
            best, upper = _keep_better(problem, got, best, upper)
        if upper < previous:
            shown.line(f"lns#{rounds}", sc.to_time(upper), sc.to_time(bound))
        since = 0 if upper < previous else since + 1
    return best, bound, rounds, status


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
