"""schedlang: a compiler for pipeline-parallel training schedules.

The public Python API lives in :mod:`schedlang.api` and is re-exported here. Importing schedlang
stays light: torch, triton and ortools are imported only by the modules that need them.
"""

from __future__ import annotations

__version__ = "0.1.0"
