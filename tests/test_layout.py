"""Every ``schedlang.*`` module loads from this checkout.

``runtime/``, ``kernels/`` and ``grammars/`` are shipped as ``schedlang.runtime``,
``schedlang.kernels`` and ``schedlang.grammars`` through setuptools' ``package-dir``. An editable
install of another checkout maps those names to its own folders, so ``schedlang`` could load from
one tree and ``schedlang.runtime`` from another without any error; this test catches that.
"""

from __future__ import annotations

import importlib
import importlib.util
import pkgutil
from pathlib import Path

import schedlang

ROOT = Path(__file__).resolve().parent.parent

# the folders each package is shipped from, relative to the repository root
HOMES = {"schedlang": "schedlang", "schedlang.runtime": "runtime", "schedlang.kernels": "kernels",
         "schedlang.grammars": "grammars"}


def _modules() -> list[str]:
    names = set(HOMES)
    for pkg in HOMES:
        mod = importlib.import_module(pkg)
        names.update(m.name for m in pkgutil.walk_packages(mod.__path__, pkg + "."))
    return sorted(names)


def test_every_module_loads_from_this_checkout() -> None:
    names = _modules()
    assert {"schedlang.isa", "schedlang.runtime.timeline", "schedlang.kernels.matmul",
            "schedlang.passes.schedule"} <= set(names)
    wrong = []
    for name in names:
        spec = importlib.util.find_spec(name)
        assert spec is not None and spec.origin is not None, name
        origin = Path(spec.origin).resolve()
        home = next(ROOT / HOMES[p] for p in sorted(HOMES, key=len, reverse=True)
                    if name == p or name.startswith(p + "."))
        if not origin.is_relative_to(home):
            wrong.append(f"{name}: {origin} (expected under {home})")
    assert not wrong, "modules from another checkout:\n" + "\n".join(wrong)
    assert Path(schedlang.__file__).resolve().parent == ROOT / "schedlang"


def test_grammar_is_package_data_of_this_checkout() -> None:
    from importlib.resources import files

    grammar = files("schedlang.grammars") / "schedlang.lark"
    assert Path(str(grammar)).resolve() == ROOT / "grammars" / "schedlang.lark"
