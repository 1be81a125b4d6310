"""Past one machine: multi-node launch through torchrun's rendezvous, pipeline x data parallel.

- Two ``schedlang run --nnodes 2 --node-rank {0,1} --rdzv-endpoint 127.0.0.1:PORT
  --nproc-per-node 2`` processes on loopback train p=4 ZB-H1 exactly like one node with 4
  processes (same losses, same final parameters) and like one process on the whole batch.
- A node started with a different program is refused on both nodes, with a message naming both.
- ``--dp 2`` with p=2 (4 processes) equals one process training on the whole batch (float64).
- The data-parallel reduction issues one flat all-reduce per stage per step (counted), started
  where the stream reduces the stage (right after its last backward).
- Backend and device choice, and the launch arguments' checks, without a GPU.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")

from schedlang.runtime.launch import free_port, spawn  # noqa: E402
from schedlang.runtime.worker import choose_backend, placement  # noqa: E402

from schedlang import api  # noqa: E402
from schedlang.codegen import codegen  # noqa: E402
from schedlang.isa import Opcode, Streams  # noqa: E402
from schedlang.source import SchedlangError  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
import scale_models  # noqa: E402

TESTS = str(Path(__file__).parent)
STEPS = 3


def _env() -> dict[str, str]:
    path = os.pathsep.join(p for p in (TESTS, os.environ.get("PYTHONPATH", "")) if p)
    return dict(os.environ, PYTHONPATH=path, OMP_NUM_THREADS="1")


def _cmd(program: str, p: int, m: int, *extra: str) -> list[str]:
    return [sys.executable, "-m", "schedlang", "run", program, "--set", f"p={p}", "--set", f"m={m}",
            "--model", "scale_models:mlp64", "--steps", str(STEPS), "--timeout", "60", *extra]


def _nodes(programs: list[str], port: int, save: list[Path] | None = None) -> list[subprocess.CompletedProcess[str]]:
    """Start one ``schedlang run`` per node (node rank = list index) and wait for all of them."""
    procs = []
    for k, program in enumerate(programs):
        extra = ["--nnodes", str(len(programs)), "--node-rank", str(k), "--rdzv-endpoint", f"127.0.0.1:{port}",
                 "--nproc-per-node", "2"] + (["--save", str(save[k])] if save else [])
        procs.append(subprocess.Popen(_cmd(program, 4, 4, *extra), env=_env(), text=True,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    out = []
    for proc in procs:
        try:
            stdout, stderr = proc.communicate(timeout=300)
        except subprocess.TimeoutExpired:
            proc.kill()
            stdout, stderr = proc.communicate()
        out.append(subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr))
    return out


def _saved(dirs: list[Path], num_stages: int) -> tuple[list[dict[str, Any]], list[float]]:
    stages = []
    for s in range(num_stages):
        (path,) = [d / f"stage{s}.pt" for d in dirs if (d / f"stage{s}.pt").exists()]
        stages.append(torch.load(path))
    (losses,) = [json.loads((d / "losses.json").read_text()) for d in dirs if (d / "losses.json").exists()]
    return stages, losses


def _assert_matches_reference(stages: list[dict[str, Any]], losses: list[float], num_stages: int, m: int) -> None:
    ref, ref_losses = scale_models.reference(num_stages, m, STEPS)
    for s in range(num_stages):
        assert set(stages[s]) == set(ref[s])
        for name, value in stages[s].items():
            torch.testing.assert_close(value, ref[s][name], rtol=1e-10, atol=1e-12)
    assert losses == pytest.approx(ref_losses, rel=1e-10)


@pytest.mark.dist
def test_two_nodes_on_loopback_train_like_one_node(tmp_path: Path) -> None:
    split = [tmp_path / "node0", tmp_path / "node1"]
    nodes = _nodes(["std:zb-h1", "std:zb-h1"], free_port(), split)
    for k, res in enumerate(nodes):
        assert res.returncode == 0, f"node {k}: {res.stderr[-3000:]}"
        assert f"node {k} of 2 (2 processes here)" in res.stdout
    # ranks 0, 1 on node 0 and 2, 3 on node 1: each node saved its own stages
    assert sorted(p.name for p in split[0].iterdir()) == ["stage0.pt", "stage1.pt"]
    assert sorted(p.name for p in split[1].iterdir()) == ["losses.json", "stage2.pt", "stage3.pt"]
    one = tmp_path / "one"
    single = subprocess.run(_cmd("std:zb-h1", 4, 4, "--save", str(one)), env=_env(), text=True,
                            capture_output=True, timeout=300)
    assert single.returncode == 0, single.stderr[-3000:]
    two_stages, two_losses = _saved(split, 4)
    one_stages, one_losses = _saved([one], 4)
    assert len(two_losses) == STEPS and two_losses == one_losses  # the same computation, bit for bit
    for s in range(4):
        assert set(two_stages[s]) == set(one_stages[s])
        for name in one_stages[s]:
            assert torch.equal(two_stages[s][name], one_stages[s][name]), (s, name)
    _assert_matches_reference(two_stages, two_losses, 4, 4)


@pytest.mark.dist
def test_a_node_with_another_program_is_refused_on_both_nodes() -> None:
    nodes = _nodes(["std:zb-h1", "std:1f1b"], free_port())
    for k, res in enumerate(nodes):
        assert res.returncode == 1, f"node {k} should fail:\n{res.stdout}\n{res.stderr[-3000:]}"
        assert "refuses to start: ranks run different programs" in res.stderr, res.stderr[-3000:]
        line = next(ln for ln in res.stderr.splitlines() if "refuses to start" in ln)
        assert "rank 0 (node 0, host" in line and "runs program 'zb-h1'" in line
        assert "rank 2 (node 1, host" in line and "runs program '1f1b'" in line
        assert "step " not in res.stdout  # nothing trained


@pytest.mark.dist
def test_dp2_with_two_pipeline_ranks_equals_one_process_on_the_whole_batch(tmp_path: Path) -> None:
    res = subprocess.run(_cmd("std:zb-h1", 2, 2, "--dp", "2", "--save", str(tmp_path)), env=_env(), text=True,
                         capture_output=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "2 data-parallel replicas" in res.stdout
    stages, losses = _saved([tmp_path], 2)
    _assert_matches_reference(stages, losses, 2, 2)


# ---------------------------------------------------------------------- the bucketed reduction


def _count_reductions(rank: int, world: int, streams: Streams) -> dict[str, Any]:
    """Worker, 4 processes: 2 replicas x 2 pipeline ranks on a DeviceMesh; every all-reduce over
    the data-parallel group is counted, with the instruction it was issued in."""
    import torch.distributed as dist
    from schedlang.runtime.executor import PipelineRunner
    from torch.distributed.device_mesh import init_device_mesh

    mesh = init_device_mesh("cpu", (2, 2), mesh_dim_names=("dp", "pp"))
    dp_group = mesh.get_group("dp")
    replica, pp_rank = mesh.get_local_rank("dp"), mesh.get_local_rank("pp")
    spec = scale_models.mlp64(streams.num_stages, streams.num_microbatches)
    mods = {s: spec.stages[s] for s in streams.stream(pp_rank).stages}
    runner = PipelineRunner(streams, pp_rank, mods, spec.loss_fn, spec.optimizer, group=mesh.get_group("pp"),
                            dp_group=dp_group, fault_action="raise")
    calls: list[tuple[int, int, int]] = []  # (step, instruction index, elements)
    real = dist.all_reduce
    current = {"index": -1}
    real_run = runner._run

    def run(index: int, ins: Any) -> None:
        current["index"] = index
        real_run(index, ins)

    def counted(tensor: Any, *args: Any, group: Any = None, **kw: Any) -> Any:
        if group is dp_group:
            calls.append((runner.step_index, current["index"], tensor.numel()))
        return real(tensor, *args, group=group, **kw)

    runner._run = run  # type: ignore[method-assign]
    dist.all_reduce = counted
    try:
        for step in range(STEPS):
            x, y = spec.batch(step)
            runner.step(x.chunk(2)[replica], y.chunk(2)[replica])
    finally:
        dist.all_reduce = real
        runner.close()
    params = {(s, n): p.detach().clone() for s, mod in mods.items() for n, p in mod.named_parameters()}
    return {"pp_rank": pp_rank, "replica": replica, "calls": calls, "params": params,
            "sizes": {s: sum(p.numel() for p in mod.parameters()) for s, mod in mods.items()}}


@pytest.mark.dist
def test_the_data_parallel_reduction_is_one_flat_all_reduce_per_stage_per_step() -> None:
    # interleaved: two stages per rank, so "one per stage" and "one per rank" differ
    streams = codegen(api.compile("std:interleaved-1f1b", {"p": 2, "m": 2}))
    results = spawn(_count_reductions, 4, (streams,), timeout=60, join_timeout=200)
    for res in results:
        got = res.value
        rs = streams.stream(got["pp_rank"])
        assert len(rs.stages) == 2
        reduce_at = {ins.stage: i for i, ins in enumerate(rs.instrs) if ins.op is Opcode.REDUCE_GRAD}
        sizes = sorted(got["sizes"][s] for s in rs.stages)
        for step in range(STEPS):
            calls = [(i, n) for st, i, n in got["calls"] if st == step]
            # one call per stage, each carrying all of the stage's gradients (4 tensors each)
            assert sorted(n for _, n in calls) == sizes, calls
            assert sorted(i for i, _ in calls) == sorted(reduce_at.values())
        # issued where the stream reduces the stage: after its last backward, before other work ends
        for s, at in reduce_at.items():
            last_bwd = max(i for i, ins in enumerate(rs.instrs)
                           if ins.op in (Opcode.W, Opcode.BW, Opcode.B) and ins.stage == s)
            assert at > last_bwd
    # the replicas of each pipeline rank end with identical parameters (averaged gradients)
    by_pp: dict[int, list[dict[Any, Any]]] = {}
    for res in results:
        by_pp.setdefault(res.value["pp_rank"], []).append(res.value["params"])
    for replicas in by_pp.values():
        a, b = replicas
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), key


# ---------------------------------------------------------------------- placement and arguments


def test_backend_choice() -> None:
    assert choose_backend(None, cuda=True) == "nccl"
    assert choose_backend(None, cuda=False) == "gloo"
    assert choose_backend("gloo", cuda=True) == "gloo"
    assert choose_backend("nccl", cuda=True) == "nccl"
    with pytest.raises(ValueError, match="--backend nccl needs CUDA"):
        choose_backend("nccl", cuda=False)
    with pytest.raises(ValueError, match="--backend must be one of gloo, nccl"):
        choose_backend("mpi", cuda=False)


def test_device_placement() -> None:
    assert placement(0, "gloo", 0) == ("cpu", "cpu")
    assert placement(3, "gloo", 0) == ("cpu", "cpu")
    # local rank k on device k; NCCL moves CUDA tensors, gloo goes through host memory
    assert [placement(k, "nccl", 4) for k in range(4)] == [(f"cuda:{k}", f"cuda:{k}") for k in range(4)]
    assert placement(1, "gloo", 2) == ("cuda:1", "cpu")
    assert placement(3, "gloo", 2) == ("cuda:1", "cpu")  # gloo lets processes share a GPU
    with pytest.raises(ValueError, match="local rank 2 has no GPU of its own: this node has 2"):
        placement(2, "nccl", 2)


@pytest.mark.parametrize(("kw", "message"), [
    ({"dp": 0}, "--dp must be at least 1, not 0"),
    ({"nproc": 4}, "--nproc 4, but the schedule has 4 ranks x --dp 2 = 8 processes"),
    ({"nnodes": 2, "nproc_per_node": 3}, "--nnodes 2 x --nproc-per-node 3 processes, but the schedule has "
                                         "4 ranks x --dp 2 = 8 processes"),
    ({"nnodes": 2}, "--nnodes 2 needs --rdzv-endpoint HOST:PORT"),
    ({"nnodes": 2, "node_rank": 2, "rdzv_endpoint": "h:1"}, "--node-rank 2 is not in 0..1"),
    ({"nnodes": 2, "rdzv_endpoint": "localhost"}, "--rdzv-endpoint expects HOST:PORT, got 'localhost'"),
    ({"nnodes": 2, "rdzv_endpoint": "h:1", "launcher": "spawn"}, "several nodes launch through torchrun"),
    ({"launcher": "spawn", "backend": "nccl"}, "--launcher spawn runs gloo"),
])
def test_launch_arguments_are_checked_before_any_process_starts(kw: dict[str, Any], message: str) -> None:
    prog = api.compile("std:zb-h1", {"p": 4, "m": 4})
    args = {"dp": 2, **kw}
    with pytest.raises(SchedlangError) as err:
        api.check_run(prog, **args)
    assert message in str(err.value)


def test_launch_arguments_that_agree_give_the_process_count() -> None:
    prog = api.compile("std:zb-h1", {"p": 4, "m": 4})
    assert api.check_run(prog, dp=2) == 8
    assert api.check_run(prog, dp=2, nnodes=2, node_rank=1, rdzv_endpoint="10.0.0.1:29500", nproc_per_node=4) == 8
    assert api.check_run(prog, nnodes=2, rdzv_endpoint="[::1]:29500") == 4
