"""Interop with PyTorch's pipeline schedules (torch 2.13's private APIs; skipped without it).

- Every exportable built-in passes PyTorch's own ``_validate_schedule``, its comm lowering
  (``_add_reduce_grad`` + ``_add_send_recv``, through ``_PipelineScheduleRuntime._load_csv``) and
  its untimed ``_simulate_comms_compute``; the compute_comms export loads too.
- Exported CSVs run in ``_PipelineScheduleRuntime`` with gloo on 2 and 4 CPU processes and the
  gradients (two steps, different data, an SGD step between) equal a single-process reference
  (``dist`` marker).
- PyTorch's built-in schedules, exported through their ``pipeline_order`` and imported, simulate
  to the same per-rank order.
- Schedules PyTorch would reject are reported by schedlang first, with a located error.
"""

from __future__ import annotations

import json
import socket
import types
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_codegen import _random_orders, pipelines

from schedlang import api
from schedlang.cli import main
from schedlang.export import (
    check_exportable,
    emit_torch_csv,
    emit_torch_csv_comms,
    import_torch,
    parse_torch_csv,
    torch_comms_rows,
    torch_compute_rows,
)
from schedlang.ir import Program
from schedlang.simulate import simulate
from schedlang.source import SchedlangError

try:
    import torch

    TORCH_OK = torch.__version__.split("+")[0] == "2.13.0"
except ImportError:  # pragma: no cover - torch is optional for schedlang itself
    TORCH_OK = False

needs_torch = pytest.mark.skipif(not TORCH_OK, reason="needs torch 2.13.0 (private pipelining APIs are pinned)")

STDLIB = Path(api.__file__).parent / "stdlib"
LIBRARIES = {"costs", "fbw", "fused"}  # op definitions, no schedule


def builtin_programs(p: int, m: int) -> list[tuple[str, Program | SchedlangError]]:
    """Every std: schedule compiled with p ranks and m microbatches where it declares them."""
    out: list[tuple[str, Program | SchedlangError]] = []
    for path in sorted(STDLIB.glob("*.sched")):
        name = path.stem
        if name in LIBRARIES:
            continue
        try:
            out.append((name, api.compile(f"std:{name}", p=p, m=m)))
        except SchedlangError as exc:
            out.append((name, exc))
    return out


def exportable(p: int, m: int) -> list[tuple[str, Program]]:
    result = []
    for name, prog in builtin_programs(p, m):
        if isinstance(prog, Program) and prog.num_ranks == p:
            try:
                check_exportable(prog)
            except SchedlangError:
                continue
            result.append((name, prog))
    return result


def _ids(items: list[tuple[str, Any]]) -> list[str]:
    return [n for n, _ in items]


EXPORT_2 = exportable(2, 4)
EXPORT_4 = exportable(4, 8)


# ------------------------------------------------------------------ exportability (no torch needed)


def test_builtins_compile_and_most_export() -> None:
    names = {n for n, prog in builtin_programs(2, 4) if isinstance(prog, Program)}
    assert {"gpipe", "1f1b", "zb-h1", "interleaved-1f1b"} <= names
    assert {"gpipe", "1f1b", "zb-h1", "interleaved-1f1b"} <= set(_ids(EXPORT_2))


def test_non_exportable_builtins_give_located_errors() -> None:
    for name, prog in builtin_programs(2, 4):
        if not isinstance(prog, Program):
            continue
        try:
            check_exportable(prog)
        except SchedlangError as exc:
            assert exc.span is not None, f"std:{name}: unlocated export error {exc.message}"


REJECTED = {
    "user_kind": """
        import "std:fused"
        ranks 2
        microbatches 1
        op R[s, i] role USER time 1 mem 0
        dep F[s, i] -> R[s, i]
        schedule { rank 0 { F[0, 0] R[0, 0] BW[0, 0] } rank 1 { F[1, 0] R[1, 0] BW[1, 0] } }
    """,
    "overlap_f_w": """
        import "std:fbw"
        ranks 2
        microbatches 2
        schedule {
          rank 0 { F[0, 0] F[0, 1] B[0, 0] W[0, 0] B[0, 1] W[0, 1] }
          rank 1 { F[1, 0] B[1, 0] F[1, 1] & W[1, 0] B[1, 1] W[1, 1] }
        }
    """,
    "skip_connection": """
        import "std:fused"
        ranks 3
        microbatches 1
        dep F[s, i] -> F[s + 2, i]
        schedule { rank 0 { F[0, 0] BW[0, 0] } rank 1 { F[1, 0] BW[1, 0] } rank 2 { F[2, 0] BW[2, 0] } }
    """,
    "missing_dependency": """
        import "std:costs"
        op F[s, i] time 1 mem 1
        op BW[s, i] time 2 mem -1
        dep F[s, i] -> BW[s, i]
        ranks 2
        microbatches 1
        schedule { rank 0 { F[0, 0] BW[0, 0] } rank 1 { F[1, 0] BW[1, 0] } }
    """,
    "forward_only": """
        import "std:costs"
        op F[s, i] time 1 mem 1
        dep F[s, i] -> F[s + 1, i]
        ranks 2
        microbatches 1
        schedule { rank 0 { F[0, 0] } rank 1 { F[1, 0] } }
    """,
}


@pytest.mark.parametrize("case", sorted(REJECTED))
def test_rejected_schedules_are_located(golden, case: str) -> None:
    prog = api.schedule(api.loads(REJECTED[case], name=f"{case}.sched"))
    with pytest.raises(SchedlangError) as info:
        emit_torch_csv(prog)
    assert info.value.span is not None
    with pytest.raises(SchedlangError):
        emit_torch_csv_comms(prog)
    golden.check(f"codegen/torch_reject_{case}.txt", info.value.render() + "\n")


@pytest.mark.parametrize("name", ["gpipe", "1f1b", "zb-h1", "interleaved-1f1b"])
def test_torch_csv_golden(golden, name: str) -> None:
    prog = api.compile(f"std:{name}", p=2, m=4)
    golden.check(f"codegen/{name}.torch.csv", emit_torch_csv(prog))
    golden.check(f"codegen/{name}.torch-comms.csv", emit_torch_csv_comms(prog))


# ------------------------------------------------------------------ import (no torch needed)


@pytest.mark.parametrize(("name", "prog"), EXPORT_2 + EXPORT_4, ids=_ids(EXPORT_2) + [f"{n}-p4" for n in _ids(EXPORT_4)])
def test_export_import_round_trip(name: str, prog: Program) -> None:
    """Importing an exported CSV gives the same orders (and so the same simulation, up to costs)."""
    for emit, fmt in ((emit_torch_csv, "compute_only"), (emit_torch_csv_comms, "compute_comms")):
        _, back = import_torch(emit(prog), f"{name}.csv", fmt)
        assert back.placement == prog.placement
        labels = [[sorted(back.ops[k].label for k in slot) for slot in r] for r in back.orders.ranks]
        assert labels == [[sorted(prog.ops[k].label for k in slot) for slot in r] for r in prog.orders.ranks]
        if prog.overlap == back.overlap:
            assert simulate(back).makespan == pytest.approx(simulate(prog).makespan)


def test_cli_emit_torch_csv(tmp_path, capsys) -> None:
    assert main(["compile", "std:zb-h1", "--set", "p=2", "--set", "m=2", "--emit", "torch-csv"]) == 0
    assert capsys.readouterr().out == "0F0,0F1,0I0,0W0,0I1,0W1\n1F0,1I0,1F1,1I1,1W0,1W1\n"
    src = tmp_path / "user.sched"
    src.write_text(REJECTED["user_kind"])
    assert main(["compile", str(src), "--emit", "torch-csv-comms"]) == 1
    err = capsys.readouterr().err
    assert f"{src}:5:9: error: PyTorch's schedule format has no user op kinds" in err and "Traceback" not in err


def test_import_mixed_backwards_and_errors(tmp_path, capsys) -> None:
    csv = tmp_path / "mixed.csv"
    csv.write_text("0F0,0F1,0I0,0W0,,0B1\n1F0,1B0,1F1,1I1,1W1\n")
    out = tmp_path / "mixed.sched"
    assert main(["import", str(csv), "-o", str(out)]) == 0
    prog = api.compile(str(out))
    assert [prog.ops[k].label for (k,) in prog.orders.ranks[0]] == ["F[0,0]", "F[0,1]", "B[0,0]", "W[0,0]", "BW[0,1]"]
    resched = api.compile(str(out), scheduler="list")  # an imported schedule can be re-optimized
    assert sorted(o.label for o in resched.ops) == sorted(o.label for o in prog.ops)
    bad = tmp_path / "bad.csv"
    bad.write_text("0F0,0SEND_F0,0B0\n1RECV_F0,1F0,1B0\n")
    assert main(["import", str(bad), "--format", "compute_only"]) == 1
    err = capsys.readouterr().err
    assert f"{bad}:1:5: error: communication action '0SEND_F0'" in err
    cyc = tmp_path / "cycle.csv"
    cyc.write_text("0F0,0B0\n1B0,1F0\n")
    assert main(["import", str(cyc)]) == 1
    err = capsys.readouterr().err
    assert f"{cyc}:2:1: error: the imported schedule is invalid" in err and "Traceback" not in err


@pytest.mark.parametrize(("text", "where", "what"), [
    ("0F0,0Q0\n", (1, 5), "not a PyTorch action"),
    ("0F0,0B0\n0F1,0B1\n", (2, 1), "stage 0 appears on rank 1 and on rank 0"),
    ("0F0,0B0,0F0\n", (1, 9), "appears twice"),
    ("0F0,0I0\n", (1, 1), "needs 0F0 and either 0B0 or both 0I0 and 0W0"),
    ("0F0,(0F1;0W0)OVERLAP_F_B\n", (1, 5), "OVERLAP_F_B must hold one forward and one backward"),
])
def test_import_errors_are_located(text: str, where: tuple[int, int], what: str) -> None:
    with pytest.raises(SchedlangError, match=what) as info:
        import_torch(text, "x.csv")
    assert info.value.location == where


# ------------------------------------------------------------------ PyTorch's own checks


def _mock_stages(p: int, S: int, rank: int, stages: list[int]) -> list[Any]:
    return [types.SimpleNamespace(group_size=p, group_rank=rank, num_stages=S, stage_index=s, submod=None,
                                  is_first=s == 0, is_last=s == S - 1, stage_index_to_group_rank={})
            for s in stages]


def _torch_actions(rows: list[list[str]]) -> dict[int, list[Any]]:
    from torch.distributed.pipelining.schedules import _Action

    return {r: [_Action.from_str(a) for a in row] for r, row in enumerate(rows)}


def _simulate_untimed(order: dict[int, list[Any]], stage_to_rank: dict[int, int], S: int) -> None:
    """PyTorch's ``_simulate_comms_compute`` (it knows neither REDUCE_GRAD nor OVERLAP_F_B:
    reductions are dropped and overlapped pairs run one after the other)."""
    from torch.distributed.pipelining.schedules import _simulate_comms_compute

    flat = {}
    for r, acts in order.items():
        seq = []
        for a in acts:
            if a is None or a.computation_type.value in ("REDUCE_GRAD", "UNSHARD", "RESHARD"):
                continue
            seq.extend(a.sub_actions if a.sub_actions is not None else (a,))
        flat[r] = seq
    _simulate_comms_compute(flat, lambda s: stage_to_rank[s], S)


def _load_in_runtime(prog: Program, path: Path, fmt: str, rank: int) -> Any:
    from torch.distributed.pipelining.schedules import _PipelineScheduleRuntime

    sched = _PipelineScheduleRuntime(_mock_stages(prog.num_ranks, prog.num_stages, rank, list(prog.stages_on(rank))),
                                     n_microbatches=prog.num_microbatches, loss_fn=lambda a, b: a)
    sched._load_csv(str(path), format=fmt)
    return sched


@needs_torch
@pytest.mark.parametrize(("name", "prog"), EXPORT_2 + EXPORT_4, ids=_ids(EXPORT_2) + [f"{n}-p4" for n in _ids(EXPORT_4)])
def test_pytorch_validates_and_lowers(tmp_path, name: str, prog: Program) -> None:
    from torch.distributed.pipelining.schedules import _validate_schedule

    S, p, m = prog.num_stages, prog.num_ranks, prog.num_microbatches
    mapping = _validate_schedule(_torch_actions(torch_compute_rows(prog)), p, S, m)
    assert mapping == dict(enumerate(prog.placement))
    assert _validate_schedule(_torch_actions(torch_comms_rows(prog)), p, S, m) == mapping
    only, comms = tmp_path / "c.csv", tmp_path / "cc.csv"
    only.write_text(emit_torch_csv(prog))
    comms.write_text(emit_torch_csv_comms(prog))
    lowered = _load_in_runtime(prog, only, "compute_only", 0)  # runs _add_reduce_grad and _add_send_recv
    _simulate_untimed(lowered.pipeline_order_with_comms, mapping, S)
    ours = _load_in_runtime(prog, comms, "compute_comms", 0)
    assert [str(a) for a in ours.pipeline_order_with_comms[0]] == torch_comms_rows(prog)[0]
    _simulate_untimed(_torch_actions(torch_comms_rows(prog)), mapping, S)


TORCH_BUILTINS = ["ScheduleGPipe", "ScheduleInterleaved1F1B", "ScheduleLoopedBFS",
                  "ScheduleInterleavedZeroBubble", "ScheduleZBVZeroBubble", "ScheduleDualPipeV"]


def _torch_builtin_order(cls_name: str, p: int, m: int) -> dict[int, list[Any]]:
    import torch.distributed.pipelining.schedules as S

    cls = getattr(S, cls_name)
    if issubclass(cls, S.PipelineScheduleSingle):
        sched = cls(_mock_stages(p, p, 0, [0])[0], m, loss_fn=lambda a, b: a)
    else:
        sched = cls(_mock_stages(p, 2 * p, 0, [0, p]), m, loss_fn=lambda a, b: a)
    return sched.pipeline_order  # type: ignore[no-any-return]


@needs_torch
@pytest.mark.parametrize("cls_name", TORCH_BUILTINS)
@pytest.mark.parametrize("p", [2, 4])
def test_pytorch_builtin_schedules_import_and_simulate(cls_name: str, p: int) -> None:
    order = _torch_builtin_order(cls_name, p, 2 * p)
    text = "".join(",".join("" if a is None else str(a) for a in order[r]) + "\n" for r in range(p))
    _, prog = import_torch(text, f"{cls_name}.csv")
    sim = simulate(prog)
    kinds = {"F": "F", "I": "B", "W": "W", "B": "BW"}
    for r in range(p):
        want = []
        for a in order[r]:
            if a is None or a.computation_type.value not in ("F", "I", "W", "B", "OVERLAP_F_B"):
                continue
            subs = a.sub_actions if a.sub_actions is not None else (a,)
            want.append([f"{kinds[x.computation_type.value]}[{x.stage_index},{x.microbatch_index}]" for x in subs])
        slots = prog.orders.ranks[r]
        assert [[prog.ops[k].label for k in slot] for slot in slots] == want, f"rank {r}"
        starts = [sim.start[slot[0]] for slot in slots]  # the simulation runs them in this order
        assert all(a < b for a, b in zip(starts, starts[1:], strict=False)), f"rank {r}"
        assert all(sim.start[k] == sim.start[slot[0]] for slot in slots for k in slot)


@needs_torch
def test_pytorch_1f1b_pipeline_order_bug_is_reported() -> None:
    """torch 2.13's Schedule1F1B.pipeline_order is wrong on the last rank (seen in its source):
    it names microbatch m and skips microbatch 0; the import says so instead of simulating it."""
    import torch.distributed.pipelining.schedules as S

    p, m = 4, 8
    sched = S.Schedule1F1B(_mock_stages(p, p, 0, [0])[0], m, loss_fn=lambda a, b: a)
    text = "".join(",".join("" if a is None else str(a) for a in sched.pipeline_order[r]) + "\n" for r in range(p))
    with pytest.raises(SchedlangError, match="microbatch 8 needs 0F8"):
        import_torch(text, "1f1b.csv")
    assert parse_torch_csv(text).num_microbatches == m + 1


# ------------------------------------------------------------------ real runs (gloo, CPU processes)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _run_all(world: int, progs: list[tuple[str, Program]], tmp: Path) -> dict[str, list[str]]:
    import torch.multiprocessing as mp
    from test_torch_interop_worker import worker

    jobs = []
    for name, prog in progs:
        for fmt, emit in (("compute_only", emit_torch_csv), ("compute_comms", emit_torch_csv_comms)):
            path = tmp / f"{name}.{fmt}.csv"
            path.write_text(emit(prog))
            jobs.append({"name": f"{name}/{fmt}", "csv": str(path), "format": fmt, "num_stages": prog.num_stages,
                         "num_microbatches": prog.num_microbatches, "placement": list(prog.placement)})
    mp.spawn(worker, args=(world, _free_port(), jobs, str(tmp)), nprocs=world, join=True)
    results: dict[str, list[str]] = {}
    for r in range(world):
        for job, res in json.loads((tmp / f"rank{r}.json").read_text()).items():
            results.setdefault(job, []).append(res)
    return results


def _torch_imported(cls_name: str, p: int, m: int) -> Program:
    """One of PyTorch's built-in schedules, imported into schedlang."""
    order = _torch_builtin_order(cls_name, p, m)
    text = "".join(",".join("" if a is None else str(a) for a in order[r]) + "\n" for r in range(p))
    return import_torch(text, f"{cls_name}.csv")[1]


# PyTorch's own multi-stage schedules run again from our export of their import (DualPipeV brings
# OVERLAP_F_B with full backwards and a mix of B and I/W).
FROM_TORCH = ["ScheduleDualPipeV", "ScheduleZBVZeroBubble", "ScheduleInterleavedZeroBubble"]
RUN_2 = [(n, p) for n, p in EXPORT_2] + ([(f"torch-{c}", _torch_imported(c, 2, 4)) for c in FROM_TORCH]
                                         if TORCH_OK else [])
RUN_4 = [(n, p) for n, p in exportable(4, 4)]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[int, dict[str, list[str]]]:
    return {2: _run_all(2, RUN_2, tmp_path_factory.mktemp("pp2")),
            4: _run_all(4, RUN_4, tmp_path_factory.mktemp("pp4"))}


@needs_torch
@pytest.mark.dist
@pytest.mark.timeout(300)
@pytest.mark.parametrize("fmt", ["compute_only", "compute_comms"])
@pytest.mark.parametrize(("world", "name"), [(2, n) for n, _ in RUN_2] + [(4, n) for n, _ in RUN_4])
def test_exported_csv_trains_like_one_process(runs: dict[int, dict[str, list[str]]], world: int, name: str,
                                              fmt: str) -> None:
    res = runs[world].get(f"{name}/{fmt}")
    assert res is not None and len(res) == world, f"job did not run on every rank: {res}"
    assert res == ["ok"] * world, "\n".join(res)


# ------------------------------------------------------------------ properties over generated schedules


@st.composite
def exportable_programs(draw: st.DrawFn) -> Program:
    """A random pipeline (no user kinds) with random valid orders, some F & B slots overlapped."""
    src = draw(pipelines()).replace('op R[s, i] role USER time 0.5 mem 0\n', "")
    src = "\n".join(line for line in src.splitlines() if "R[" not in line) + "\n"
    return _random_orders(api.loads(src), draw(st.randoms(use_true_random=False)), draw(st.booleans()))


@pytest.mark.slow
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(exportable_programs())
def test_random_schedules_round_trip_through_csv(prog: Program) -> None:
    check_exportable(prog)
    for emit, fmt in ((emit_torch_csv, "compute_only"), (emit_torch_csv_comms, "compute_comms")):
        _, back = import_torch(emit(prog), "x.csv", fmt)
        # the ops of an overlapped slot run together: their order inside the slot is not kept
        assert [[sorted(back.ops[k].label for k in s) for s in r] for r in back.orders.ranks] == \
            [[sorted(prog.ops[k].label for k in s) for s in r] for r in prog.orders.ranks]


@pytest.mark.slow
@needs_torch
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(exportable_programs())
def test_pytorch_accepts_random_valid_schedules(prog: Program) -> None:
    """PyTorch's validator, its comm lowering (which raises on a cross-rank deadlock) and its
    untimed simulation of our compute_comms rows accept every valid schedlang order."""
    from torch.distributed.pipelining.schedules import (
        _add_reduce_grad,
        _add_send_recv,
        _validate_schedule,
    )

    S, p, m = prog.num_stages, prog.num_ranks, prog.num_microbatches
    compute = _torch_actions(torch_compute_rows(prog))
    mapping = _validate_schedule(compute, p, S, m)
    assert mapping == dict(enumerate(prog.placement))
    lowered = _add_send_recv({r: _add_reduce_grad(a, m) for r, a in compute.items()}, lambda s: mapping[s], S)
    _simulate_untimed(lowered, mapping, S)
    _simulate_untimed(_torch_actions(torch_comms_rows(prog)), mapping, S)


@needs_torch
def test_import_golden(golden) -> None:
    """The program text the import writes for PyTorch's DualPipeV (mixed B and I/W, overlaps)."""
    order = _torch_builtin_order("ScheduleDualPipeV", 2, 4)
    text = "".join(",".join("" if a is None else str(a) for a in order[r]) + "\n" for r in range(2))
    source, _ = import_torch(text, "DualPipeV.csv")
    golden.check("codegen/import_dualpipev.sched", source)
    golden.check("codegen/import_dualpipev.csv", text)


@needs_torch
@pytest.mark.parametrize("cls_name", [c for c in TORCH_BUILTINS if c != "ScheduleGPipe"])
@pytest.mark.parametrize("p", [2, 4])
def test_pytorch_lowering_passes_our_deadlock_check(cls_name: str, p: int) -> None:
    """PyTorch's own comm lowering of its built-ins, read as instruction streams, passes our
    symbolic execution (buffered and rendezvous) with every pair's messages in order."""
    import torch.distributed.pipelining.schedules as S

    from schedlang.export import torch_rows_to_streams
    from schedlang.isa_check import StreamError, check_streams

    sched = getattr(S, cls_name)(_mock_stages(p, 2 * p, 0, [0, p]), 2 * p, loss_fn=lambda a, b: a)
    rows = [[str(a) for a in sched.pipeline_order_with_comms[r]] for r in range(p)]
    placement = [sched.stage_index_to_group_rank[s] for s in range(2 * p)]
    streams = torch_rows_to_streams(rows, placement, 2 * p)
    check_streams(streams, flow=False)
    check_streams(streams, sends="rendezvous", flow=False)
    # two receives of one channel swapped: caught as messages out of order
    r = next(r for r in range(p) if sum("RECV_F" in a for a in rows[r]) >= 2)
    i, j = [k for k, a in enumerate(rows[r]) if "RECV_F" in a][:2]
    assert placement[int(rows[r][i].split("RECV_F")[0]) - 1] == placement[int(rows[r][j].split("RECV_F")[0]) - 1]
    rows[r][i], rows[r][j] = rows[r][j], rows[r][i]
    with pytest.raises(StreamError, match="does not match"):
        check_streams(torch_rows_to_streams(rows, placement, 2 * p), flow=False)


def test_cli_streams_checks_pytorch_comms_csv(tmp_path, capsys) -> None:
    good = tmp_path / "zbv.csv"
    assert main(["compile", "std:zb-v", "--set", "p=4", "--emit", "torch-csv-comms", "-o", str(good)]) == 0
    assert main(["streams", str(good)]) == 0
    assert "no deadlock (buffered sends, posted receives)" in capsys.readouterr().out
    assert main(["streams", str(good), "--recvs", "blocking"]) == 0
    bad = tmp_path / "bad.csv"  # rank 1 never sends the gradient rank 0 waits for
    bad.write_text("0F0,0SEND_F0,0RECV_B0,0B0,0REDUCE_GRAD\n1RECV_F0,1F0,1B0,1REDUCE_GRAD\n")
    assert main(["streams", str(bad)]) == 1
    assert "rank 1 sends 0 messages to rank 0, which receives 1" in capsys.readouterr().err
    early = tmp_path / "early.csv"  # a receive posted early: fine for PyTorch, which waits at 0B0
    early.write_text("0RECV_B0,0F0,0SEND_F0,0B0,0REDUCE_GRAD\n1RECV_F0,1F0,1B0,1SEND_B0,1REDUCE_GRAD\n")
    assert main(["streams", str(early)]) == 0
    assert main(["streams", str(early), "--recvs", "blocking"]) == 1  # a blocking receive there hangs
    assert "ranks 0 -> 1 -> 0 wait on each other" in capsys.readouterr().err
    # without the REDUCE_GRADs PyTorch would not scale the gradients: refused at the end of the row
    bare = tmp_path / "bare.csv"
    bare.write_text("0F0,0SEND_F0,0RECV_B0,0B0\n1RECV_F0,1F0,1B0,1SEND_B0,1REDUCE_GRAD\n")
    assert main(["streams", str(bare)]) == 1
    assert capsys.readouterr().err.startswith(f"{bare}:1:23: error: rank 0, at the end of its stream (after "
                                              "instruction 3): no REDUCE_GRAD of stage 0")
    cyc = tmp_path / "cycle.csv"  # rank 0 runs its backward before the forward that feeds rank 1
    cyc.write_text("0RECV_B0,0B0,0F0,0SEND_F0\n1RECV_F0,1F0,1B0,1SEND_B0\n")
    assert main(["streams", str(cyc)]) == 1
    err = capsys.readouterr().err
    # the data-flow check sees it before the deadlock it causes
    assert err.startswith(f"{cyc}:1:10: error: rank 0, instruction 1 (BW stage=0 mb=0): backward before the "
                          "forward of stage 0 microbatch 0"), err
