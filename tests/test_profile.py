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
    # plain layers: W is estimated and nothing is held between B and W; split layers stash their
    # inputs and output gradients for W, so mem_w becomes positive on the transformer stage
    status, out, err = _run(["profile", "std:1f1b", "--set", "p=2", "--set", "m=2", "--repeats", "1",
                             "--warmup", "0", "--json"])
    assert status == 0, err
    plain = json.loads(out)
    status, out, err = _run(["profile", "std:1f1b", "--set", "p=2", "--set", "m=2", "--repeats", "1",
                             "--warmup", "0", "--json", "--split-backward", "kernels"])
    assert status == 0, err
    split = json.loads(out)
    assert [r["stage"] for r in plain] == [r["stage"] for r in split] == [0, 1]
    assert all(r["mem_w"] == 0 for r in plain)
    assert all(r["mem_w"] > 0 for r in split)
    # the same activations are saved for backward either way, up to the split layers' own stash
    assert all(r["mem_f"] > 0 for r in split)


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
