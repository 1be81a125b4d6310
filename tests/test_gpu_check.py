"""The prepared GPU check (benchmarks/gpu_check.py): its CPU rehearsal runs every part and passes.

The rehearsal runs the same code paths as the GPU run (Triton kernels under the interpreter,
gloo between CPU processes, a tiny model), so a GPU run does not fail on a typo. Every part
must end ``ok`` with at least one passed correctness check, and may skip only what needs CUDA
(code ``no-cuda``). A part that dies must not take the report down with it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("torch")
pytest.importorskip("triton")

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "gpu_check.py"
PARTS = ("kernels", "norms", "runtime", "profile")


def _run(out: Path, *extra: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full = dict(os.environ, **(env or {}))
    full.pop("TRITON_INTERPRET", None)  # the script sets it for its parts itself
    return subprocess.run([sys.executable, str(SCRIPT), "--out", str(out), "--cpu-rehearsal", *extra],
                          capture_output=True, text=True, timeout=600, env=full)


def _checks(part: dict[str, Any], prefix: str) -> list[dict[str, Any]]:
    return [c for c in part["checks"] if c["what"].startswith(prefix)]


@pytest.mark.slow
@pytest.mark.dist
def test_cpu_rehearsal_runs_every_part(tmp_path: Path) -> None:
    proc = _run(tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads((tmp_path / "report.json").read_text(encoding="utf-8"))
    assert report["mode"] == "cpu-rehearsal"
    assert list(report["parts"]) == list(PARTS)
    for name, part in report["parts"].items():
        assert part["status"] == "ok", (name, part["errors"])
        assert part["errors"] == []
        assert part["checks"] and all(c["ok"] for c in part["checks"]), name
        assert [s for s in part["skipped"] if s["code"] != "no-cuda"] == [], name
    parts = report["parts"]
    # kernels: F, B, W of the linear layer in both dtypes, on the odd shapes and the (tiny) speed
    # shape, interpreted; the speed loop ran (its CPU figures mean nothing, the code is what counts)
    assert parts["kernels"]["triton"].startswith("interpreted")
    linear = {(c["op"], c["dtype"], (c["m"], c["n"], c["k"])) for c in _checks(parts["kernels"], "linear")}
    assert linear == {(op, dt, shape) for op in "FBW" for dt in ("float32", "bfloat16")
                      for shape in ((37, 48, 80), (5, 130, 19), (32, 32, 32))}
    speed = {(r["op"], r["dtype"]) for r in parts["kernels"]["rows"] if r["kind"] == "speed"}
    assert speed == {(op, dt) for op in "FBW" for dt in ("float32", "bfloat16")}
    # norms: both norms, F, B, W, both dtypes, two odd shapes; the speed loop with B+W as well
    norms = {(c["norm"], c["op"], c["dtype"]) for c in parts["norms"]["checks"]}
    assert norms == {(n, op, dt) for n in ("layernorm", "rmsnorm") for op in "FBW" for dt in ("float32", "bfloat16")}
    assert len(parts["norms"]["checks"]) == 2 * 3 * 2 * 2
    norm_speed = {(r["norm"], r["op"], r["dtype"]) for r in parts["norms"]["rows"] if r["kind"] == "speed"}
    assert norm_speed == {(n, op, dt) for n in ("layernorm", "rmsnorm") for op in ("F", "B", "W", "B+W")
                          for dt in ("float32", "bfloat16")}
    assert all(r["triton_ms"] > 0 and r["torch_ms"] > 0 for r in parts["norms"]["rows"])
    # runtime: 4 cases, gradients equal to one process, through the probed transport
    runtime = parts["runtime"]
    assert runtime["transport"] == "gloo-cpu"
    assert [(r["transport"], r["ok"]) for r in runtime["rows"] if r["kind"] == "probe"] == [("gloo-cpu", True)]
    runs = {(r["schedule"], r["split"]): r for r in runtime["rows"] if r["kind"] == "run"}
    assert set(runs) == {(s, sp) for s in ("zb-h1", "1f1b") for sp in ("autograd", "kernels")}
    for r in runs.values():
        assert r["grads_ok"] and r["grad_max_rel_diff"] <= 1e-4
        assert r["loss"] == pytest.approx(r["ref_loss"], rel=1e-4)
        assert r["step_ms"] > 0 and len(r["all_step_ms"]) >= 1
        assert all(n >= 1 for n in r["peak_live_buffers"])
    # profile: both splits profiled, both schedules simulated, each beside the measured step time
    preds = {(r["schedule"], r["split"]): r for r in parts["profile"]["rows"] if r["kind"] == "prediction"}
    assert set(preds) == set(runs)
    for key, r in preds.items():
        assert r["measured_ms"] == pytest.approx(runs[key]["step_ms"])
        assert 0 < r["predicted_ms"] <= r["predicted_shared_ms"]
    # the table names every part and the report files are there
    assert all(name in proc.stdout for name in PARTS)
    assert (tmp_path / "report.txt").read_text(encoding="utf-8").strip() in proc.stdout


def test_a_crashing_part_still_leaves_a_report(tmp_path: Path) -> None:
    proc = _run(tmp_path, "--parts", "profile", env={"GPU_CHECK_FAULT": "profile:crash"})
    assert proc.returncode == 1
    report = json.loads((tmp_path / "report.json").read_text(encoding="utf-8"))
    part = report["parts"]["profile"]
    assert part["status"] == "crashed" and part["returncode"] == 3
    assert "ended without finishing" in part["errors"][0]
    assert report["verdict"] == "NOT OK: profile crashed"
    assert "profile  crashed" in proc.stdout


def _gone(pid: int) -> bool:
    """The process has ended (a zombie nobody reaped counts as ended)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text(encoding="utf-8")
    except FileNotFoundError:
        return True
    return "\nState:\tZ" in status


@pytest.mark.slow
def test_a_hanging_part_is_killed_with_its_children_and_the_next_part_runs(tmp_path: Path) -> None:
    # budget 0.9 s; the driver's backstop kills the part's process group 15 s later
    proc = _run(tmp_path, "--parts", "profile,norms", "--budget-scale", "0.01",
                env={"GPU_CHECK_FAULT": "profile:hang"})
    assert proc.returncode == 1
    report = json.loads((tmp_path / "report.json").read_text(encoding="utf-8"))
    hung, after = report["parts"]["profile"], report["parts"]["norms"]
    assert hung["status"] == "timeout"
    (note,) = hung["notes"]
    assert _gone(int(note.rsplit(" ", 1)[1])), "the hanging part's child outlived it"
    # the next part ran, within its own (tiny) budget: it skipped what did not fit, and said so
    assert after["status"] == "partial" and after["returncode"] == 1 and after["checks"] == []
    assert {s["code"] for s in after["skipped"]} == {"budget", "no-cuda"}
    assert report["verdict"] == "NOT OK: profile timeout, norms partial"


def _module() -> Any:
    import importlib.util

    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_table_of_a_gpu_report() -> None:
    """The GPU-only branches of the table (CUDA memory figures, a failed check) render as documented."""
    part = {"status": "ok", "wall_s": 12.5, "checks": [], "skipped": [], "errors": [], "rows": []}
    report = {
        "mode": "gpu", "environment": {"device": "NVIDIA H100 80GB HBM3"},
        "parts": {
            "kernels": {**part, "checks": [{"what": "linear F 2048x2048x2048 float32", "ok": True},
                                           {"what": "linear W 37x48x80 bfloat16", "ok": False}],
                        "status": "failed",
                        "rows": [{"kind": "speed", "op": "F", "m": 2048, "n": 2048, "k": 2048, "dtype": "float32",
                                  "triton_ms": 1.5, "torch_ms": 1.2, "speed_vs_torch": 0.8}]},
            "runtime": {**part, "transport": "gloo-host",
                        "skipped": [{"what": "runtime 1f1b kernels", "code": "budget", "why": "x"}],
                        "status": "partial",
                        "rows": [{"kind": "probe", "transport": "nccl", "ok": False, "detail": "d"},
                                 {"kind": "run", "schedule": "zb-h1", "split": "kernels", "grads_ok": True,
                                  "grad_max_rel_diff": 2.5e-6, "step_ms": 180.25, "peak_mib": [1536.4, 2048.6]}]},
            "profile": {**part, "rows": [{"kind": "prediction", "schedule": "zb-h1", "split": "kernels",
                                          "predicted_ms": 150.0, "predicted_shared_ms": 290.5,
                                          "measured_ms": None}]},
        },
    }
    gc = _module()
    report["verdict"] = gc._verdict(report["parts"])
    assert gc.table(report).splitlines() == [
        "gpu_check [gpu] on NVIDIA H100 80GB HBM3: NOT OK: kernels failed, runtime partial",
        "part     status    seconds  checks  failed  skipped  skipped codes",
        "kernels  failed       12.5       2       1        0  -",
        "runtime  partial      12.5       0       0        1  budget",
        "profile  ok           12.5       0       0        0  -",
        "  FAILED kernels: linear W 37x48x80 bfloat16",
        "speed = torch ms / triton ms (above 1: the Triton kernel is faster)",
        "  linear F 2048^3             float32   triton    1.500 ms  torch    1.200 ms  speed  0.80x",
        "runtime: 2 processes, transport gloo-host",
        "  schedule split     grads   max rel diff   step ms    peak MiB r0/r1",
        "  zb-h1    kernels   equal        2.5e-06    180.25         1536/2049",
        "profile -> simulate: predicted step (own device per rank / ranks sharing one device) vs measured",
        "  zb-h1    kernels   predicted    150.00 /    290.50 ms  measured         - ms",
    ]


def test_kernel_variants_run_and_check_every_variant_on_the_cpu(tmp_path: Path) -> None:
    # benchmarks/kernel_variants.py, the GPU's first question after the check: without CUDA it
    # runs every variant once under the interpreter and checks it against torch (no times)
    script = SCRIPT.parent / "kernel_variants.py"
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")
    out = tmp_path / "kv.json"
    proc = subprocess.run([sys.executable, str(script), "--out", str(out)], capture_output=True, text=True,
                          timeout=300, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = json.loads(out.read_text())["rows"]
    names = {r["variant"] for r in rows}
    assert names == {"F", "F view", "F copy", "B", "W", "W nobias", "W copy-dy nobias"}
    assert len(rows) == 2 * len(names) and all(r["ok"] and r["ms"] is None for r in rows)
    assert {r["dtype"] for r in rows} == {"float32", "bfloat16"}
