"""The examples in README.md run and say what the README says they do."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import schedlang.api as sl

README = (Path(__file__).parent.parent / "README.md").read_text(encoding="utf-8")


def blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", README, re.S)


def test_readme_has_examples() -> None:
    assert blocks("schedlang") and blocks("python")


@pytest.mark.parametrize("source", blocks("schedlang"))
def test_schedlang_blocks_compile_and_simulate(source: str) -> None:
    prog = sl.schedule(sl.loads(source, name="readme.sched"))
    sim = sl.simulate(prog)
    assert sim.makespan > 0


def test_readme_zb_h1_example_matches_the_closed_form() -> None:
    source = blocks("schedlang")[0]
    for tw in (1.0, 0.5):
        sim = sl.simulate(sl.schedule(sl.loads(source, tw=tw)))
        assert sim.bubble == pytest.approx(3 * (1 + 1 - tw))  # ZB-H1: (p-1)(T_F+T_B-T_W)
        assert sim.ranks[0].peak_memory == pytest.approx(4 * 1.0)  # p * M_B


@pytest.mark.parametrize("code", blocks("python"))
def test_python_blocks_run(code: str, capsys: pytest.CaptureFixture[str]) -> None:
    exec(compile(code, "README.md", "exec"), {})
    assert capsys.readouterr().out.strip()
