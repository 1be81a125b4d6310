"""What a new user runs into first: each test here failed on the behaviour it fixes.

The quick start installs what the README's examples need; ``schedlang list`` and the standard
library cite papers, not a file the project does not have, and print whole sentences; ``compare
--params``; ``render --width 0`` is refused like ``--width -5``; ``run --launcher`` has help;
``run`` simulates the schedule on the op times it measured and says how its trace's bubble differs.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

import schedlang.api as sl
from schedlang.catalog import all_entries
from schedlang.cli import build_parser, main
from schedlang.load import _std_text, std_names

ROOT = Path(__file__).parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")


# ------------------------------------------------------------------ quick start


def _extras() -> dict[str, list[str]]:
    import tomllib

    doc = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    return doc["project"]["optional-dependencies"]  # type: ignore[no-any-return]


def _quick_start_packages() -> set[str]:
    """The packages the README's quick-start command installs (its extras, resolved)."""
    quick = README.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    command = re.search(r"```sh\n(.*?)```", quick, re.S)
    assert command is not None
    extras = re.search(r'pip install -e "\.\[([a-z,]+)\]"', command.group(1))
    assert extras is not None, command.group(1)
    names = set()
    for extra in extras.group(1).split(","):
        names |= {re.split(r"[<>=\[ ]", req)[0].lower() for req in _extras()[extra]}
    return names


def test_quick_start_installs_what_the_readme_examples_need() -> None:
    installed = _quick_start_packages()
    # the README writes PNG pictures (render -o OUT.png needs Pillow) ...
    assert re.search(r"schedlang render .*\.png", README)
    assert "pillow" in installed
    # ... and shows schedlang.testing, whose strategies are hypothesis strategies
    assert "schedlang.testing" in README
    assert "hypothesis" in installed


def test_testing_module_without_hypothesis_says_what_to_install(monkeypatch) -> None:
    import builtins
    import importlib
    import sys

    real_import = builtins.__import__

    def no_hypothesis(name, *args, **kwargs):  # type: ignore[no-untyped-def]
        if name == "hypothesis" or name.startswith("hypothesis."):
            raise ModuleNotFoundError("No module named 'hypothesis'", name="hypothesis")
        return real_import(name, *args, **kwargs)

    monkeypatch.delitem(sys.modules, "schedlang.testing", raising=False)
    monkeypatch.setattr(builtins, "__import__", no_hypothesis)
    with pytest.raises(ModuleNotFoundError, match=r"pip install 'schedlang\[testing\]'"):
        importlib.import_module("schedlang.testing")
    monkeypatch.setattr(builtins, "__import__", real_import)
    monkeypatch.delitem(sys.modules, "schedlang.testing", raising=False)


# ------------------------------------------------------------------ list and the standard library


def test_list_and_stdlib_cite_no_missing_file(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "REFERENCE" not in out
    for name in std_names():
        assert "REFERENCE" not in (_std_text(name) or ""), name


def test_list_prints_whole_first_sentences(capsys: pytest.CaptureFixture[str]) -> None:
    for e in all_entries():
        assert not e.summary.endswith("..."), e
    for name in std_names():
        text = _std_text(name) or ""
        header = " ".join(ln.lstrip("#").strip() for ln in text.splitlines()[:8] if ln.startswith("#"))
        summary = next(e.summary for e in all_entries() if e.name == f"std:{name}")
        # the summary is a whole sentence of the header: it ends where the header's sentence ends
        assert re.match(re.escape(summary) + r"\.?(\s|$)", header), (name, summary)
    assert main(["list"]) == 0
    line = next(ln for ln in capsys.readouterr().out.splitlines() if "std:fbw" in ln)
    assert "F, B, W with its standard dependency rules (Qi et al., ICLR 2024)" in line


# ------------------------------------------------------------------ compare --params


def test_compare_params_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    params = tmp_path / "costs.txt"
    params.write_text("# measured\np = 2\nm = 4\ntf = 2.0\nv = 2\n")
    assert main(["compare", "std:1f1b", "std:zb-v", "--params", str(params), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    by = {r["program"]: r for r in rows}
    # the same figures as simulate with the same overrides, for each program
    for name, sets in (("std:1f1b", ["p=2", "m=4", "tf=2.0"]), ("std:zb-v", ["p=2", "m=4", "tf=2.0", "v=2"])):
        want = sl.simulation_dict(sl.load_program(name, sets=sets))
        assert by[name]["makespan"] == want["makespan"] and by[name]["num_microbatches"] == 4
    assert by["std:1f1b"]["makespan"] == 4 * (2 + 2) + (2 - 1) * (2 + 2)  # m(T_F+T_BW) + (p-1)(T_F+T_BW)
    # std:1f1b has no v: said, not silently dropped
    assert by["std:1f1b"]["ignored_sets"] == [f"v ({params}:5)"]
    assert by["std:zb-v"]["ignored_sets"] == []
    # --set wins over the file
    params.write_text("p = 2\nm = 4\n")
    assert main(["compare", "std:1f1b", "--params", str(params), "--set", "m=6", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["num_microbatches"] == 6


def test_compare_params_names_a_parameter_no_program_declares(tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    params = tmp_path / "bad.txt"
    params.write_text("p = 2\nqq = 1\n")
    assert main(["compare", "std:1f1b", "std:gpipe", "--params", str(params)]) == 1
    err = capsys.readouterr().err
    assert f"{params}:2:1: error: no program declares a parameter 'qq'" in err
    assert "Traceback" not in err


# ------------------------------------------------------------------ render --width, run --launcher


@pytest.mark.parametrize("width", ["0", "-5", "199", "100000000"])
def test_render_width_out_of_range_is_refused(width: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """0 is refused like -5 (it is not "the default"), before any work: a usage error."""
    out = tmp_path / "x.svg"
    with pytest.raises(SystemExit) as exc:
        main(["render", "std:1f1b", "--width", width, "-o", str(out)])
    assert exc.value.code == 2
    assert f"expected a width from 200 to 20000 pixels, got '{width}'" in capsys.readouterr().err
    assert not out.exists()


def test_render_default_and_given_width(tmp_path: Path) -> None:
    assert main(["render", "std:1f1b", "-o", str(tmp_path / "a.svg")]) == 0
    assert main(["render", "std:1f1b", "--width", "640", "-o", str(tmp_path / "b.svg")]) == 0
    assert 'width="640"' in (tmp_path / "b.svg").read_text()


def _help(command: str) -> str:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    return sub.choices[command].format_help()  # type: ignore[union-attr]


def test_every_option_has_help() -> None:
    # run --launcher had none; hold every command to it
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    missing = [f"{name} {' / '.join(a.option_strings)}"
               for name, p in sub.choices.items()  # type: ignore[union-attr]
               for a in p._actions
               if a.option_strings and a.dest != "help" and not a.help]
    assert missing == []
    assert "torch.distributed.run" in _help("run") and "spawn" in _help("run")


# ------------------------------------------------------------------ run: simulated on measured times


def _events(program, seconds: dict[str, float], steps: int = 2):  # type: ignore[no-untyped-def]
    """Synthetic runtime events for ``program``'s orders: each op takes ``seconds[kind]`` in the
    steps after the first and ten times as long in the first (which must not count)."""
    from schedlang.runtime.timeline import Event

    out = []
    for step in range(steps):
        for r, slots in enumerate(program.orders.ranks):
            t = 0
            for k, slot in enumerate(slots):
                op = program.ops[slot[0]]
                dur = int(seconds[op.kind] * 1e9 * (10 if step == 0 else 1))
                out.append(Event(r, step, k, op.kind, op.stage, op.mb, t, t + dur))
                t += dur
    return out


def test_measured_program_is_the_program_on_the_measured_times() -> None:
    prog = sl.compile("std:zb-h1", p=3, m=4, tc=0.5)
    events = _events(prog, {"F": 0.002, "B": 0.003, "W": 0.001})
    measured, missing = sl.measured_program(prog, events)
    assert missing == 0
    assert {(o.kind, o.time) for o in measured.ops} == {("F", 0.002), ("B", 0.003), ("W", 0.001)}
    assert {e.latency for e in measured.edges} == {0.0}
    # differential: the same schedule with those costs written as parameters
    want = sl.compile("std:zb-h1", p=3, m=4, tf=0.002, tb=0.003, tw=0.001, tc=0.0)
    assert sl.simulate(measured).bubble_rate == pytest.approx(sl.simulate(want).bubble_rate, rel=1e-9)
    assert sl.simulate(measured).bubble_rate != pytest.approx(sl.simulate(prog).bubble_rate)


def test_run_prints_both_simulations_and_explains_the_trace(monkeypatch, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("torch")
    prog = sl.compile("std:zb-h1", p=2, m=2)
    events = _events(prog, {"F": 0.002, "B": 0.002, "W": 0.001}, steps=3)
    on_measured = sl.simulate(sl.measured_program(prog, events)[0]).bubble_rate

    def fake_run(program, **kw):  # type: ignore[no-untyped-def]
        return sl.RunResult((3.0, 2.0, 1.0), {"steps": 2, "bubble_rate": 0.25, "cost_s": 0.01, "makespan_s": 0.012},
                            1 / 9, tuple(events), on_measured)

    monkeypatch.setattr(sl, "run", fake_run)
    trace = tmp_path / "t.json"
    assert main(["run", "std:zb-h1", "--set", "p=2", "--set", "m=2", "--steps", "3",
                 "--launcher", "spawn", "--trace", str(trace)]) == 0
    out = capsys.readouterr().out
    assert (f"bubble rate: measured 0.2500 (mean of 2 steps after the first; step 12.00 ms)  simulated "
            f"{on_measured:.4f} on the measured op times (communication free), 0.1111 on the program's costs") in out
    assert "all 3 steps, warm-up included" in out
    meta = json.loads(trace.read_text())["otherData"]
    assert meta["simulated_bubble_rate_on_measured_times"] == on_measured
    assert "higher than the per-step mean" in meta["note"] and "schedlang render" in meta["note"]


# ------------------------------------------------------------------ command lines in the docs


def _doc_command_lines() -> list[tuple[str, str]]:
    """Every ``schedlang ...`` command shown in README.md and docs/*.md (``$ `` prompts and sh
    blocks), split at ``&&`` and with comments cut."""
    import shlex

    out = []
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        text = path.read_text(encoding="utf-8")
        for lang, block in re.findall(r"^```(\w*)\n(.*?)^```", text, re.S | re.M):
            if lang not in ("sh", "console", "bash", ""):
                continue
            for line in block.replace("\\\n", " ").splitlines():  # a trailing backslash continues
                for part in line.removeprefix("$ ").split("&&"):
                    if part.strip().startswith("schedlang "):  # not output lines
                        words = shlex.split(part, comments=True)
                        if words and words[-1] == "&":  # a background job
                            words.pop()
                        out.append((path.name, shlex.join(words[1:])))
    return out


DOC_COMMANDS = _doc_command_lines()


def test_docs_show_commands() -> None:
    assert len(DOC_COMMANDS) >= 20


@pytest.mark.parametrize(("doc", "command"), DOC_COMMANDS, ids=[f"{d}:{c[:40]}" for d, c in DOC_COMMANDS])
def test_every_command_in_the_docs_parses(doc: str, command: str, capsys: pytest.CaptureFixture[str]) -> None:
    # an option or --emit format the command line does not have (the tutorial once showed
    # `--emit none`) is caught here without running anything
    import shlex

    try:
        build_parser().parse_args(shlex.split(command))
    except SystemExit as exc:
        pytest.fail(f"{doc}: schedlang {command}: exit {exc.code}: {capsys.readouterr().err}")
