"""schedlang.api is the front door: what the command line prints is what the API returns.

Each test runs a command and the API function behind it on the same input and compares the
results; one more checks that every public API function is typed and documented.
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import pytest

from schedlang import api, emitters, isa
from schedlang.cli import main
from schedlang.ir import Orders
from schedlang.source import SchedlangError
from schedlang.verify import verify


def _out(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    assert main(list(argv)) == 0
    return capsys.readouterr().out


def test_simulate_json_is_simulation_dict(capsys: pytest.CaptureFixture[str]) -> None:
    out = _out(capsys, "simulate", "std:zb-h1", "--set", "p=3", "--set", "m=5", "--json")
    prog = api.load_program("std:zb-h1", sets=["p=3", "m=5"])
    assert json.loads(out) == api.simulation_dict(prog)
    assert api.simulation_dict(prog)["makespan"] == api.simulate(prog).makespan


def test_check_line_is_describe(capsys: pytest.CaptureFixture[str]) -> None:
    out = _out(capsys, "check", "std:1f1b", "--set", "p=2", "--set", "m=3")
    prog = api.compile("std:1f1b", p=2, m=3)
    assert out == f"std:1f1b: ok: {api.describe(prog)}\n"
    assert api.describe(prog) == f"2 ranks, 2 stages, 3 microbatches, {len(prog.ops)} ops, {len(prog.edges)} dependencies"


def test_load_program_takes_command_line_overrides(tmp_path: Path) -> None:
    params = tmp_path / "costs.txt"
    params.write_text("p=3\nm=4\n")
    prog = api.load_program("std:1f1b", params_file=str(params), sets=["m=6"], scheduler="list:priority=FBW")
    assert (prog.num_ranks, prog.num_microbatches, prog.orders.origin) == (3, 6, "list")
    lowered = api.load_program("std:zb-1p", sets=["m=6"], scheduled=False)
    assert not isinstance(lowered.schedule, Orders)
    assert isinstance(api.schedule(lowered).schedule, Orders)
    dumped: list[str] = []
    api.load_program("std:1f1b", dump_after="lower", dump=lambda name, _: dumped.append(name))
    assert dumped == ["lower"]
    with pytest.raises(SchedlangError) as exc:
        api.load_program("std:1f1b", sets=["q=1"])
    assert (exc.value.span.line, exc.value.span.col) == (1, 1)


def test_compare_rows_are_the_compare_json(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["std:gpipe", "std:1f1b", "--set", "p=3", "--set", "m=4", "--scheduler", "list", "--scheduler", "gpipe"]
    cli_rows = json.loads(_out(capsys, "compare", *argv, "--json"))
    rows = api.compare_rows(["std:gpipe", "std:1f1b"], ["p=3", "m=4"], ["list", "gpipe"])
    strip = [{k: v for k, v in r.items() if k != "generation_s"} for r in rows]
    assert strip == [{k: v for k, v in r.items() if k != "generation_s"} for r in cli_rows]
    assert [(r["program"], r["scheduler"]) for r in rows] == [
        ("std:gpipe", "list"), ("std:gpipe", "gpipe"), ("std:1f1b", "list"), ("std:1f1b", "gpipe")]


def test_emit_is_compile_emit(capsys: pytest.CaptureFixture[str]) -> None:
    prog = api.compile("std:zb-h1", p=2, m=3)
    for name in ("orders", "streams", "torch-csv-comms"):
        assert _out(capsys, "compile", "std:zb-h1", "--set", "p=2", "--set", "m=3", "--emit", name) == api.emit(prog, name)
    assert api.emit(prog, "streams") == isa.to_text(api.streams(prog))
    assert api.emit(prog, "chrome-trace") == api.chrome_trace(prog)
    with pytest.raises(SchedlangError, match="unknown --emit format 'pdf'"):
        api.emit(prog, "pdf")
    assert emitters.names()[:2] == ["ir", "orders"]


def test_check_streams_and_import_round_trip(tmp_path: Path) -> None:
    prog = api.compile("std:zb-h1", p=2, m=2)
    path = tmp_path / "s.txt"
    path.write_text(api.emit(prog, "streams"))
    assert "no deadlock (buffered sends)" in api.check_streams(str(path))
    assert api.load_streams(str(path)) == api.streams(prog)
    csv = tmp_path / "s.csv"
    csv.write_text(api.emit(prog, "torch-csv-comms"))
    assert "posted receives" in api.check_streams(str(csv))
    only = tmp_path / "only.csv"
    only.write_text(api.emit(prog, "torch-csv"))
    source, back = api.import_torch_csv(str(only), "compute_only", out_name="back.sched")
    assert api.orders(back) == api.orders(prog)
    assert api.orders(api.loads(source, "back.sched")) == api.orders(prog)  # the text is the program
    with pytest.raises(SchedlangError, match="cannot read"):
        api.check_streams(str(tmp_path / "missing.txt"))


def test_read_trace_gives_back_the_planned_timeline(tmp_path: Path) -> None:
    prog = api.compile("std:1f1b", p=2, m=2)
    trace = tmp_path / "t.json"
    trace.write_text(api.chrome_trace(prog))
    got, sim = api.read_trace(str(trace))
    assert sim.makespan == pytest.approx(api.simulate(prog).makespan)
    scene = api.render(got, sim)
    assert scene.width > 0 and len(got.ops) == len(prog.ops)


def test_optimize_returns_a_verified_program_with_ilp_orders() -> None:
    prog = api.load_program("std:zb-h1", sets=["p=2", "m=2"], scheduled=False)
    best, rep = api.optimize(prog, time_limit=2.0, deterministic=True, lns=False, periodic=False)
    verify(best)
    assert best.orders.origin == "ilp"
    assert api.simulate(best).cost == pytest.approx(rep.objective)


def test_builtins_are_what_list_prints(capsys: pytest.CaptureFixture[str]) -> None:
    listed = json.loads(_out(capsys, "list", "--json"))
    assert listed == [e.as_dict() for e in api.builtins()]


def test_every_public_api_function_is_typed_and_documented() -> None:
    names = [n for n, f in vars(api).items() if inspect.isfunction(f) and f.__module__ == api.__name__
             and not n.startswith("_")]
    assert {"load_program", "compare_rows", "run", "profile", "builtins", "emit", "optimize"} <= set(names)
    for name in names:
        fn = getattr(api, name)
        assert fn.__doc__, name
        sig = inspect.signature(fn)
        assert sig.return_annotation is not inspect.Signature.empty, name
        for p in sig.parameters.values():
            assert p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL) or p.annotation is not inspect.Parameter.empty, (name, p)
    for name in names:
        assert f":func:`{name}`" in (api.__doc__ or ""), f"the api docstring does not name {name}"
