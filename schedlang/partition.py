"""Cutting a model's layers into pipeline stages from a per-layer profile.

A partition of ``L`` layers into ``S`` stages is given by its cut points: ``S - 1`` increasing
indices where stages 1, 2, ... begin (stage ``s`` holds layers ``bounds[s]:bounds[s + 1]`` with
``bounds = [0, *cuts, L]``). Every stage holds at least one layer. With ``v`` chunks per rank
(interleaved or V placements) the ``S = v * p`` stages are still cut in stage order; the
placement only decides which rank each stage's memory counts against.

- :func:`stage_costs` adds per-layer figures (``tf``, ``tb``, ``tw``, ``mem_f``, ``mem_w``) into
  per-stage ones. With the autograd split the first stage has no input gradient, so its B does
  nothing and its W runs the whole backward (as :mod:`schedlang.runtime` executes it): its
  ``tb`` moves into ``tw``.
- :func:`min_max_cuts` is PipeDream's objective (Narayanan et al., SOSP 2019): a dynamic program
  over prefixes that minimises the slowest stage's ``tf + tb + tw``, subject to a memory limit
  per rank. The memory of a stage is ``factor[s] * sum(mem_f)`` (``factor``: how many
  microbatches' activations the schedule keeps on that stage at once, e.g. ``p - s`` for 1F1B).
  With one stage per rank the limit is exact; with several stages per rank (``v > 1``) each
  stage gets an equal share of its rank's limit, which is sufficient but may reject a partition
  that fits.
- :func:`best_cuts` minimises any cost of the cuts (the simulated step time of a given
  schedule, say) by exhaustive search when the partitions are few, else by moving one cut at a
  time from a starting partition while the cost improves (a local optimum).
- :func:`params_cuts` balances parameter counts, the split ``schedlang run`` uses by default.
- :func:`parse_cuts` reads ``--partition 2,5,7``.

No torch here: the figures are plain numbers (ms and bytes, or any consistent units).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from schedlang.source import SchedlangError, Span, cli_source

__all__ = ["COST_NAMES", "best_cuts", "bounds_of", "count_partitions", "min_max_cuts", "params_cuts",
           "parse_cuts", "stage_costs", "stage_times"]

COST_NAMES = ("tf", "tb", "tw", "mem_f", "mem_w")


def bounds_of(cuts: Sequence[int], num_layers: int) -> list[int]:
    """``[0, *cuts, num_layers]``, checked: strictly increasing, so every stage is non-empty."""
    bounds = [0, *cuts, num_layers]
    if any(a >= b for a, b in itertools.pairwise(bounds)):
        raise ValueError(f"cut points {list(cuts)} do not give non-empty stages of {num_layers} layers")
    return bounds


def count_partitions(num_layers: int, num_stages: int) -> int:
    """How many ways ``num_layers`` layers split into ``num_stages`` non-empty contiguous stages."""
    if not 1 <= num_stages <= num_layers:
        return 0
    return math.comb(num_layers - 1, num_stages - 1)


def stage_costs(layers: Sequence[Mapping[str, Any]], cuts: Sequence[int], *,
                first_fused: bool = False) -> list[dict[str, float]]:
    """Per-stage ``tf, tb, tw, mem_f, mem_w``: the sums over each stage's layers.

    ``first_fused``: the first stage's B does nothing and its W is the whole backward (the
    autograd split of the runtime, which gives the first stage no input gradient).
    """
    bounds = bounds_of(cuts, len(layers))
    out = []
    for s, (a, b) in enumerate(itertools.pairwise(bounds)):
        row = {name: float(sum(float(layers[i][name]) for i in range(a, b))) for name in COST_NAMES}
        if first_fused and s == 0:
            row["tw"] += row["tb"]
            row["tb"] = 0.0
        out.append(row)
    return out


def stage_times(layers: Sequence[Mapping[str, Any]], cuts: Sequence[int]) -> list[float]:
    """Each stage's ``tf + tb + tw``."""
    return [r["tf"] + r["tb"] + r["tw"] for r in stage_costs(layers, cuts)]


def min_max_cuts(times: Sequence[float], num_stages: int, *, mem: Sequence[float] | None = None,
                 mem_limit: float | Sequence[float] = math.inf, factor: Sequence[float] | None = None,
                 placement: Sequence[int] | None = None) -> tuple[list[int], float]:
    """Cut points minimising the slowest stage's time, and that time (PipeDream's objective).

    ``times[i]`` is layer ``i``'s time per microbatch and ``mem[i]`` its activation memory; a
    stage ``s`` on rank ``placement[s]`` (default: rank ``s``) must keep ``factor[s] * sum(mem)``
    (default factor 1) within its share of ``mem_limit`` (a number, or one per rank): all of it
    with one stage per rank, ``1/k`` of it with ``k`` stages on the rank. Ties go to the
    partition with the earliest cuts. Raises ``ValueError`` when no partition fits.
    """
    n = len(times)
    if not 1 <= num_stages <= n:
        raise ValueError(f"cannot cut {n} layers into {num_stages} non-empty stages")
    place = list(placement) if placement is not None else list(range(num_stages))
    if len(place) != num_stages:
        raise ValueError(f"placement names {len(place)} stages, not {num_stages}")
    per_rank = {r: place.count(r) for r in set(place)}
    limits = [mem_limit if isinstance(mem_limit, (int, float)) else mem_limit[place[s]]
              for s in range(num_stages)]
    share = [float(limits[s]) / per_rank[place[s]] for s in range(num_stages)]
    fac = list(factor) if factor is not None else [1.0] * num_stages
    mems = list(mem) if mem is not None else [0.0] * n
    pre_t = list(itertools.accumulate(times, initial=0.0))
    pre_m = list(itertools.accumulate(mems, initial=0.0))
    inf = math.inf
    # best[s][i]: the least slowest-stage time for layers [0, i) in stages [0, s]; arg: its last cut
    best = [[inf] * (n + 1) for _ in range(num_stages)]
    arg = [[-1] * (n + 1) for _ in range(num_stages)]
    for i in range(1, n + 1):
        if fac[0] * (pre_m[i] - pre_m[0]) <= share[0]:
            best[0][i] = pre_t[i]
    for s in range(1, num_stages):
        for i in range(s + 1, n + 1):
            for j in range(s, i):  # stage s holds layers [j, i)
                if best[s - 1][j] == inf or fac[s] * (pre_m[i] - pre_m[j]) > share[s]:
                    continue
                value = max(best[s - 1][j], pre_t[i] - pre_t[j])
                if value < best[s][i]:
                    best[s][i], arg[s][i] = value, j
    if best[-1][n] == inf:
        raise ValueError(f"no cut of {n} layers into {num_stages} stages fits the memory limit")
    cuts, i = [], n
    for s in range(num_stages - 1, 0, -1):
        i = arg[s][i]
        cuts.append(i)
    return sorted(cuts), best[-1][n]


def best_cuts(cost: Callable[[list[int]], float], num_layers: int, num_stages: int, *,
              start: Sequence[int] | None = None, exhaustive_up_to: int = 500,
              allowed: Callable[[list[int]], bool] | None = None) -> tuple[list[int], float, str]:
    """Cut points minimising ``cost(cuts)``, the cost, and how they were found.

    All partitions are tried when there are at most ``exhaustive_up_to`` of them (``"exhaustive"``);
    otherwise, from ``start`` (default: the most even split), one cut moves by one layer at a time
    to the best neighbour while the cost falls (``"local"``: a local optimum). ``allowed`` filters
    partitions (a memory limit, say). Ties keep the first found. Raises ``ValueError`` when
    nothing is allowed.
    """
    ok = allowed or (lambda _c: True)
    if count_partitions(num_layers, num_stages) == 0:
        raise ValueError(f"cannot cut {num_layers} layers into {num_stages} non-empty stages")
    if count_partitions(num_layers, num_stages) <= exhaustive_up_to:
        found: tuple[list[int], float] | None = None
        for combo in itertools.combinations(range(1, num_layers), num_stages - 1):
            cuts = list(combo)
            if not ok(cuts):
                continue
            c = cost(cuts)
            if found is None or c < found[1]:
                found = (cuts, c)
        if found is None:
            raise ValueError("no partition is allowed")
        return found[0], found[1], "exhaustive"
    cur = list(start) if start is not None else [round(k * num_layers / num_stages) for k in range(1, num_stages)]
    bounds_of(cur, num_layers)
    if not ok(cur):
        raise ValueError(f"the starting cut points {cur} are not allowed")
    cur_cost = cost(cur)
    while True:
        step: tuple[list[int], float] | None = None
        for k in range(len(cur)):
            for d in (-1, 1):
                cand = list(cur)
                cand[k] += d
                if not all(a < b for a, b in itertools.pairwise([0, *cand, num_layers])) or not ok(cand):
                    continue
                c = cost(cand)
                if c < cur_cost and (step is None or c < step[1]):
                    step = (cand, c)
        if step is None:
            return cur, cur_cost, "local"
        cur, cur_cost = step


def params_cuts(counts: Sequence[int], num_stages: int) -> list[int]:
    """Cut points balancing parameter counts (each stage's sum near ``total * k / num_stages``)."""
    if not 1 <= num_stages <= len(counts):
        raise ValueError(f"cannot cut {len(counts)} layers into {num_stages} non-empty stages")
    prefix = list(itertools.accumulate((max(c, 1) for c in counts), initial=0))
    cuts: list[int] = []
    for k in range(1, num_stages):
        lo = (cuts[-1] if cuts else 0) + 1
        hi = len(counts) - (num_stages - k)
        target = prefix[-1] * k / num_stages
        cuts.append(min(range(lo, hi + 1), key=lambda i: abs(prefix[i] - target)))
    return cuts


def parse_cuts(text: str, num_layers: int, num_stages: int, what: str = "--partition") -> list[int]:
    """``2,5,7``: ``num_stages - 1`` increasing cut points in ``1..num_layers-1``; a located error if not."""
    src = cli_source(text, f"<{what}>")
    parts = [p.strip() for p in text.split(",")] if text.strip() else []
    cuts = []
    col = 1
    for part in text.split(",") if parts else []:
        span = Span(src, 1, col, 1, col + max(1, len(part)))
        if not part.strip().isdigit():
            raise SchedlangError(f"{what}: expected auto, step, params or comma-separated cut points, got {part.strip()!r}", span)
        cuts.append(int(part))
        col += len(part) + 1
    if len(cuts) != num_stages - 1:
        raise SchedlangError(f"{what}: {num_stages} stages need {num_stages - 1} cut points, got {len(cuts)}",
                             Span(src, 1, 1))
    try:
        bounds_of(cuts, num_layers)
    except ValueError:
        raise SchedlangError(f"{what}: cut points must increase strictly within 1..{num_layers - 1} "
                             f"(the model has {num_layers} layers)", Span(src, 1, 1)) from None
    return cuts
