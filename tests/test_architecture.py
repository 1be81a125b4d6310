"""The shape of the package: layers point down and nothing imports in a circle.

Every ``schedlang.*`` module (``schedlang.runtime`` and ``schedlang.kernels`` included where
their dependencies import) is read as source; its imports, at module level and inside functions
alike, are resolved to ``schedlang`` modules. Two rules: only the command line
(``schedlang.cli``) imports the command line, and the import graph has no cycle. A third test
keeps ``import schedlang`` (and the API, the CLI and the emitter registry) free of torch, triton
and ortools.
"""

from __future__ import annotations

import ast
import importlib.util
import pkgutil
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import schedlang

ROOT = Path(__file__).resolve().parent.parent


def _modules() -> dict[str, tuple[Path, bool]]:
    """Every schedlang module: name -> (source file, is a package)."""
    out: dict[str, tuple[Path, bool]] = {}
    roots: list[ModuleType] = [schedlang]
    # mapped from the top-level runtime/ and kernels/ folders, so not found under schedlang/
    for extra in ("schedlang.runtime", "schedlang.kernels"):
        try:
            roots.append(importlib.import_module(extra))
        except ImportError:  # torch or triton missing here: nothing of it can load anyway
            pass
    for root in roots:
        out[root.__name__] = (Path(root.__file__ or ""), True)
        for info in pkgutil.walk_packages(root.__path__, root.__name__ + ".", onerror=lambda _: None):
            spec = importlib.util.find_spec(info.name)
            assert spec is not None and spec.origin is not None, info.name
            out[info.name] = (Path(spec.origin), info.ispkg)
    return out


def imported_modules(module: str, is_package: bool, tree: ast.AST, known: set[str]) -> set[str]:
    """The known modules ``tree`` imports anywhere (module level, functions, classes).

    ``from P import n`` counts as importing ``P.n`` when that is a module, else ``P``; relative
    imports are resolved against ``module``'s package.
    """
    package = module if is_package else module.rpartition(".")[0]
    found: set[str] = set()

    def add(name: str) -> None:
        while name and name not in known:  # `import schedlang.cli.core.x` -> the module part
            name = name.rpartition(".")[0]
        if name:
            found.add(name)

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                origin = ".".join(base + ([node.module] if node.module else []))
            else:
                origin = node.module or ""
            for alias in node.names:
                sub = f"{origin}.{alias.name}"
                add(sub if sub in known else origin)
    return found


def import_graph() -> dict[str, set[str]]:
    mods = _modules()
    known = set(mods)
    graph = {}
    for name, (path, is_pkg) in mods.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        graph[name] = imported_modules(name, is_pkg, tree, known) - {name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[frozenset[str]]:
    """The strongly connected components with more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[frozenset[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.add(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(frozenset(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def _is_cli(name: str) -> bool:
    # `python -m schedlang` (schedlang.__main__) is the command line's second entry point
    return name in ("schedlang.cli", "schedlang.__main__") or name.startswith("schedlang.cli.")


def test_the_walk_sees_every_layer() -> None:
    graph = import_graph()
    for name in ("schedlang.api", "schedlang.emitters", "schedlang.cli", "schedlang.cli.core",
                 "schedlang.codegen", "schedlang.schedulers.ilp.solve", "schedlang.runtime.executor",
                 "schedlang.kernels.layers"):
        assert name in graph, name
    # function-level imports count: the registry reaches codegen only inside a function
    assert "schedlang.codegen" in graph["schedlang.emitters"]
    assert {"schedlang.cli.core", "schedlang.cli.ux"} <= graph["schedlang.cli"]


def test_no_library_module_imports_the_command_line() -> None:
    graph = import_graph()
    bad = {m: sorted(filter(_is_cli, deps)) for m, deps in graph.items() if not _is_cli(m)}
    assert {m: d for m, d in bad.items() if d} == {}


def test_the_import_graph_has_no_cycle() -> None:
    graph = import_graph()
    found = cycles(graph)
    assert found == [], "import cycles: " + "; ".join(" <-> ".join(sorted(c)) for c in found)


def test_the_checks_see_function_level_and_relative_imports() -> None:
    known = {"schedlang", "schedlang.cli", "schedlang.cli.core", "schedlang.api", "schedlang.ir"}
    src = ("from schedlang.ir import Program\n"
           "def f():\n    from schedlang.cli import main\n"
           "class C:\n    def g(self):\n        from . import api\n")
    assert imported_modules("schedlang.x", False, ast.parse(src), known) == {
        "schedlang.ir", "schedlang.cli", "schedlang.api"}
    assert imported_modules("schedlang.cli", True, ast.parse("from .core import CHECK\n"), known) == {
        "schedlang.cli.core"}
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [frozenset({"a", "b", "c"})]


def test_import_schedlang_stays_light() -> None:
    code = ("import sys, schedlang, schedlang.api, schedlang.cli, schedlang.emitters\n"
            "schedlang.cli.build_parser()\n"
            "print(sorted(m for m in ('torch', 'triton', 'ortools') if m in sys.modules))\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert res.stdout.strip() == "[]"


def _layout_text() -> str:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    start = readme.index("## Layout")
    return readme[start:readme.index("\n## ", start + 1)]


def test_every_module_is_named_in_the_architecture_guide_and_the_readme_layout() -> None:
    """docs/architecture.md and README's layout section name every module of ``schedlang/`` (a
    new module without a word there fails), and every ``schedlang/...`` path they name exists."""
    guide = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    layout = _layout_text()
    pkg = ROOT / "schedlang"
    names = sorted({p.stem for p in pkg.glob("*.py") if not p.stem.startswith("_")}
                   | {p.name for p in pkg.iterdir() if (p / "__init__.py").exists()})
    for name in names:
        assert re.search(rf"\b{re.escape(name)}\b", guide), f"docs/architecture.md never names {name}"
        assert re.search(rf"`{re.escape(name)}/?`", layout), f"README's layout never names `{name}`"
    for text in (guide, layout):
        for path in re.findall(r"`(schedlang/[\w/.]+?)`", text):
            if "NAME" in path:  # a placeholder (schedlang/stdlib/NAME.sched)
                continue
            assert (ROOT / path).exists(), f"{path} is named but does not exist"
