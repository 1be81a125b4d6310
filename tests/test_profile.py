"""``schedlang profile`` writes measured per-stage costs that ``--params`` feeds back into a pipeline."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import pytest

pytest.importorskip("torch")

from schedlang import api  # noqa: E402
from schedlang.cli import main  # noqa: E402


def _run(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = main(argv)
    return status, out.getvalue(), err.getvalue()


def _params(path: Path) -> dict[str, object]:
    return {name: value for name, value, _ in api.read_params_file(str(path))}


@pytest.mark.slow
def test_profile_writes_one_value_per_stage_and_params_feeds_them_back(tmp_path: Path) -> None:
    costs = tmp_path / "costs.txt"
    status, out, err = _run(["profile", "std:zb-h1", "--set", "p=3", "--set", "m=3", "--repeats", "1",
                             "--warmup", "0", "-o", str(costs)])
    assert status == 0, err
    assert f"use them with --params {costs}" in out
    params = _params(costs)
    assert set(params) == {"tf", "tb", "tw", "mem_f", "mem_w"}
    for name, values in params.items():
        assert isinstance(values, tuple) and len(values) == 3, name
        assert all(v >= 0 for v in values), name  # type: ignore[operator]
    assert all(v > 0 for v in params["tf"]) and all(v > 0 for v in params["mem_f"])  # type: ignore[attr-defined]
    # the file drives the pipeline: every op's time and memory comes from it, per stage
    prog = api.compile("std:zb-h1", p=3, m=3, **params)
    for op in prog.ops:
        if op.kind == "F":
            assert op.time == params["tf"][op.stage]  # type: ignore[index]
            assert op.mem == params["mem_f"][op.stage]  # type: ignore[index]
        elif op.kind == "W":
            assert op.time == params["tw"][op.stage]  # type: ignore[index]
    status, out, err = _run(["simulate", "std:zb-h1", "--set", "p=3", "--set", "m=3", "--params", str(costs), "--json"])
    assert status == 0, err
    cli = json.loads(out)
    assert cli["makespan"] == pytest.approx(api.simulate(prog).makespan)


@pytest.mark.slow
def test_profile_with_kernel_layers_measures_what_w_holds() -> None:
    # autograd split: the runtime keeps the stage's graph from B to W, so what W holds is at least
    # what F saved; split layers stash only their inputs and output gradients for W
    status, out, err = _run(["profile", "std:1f1b", "--set", "p=2", "--set", "m=2", "--repeats", "1",
                             "--warmup", "0", "--json"])
    assert status == 0, err
    plain = json.loads(out)
    status, out, err = _run(["profile", "std:1f1b", "--set", "p=2", "--set", "m=2", "--repeats", "1",
                             "--warmup", "0", "--json", "--split-backward", "kernels"])
    assert status == 0, err
    split = json.loads(out)
    assert plain["units"] == split["units"] == {"time": "ms", "memory": "bytes"}
    assert [r["stage"] for r in plain["stages"]] == [r["stage"] for r in split["stages"]] == [0, 1]
    assert [r["mode"] for r in plain["stages"]] == ["autograd", "autograd"]
    assert all(r["mem_w"] >= r["mem_f"] > 0 for r in plain["stages"])
    assert all(r["mem_w"] > 0 for r in split["stages"])
    assert all(r["mem_f"] > 0 for r in split["stages"])
    # per layer too: the bundled GPT for 2 stages is an embedding, 2 blocks and a head
    assert [r["name"] for r in plain["layers"]] == ["Embed", "Block", "Block", "Head"]
    assert plain["cuts"] == [2] and plain["partition"] == "params"


def test_prepare_stages_swaps_plain_layers_only_for_the_kernels_split() -> None:
    from schedlang.kernels.layers import split_modules
    from schedlang.runtime.worker import prepare_stages
    from torch import nn

    def stage() -> nn.Module:
        return nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4))

    plain = prepare_stages({0: stage()}, "autograd")
    assert list(split_modules(plain[0])) == []
    split = prepare_stages({0: stage(), 1: stage()}, "kernels")
    assert all(len(list(split_modules(m))) == 2 for m in split.values())


@pytest.mark.parametrize("text, where, message", [
    ("tf=[1, 2]\nzz=3\n", ":2:1:", "has no parameter 'zz'"),
    ("# measured\ntf=[1, 2\n", ":2:4:", "tf: unexpected end of input"),
    ("tf 1\n", ":1:1:", "expected NAME=VALUE"),
])
def test_params_file_errors_are_located_in_the_file(tmp_path: Path, text: str, where: str, message: str) -> None:
    path = tmp_path / "costs.txt"
    path.write_text(text)
    status, out, err = _run(["simulate", "std:zb-h1", "--set", "p=2", "--params", str(path)])
    assert status == 1
    assert f"{path}{where} error:" in err and message in err
    assert "Traceback" not in err


def test_set_wins_over_params(tmp_path: Path) -> None:
    path = tmp_path / "costs.txt"
    path.write_text("tf=5\nm=3\n")
    status, out, err = _run(["check", "std:1f1b", "--set", "p=2", "--params", str(path), "--set", "m=4"])
    assert status == 0, err
    assert "4 microbatches" in out


def test_profile_rejects_a_model_it_cannot_import() -> None:
    status, out, err = _run(["profile", "std:1f1b", "--model", "schedlang.runtime.models:nope"])
    assert status == 1
    assert err.startswith("schedlang: error: model schedlang.runtime.models:nope: ") and "Traceback" not in err


def test_profile_reports_a_failing_factory_as_a_user_error() -> None:
    status, out, err = _run(["profile", "std:1f1b", "--model", "os:getcwd"])
    assert status == 1
    assert "model os:getcwd: the factory os:getcwd(" in err and ") raised TypeError: " in err
    assert "internal error" not in err



# ------------------------------------------------------------------ what the profile itself controls


def test_robust_coefficient_of_variation_and_median() -> None:
    from schedlang.kernels.profile import coefficient_of_variation, median

    assert median([3.0, 1.0, 2.0]) == 2.0
    assert median([1.0, 2.0, 3.0, 10.0]) == 2.5
    assert coefficient_of_variation([5.0]) == 0.0
    assert coefficient_of_variation([2.0, 2.0, 2.0]) == 0.0
    # deviations from the median 2: 1, 0, 1 -> MAD 1 -> 1.4826 * 1 / 2
    assert coefficient_of_variation([1.0, 2.0, 3.0]) == pytest.approx(0.7413)
    # one run in ten taken by another process does not make a steady figure look noisy
    steady = [1.0, 1.01, 0.99, 1.0, 1.02, 0.98, 1.0, 1.01, 0.99, 60.0]
    assert coefficient_of_variation(steady) < 0.02
    # but runs spread all over are flagged: deviations .5 .4 0 .5 .6 -> MAD .5 over median 1
    assert coefficient_of_variation([0.5, 0.6, 1.0, 1.5, 1.6]) == pytest.approx(0.7413)


def test_noisy_figures_and_activation_units() -> None:
    from schedlang.kernels.profile import in_activation_units, noisy_figures

    rows = [{"stage": 0, "tf": 1.0, "mem_f": 400, "mem_w": 100, "cv": {"tf": 0.05, "tb": 0.3, "tw": 0.0}},
            {"stage": 1, "tf": 1.0, "mem_f": 600, "mem_w": 900, "cv": {"tf": 0.11, "tb": 0.1, "tw": 0.0}}]
    assert noisy_figures(rows, 0.1) == [(0, "tb", 0.3), (1, "tf", 0.11)]
    assert noisy_figures(rows, 0.5) == []
    units = in_activation_units(rows)
    assert [(r["mem_f"], r["mem_w"]) for r in units] == [(1.0, 0.25), (1.5, 2.25)]
    assert [(r["mem_f_bytes"], r["mem_w_bytes"]) for r in units] == [(400, 100), (600, 900)]
    assert rows[0]["mem_f"] == 400  # the input is left alone
    with pytest.raises(ValueError, match="no activation unit"):
        in_activation_units([{"stage": 0, "mem_f": 0, "mem_w": 0}])


def test_autograd_split_measures_w_and_what_it_holds() -> None:
    import torch
    from schedlang.kernels.profile import profile_ops
    from torch import nn

    torch.manual_seed(0)
    stages = [nn.Sequential(nn.Linear(16, 32), nn.GELU()), nn.Sequential(nn.Linear(32, 8), nn.Tanh())]
    before = torch.get_num_threads()
    rows = profile_ops(stages, torch.randn(4, 16), lambda y: y.square().mean(), repeats=3, warmup=1,
                       split_backward="autograd", threads=1)
    assert torch.get_num_threads() == before  # the thread count is restored
    assert [r["mode"] for r in rows] == ["autograd", "autograd"]
    assert all(r["threads"] == 1 and r["repeats"] == 3 and r["warmup"] == 1 for r in rows)
    # the first stage has no input gradient: B does nothing, W is its whole backward
    assert rows[0]["tb"] == 0.0 and rows[0]["tw"] > 0
    assert rows[1]["tb"] > 0 and rows[1]["tw"] > 0
    # stage 0 saves x (4x16) and the linear's output (4x32) for GELU; W also needs its output
    # gradient (4x32), held from B (nothing) to W
    assert rows[0]["mem_f"] == (4 * 16 + 4 * 32) * 4
    assert rows[0]["mem_w"] == rows[0]["mem_f"] + 4 * 32 * 4
    # stage 1 keeps its graph for W plus the gradient B captured at the linear (4x8)
    # input (4x32) and tanh's output (4x8), which the loss's square saves too: one storage
    assert rows[1]["mem_f"] == (4 * 32 + 4 * 8) * 4
    assert rows[1]["mem_w"] == rows[1]["mem_f"] + 4 * 8 * 4
    assert all(p.grad is None for s in stages for p in s.parameters())
    assert set(rows[0]["cv"]) == {"tf", "tb", "tw", "tbw"}
    assert all(r["tbw"] > 0 for r in rows)  # the fused backward, timed on its own


def test_profile_option_errors_are_plain() -> None:
    status, out, err = _run(["profile", "std:1f1b", "--set", "p=2", "--threads", "0"])
    assert status == 1 and "--threads must be at least 1" in err and "Traceback" not in err
    status, out, err = _run(["profile", "std:1f1b", "--set", "p=2", "--partition", "1,x"])
    assert status == 1 and "--partition" in err and "Traceback" not in err


@pytest.mark.slow
def test_partition_step_minimises_the_programs_simulated_step() -> None:
    import itertools

    from schedlang.partition import stage_costs

    status, out, err = _run(["profile", "std:zb-h1", "--set", "p=3", "--set", "m=3", "--partition", "step",
                             "--layers-from", "6", "--repeats", "2", "--warmup", "0", "--json"])
    assert status == 0, err
    doc = json.loads(out)
    assert doc["partition"] == "step" and doc["layers_from"] == 6 and len(doc["layers"]) == 6

    def step(cuts: list[int]) -> float:
        costs = stage_costs(doc["layers"], cuts, first_fused=True)
        times = {n: [c[n] for c in costs] for n in ("tf", "tb", "tw")}
        return api.simulate(api.compile("std:zb-h1", p=3, m=3, **times)).makespan

    best = min(step(list(c)) for c in itertools.combinations(range(1, 6), 2))
    assert step(doc["cuts"]) == pytest.approx(best)
    # and the stages it then profiled are the ones it chose
    assert len(doc["stages"]) == 3


def test_tune_has_no_step_partition() -> None:
    status, out, err = _run(["tune", "--partition", "step"])
    assert status == 1 and "--partition step" in err and "Traceback" not in err


@pytest.mark.slow
def test_mem_unit_activation_writes_limits_in_the_schedules_units(tmp_path: Path) -> None:
    costs = tmp_path / "costs.txt"
    status, out, err = _run(["profile", "std:zb-h1", "--set", "p=2", "--set", "m=2", "--repeats", "2",
                             "--warmup", "0", "--mem-unit", "activation", "-o", str(costs)])
    assert status == 0, err
    text = costs.read_text()
    assert "# times in ms (median of at least 2 runs, or 0.1 s of them, after 0 warm-up), memory in units of stage 0's activations" in text
    params = _params(costs)
    assert params["mem_f"][0] == 1.0  # type: ignore[index]
    # the layer and stage tables on stdout state their units and the partition
    assert "tf ms" in out and "cv tf" in out and "partition params: cuts 2 over 4 layers" in out
    status, out, err = _run(["profile", "std:zb-h1", "--set", "p=2", "--set", "m=2", "--repeats", "2",
                             "--warmup", "0", "--mem-unit", "activation", "--json"])
    doc = json.loads(out)
    assert doc["units"] == {"time": "ms", "memory": "activation"}
    first = doc["stages"][0]
    assert first["mem_f"] == 1.0 and first["mem_f_bytes"] > 0
    assert doc["stages"][1]["mem_w"] == pytest.approx(doc["stages"][1]["mem_w_bytes"] / first["mem_f_bytes"])


def test_min_time_repeats_short_figures_until_they_add_up() -> None:
    import torch
    from schedlang.kernels.profile import MAX_REPEATS, profile_ops
    from torch import nn

    stages = [nn.Linear(4, 4), nn.Linear(4, 2)]
    x = torch.randn(2, 4)
    plain = profile_ops(stages, x, repeats=2, warmup=0, split_backward="autograd", min_time=0.0)
    assert [r["repeats"] for r in plain] == [2, 2]
    longer = profile_ops(stages, x, repeats=2, warmup=0, split_backward="autograd", min_time=0.05)
    # a run of these layers takes well under 25 ms, so 0.05 s needs more than two of them
    assert all(2 < r["repeats"] <= MAX_REPEATS for r in longer)
