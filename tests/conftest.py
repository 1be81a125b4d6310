"""Shared test setup.

- Triton kernels run under the interpreter when there is no GPU: TRITON_INTERPRET must be set
  before any kernel module is imported, so it is set here, first.
- ``--update-goldens`` rewrites the golden files under tests/golden instead of comparing.
- Tests marked ``gpu`` skip cleanly without CUDA.
- Hypothesis profiles: ``HYPOTHESIS_PROFILE=ci`` (set by .ci/run) derandomizes, so a CI run
  draws the same examples every time and a failure there is a regression, not a newly drawn
  case; runs without it draw new examples each time, which is how new cases get found.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest
from hypothesis import settings

settings.register_profile("ci", derandomize=True, database=None, print_blob=True)
if os.environ.get("HYPOTHESIS_PROFILE"):
    settings.load_profile(os.environ["HYPOTHESIS_PROFILE"])

if not os.environ.get("SCHEDLANG_FORCE_GPU") and shutil.which("nvidia-smi") is None:
    os.environ.setdefault("TRITON_INTERPRET", "1")

GOLDEN_DIR = Path(__file__).parent / "golden"

# `python -m pytest` puts the repository root first on sys.path, where the source folder
# kernels/ shadows the third-party package `kernels` that transformers imports. schedlang itself
# is imported through its installed package, so the root is not needed on the path.
_ROOT = Path(__file__).resolve().parent.parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _ROOT]


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--update-goldens", action="store_true", help="rewrite golden files")


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # the marker itself, not ``"gpu" in item.keywords``: keywords also hold the names of the
    # test's parent nodes, so a checkout in a folder named "gpu" would skip every test
    gpu_items = [item for item in items if item.get_closest_marker("gpu") is not None]
    if gpu_items and not _cuda_available():
        skip = pytest.mark.skip(reason="needs a CUDA GPU")
        for item in gpu_items:
            item.add_marker(skip)


class Golden:
    """Compare text with tests/golden/NAME, or rewrite it under --update-goldens."""

    def __init__(self, update: bool) -> None:
        self.update = update

    def check(self, name: str, text: str) -> None:
        path = GOLDEN_DIR / name
        if self.update:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
            return
        assert path.exists(), f"missing golden file {path}; run pytest --update-goldens and review it"
        expected = path.read_text(encoding="utf-8")
        assert text == expected, f"output differs from {path} (run pytest --update-goldens and review the diff)"


@pytest.fixture
def golden(request: pytest.FixtureRequest) -> Golden:
    return Golden(bool(request.config.getoption("--update-goldens")))
