"""The partitioner: exact against brute force on small cases, and better than a parameter split."""

from __future__ import annotations

import itertools
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schedlang import api
from schedlang import partition as P
from schedlang.source import SchedlangError


def _all_cuts(n: int, k: int) -> list[list[int]]:
    return [list(c) for c in itertools.combinations(range(1, n), k - 1)]


def _brute_min_max(times: list[float], k: int, mem: list[float], share: list[float],
                   factor: list[float]) -> float:
    best = math.inf
    for cuts in _all_cuts(len(times), k):
        b = [0, *cuts, len(times)]
        parts = list(itertools.pairwise(b))
        if any(factor[s] * sum(mem[i:j]) > share[s] for s, (i, j) in enumerate(parts)):
            continue
        best = min(best, max(sum(times[i:j]) for i, j in parts))
    return best


layer_times = st.lists(st.integers(1, 20).map(float), min_size=1, max_size=8)


@settings(max_examples=150, deadline=None)
@given(layer_times, st.data())
def test_min_max_matches_brute_force_with_a_memory_limit(times: list[float], data: st.DataObject) -> None:
    n = len(times)
    k = data.draw(st.integers(1, n))
    mem = data.draw(st.lists(st.integers(0, 5).map(float), min_size=n, max_size=n))
    factor = [float(k - s) for s in range(k)]  # 1F1B keeps p - s microbatches on stage s
    limit = data.draw(st.sampled_from([math.inf, 10.0, 20.0, 40.0]))
    expected = _brute_min_max(times, k, mem, [limit] * k, factor)
    if expected == math.inf:
        with pytest.raises(ValueError, match="fits the memory limit"):
            P.min_max_cuts(times, k, mem=mem, mem_limit=limit, factor=factor)
        return
    cuts, value = P.min_max_cuts(times, k, mem=mem, mem_limit=limit, factor=factor)
    assert value == expected
    assert max(P.stage_times([{"tf": t, "tb": 0, "tw": 0, "mem_f": 0, "mem_w": 0} for t in times], cuts)) == value
    bounds = P.bounds_of(cuts, n)
    assert all(factor[s] * sum(mem[i:j]) <= limit for s, (i, j) in enumerate(itertools.pairwise(bounds)))


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(1, 20).map(float), min_size=4, max_size=9), st.integers(2, 3), st.data())
def test_several_stages_per_rank_share_the_rank_limit(times: list[float], p: int, data: st.DataObject) -> None:
    # V placement: stages s and 2p-1-s share rank s; each gets half of the rank's limit
    k = 2 * p
    if k > len(times):
        return
    placement = [s if s < p else 2 * p - 1 - s for s in range(k)]
    mem = data.draw(st.lists(st.integers(0, 4).map(float), min_size=len(times), max_size=len(times)))
    limits = data.draw(st.lists(st.sampled_from([4.0, 8.0, 100.0]), min_size=p, max_size=p))
    share = [limits[placement[s]] / 2 for s in range(k)]
    expected = _brute_min_max(times, k, mem, share, [1.0] * k)
    if expected == math.inf:
        with pytest.raises(ValueError):
            P.min_max_cuts(times, k, mem=mem, mem_limit=limits, placement=placement)
        return
    cuts, value = P.min_max_cuts(times, k, mem=mem, mem_limit=limits, placement=placement)
    assert value == expected
    # and the rank limits hold: each rank's stages together fit it
    bounds = P.bounds_of(cuts, len(times))
    per_rank = [0.0] * p
    for s, (i, j) in enumerate(itertools.pairwise(bounds)):
        per_rank[placement[s]] += sum(mem[i:j])
    assert all(used <= limit for used, limit in zip(per_rank, limits, strict=True))


@settings(max_examples=60, deadline=None)
@given(layer_times, st.data())
def test_best_cuts_exhaustive_and_local_search(times: list[float], data: st.DataObject) -> None:
    n = len(times)
    k = data.draw(st.integers(1, n))

    def cost(cuts: list[int]) -> float:  # a cost that is not the slowest stage: squares of stage sums
        return sum(sum(times[i:j]) ** 2 for i, j in itertools.pairwise([0, *cuts, n]))

    cuts, value, how = P.best_cuts(cost, n, k)
    assert how == "exhaustive"
    assert value == min(cost(c) for c in _all_cuts(n, k)) == cost(cuts)
    # forced local search: no neighbour (one cut moved by one) is better
    cuts, value, how = P.best_cuts(cost, n, k, exhaustive_up_to=0)
    assert how == "local" and value == cost(cuts)
    for idx, d in itertools.product(range(k - 1), (-1, 1)):
        moved = list(cuts)
        moved[idx] += d
        if all(a < b for a, b in itertools.pairwise([0, *moved, n])):
            assert cost(moved) >= value


@pytest.mark.slow  # imports torch
def test_params_cuts_agrees_with_the_runtime_split() -> None:
    pytest.importorskip("torch")
    from schedlang.runtime.models import _balanced_cuts

    for counts in ([5, 1, 1, 1, 9, 2], [1] * 8, [100, 3, 3, 3, 3, 100], [0, 0, 7]):
        for k in range(1, len(counts) + 1):
            assert P.params_cuts(counts, k) == _balanced_cuts(counts, k)


def test_stage_costs_fold_the_first_stage_backward_into_w() -> None:
    layers = [{"tf": 1, "tb": 0, "tw": 2, "mem_f": 10, "mem_w": 11},
              {"tf": 3, "tb": 4, "tw": 5, "mem_f": 20, "mem_w": 30},
              {"tf": 6, "tb": 7, "tw": 8, "mem_f": 40, "mem_w": 50}]
    plain = P.stage_costs(layers, [2])
    assert plain == [{"tf": 4, "tb": 4, "tw": 7, "mem_f": 30, "mem_w": 41},
                     {"tf": 6, "tb": 7, "tw": 8, "mem_f": 40, "mem_w": 50}]
    fused = P.stage_costs(layers, [2], first_fused=True)
    assert fused[0]["tb"] == 0 and fused[0]["tw"] == 11 and fused[1] == plain[1]


@pytest.mark.parametrize("text, message", [
    ("2,x", "expected auto, step, params or comma-separated cut points"),
    ("2", "4 stages need 3 cut points, got 1"),
    ("3,2,5", "must increase strictly within 1..7"),
    ("2,5,8", "must increase strictly within 1..7"),
])
def test_parse_cuts_errors(text: str, message: str) -> None:
    with pytest.raises(SchedlangError, match=message):
        P.parse_cuts(text, 8, 4)
    assert P.parse_cuts("2, 5,7", 8, 4) == [2, 5, 7]


def _simulated_step(layers: list[dict[str, float]], cuts: list[int], p: int, m: int) -> float:
    costs = P.stage_costs(layers, cuts)
    params = {name: [c[name] for c in costs] for name in ("tf", "tb", "tw", "mem_f", "mem_w")}
    return api.simulate(api.compile("std:1f1b", p=p, m=m, **params)).makespan


def test_a_heavy_layer_is_balanced_better_than_by_parameter_count() -> None:
    # eight layers of equal parameter count; layer 2 takes three times as long as the others
    layers = [{"tf": 1.0, "tb": 1.0, "tw": 1.0, "mem_f": 1.0, "mem_w": 0.5} for _ in range(8)]
    for name in ("tf", "tb", "tw"):
        layers[2][name] = 3.0
    by_params = P.params_cuts([100] * 8, 4)
    assert by_params == [2, 4, 6]
    times = [r["tf"] + r["tb"] + r["tw"] for r in layers]
    cuts, slowest = P.min_max_cuts(times, 4)
    assert slowest == 9.0 and max(P.stage_times(layers, by_params)) == 12.0
    balanced, by_param_step = _simulated_step(layers, cuts, 4, 8), _simulated_step(layers, by_params, 4, 8)
    assert balanced < by_param_step
    # the simulated-step option finds a step no longer than the min-max cut's
    best, step, how = P.best_cuts(lambda c: _simulated_step(layers, c, 4, 8), 8, 4)
    assert how == "exhaustive" and step <= balanced and step == _simulated_step(layers, best, 4, 8)


# ------------------------------------------------------------------ the runtime builds the cut stages


def test_worker_recuts_the_model_it_builds() -> None:
    pytest.importorskip("torch")
    from schedlang.runtime.models import layers_of
    from schedlang.runtime.worker import recut as build

    model = "schedlang.runtime.models:tiny_gpt"
    default = build(model, 2, 4, 0, "")
    assert [len(s) for s in default.stages] == [2, 2]
    recut = build(model, 2, 4, 4, "1")  # embedding alone, then both blocks and the head
    assert [len(s) for s in recut.stages] == [1, 3]
    assert [type(b).__name__ for b in layers_of(recut.stages)] == ["Embed", "Block", "Block", "Head"]
    wider = build(model, 3, 4, 8, "3,6")  # the model built for 8 stages: 6 blocks
    assert [len(s) for s in wider.stages] == [3, 3, 2]


@pytest.mark.dist
def test_run_with_other_cuts_trains_the_same_model_to_the_same_losses() -> None:
    import re
    import subprocess
    import sys

    def losses(*extra: str) -> list[float]:
        out = subprocess.run([sys.executable, "-m", "schedlang", "run", "std:1f1b", "--set", "p=2", "--set", "m=2",
                              "--steps", "3", "--launcher", "spawn", *extra],
                             capture_output=True, text=True, timeout=200)
        assert out.returncode == 0, out.stderr[-3000:]
        return [float(x) for x in re.findall(r"step +\d+: loss ([0-9.]+)", out.stdout)]

    base = losses()
    assert len(base) == 3
    # the same four layers cut after the embedding instead of after the first block
    assert losses("--partition", "1") == pytest.approx(base, rel=1e-5)
