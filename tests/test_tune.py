"""``schedlang tune``: candidates scheduled on measured costs, the best run, the choice written out."""

from __future__ import annotations

import contextlib
import io
import json
import math
import statistics
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("torch")

from schedlang import api  # noqa: E402
from schedlang import tune as T  # noqa: E402
from schedlang.cli import main  # noqa: E402


def _run(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = main(argv)
    return status, out.getvalue(), err.getvalue()


def test_saved_bytes_meter_follows_what_autograd_keeps() -> None:

    import torch
    from schedlang.runtime.autograd_split import input_backward
    from schedlang.runtime.worker import SavedBytesMeter
    from torch import nn

    net = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 4))
    params = list(net.parameters())
    meter = SavedBytesMeter({p.untyped_storage().data_ptr() for p in params})
    per_mb = (5 * 8 + 5 * 16 + 5 * 4) * 4  # x, tanh's output (saved by tanh and the linear), the square's input
    slots = []
    with torch.autograd.graph.saved_tensors_hooks(meter.pack, meter.unpack):
        for _ in range(3):
            x = torch.randn(5, 8, requires_grad=True)
            slots.append([net(x).square().sum(), x, None])
        assert meter.current == meter.peak == 3 * per_mb
        for s in slots:  # B keeps the graph for W
            _, s[2] = input_backward(s[0], s[1], None, params)
        assert meter.current == 3 * per_mb
        for k, s in enumerate(slots):  # each W frees its microbatch
            s[2].run()
            s[0] = s[1] = s[2] = None
            assert meter.current == (2 - k) * per_mb  # freed at once: no cycle waits for the collector
    assert meter.peak == 3 * per_mb


def test_candidates_cover_the_built_ins_the_searches_and_the_optimizer() -> None:
    from schedlang.tune import candidate_specs

    names = [c[0] for c in candidate_specs(4, math.inf, 5.0)]
    assert {"1f1b", "zb-h1", "zb-2p", "zb-v", "interleaved-1f1b", "optimizer"} <= set(names)
    limited = {c[0]: c for c in candidate_specs(4, 6.0, 5.0)}
    assert limited["zb-auto@limit"][2] == "zb-auto:mem_limit=6"
    assert "mem_limit=6" in (limited["optimizer"][2] or "") and "time_limit=5" in (limited["optimizer"][2] or "")
    assert "optimizer" not in [c[0] for c in candidate_specs(4, math.inf, 5.0, optimizer=False)]


@pytest.mark.parametrize("mem_limit", [math.inf, 3.0])
def test_every_candidate_scheduler_spec_is_accepted(mem_limit: float) -> None:
    """Each candidate's program and scheduler options compile (an option the scheduler refuses
    once made the optimizer a row with an error in every tune)."""
    pytest.importorskip("ortools")
    from schedlang import api
    from schedlang.tune import candidate_specs

    for name, path, scheduler, v in candidate_specs(2, mem_limit, 2.0):
        params = {"p": 2, "m": 4, **({"v": v} if path == "std:interleaved-1f1b" else {})}
        if scheduler is None:
            continue
        prog = api.compile(path, params, scheduler=scheduler)
        assert prog.orders is not None, name


@pytest.mark.parametrize("argv, message", [
    (["--nproc", "1"], "--nproc must be at least 2"),
    (["--steps", "1"], "--steps must be at least 2"),
    (["--mem-limit", "0"], "--mem-limit must be positive"),
    (["--time-limit", "0"], "--time-limit must be positive"),
    (["--cores", "0"], "--cores must be positive"),
    (["--tc", "-1"], "--tc must be at least 0"),
    (["--min-time", "-1"], "--min-time must be at least 0"),
    (["--model", "os:nope"], "model os:nope: os ("),
])
def test_tune_option_errors_are_plain(argv: list[str], message: str) -> None:
    status, out, err = _run(["tune", *argv])
    assert status == 1 and message in err and "Traceback" not in err


@pytest.mark.slow
@pytest.mark.dist
def test_tune_runs_the_best_and_writes_a_choice_that_compiles_back(tmp_path: Path) -> None:
    from schedlang.cli.tune import render_table

    lines: list[str] = []
    res = api.tune(nproc=2, microbatches=4, steps=3, top=1, time_limit=2.0, repeats=3, warmup=1,
                   progress=lines.append)
    assert any(line.startswith("scheduling 1f1b") for line in lines)
    rows = {c.name: c for c in res.candidates}
    ran = [c for c in res.candidates if not math.isnan(c.measured_ms)]
    # the best predicted and 1F1B ran; the choice is the fastest measured of them
    predicted = [c for c in res.candidates if not c.error]
    assert predicted == sorted(predicted, key=lambda c: c.predicted_ms)
    assert predicted[0] in ran and rows["1f1b"] in ran
    assert res.chosen is not None and res.chosen.chosen
    assert res.chosen.measured_ms == min(c.measured_ms for c in ran) <= rows["1f1b"].measured_ms
    # calibrated on 1F1B's run (one round: its measured step is the one it was fitted to): its
    # prediction meets the measurement unless even free messages predict longer; every candidate
    # was re-predicted with the fitted message cost, in its own orders
    base = rows["1f1b"]
    assert any(n.startswith("calibrated on 1F1B's first run") for n in res.notes)
    if res.calibration.message_ms > 0:
        assert base.predicted_ms == pytest.approx(base.measured_ms, rel=1e-4)
    else:
        assert base.predicted_ms >= base.measured_ms
    for c in predicted:
        assert not math.isnan(c.predicted_first_ms)
        again = T.with_comm(c.program, res.calibration.message_ms, res.comm_alone_ms, 1 / res.calibration.scale,
                            -res.calibration.overhead_ms / res.calibration.scale)
        # the same orders, at the profiled op times and the message time measured alone
        assert api.simulate(again).makespan == pytest.approx(c.predicted_first_ms)
    for c in ran:
        assert c.error_pct == pytest.approx(100 * (c.predicted_ms - c.measured_ms) / c.measured_ms)
        assert c.measured_peak_bytes > 0 and len(c.measured_steps_ms) == 2
        # the busiest rank computes at most the whole step, and the simulator's busiest rank works
        assert 0 < c.measured_busy_ms <= c.measured_ms and c.predicted_busy_ms > 0
        assert c.predicted_peak_bytes == pytest.approx(c.predicted_peak * res.unit_bytes)
    # the partitions: 2 stages and 4 stages over the 4 layers of the model built for 4 stages
    assert [len(res.profiles[v].cuts) for v in (1, 2)] == [1, 3]
    # the .sched text has explicit orders and the measured costs: it compiles back to the same
    # orders and the same simulated step
    path = tmp_path / "choice.sched"
    path.write_text(res.sched_text)
    back = api.compile(str(path))
    assert api.orders(back) == api.orders(res.chosen.program)
    assert api.simulate(back).makespan == pytest.approx(res.chosen.predicted_ms)
    csv = tmp_path / "choice.csv"
    csv.write_text(res.csv_text)
    assert api.orders(api.import_torch_csv(str(csv))[1]) == api.orders(res.chosen.program)
    doc = json.loads(json.dumps(res.as_dict()))
    assert doc["chosen"] == res.chosen.name and len(doc["candidates"]) == len(res.candidates)
    assert doc["calibration"] == {"message_alone_ms": res.comm_alone_ms, "message_ms": res.calibration.message_ms,
                                  "compute_scale": res.calibration.scale, "op_overhead_ms": res.calibration.overhead_ms,
                                  "op_samples": [list(x) for x in res.calibration.samples]}
    # the ops' figures come from 1F1B's first run: a line through its op times where they tell a
    # scale from a fixed cost, else its busiest rank's compute over the simulated
    fitted = T.fit_op_times(base.op_samples)
    if fitted is not None:
        assert (res.calibration.scale, res.calibration.overhead_ms) == fitted
        assert list(res.calibration.samples) == base.op_samples and len(base.op_samples) >= 4
    else:
        assert res.calibration.overhead_ms == 0 and res.calibration.scale == pytest.approx(
            statistics.median(base.busy_steps_ms[:2]) / (base.predicted_busy_ms / res.calibration.scale))
    table = render_table(res)
    assert "<- chosen" in table and "pred ms" in table and "meas ms" in table


@pytest.mark.parametrize("name", ["std:1f1b", "std:interleaved-1f1b", "std:zb-h1"])
def test_calibrate_finds_the_compute_scale_and_message_time_of_a_measured_step(name: str) -> None:
    prog = api.compile(name, {"p": 4, "m": 8, "tc": 0.1, "tf": [1.0, 1.2, 0.9, 1.1]})
    cross = [e for e in prog.edges if prog.ops[e.src].rank != prog.ops[e.dst].rank]
    assert cross and all(e.latency == 0.1 for e in cross)
    moved = T.with_comm(prog, 0.1, 0.37, 1.25)
    assert {e.latency for e in moved.edges if prog.ops[e.src].rank != prog.ops[e.dst].rank} == {0.37}
    assert [e for e in moved.edges if e not in cross and e.latency != 0.37] == \
        [e for e in prog.edges if e not in cross]  # the edges within a rank are kept
    assert [o.time for o in moved.ops] == [1.25 * o.time for o in prog.ops]
    assert api.orders(moved) == api.orders(prog)
    run = api.simulate(moved)  # a "measured" run: ops 25% slower, messages 0.37
    assert run.makespan > api.simulate(T.with_comm(prog, 0.1, 0.0, 1.25)).makespan  # messages matter
    predict = lambda p: api.simulate(p).makespan  # noqa: E731
    busy = max(r.busy for r in run.ranks)
    fit = T.calibrate(prog, run.makespan, busy, 0.1, predict)
    assert fit.scale == pytest.approx(1.25) and fit.overhead_ms == 0 and fit.samples == ()
    assert predict(T.with_comm(prog, 0.1, fit.message_ms, fit.scale)) == pytest.approx(run.makespan, rel=1e-6)
    assert fit.message_ms == pytest.approx(0.37, rel=1e-5)
    # faster than even free messages allow: no message time explains it
    slow = T.calibrate(prog, 0.9 * api.simulate(T.with_comm(prog, 0.1, 0.0, 1.25)).makespan, busy, 0.1, predict)
    assert slow.scale == pytest.approx(1.25) and slow.message_ms == 0.0
    # with each op's time: a scale and a fixed cost per op, then the message time
    run = api.simulate(T.with_comm(prog, 0.1, 0.37, 1.25, 0.05))
    samples = [(o.time, 1.25 * o.time + 0.05) for o in prog.ops]
    fit = T.calibrate(prog, run.makespan, 0.0, 0.1, predict, samples)
    assert (fit.scale, fit.overhead_ms) == (pytest.approx(1.25), pytest.approx(0.05))
    assert predict(T.with_comm(prog, 0.1, fit.message_ms, fit.scale, fit.overhead_ms)) == \
        pytest.approx(run.makespan, rel=1e-6)
    assert fit.samples == tuple(samples)


def test_p2p_seconds_measures_a_message_and_refuses_bad_arguments() -> None:
    from schedlang.runtime.launch import p2p_seconds

    one_way = p2p_seconds(4096, busy=1, repeats=5, warmup=1)
    assert 0 < one_way < 1.0  # one small message on one machine: well under a second
    with pytest.raises(ValueError, match="busy >= 0"):
        p2p_seconds(4096, busy=-1)
    with pytest.raises(ValueError, match="samples >= 1"):
        p2p_seconds(4096, samples=0)


def test_params_for_gives_the_fused_backward_only_where_the_program_has_one() -> None:
    from types import SimpleNamespace

    from schedlang import api
    from schedlang.tune import params_for

    rows = [{"tf": 1.0, "tb": 2.0, "tw": 1.5, "tbw": 2.5, "mem_f": 10.0, "mem_w": 12.0},
            {"tf": 1.0, "tb": 2.0, "tw": 1.5, "tbw": 2.5, "mem_f": 20.0, "mem_w": 24.0}]
    prof = SimpleNamespace(stages=rows)
    split = params_for(prof, 10.0, 0.1)
    assert "tbw" not in split and split["mem_f"] == [1.0, 2.0] and split["tc"] == 0.1
    fused = params_for(prof, 10.0, 0.1, fused=True)
    assert fused["tbw"] == [2.5, 2.5]
    # 1F1B, p = 2, m = 4, T_F = 1, fused backward 2.5, comm 0.1 (by hand): rank 0's last BW starts
    # after rank 1's, which ends at 15.3, so the step is 15.4 + 2.5 = 17.9; with tb + tw = 3.5
    # instead of the fused time, every backward is 1 longer
    base = {"p": 2, "m": 4, "costs_per": "stage"}
    assert api.simulate(api.compile("std:1f1b", {**base, **fused})).makespan == pytest.approx(17.9)
    assert api.simulate(api.compile("std:1f1b", {**base, **split})).makespan > 17.9 + 4


def test_replaying_a_recorded_run_reproduces_its_predictions_and_fits_1f1b() -> None:
    # benchmarks/tune_replay.py on a run recorded on an H100 machine's 16-core host (gloo, 4
    # processes): the candidates scheduled again on the recorded profile predict what the run
    # predicted, and the calibration fits 1F1B's prediction to its first round of steps
    import importlib.util

    root = Path(__file__).resolve().parents[1] / "benchmarks"
    spec = importlib.util.spec_from_file_location("tune_replay", root / "tune_replay.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    record = root / "data" / "tune-h100host-b.json"
    res = module.replay(str(record), optimizer=False)
    assert res["reproduces_recorded"]
    doc = json.loads(record.read_text(encoding="utf-8"))
    base = next(c for c in doc["tune"]["candidates"] if c["name"] == "1f1b")
    first = statistics.median(base["measured_steps_ms"][:5])
    rows = {r["name"]: r for r in res["rows"]}
    assert res["first_round_1f1b_ms"] == first and res["message_ms"] > res["message_alone_ms"]
    assert rows["1f1b"]["calibrated_ms"] == pytest.approx(first, rel=1e-6)
    assert res["compute_scale"] == pytest.approx(base["measured_busy_ms"] / base["predicted_busy_ms"], rel=1e-6)
    # every prediction moves: the same orders with the fitted compute scale and message time
    assert all(r["calibrated_ms"] != r["before_ms"] for r in res["rows"])
    # a record of a calibrated run (2 processes on this kind of 2-core machine): the replay's
    # calibration gives the very predictions the live run made
    live = module.replay(str(root / "data" / "tune-2core-n2-b.json"), optimizer=False)
    assert live["reproduces_recorded"]
    assert all(r["recorded_calibrated_ms"] is not None for r in live["rows"] if r["name"] != "optimizer")


def _fake_candidates() -> list[T.Candidate]:
    out = []
    for name, path in (("1f1b", "std:1f1b"), ("gpipe", "std:gpipe"), ("zb-h1", "std:zb-h1")):
        c = T.Candidate(name, path, None, 1)
        api._tune_predict(c, api.compile(path, {"p": 4, "m": 8, "tc": 0.1}), 4, None)
        out.append(c)
    return out


def _fake_measure(cands: list[T.Candidate], calls: list[str]) -> Any:
    profiled = {c.name: c.program for c in cands}  # calibration replaces c.program

    def measure(c: T.Candidate) -> None:  # a "run" 30% slower in compute, messages 0.5 ms
        calls.append(c.name)
        run = api.simulate(T.with_comm(profiled[c.name], 0.1, 0.5, 1.3, 0.02))
        if not c.op_samples:
            c.op_samples = [(o.time, 1.3 * o.time + 0.02) for o in c.program.ops]
        c.measured_steps_ms.append(run.makespan)
        c.measured_ms = statistics.median(c.measured_steps_ms)
        c.busy_steps_ms.append(max(r.busy for r in run.ranks))
        c.measured_busy_ms = statistics.median(c.busy_steps_ms)
    return measure


@pytest.mark.parametrize("case", ["calibrated", "shared-cores", "off", "no-1f1b"])
def test_tune_runs_1f1b_first_and_calibrates_only_where_it_means_something(case: str) -> None:
    cands = _fake_candidates()
    if case == "no-1f1b":
        cands = cands[1:]
    calls: list[str] = []
    notes: list[str] = []
    cores = 2.0 if case == "shared-cores" else None
    to_run, fit = api._tune_runs(cands, _fake_measure(cands, calls), 1, 2, case != "off", 0.1, 4, cores, notes,
                                       lambda _line: None)
    if case == "calibrated":
        # 1F1B first, then the best predicted and 1F1B take turns: 1F1B ran twice in all
        assert calls[0] == "1f1b" and calls.count("1f1b") == 2 and len(calls) == 4
        assert (fit.scale, fit.overhead_ms) == (pytest.approx(1.3), pytest.approx(0.02))
        assert fit.message_ms == pytest.approx(0.5, rel=1e-5)
        # the "runs" are the calibrated model exactly, so every prediction is now what they measure
        assert all(c.predicted_ms == pytest.approx(c.measured_ms, rel=1e-5) for c in to_run)
        assert all(c.predicted_first_ms < c.predicted_ms for c in cands)
        assert len(notes) == 1 and notes[0].startswith("calibrated on 1F1B's first run")
    else:
        assert (fit.scale, fit.overhead_ms, fit.message_ms) == (1.0, 0.0, 0.1)
        assert all(math.isnan(c.predicted_first_ms) for c in cands)
        assert calls == [c.name for c in to_run] * 2  # the rounds only, in turn
        expect = {"shared-cores": ["not calibrated: 4 ranks share 2 cores"], "off": [],
                  "no-1f1b": ["not calibrated: 1F1B, the run it calibrates on, does not fit"]}[case]
        assert [n[:len(e)] for n, e in zip(notes, expect, strict=True)] == expect
    assert [c.predicted_ms for c in cands] == sorted(c.predicted_ms for c in cands)
