"""The command line: outputs (goldens), JSON shape, exit codes, and errors without tracebacks."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from schedlang import api, emitters
from schedlang.cli import main


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_simulate_json(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "simulate", "std:1f1b", "--set", "p=4", "--set", "m=8", "--json")
    assert code == 0, err
    d = json.loads(out)
    assert d["makespan"] == pytest.approx(33.0) and d["bubble_rate"] == pytest.approx(9 / 33)
    assert [r["rank"] for r in d["ranks"]] == [0, 1, 2, 3]
    assert set(d["ranks"][0]) >= {"rank", "busy", "span", "idle", "peak_memory"}
    assert d["ranks"][0]["peak_memory"] == 4.0


def test_compile_emit_ir_and_orders_goldens(capsys: pytest.CaptureFixture[str], golden) -> None:  # type: ignore[no-untyped-def]
    code, out, _ = run(capsys, "compile", "std:1f1b", "--set", "p=2", "--set", "m=3", "--emit", "ir")
    assert code == 0
    golden.check("core/1f1b-p2-m3.ir", out)
    code, out, _ = run(capsys, "compile", "std:gpipe", "--set", "p=3", "--set", "m=2")
    assert code == 0
    golden.check("core/gpipe-p3-m2.orders", out)


def test_compile_to_file_and_dump_after(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    target = tmp_path / "o.txt"
    code, out, _ = run(capsys, "compile", "std:1f1b", "--set", "p=2", "--set", "m=2", "-o", str(target),
                       "--dump-after", "schedule")
    assert code == 0
    assert target.read_text().startswith("rank 0: F[0,0] F[0,1] BW[0,0]")
    assert out.startswith("# IR after schedule\nprogram 1f1b")
    code, out, _ = run(capsys, "compile", "std:1f1b", "--dump-after", "lower", "--scheduler", "list")
    assert "# IR after lower" in out and 'schedule "list"' in out


def test_scheduler_flag_replaces_schedule_clause(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "compile", "std:1f1b", "--scheduler", "list:priority=FBW", "--set", "m=2")
    assert code == 0, err
    assert out.splitlines()[0] == "rank 0: F[0,0] F[0,1] BW[0,0] BW[0,1]"


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["simulate", "std:1f1b", "--set", "q=1"], "<command line>:1:1: error: 'std:1f1b' has no parameter 'q'"),
        (["simulate", "std:1f1b", "--set", "p"], "expected NAME=VALUE"),
        (["simulate", "std:nope"], "no standard module 'std:nope'"),
        (["simulate", "/no/such/file.sched"], "cannot read '/no/such/file.sched'"),
        (["compile", "std:1f1b", "--scheduler", "list:speed=3"], "has no argument 'speed'"),
        (["compile", "std:1f1b", "--dump-after", "optimize"], "no such pass"),
    ],
)
def test_user_errors_exit_1_without_traceback(capsys: pytest.CaptureFixture[str], argv: list[str], fragment: str) -> None:
    code, _, err = run(capsys, *argv)
    assert code == 1
    assert fragment in err
    assert "Traceback" not in err


@pytest.mark.parametrize("command", ["compile", "optimize"])
def test_unknown_emit_is_rejected_while_parsing_arguments(capsys: pytest.CaptureFixture[str], command: str) -> None:
    # the file does not exist: a rejection before any work never gets to read it
    with pytest.raises(SystemExit) as exc:
        main([command, "/no/such/file.sched", "--emit", "pdf"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    formats = ", ".join(emitters.EMITTERS)
    assert f"schedlang {command}: error: argument --emit: unknown format 'pdf' (formats: {formats})" in err
    assert "cannot read" not in err and "Traceback" not in err


def test_compile_help_lists_every_emit_format_with_its_summary(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["compile", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    listing = out[out.index("--emit formats:\n"):].splitlines()[1:]
    assert [line.split()[0] for line in listing] == list(emitters.EMITTERS)
    for line, e in zip(listing, emitters.EMITTERS.values(), strict=True):
        assert line.split(None, 1)[1] == e.summary


def test_every_emit_format_writes_a_compiled_program(capsys: pytest.CaptureFixture[str]) -> None:
    for name, e in emitters.EMITTERS.items():
        code, out, err = run(capsys, "compile", "std:zb-h1", "--set", "p=2", "--set", "m=2", "--emit", name)
        assert code == 0, err
        assert out == e(api.compile("std:zb-h1", p=2, m=2)), name


def test_check_reports_a_located_error(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    f = tmp_path / "bad.sched"
    f.write_text('import "std:fused"\nparam p = 2\nranks p\nmicrobatches 2\nlet z = p +\n')
    code, _, err = run(capsys, "check", str(f))
    assert code == 1
    assert err.startswith(f"{f}:5:12: error: unexpected end of input")
    assert err.splitlines()[1:] == ["  let z = p +", "             ^"]


def test_console_entry_points() -> None:
    res = subprocess.run([sys.executable, "-m", "schedlang", "--help"], capture_output=True, text=True, check=False)
    assert res.returncode == 0 and "simulate" in res.stdout and "compile" in res.stdout
    res = subprocess.run([sys.executable, "-m", "schedlang", "check", "std:gpipe"], capture_output=True, text=True,
                         check=False)
    assert res.returncode == 0 and "ok: 4 ranks, 4 stages, 8 microbatches" in res.stdout
