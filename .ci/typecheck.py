"""Type-check the package as it is installed: ``schedlang`` with ``runtime/``, ``kernels/`` and
``grammars/`` in place as ``schedlang.runtime``, ``schedlang.kernels`` and ``schedlang.grammars``.

``mypy schedlang runtime kernels`` checks ``runtime/`` and ``kernels/`` as top-level packages
named ``runtime`` and ``kernels``, and mypy cannot follow the editable install's import hook, so
every ``schedlang.runtime.*`` / ``schedlang.kernels.*`` import (from the compiler and from the
runtime itself) is a missing module that ``ignore_missing_imports`` turns into ``Any``: the
modules are checked, but nothing they import from each other is. This script copies the tree into
the installed layout (the ``package-dir`` mapping in pyproject.toml) in a temporary folder, runs
mypy there with the project's configuration, and prints its messages with the repository's paths.

Usage: ``python .ci/typecheck.py [MYPY ARGS]``; the exit status is mypy's.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    conf = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    mapping: dict[str, str] = conf["tool"]["setuptools"]["package-dir"]
    with tempfile.TemporaryDirectory(prefix="schedlang-mypy-") as tmp:
        view = Path(tmp)
        ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
        shutil.copytree(ROOT / "schedlang", view / "schedlang", ignore=ignore)
        back = {f"schedlang{'/'}": "schedlang/"}
        for pkg, folder in mapping.items():
            rel = pkg.replace(".", "/")
            shutil.copytree(ROOT / folder, view / rel, ignore=ignore)
            back[rel + "/"] = folder + "/"
        shutil.copy(ROOT / "pyproject.toml", view / "pyproject.toml")
        res = subprocess.run([sys.executable, "-m", "mypy", "--cache-dir", str(ROOT / ".mypy_cache" / "installed-layout"),
                              *sys.argv[1:], "schedlang"], cwd=view, capture_output=True, text=True)
    for line in (res.stdout + res.stderr).splitlines():
        for inside, outside in sorted(back.items(), key=lambda kv: -len(kv[0])):
            if line.startswith(inside):
                line = outside + line[len(inside):]
                break
        print(line)
    return res.returncode


if __name__ == "__main__":
    sys.exit(main())
