"""Every example in docs/ and examples/ runs.

Conventions in the Markdown files (docs/*.md):

- a ```schedlang block is a complete program: it is lowered with ``api.loads``, scheduled,
  verified and simulated. A line ``# expect: KEY=VALUE ...`` in it (keys ``makespan``, ``cost``,
  ``bubble_rate``, ``peak`` (a per-rank list), ``ops``) states figures the simulation must give.
- a ```schedlang-error block must fail with a located error; the ```text block right after it is
  the exact rendered message.
- a ```console block holds ``$ schedlang ...`` commands (run through ``cli.main`` in a scratch
  directory holding a copy of examples/); the lines after a command, up to the next ``$``, are its
  exact standard output (a command ending in ``# output varies`` is only checked to succeed).
- the ```python blocks of a document run in order in one namespace (in a scratch directory too).
"""

from __future__ import annotations

import ast
import contextlib
import io
import re
import shlex
import shutil
from pathlib import Path

import pytest

from schedlang import api
from schedlang.cli import main
from schedlang.simulate import simulate
from schedlang.source import SchedlangError

ROOT = Path(__file__).resolve().parent.parent
DOCS = sorted((ROOT / "docs").glob("*.md"))
EXAMPLES = sorted((ROOT / "examples").glob("*.sched"))
FENCE = re.compile(r"^```([\w-]*)[^\n]*\n(.*?)^```\s*$", re.S | re.M)


def blocks(path: Path) -> list[tuple[str, str, int]]:
    """(language, body, line number) of every fenced block."""
    text = path.read_text(encoding="utf-8")
    return [(m.group(1), m.group(2), text.count("\n", 0, m.start()) + 1) for m in FENCE.finditer(text)]


def _cases(lang: str) -> list[tuple[Path, int, str, str]]:
    out = []
    for doc in DOCS:
        bl = blocks(doc)
        for i, (kind, body, line) in enumerate(bl):
            if kind == lang:
                after = bl[i + 1][1] if i + 1 < len(bl) and bl[i + 1][0] == "text" else ""
                out.append((doc, line, body, after))
    return out


def _ids(cases: list[tuple[Path, int, str, str]]) -> list[str]:
    return [f"{c[0].name}:{c[1]}" for c in cases]


def test_docs_exist_and_have_examples() -> None:
    names = {d.name for d in DOCS}
    assert {"language.md", "tutorial.md", "testing.md"} <= names
    assert len(_cases("schedlang")) >= 20 and _cases("console") and _cases("schedlang-error")


def _check_expect(body: str, prog, where: str) -> None:  # type: ignore[no-untyped-def]
    sim = simulate(prog)
    for line in body.splitlines():
        m = re.search(r"#\s*expect:\s*(.*)$", line)
        if not m:
            continue
        for key, value in re.findall(r"(\w+)=(\[[^\]]*\]|\S+)", m.group(1)):
            want = ast.literal_eval(value)
            got = {"makespan": sim.makespan, "cost": sim.cost, "bubble_rate": sim.bubble_rate,
                   "peak": [r.peak_memory for r in sim.ranks], "ops": len(prog.ops)}[key]
            assert got == pytest.approx(want, abs=1e-4), f"{where}: {key} is {got}, the doc says {want}"


SCHED = _cases("schedlang")


@pytest.mark.parametrize("doc,line,body,after", SCHED, ids=_ids(SCHED))
def test_schedlang_block(doc: Path, line: int, body: str, after: str, tmp_path: Path,
                         monkeypatch: pytest.MonkeyPatch) -> None:
    first = body.splitlines()[0]
    if re.fullmatch(r"# examples/[\w.-]+\.sched", first):  # a file shown in full: it must be that file
        shown = body.split("\n", 1)[1]
        assert shown == (ROOT / first[2:]).read_text(encoding="utf-8"), f"{doc.name}:{line} differs from {first[2:]}"
    monkeypatch.chdir(tmp_path)
    prog = api.loads(body, name=f"{doc.name}:{line}")
    if prog.schedule is None:  # a module meant for import: lowering it is the test
        assert "# expect:" not in body
        return
    prog = api.schedule(prog)
    _check_expect(body, prog, f"{doc.name}:{line}")


ERRS = _cases("schedlang-error")


@pytest.mark.parametrize("doc,line,body,after", ERRS, ids=_ids(ERRS))
def test_error_block(doc: Path, line: int, body: str, after: str) -> None:
    with pytest.raises(SchedlangError) as info:
        api.schedule(api.loads(body, name="example.sched"))
    assert info.value.location is not None
    assert info.value.render() == after.rstrip("\n"), f"{doc.name}:{line}: the error text differs"


def _console_steps(body: str) -> list[tuple[str, str]]:
    steps: list[tuple[str, list[str]]] = []
    for line in body.splitlines():
        if line.startswith("$ "):
            steps.append((line[2:], []))
        else:
            assert steps, "a console block starts with a '$ ' command"
            steps[-1][1].append(line)
    return [(cmd, "\n".join(out) + "\n" if out else "") for cmd, out in steps]


CONSOLE = _cases("console")


def _console_marks(body: str) -> list[pytest.MarkDecorator]:
    """`schedlang run` spawns torch.distributed workers (dist); `schedlang profile` times a model
    (slow)."""
    cmds = [shlex.split(c, comments=True)[1:2] for c, _ in _console_steps(body)]
    marks = []
    if ["run"] in cmds:
        marks.append(pytest.mark.dist)
    if ["profile"] in cmds:
        marks.append(pytest.mark.slow)
    return marks


@pytest.mark.parametrize("doc,line,body,after", [
    pytest.param(*case, marks=_console_marks(case[2])) for case in CONSOLE], ids=_ids(CONSOLE))
def test_console_block(doc: Path, line: int, body: str, after: str, tmp_path: Path,
                       monkeypatch: pytest.MonkeyPatch) -> None:
    shutil.copytree(ROOT / "examples", tmp_path / "examples")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("FORCE_COLOR", raising=False)
    for cmd, expected in _console_steps(body):
        varies = cmd.rstrip().endswith("# output varies")
        argv = shlex.split(cmd, comments=True)
        assert argv[0] == "schedlang", f"{doc.name}:{line}: only schedlang commands run here"
        if any(a.endswith(".png") for a in argv):
            pytest.importorskip("PIL", reason="PNG output needs Pillow")
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            status = main(argv[1:])
        assert status == 0, f"{doc.name}:{line}: '{cmd}' failed:\n{err.getvalue()}"
        if not varies:
            assert out.getvalue() == expected, f"{doc.name}:{line}: output of '{cmd}' differs"


PY_DOCS = [d for d in DOCS if any(kind == "python" for kind, _, _ in blocks(d))]


@pytest.mark.slow
@pytest.mark.parametrize("doc", PY_DOCS, ids=[d.name for d in PY_DOCS])
def test_python_blocks(doc: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A document's python blocks run in order in one namespace, like a session."""
    shutil.copytree(ROOT / "examples", tmp_path / "examples")
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {"__name__": "doc_example"}
    for kind, body, line in blocks(doc):
        if kind == "python":
            exec(compile(body, f"{doc.name}:{line}", "exec"), namespace)  # noqa: S102


# ------------------------------------------------------------------ examples/


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_example_compiles_and_simulates(path: Path) -> None:
    prog = api.compile(str(path))
    sim = simulate(prog)
    assert sim.makespan > 0 and 0 <= sim.bubble_rate < 1


# Examples that write out a built-in schedule must give the built-in's orders for the same
# parameters (their shape and costs, passed to the built-in).
SAME_AS_STD = ["gpipe", "1f1b", "zb-h1", "zb-h2", "looped-bfs", "interleaved-1f1b", "interleaved-zb", "zb-1p",
               "zb-2p"]


@pytest.mark.parametrize("name", SAME_AS_STD)
def test_example_matches_standard_library(name: str) -> None:
    mine = api.compile(str(ROOT / "examples" / f"{name}.sched"))
    declared = {k for k, _ in api.load(f"std:{name}").params}
    std = api.compile(f"std:{name}", **{k: v for k, v in mine.params if k in declared})
    assert (std.num_ranks, std.num_stages, std.num_microbatches) == (
        mine.num_ranks, mine.num_stages, mine.num_microbatches)
    assert api.orders(mine) == api.orders(std)


def test_tutorial_picture_is_current() -> None:
    from schedlang.render import render_svg

    svg = render_svg(api.compile(str(ROOT / "examples" / "zb-v.sched")), memory=True)
    assert (ROOT / "docs" / "img" / "zb-v.svg").read_text(encoding="utf-8") == svg, (
        "docs/img/zb-v.svg is stale: regenerate it with "
        "schedlang render examples/zb-v.sched --memory -o docs/img/zb-v.svg")


def test_one_example_per_builtin_family() -> None:
    from schedlang.load import std_names

    families = set(std_names()) - {"costs", "fbw", "fused"}  # modules of ops and costs, not schedules
    assert families <= {p.stem for p in EXAMPLES}
