"""Bad input never hangs, leaks or crashes: hostile imports, unbounded work, odd values.

Every case runs the real command line in one child process capped in memory, each with a
timeout (see ``harness.py``), and asserts the exact located error it must give: exit status
1 and ``FILE:LINE:COL: error: ...`` (or argparse's usage error, status 2, for an option out of
range). A canary file planted outside the project must never appear in any output.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import Harness, Result

from schedlang import api, limits
from schedlang.source import SchedlangError

CANARY = "CANARY-7f3a9c-do-not-leak"
LOCATED = re.compile(r"^(?P<file>[^\s].*?):(?P<line>\d+):(?P<col>\d+): error: ", re.M)


@pytest.fixture(scope="module")
def harness() -> Iterator[Harness]:
    h = Harness()
    yield h
    h.close()


def _error(res: Result, file: str, line: int, col: int, fragment: str) -> None:
    """The command failed with a user error located at file:line:col whose message has ``fragment``."""
    assert res.rc == 1, res
    assert "internal error" not in res.err and "Traceback" not in res.err, res.err
    m = LOCATED.match(res.err)
    assert m is not None, res.err
    assert (os.path.basename(m["file"]) if os.sep in m["file"] else m["file"], int(m["line"]), int(m["col"])) == \
        (file, line, col), res.err
    assert fragment in res.err.splitlines()[0], res.err


def _usage_error(res: Result, fragment: str) -> None:
    assert res.rc == 2, res
    assert fragment in res.err, res.err


# ------------------------------------------------------------------ confined imports


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``base/proj`` (the program's folder) and, outside it, ``base/outside`` with the canary."""
    base = tmp_path_factory.mktemp("imports")
    proj, outside = base / "proj", base / "outside"
    proj.mkdir()
    outside.mkdir()
    (outside / "secret.txt").write_text(f"{CANARY}\n")
    (outside / "secret.sched").write_text(f"{CANARY} = 1\n")
    (outside / "lib.sched").write_text("param tf = 2.0\n")
    (proj / "notes.sched").write_text(f"{CANARY}: my password\n")  # inside, but not a program
    (proj / "link-out.sched").symlink_to(outside / "secret.sched")
    (proj / "link-txt.sched").symlink_to(outside / "secret.txt")
    (proj / "link-zero.sched").symlink_to("/dev/zero")
    (proj / "dir.sched").mkdir()
    os.mkfifo(proj / "pipe.sched")
    (proj / "big.sched").write_text("# " + "x" * (limits.Limits().max_source_bytes + 10) + "\n")
    (proj / "binary.sched").write_bytes(b"param p = 1\n\xff\xfe" + CANARY.encode() + b"\n")
    (proj / "self.sched").write_text('import "./self.sched"\n')
    (proj / "a.sched").write_text('import "alias.sched"\n')
    (proj / "alias.sched").symlink_to(proj / "a.sched")
    (proj / "loop.sched").write_text('import "sub/../loop.sched"\n')
    (proj / "sub").mkdir()
    return proj


HOSTILE_IMPORTS = [
    # (import path, expected fragment of the error)
    ("/etc/passwd", "only .sched files can be imported"),
    ("/proc/self/environ", "only .sched files can be imported"),
    ("../../../../etc/hostname", "only .sched files can be imported"),
    ("/dev/zero", "only .sched files can be imported"),
    ("/dev/urandom", "only .sched files can be imported"),
    ("{outside}/secret.txt", "only .sched files can be imported"),
    ("{outside}/secret.sched", "outside the import root"),
    ("../outside/secret.sched", "outside the import root"),
    ("sub/../../outside/secret.sched", "outside the import root"),
    ("link-out.sched", "outside the import root"),
    ("link-txt.sched", "outside the import root"),
    ("link-zero.sched", "outside the import root"),
    ("notes.sched", "not a schedlang program"),
    ("binary.sched", "not UTF-8 text"),
    ("pipe.sched", "not a regular file"),
    ("dir.sched", "not a regular file"),
    ("big.sched", "max_source_bytes"),
    ("missing.sched", "No such file"),
    ("self.sched", "import cycle"),
    ("./self.sched", "import cycle"),
    ("a.sched", "import cycle"),
    ("loop.sched", "import cycle"),
]


@pytest.mark.parametrize(("path", "fragment"), HOSTILE_IMPORTS, ids=[p for p, _ in HOSTILE_IMPORTS])
def test_hostile_import_is_refused_without_leaking(harness: Harness, project: Path, path: str,
                                                   fragment: str) -> None:
    path = path.format(outside=project.parent / "outside")
    main = project / f"main-{abs(hash(path))}.sched"
    main.write_text(f'param p = 2\nimport "{path}"\n')
    res = harness.run(["check", str(main)])
    assert CANARY not in res.text, res
    assert res.rc == 1, res
    m = LOCATED.match(res.err)
    assert m is not None, res.err
    assert fragment in res.err.splitlines()[0], res.err
    if "cycle" in fragment:  # reported where it closes, in the imported file
        assert m["file"] == str(project / path.removeprefix("./")), res.err
    elif fragment == "not a schedlang program":  # at the file's start, with a note at the import
        assert (m["file"], m["line"], m["col"]) == (str(project / path), "1", "1"), res.err
        assert f"{main}:2:1: note: imported here" in res.err, res.err
    else:
        assert (m["file"], m["line"], m["col"]) == (str(main), "2", "1"), res.err


def test_nul_in_an_import_path(harness: Harness, project: Path) -> None:
    main = project / "nul.sched"
    main.write_text('import "a\0b.sched"\n')
    _error(harness.run(["check", str(main)]), "nul.sched", 1, 1, "NUL character")


def test_import_root_widens_the_confinement(harness: Harness, project: Path) -> None:
    main = project / "widen.sched"
    main.write_text('import "std:1f1b"\nimport "../outside/lib.sched"\n')
    _error(harness.run(["check", str(main)]), "widen.sched", 2, 1, "outside the import root")
    res = harness.run(["check", str(main), "--import-root", str(project.parent)])
    assert res.rc == 0 and "ok: 4 ranks" in res.out, res
    # the widened root still refuses what lies outside it, and what is not a program file
    main.write_text('import "std:1f1b"\nimport "../outside/secret.txt"\n')
    res = harness.run(["check", str(main), "--import-root", str(project.parent)])
    assert res.rc == 1 and CANARY not in res.text and "only .sched" in res.err, res
    main.write_text('import "std:1f1b"\nimport "../outside/secret.sched"\n')
    res = harness.run(["check", str(main), "--import-root", str(project.parent)])
    assert res.rc == 1 and CANARY not in res.text and "not a schedlang program" in res.err, res


def test_import_root_api(project: Path) -> None:
    text = 'import "std:1f1b"\nimport "../outside/lib.sched"\n'
    with pytest.raises(SchedlangError, match="outside the import root") as err:
        api.loads(text, name=str(project / "x.sched"), import_root=str(project))
    assert err.value.location == (2, 1)
    prog = api.loads(text, name=str(project / "x.sched"), import_root=str(project.parent))
    assert prog.num_ranks == 4 and dict(prog.params)["tf"] == 2.0


def test_main_file_must_be_a_regular_file(harness: Harness, project: Path) -> None:
    res = harness.run(["check", str(project / "pipe.sched")])
    assert res.rc == 1 and "not a regular file" in res.err, res
    res = harness.run(["check", "/dev/zero"])
    assert res.rc == 1 and "not a regular file" in res.err, res


# ------------------------------------------------------------------ bounded work


def test_power_tower_on_the_command_line(harness: Harness) -> None:
    res = harness.run(["check", "std:1f1b", "--set", "p=2**2**40"])
    _error(res, "<command line>", 1, 3, "max_int_bits")
    assert "--limit max_int_bits=N" in res.err


def test_power_tower_in_a_program(harness: Harness, tmp_path: Path) -> None:
    f = tmp_path / "tower.sched"
    f.write_text('import "std:1f1b"\nparam big = 2 ** 2 ** 2 ** 2 ** 2 ** 2\n')
    _error(harness.run(["check", str(f)]), "tower.sched", 2, 18, "max_int_bits")


def test_power_tower_in_a_params_file(harness: Harness, tmp_path: Path) -> None:
    f = tmp_path / "p.params"
    f.write_text("# measured\nm = 8\np = 9 ** 9 ** 9\n")
    _error(harness.run(["check", "std:1f1b", "--params", str(f)]), "p.params", 3, 4, "max_int_bits")


def test_power_tower_in_a_scheduler_argument(harness: Harness) -> None:
    res = harness.run(["check", "std:1f1b", "--scheduler", "ilp:time_limit=2**2**40"])
    _error(res, "<--scheduler>", 1, 5, "time_limit: ")
    assert "max_int_bits" in res.err


def test_long_range_in_a_program(harness: Harness, tmp_path: Path) -> None:
    f = tmp_path / "range.sched"
    f.write_text('import "std:1f1b"\nlet xs = range(0, 10**9)\n')
    _error(harness.run(["check", str(f)]), "range.sched", 2, 10, "max_list_len")


def test_long_range_on_the_command_line(harness: Harness) -> None:
    _error(harness.run(["check", "std:1f1b", "--set", "tf=range(0, 10**9)"]), "<command line>", 1, 4, "max_list_len")


def test_millions_of_stages(harness: Harness, tmp_path: Path) -> None:
    f = tmp_path / "huge.sched"
    f.write_text("ranks 4\nstages 4900000\nmicrobatches 1\nplace s => s % 4\nop F[s, i] time 1\n")
    res = harness.run(["check", str(f)])
    _error(res, "huge.sched", 3, 1, "4,900,000 stages x 1 microbatches x 1 op kinds is over 1,000,000 ops")
    assert "--limit max_ops=N" in res.err


def test_long_schedule_loop(harness: Harness, tmp_path: Path) -> None:
    f = tmp_path / "loop.sched"
    f.write_text("ranks 1\nmicrobatches 1\nop F[s, i] time 1\n"
                 "schedule {\n  rank 0 {\n    F[0, 0]\n    for i in 0..10**8 { }\n  }\n}\n")
    _error(harness.run(["check", str(f)]), "loop.sched", 7, 5, "max_loop_steps")


def test_dependency_limit(harness: Harness) -> None:
    from schedlang.load import read_source

    first_dep = next(i for i, line in enumerate(read_source("std:fused").text.splitlines(), 1)
                     if line.startswith("dep "))
    _error(harness.run(["check", "std:1f1b", "--limit", "max_deps=10"]), "std:fused", first_dep, 1,
           "over 10 dependencies")


def test_limits_can_be_raised(harness: Harness, tmp_path: Path) -> None:
    f = tmp_path / "wide.sched"
    f.write_text('import "std:1f1b"\nparam big = 2 ** 100\n')
    assert harness.run(["check", str(f)]).rc == 1
    res = harness.run(["check", str(f), "--limit", "max_int_bits=128"])
    assert res.rc == 0 and "ok: 4 ranks" in res.out, res
    _usage_error(harness.run(["check", str(f), "--limit", "max_bits=128"]), "expected NAME=N")
    _usage_error(harness.run(["check", str(f), "--limit", "max_ops=0"]), "must be a positive integer")


def test_limits_api() -> None:
    with pytest.raises(SchedlangError, match="max_int_bits"):
        api.loads('import "std:1f1b"\nparam big = 2 ** 100\n')
    prog = api.loads('import "std:1f1b"\nparam big = 2 ** 100\n', limits={"max_int_bits": 101})
    assert dict(prog.params)["big"] == 2 ** 100
    assert limits.current() == limits.Limits()  # the API restores the limits in force
    with pytest.raises(SchedlangError, match="max_ops"):
        api.compile("std:1f1b", limits={"max_ops": 63})
    assert len(api.compile("std:1f1b", limits={"max_ops": 64}).ops) == 64
    with pytest.raises(SchedlangError, match="unknown limit"):
        api.loads("", limits={"max_opz": 1})
    with pytest.raises(SchedlangError, match="max_int_bits"):
        api.load("std:1f1b", p=2 ** 70)


@pytest.mark.parametrize(("argv", "fragment"), [
    (["run", "std:1f1b", "--timeout", "0"], "--timeout: expected a finite number > 0, got '0'"),
    (["run", "std:1f1b", "--timeout", "-1"], "--timeout: expected a finite number > 0, got '-1'"),
    (["run", "std:1f1b", "--timeout", "nan"], "--timeout: expected a finite number > 0"),
    (["run", "std:1f1b", "--prepost", "-1"], "--prepost: expected an integer >= 0, got '-1'"),
    (["run", "std:1f1b", "--threads", "0"], "--threads: expected a positive integer, got '0'"),
    (["render", "std:1f1b", "--width", "0"], "--width: expected a width from 200 to 20000 pixels, got '0'"),
    (["render", "std:1f1b", "--width", "100000000"], "--width: expected a width from 200 to 20000 pixels"),
    (["optimize", "std:1f1b", "--time-limit", "-5"], "--time-limit: expected a finite number > 0"),
], ids=["timeout-0", "timeout-neg", "timeout-nan", "prepost-neg", "threads-0", "width-0", "width-huge", "time-limit-neg"])
def test_option_ranges(harness: Harness, argv: list[str], fragment: str) -> None:
    _usage_error(harness.run(argv), fragment)


def test_outputs_are_checked_before_the_work(harness: Harness, tmp_path: Path) -> None:
    missing = str(tmp_path / "missing" / "dir" / "out.txt")
    for argv in (["optimize", "std:1f1b", "--quiet", "-o", missing], ["run", "std:1f1b", "--trace", missing],
                 ["profile", "std:1f1b", "-o", missing]):
        res = harness.run(argv)
        assert res.rc == 1 and f"cannot write '{missing}': the folder" in res.err, res
        assert res.out == "", res  # nothing ran: optimize prints its report, run its banner, profile its table


# ------------------------------------------------------------------ odd input


def _nested(depth: int) -> dict[str, str]:
    return {
        "sum": "param x = " + "1 + " * depth + "1\n",
        "unary": "param x = " + "-" * depth + "1\n",
        "power": "param x = " + "1 ** " * depth + "1\n",
        "list": "param x = " + "[" * depth + "1" + "]" * depth + "\n",
        "call": "param x = " + "abs(" * depth + "1" + ")" * depth + "\n",
        "cond": "param x = " + "true ? 1 : " * depth + "1\n",
        "not": "param x = " + "not " * depth + "true\n",
        "blocks": "schedule {\n  rank 0 {\n" + "if true { " * depth + "}" * depth + "\n  }\n}\n",
    }


@pytest.mark.parametrize("shape", list(_nested(1)))
def test_deep_nesting_is_a_located_error(harness: Harness, tmp_path: Path, shape: str) -> None:
    f = tmp_path / "deep.sched"
    f.write_text("ranks 1\nmicrobatches 1\nop F[s, i] time 1\n" + _nested(3000)[shape])
    res = harness.run(["check", str(f)])
    assert res.rc == 1 and "max_depth" in res.err, res
    m = LOCATED.match(res.err)
    assert m is not None and m["file"] == str(f) and m["line"] in ("4", "6"), res.err


def test_deep_nesting_within_a_raised_limit_compiles(harness: Harness, tmp_path: Path) -> None:
    f = tmp_path / "deep.sched"
    f.write_text('ranks 1\nmicrobatches 1\nop F[s, i] time x\nschedule "list"\n' + _nested(2000)["sum"])
    res = harness.run(["check", str(f), "--limit", "max_depth=2100"])
    assert res.rc == 0 and "ok: 1 ranks" in res.out, res
    res = harness.run(["simulate", "--json", str(f), "--limit", "max_depth=2100"])
    assert res.rc == 0 and '"makespan": 2001' in res.out, res


def test_deep_parentheses_do_not_nest(harness: Harness, tmp_path: Path) -> None:
    f = tmp_path / "parens.sched"
    f.write_text('ranks 1\nmicrobatches 1\nop F[s, i] time x\nschedule "list"\nparam x = ' + "(" * 5000 + "3" + ")" * 5000 + "\n")
    res = harness.run(["simulate", "--json", str(f)])
    assert res.rc == 0 and '"makespan": 3' in res.out, res


def test_deep_nesting_on_the_command_line(harness: Harness) -> None:
    res = harness.run(["check", "std:1f1b", "--set", "p=" + "[" * 3000 + "1" + "]" * 3000])
    assert res.rc == 1 and "max_depth" in res.err and res.err.startswith("<command line>:1:"), res


BIG = "9" * 4301


def test_huge_integer_literals(harness: Harness, tmp_path: Path) -> None:
    f = tmp_path / "big.sched"
    f.write_text(f'import "std:1f1b"\nparam big = {BIG}\n')
    _error(harness.run(["check", str(f)]), "big.sched", 2, 13, "a 4,301-digit integer is too large")
    res = harness.run(["check", "std:1f1b", "--set", f"p={BIG}"])
    _error(res, "<command line>", 1, 3, "4,301-digit")
    assert len(res.err) < 600, res.err  # the quoted line is a window around the spot
    params = tmp_path / "big.params"
    params.write_text(f"p = {BIG}\n")
    _error(harness.run(["check", "std:1f1b", "--params", str(params)]), "big.params", 1, 4, "4,301-digit")
    csv = tmp_path / "big.csv"
    csv.write_text(f"0F0,0B0,0F{BIG}\n")
    _error(harness.run(["import", str(csv)]), "big.csv", 1, 9, "index too large")
    f.write_text(f'import "std:1f1b"\nparam big = 1e{BIG}\n')
    _error(harness.run(["check", str(f)]), "big.sched", 2, 13, "too large for a float")


def test_non_utf8_files(harness: Harness, tmp_path: Path) -> None:
    params = tmp_path / "bad.params"
    params.write_bytes(b"m = 8\np = 4\xff\n")
    _error(harness.run(["check", "std:1f1b", "--params", str(params)]), "bad.params", 2, 6, "not UTF-8 text")
    csv = tmp_path / "bad.csv"
    csv.write_bytes(b"0F0,\xc3\n")
    _error(harness.run(["import", str(csv)]), "bad.csv", 1, 5, "not UTF-8 text")
    prog = tmp_path / "bad.sched"
    prog.write_bytes(b'import "std:1f1b"\n# caf\xe9\n')
    _error(harness.run(["check", str(prog)]), "bad.sched", 2, 6, "not UTF-8 text")


def test_byte_order_mark_is_accepted(harness: Harness, tmp_path: Path) -> None:
    bom = "\ufeff"
    prog = tmp_path / "bom.sched"
    prog.write_text(f'{bom}import "std:1f1b"\n', encoding="utf-8")
    assert harness.run(["check", str(prog)]).rc == 0
    params = tmp_path / "bom.params"
    params.write_text(f"{bom}p = 2\n", encoding="utf-8")
    res = harness.run(["check", "std:1f1b", "--params", str(params)])
    assert res.rc == 0 and "ok: 2 ranks" in res.out, res
    csv = tmp_path / "bom.csv"
    csv.write_text(f"{bom}0F0,0I0,0W0\n", encoding="utf-8")
    assert harness.run(["import", str(csv)]).rc == 0
    assert api.loads(f'{bom}import "std:1f1b"\n').num_ranks == 4
    with pytest.raises(SchedlangError) as err:  # columns on the first line stay those of the text
        api.loads(f"{bom}ranks 2 2\n")
    assert err.value.location == (1, 10)  # the mark is column 1


def test_non_finite_results_are_refused(harness: Harness) -> None:
    from schedlang.load import read_source

    lines = read_source("std:fused").text.splitlines()
    f_line = next(i for i, line in enumerate(lines, 1) if line.startswith("op F["))
    time_col, mem_col = (lines[f_line - 1].index(w) + 1 for w in (" time ", " mem "))
    res = harness.run(["simulate", "std:1f1b", "--set", "tf=1e308"])
    _error(res, "std:fused", f_line, time_col + 1, "the ops' total time overflows a float")
    assert "inf" not in res.out and "nan" not in res.out
    res = harness.run(["simulate", "std:1f1b", "--set", "mem_f=1e308", "--set", "m=4"])
    _error(res, "std:fused", f_line, mem_col + 1, "total memory overflows")
    _error(harness.run(["check", "std:1f1b", "--set", "tf=1e308 * 10"]), "<command line>", 1, 4, "overflows")
    _error(harness.run(["check", "std:1f1b", "--set", "mem_limit=inf - inf"]), "<command line>", 1, 11,
           "'-' has no numeric result")
    with pytest.raises(SchedlangError, match="NaN is not a value"):
        api.load("std:1f1b", tf=float("nan"))


def test_missing_ranks_points_at_the_program(harness: Harness, tmp_path: Path) -> None:
    f = tmp_path / "noranks.sched"
    f.write_text('import "std:fused"\n')
    _error(harness.run(["check", str(f)]), "noranks.sched", 1, 1, "the program has no 'ranks' clause")
    f.write_text('\n\nimport "std:fused"\nmicrobatches 2\n')
    _error(harness.run(["check", str(f)]), "noranks.sched", 4, 1, "the program has no 'ranks' clause")


def test_misspelled_keyword(harness: Harness, tmp_path: Path) -> None:
    f = tmp_path / "typo.sched"
    f.write_text('import "std:1f1b"\nschedul {\n}\n')
    _error(harness.run(["check", str(f)]), "typo.sched", 2, 1, "(did you mean 'schedule'?)")
    f.write_text('import "std:1f1b"\nmicrobatchs 4\n')
    _error(harness.run(["check", str(f)]), "typo.sched", 2, 1, "(did you mean 'microbatches'?)")


def test_scheduler_spec_errors(harness: Harness) -> None:
    _error(harness.run(["check", "std:1f1b", "--scheduler", ""]), "<--scheduler>", 1, 1, "needs a name")
    _error(harness.run(["check", "std:1f1b", "--scheduler", "list:priority=BFW,priority=FBW"]),
           "<--scheduler>", 1, 19, "scheduler argument 'priority' given twice")


def test_unix_special_files_as_params(harness: Harness) -> None:
    res = harness.run(["check", "std:1f1b", "--params", "/dev/zero"])
    assert res.rc == 1 and "not a regular file" in res.err, res


def test_error_files_keep_their_mode(project: Path) -> None:
    """The FIFO fixture is really a FIFO (else the test above proves nothing)."""
    assert stat.S_ISFIFO(os.stat(project / "pipe.sched").st_mode)
    assert os.path.realpath(project / "link-zero.sched") == "/dev/zero"


def test_png_size_is_bounded(harness: Harness, tmp_path: Path) -> None:
    out = tmp_path / "x.png"
    res = harness.run(["render", "std:1f1b", "--set", "p=3000", "--set", "m=3", "-o", str(out), "--width", "20000"])
    assert res.rc == 1 and "is over 100,000,000 pixels; draw SVG instead" in res.err, res
    assert not out.exists()


def test_hostile_trace_files(harness: Harness, tmp_path: Path) -> None:
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    res = harness.run(["render", str(deep), "-o", str(tmp_path / "x.svg")])
    assert res.rc == 1 and "'deep' is not a Chrome trace: it is nested too deeply" in res.err, res
    res = harness.run(["render", "/dev/zero.json", "-o", str(tmp_path / "x.svg")])
    assert res.rc == 1 and "cannot read '/dev/zero.json'" in res.err, res
    fifo = tmp_path / "pipe.json"
    os.mkfifo(fifo)
    res = harness.run(["render", str(fifo), "-o", str(tmp_path / "x.svg")])
    assert res.rc == 1 and "not a regular file" in res.err, res


def test_a_standard_module_imports_only_standard_modules() -> None:
    from schedlang.load import _resolve_import
    from schedlang.source import Source

    with pytest.raises(SchedlangError, match="a standard module imports only std: modules"):
        _resolve_import("x.sched", Source("std:fake", ""), "/", None)


def test_text_programs_import_under_the_current_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "costs.sched").write_text("param tf = 3.0\n")
    (tmp_path / "sub" / "costs.sched").write_text("param tf = 5.0\n")
    monkeypatch.chdir(tmp_path / "sub")
    prog = api.loads('import "std:1f1b"\nimport "costs.sched"\n')
    assert dict(prog.params)["tf"] == 5.0
    with pytest.raises(SchedlangError, match="outside the import root") as err:
        api.loads('import "std:1f1b"\nimport "../costs.sched"\n')
    assert err.value.location == (2, 1)
    prog = api.loads('import "std:1f1b"\nimport "../costs.sched"\n', import_root=str(tmp_path))
    assert dict(prog.params)["tf"] == 3.0


def test_a_megabyte_expression_fails_early(harness: Harness, tmp_path: Path) -> None:
    """Refused while it is parsed (the harness's timeout bounds the wait), not after."""
    f = tmp_path / "mb.sched"
    f.write_text("ranks 1\nmicrobatches 1\nop F[s, i] time 1\nparam x = " + "1+" * 500_000 + "1\n")
    res = harness.run(["check", str(f)], timeout=30)
    _error(res, "mb.sched", 4, 11, "nested more than 200 levels deep")
    assert len(res.err) < 1000


def test_limits_on_import_and_files_named_on_the_command_line(harness: Harness, tmp_path: Path) -> None:
    csv = tmp_path / "s.csv"
    csv.write_text("0F0,0I0,0W0\n")
    _error(harness.run(["import", str(csv), "--limit", "max_source_bytes=10"]), "s.csv", 1, 1,
           "12 bytes is too large (limit max_source_bytes=10")
    assert harness.run(["import", str(csv), "--limit", "max_source_bytes=4000"]).rc == 0
    _error(harness.run(["check", "/dev/zero"]), "zero", 1, 1, "not a regular file")


def test_compare_takes_limits(harness: Harness) -> None:
    res = harness.run(["compare", "std:1f1b", "std:gpipe", "--limit", "max_ops=10", "--json"])
    assert res.rc == 1 and res.err.count("(limit max_ops=10; raise it with --limit max_ops=N)") == 2, res
    assert harness.run(["compare", "std:1f1b", "std:gpipe", "--limit", "max_ops=64", "--json"]).rc == 0
