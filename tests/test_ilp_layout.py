"""The optimizer package's structure: no import cycle among its modules (function-level imports
included), and one declaration of its arguments and defaults (:class:`IlpOptions`)."""

from __future__ import annotations

import argparse
import ast
import graphlib
from dataclasses import fields
from pathlib import Path

import pytest

import schedlang.schedulers.ilp as ilp_pkg
from schedlang.ir import Value
from schedlang.schedulers.ilp import SCHEDULER, IlpOptions
from schedlang.schedulers.ilp.options import ArgError

PKG = "schedlang.schedulers.ilp"


def _imports(path: Path) -> set[str]:
    """Sibling modules a module imports anywhere in its body (also inside functions)."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.module == PKG:
                out |= {a.name for a in node.names}
            elif node.module.startswith(PKG + "."):
                out.add(node.module[len(PKG) + 1:].split(".")[0])
        elif isinstance(node, ast.Import):
            out |= {a.name[len(PKG) + 1:].split(".")[0] for a in node.names if a.name.startswith(PKG + ".")}
    return out


def test_the_optimizer_modules_import_each_other_without_a_cycle() -> None:
    root = Path(ilp_pkg.__file__).parent
    graph = {p.stem: _imports(p) for p in root.glob("*.py") if p.stem != "__init__"}
    graph = {k: {d for d in v if d in graph} for k, v in graph.items()}
    list(graphlib.TopologicalSorter(graph).static_order())  # raises CycleError on a cycle
    # the CP-SAT plumbing the searches share is a leaf below them
    assert graph["cpsat"] <= {"model"}
    assert "solve" not in graph["lns"] | graph["periodic"]


def test_the_scheduler_arguments_are_the_options() -> None:
    table = {f.name: f.default for f in fields(IlpOptions)}
    assert {k: a.default for k, a in SCHEDULER.args.items() if k != "progress"} == table
    assert list(SCHEDULER.args)[:len(table)] == list(table)
    given: dict[str, Value] = {"objective": "makespan", "time_limit": 3, "seed": 2, "fifo": False, "wall_limit": 0}
    opts = IlpOptions.from_args(given)
    assert opts == IlpOptions(objective="makespan", time_limit=3.0, seed=2, fifo=False, wall_limit=0.0)
    assert isinstance(opts.time_limit, float) and IlpOptions.from_args({}) == IlpOptions()


def test_the_optimize_command_defaults_are_the_options() -> None:
    from schedlang.cli import ilp as cli_ilp

    parser = argparse.ArgumentParser()
    cli_ilp._args(parser)
    ns = parser.parse_args(["x.sched"])
    d = IlpOptions()
    assert (ns.objective, ns.time_limit, ns.wall_limit, ns.mem_limit, ns.seed, ns.workers, ns.deterministic) == \
        (d.objective, d.time_limit, d.wall_limit, d.mem_limit, d.seed, d.workers, d.deterministic)
    assert ns.no_lns is not d.lns and ns.no_periodic is not d.periodic


@pytest.mark.parametrize(("change", "arg"), [({"objective": "bubble"}, "objective"), ({"time_limit": 0.0}, "time_limit"),
                                             ({"workers": 0}, "workers"),
                                             ({"wall_limit": -1.0, "deterministic": True}, "wall_limit"),
                                             ({"wall_limit": 5.0}, "wall_limit")])
def test_bad_options_name_their_argument(change: dict[str, object], arg: str) -> None:
    with pytest.raises(ArgError) as exc:
        IlpOptions(**change).check()  # type: ignore[arg-type]
    assert exc.value.arg == arg


def test_wall_cap_default() -> None:
    assert IlpOptions(time_limit=5.0, deterministic=True).wall_seconds == 30.0
    assert IlpOptions(time_limit=5.0).wall_seconds == 0.0  # a wall-clock run: the limit is the cap
    assert IlpOptions(time_limit=5.0, deterministic=True, wall_limit=2.0).wall_seconds == 2.0
