"""``schedlang run``: the bundled tiny GPT trains through torchrun and writes a merged trace."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

pytestmark = pytest.mark.dist


def test_run_trains_the_bundled_model_and_writes_a_trace(tmp_path) -> None:
    trace = tmp_path / "trace.json"
    out = subprocess.run(
        [sys.executable, "-m", "schedlang", "run", "std:zb-h1", "--set", "p=2", "--set", "m=2",
         "--nproc", "2", "--steps", "6", "--trace", str(trace), "--timeout", "60"],
        capture_output=True, text=True, timeout=200)
    assert out.returncode == 0, out.stderr[-3000:]
    losses = [float(x) for x in re.findall(r"step +\d+: loss ([0-9.]+)", out.stdout)]
    assert len(losses) == 6 and losses[-1] < losses[0]
    assert re.search(r"bubble rate: measured [0-9.]+ .* simulated 0\.\d+", out.stdout)
    doc = json.loads(trace.read_text())
    events = [e for e in doc["traceEvents"] if e["ph"] == "X" and e["cat"] == "instr"]
    assert {e["pid"] for e in events} == {0, 1}
    # zb-h1 with 2 microbatches: per step, each rank runs F, B and W twice
    for rank in (0, 1):
        ops = [e["args"]["op"] for e in events if e["pid"] == rank and e["args"]["step"] == 0]
        assert ops.count("F") == ops.count("B") == ops.count("W") == 2
    assert all({"stage", "mb"} <= set(e["args"]) for e in events)


def test_run_rejects_a_process_count_that_does_not_match() -> None:
    out = subprocess.run([sys.executable, "-m", "schedlang", "run", "std:1f1b", "--set", "p=2", "--nproc", "3"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 1
    assert "--nproc 3, but the schedule has 2 ranks" in out.stderr


def test_run_rejects_a_model_it_cannot_import() -> None:
    out = subprocess.run([sys.executable, "-m", "schedlang", "run", "std:1f1b", "--set", "p=2",
                          "--model", "schedlang.runtime.models:nope"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 1
    assert out.stderr.startswith("schedlang: error: model schedlang.runtime.models:nope: schedlang.runtime.models (")
    assert out.stderr.endswith("models.py) has no attribute 'nope'\n")
    assert "Traceback" not in out.stderr


def test_run_trains_chimera_on_weight_replicas() -> None:
    # two pipelines in opposite directions: each rank holds a replica of both model parts
    out = subprocess.run(
        [sys.executable, "-m", "schedlang", "run", "std:chimera", "--set", "p=2", "--set", "m=4",
         "--steps", "4", "--launcher", "spawn", "--timeout", "60"],
        capture_output=True, text=True, timeout=200)
    assert out.returncode == 0, out.stderr[-3000:]
    losses = [float(x) for x in re.findall(r"step +\d+: loss ([0-9.]+)", out.stdout)]
    assert len(losses) == 4 and losses[-1] < losses[0]  # printed once per step, and it learns
