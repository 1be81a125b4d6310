"""schedlang: a compiler for pipeline-parallel training schedules.

The public Python API lives in :mod:`schedlang.api` and is re-exported here. Importing schedlang
stays light: torch, triton and ortools are imported only by the modules that need them.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

# `simulate` is not re-exported: `schedlang.simulate` is the simulator module (use schedlang.api.simulate).
_API = ("load", "loads", "compile", "schedule", "orders", "with_scheduler")


def __getattr__(name: str) -> Any:
    # Re-export the API lazily: `import schedlang` must not pay for lark until it is used.
    if name in _API:
        from schedlang import api

        return getattr(api, name)
    raise AttributeError(f"module 'schedlang' has no attribute {name!r}")


__all__ = [*_API, "__version__"]
