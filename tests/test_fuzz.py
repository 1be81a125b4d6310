"""Fuzzing the front end: mutated valid programs give located schedlang errors or valid results,
never another exception (a Python traceback would reach the user)."""

from __future__ import annotations

import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schedlang import testing as sst
from schedlang.api import loads, schedule, simulate
from schedlang.load import read_source, std_names
from schedlang.source import SchedlangError

SEEDS = [read_source(f"std:{n}").text for n in std_names()]
TOKEN = re.compile(r"\s+|[A-Za-z_][A-Za-z0-9_]*|\d+(?:\.\d+)?|\.\.|->|=>|\*\*|[<>=!]=|.")


@st.composite
def mutated(draw: st.DrawFn) -> str:
    text = draw(st.one_of(st.sampled_from(SEEDS), sst.pipeline_sources(max_ranks=3, max_microbatches=3)))
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["del-char", "dup-char", "swap-char", "del-tok", "dup-tok", "swap-tok",
                                     "truncate", "insert"]))
        if not text:
            break
        if kind.endswith("char"):
            units = list(text)
        else:
            units = TOKEN.findall(text)
        i = draw(st.integers(0, len(units) - 1))
        if kind.startswith("del"):
            del units[i]
        elif kind.startswith("dup"):
            units.insert(i, units[i])
        elif kind.startswith("swap"):
            j = draw(st.integers(0, len(units) - 1))
            units[i], units[j] = units[j], units[i]
        elif kind == "truncate":
            units = units[:i]
        else:
            units.insert(i, draw(st.sampled_from(list("{}[]()=-+*/?&;,.:\"#") + ["rank", "for", "op", "dep", "0"])))
        text = "".join(units)
    return text


@pytest.mark.slow
@given(mutated())
@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_mutated_programs_give_only_located_errors(text: str) -> None:
    try:
        program = loads(text, name="fuzz.sched")
        if program.schedule is not None:
            simulate(schedule(program))
    except SchedlangError as exc:
        rendered = exc.render()
        assert rendered.startswith(("fuzz.sched:", "std:", "schedlang: error:")), rendered
        assert "error: " in rendered
