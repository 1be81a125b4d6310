"""``schedlang compare`` and the terminal helpers: numbers equal simulate(), output formats, colour rules."""

from __future__ import annotations

import csv
import io
import json

import pytest

from schedlang import api
from schedlang.cli import main
from schedlang.term import Column, Table, paint, use_colour, visible_len


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    assert main(list(argv)) == 0
    return capsys.readouterr().out


def test_compare_json_equals_simulate(capsys: pytest.CaptureFixture[str]) -> None:
    out = _run(capsys, "compare", "std:gpipe", "std:1f1b", "--set", "p=4", "--set", "m=6", "--set", "tc=0.25",
               "--set", "tb=[1, 2, 1, 2]", "--json")
    rows = json.loads(out)
    assert [r["program"] for r in rows] == ["std:gpipe", "std:1f1b"]
    for row in rows:
        sim = api.simulate(api.compile(row["program"], p=4, m=6, tc=0.25, tb=[1, 2, 1, 2]))
        assert row["makespan"] == sim.makespan and row["cost"] == sim.cost
        assert row["bubble_rate"] == sim.bubble_rate and row["bubble"] == sim.bubble
        assert row["peak_memory"] == [r.peak_memory for r in sim.ranks]
        assert row["num_ranks"] == 4 and row["num_microbatches"] == 6 and row["generation_s"] >= 0


def test_compare_schedulers_cross_product(capsys: pytest.CaptureFixture[str]) -> None:
    out = _run(capsys, "compare", "std:1f1b", "--scheduler", "list", "--scheduler", "list:priority=FBW",
               "--set", "p=3", "--json")
    rows = json.loads(out)
    assert [r["scheduler"] for r in rows] == ["list", "list:priority=FBW"]
    for row in rows:
        sim = api.simulate(api.compile("std:1f1b", p=3, scheduler=row["scheduler"]))
        assert row["makespan"] == sim.makespan
        assert row["peak_memory"] == [r.peak_memory for r in sim.ranks]


def test_compare_csv(capsys: pytest.CaptureFixture[str]) -> None:
    out = _run(capsys, "compare", "std:gpipe", "std:1f1b", "--set", "p=2", "--set", "m=3", "--csv")
    rows = list(csv.DictReader(io.StringIO(out)))
    assert len(rows) == 2
    sim = api.simulate(api.compile("std:1f1b", p=2, m=3))
    assert float(rows[1]["makespan"]) == sim.makespan
    assert [float(x) for x in rows[1]["peak_memory"].split(";")] == [r.peak_memory for r in sim.ranks]


def test_compare_table_plain_when_piped(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FORCE_COLOR", raising=False)
    out = _run(capsys, "compare", "std:gpipe", "std:1f1b", "--set", "p=4")
    assert "\x1b[" not in out
    lines = out.splitlines()
    assert lines[0].split()[:3] == ["program", "scheduler", "p"]
    assert len(lines) == 4 and lines[2].startswith("std:gpipe") and lines[3].startswith("std:1f1b")
    sim = api.simulate(api.compile("std:1f1b", p=4))
    assert f"{sim.bubble_rate * 100:.2f}%" in lines[3] and "4 3 2 1" in lines[3]
    # columns line up: every row's cell ends where the header's does (right-aligned numbers)
    end = lines[0].index("makespan") + len("makespan")
    assert all(line[end - 1] != " " for line in lines[2:])


def test_compare_unknown_parameter_is_located(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["compare", "std:gpipe", "--set", "q=2"]) == 1
    err = capsys.readouterr().err
    assert "no program declares a parameter 'q'" in err and "^" in err


def test_compare_colour_only_when_forced(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FORCE_COLOR", "1")
    monkeypatch.delenv("NO_COLOR", raising=False)
    out = _run(capsys, "compare", "std:gpipe", "std:1f1b", "--set", "p=4")
    assert "\x1b[32;1m" in out  # best figures in green
    monkeypatch.setenv("NO_COLOR", "1")
    assert "\x1b[" not in _run(capsys, "compare", "std:gpipe", "std:1f1b", "--set", "p=4")


def test_table_alignment_and_colour_width() -> None:
    t = Table([Column("name", "<", str), Column("x")])
    t.add("a", 1.5)
    t.add("longer", 12)
    t.highlight(0, 1, "green")
    plain = t.render(False).splitlines()
    coloured = t.render(True).splitlines()
    assert plain == ["name      x", "------  ---", "a       1.5", "longer   12"]
    assert [visible_len(x) for x in coloured] == [len(x) for x in plain]
    assert paint("x", "red", enabled=False) == "x"


def test_use_colour_rules(monkeypatch: pytest.MonkeyPatch) -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    for var in ("NO_COLOR", "FORCE_COLOR", "TERM"):
        monkeypatch.delenv(var, raising=False)
    assert use_colour(Tty()) and not use_colour(io.StringIO())
    monkeypatch.setenv("NO_COLOR", "1")
    assert not use_colour(Tty())


def test_compare_keeps_going_past_a_combination_that_fails(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["compare", "std:1f1b", "std:zb-h1", "--scheduler", "zb-h1", "--json"]) == 1
    captured = capsys.readouterr()
    rows = json.loads(captured.out)
    assert "needs split B / W kinds" in rows[0]["error"] and "makespan" not in rows[0]
    assert rows[1]["makespan"] == api.simulate(api.compile("std:zb-h1", scheduler="zb-h1")).makespan
    assert "std:1f1b with zb-h1:" in captured.err and "^" in captured.err
    assert main(["compare", "std:1f1b", "std:zb-h1", "--scheduler", "zb-h1"]) == 1
    table = capsys.readouterr().out.splitlines()
    assert "error (on stderr)" in table[2] and table[3].startswith("std:zb-h1")
    assert main(["compare", "std:1f1b", "--scheduler", "zb-h1"]) == 1  # one combination: a plain error
    assert capsys.readouterr().err.startswith("std:1f1b:")
