"""The schedlang runtime: execute compiled instruction streams with ``torch.distributed``.

- :class:`PipelineRunner` (``schedlang.runtime.executor``) runs one rank's stream on real modules:
  ``runner.step(inputs, targets) -> loss``.
- :func:`check_streams` and :class:`StreamError` (re-exported from :mod:`schedlang.isa_check`, the
  one stream checker, shared with the compiler) reject streams that cannot run.
- :func:`split_sequential`, :class:`TinyGPT` and :func:`tiny_gpt` (``schedlang.runtime.models``)
  cut a model into stages and supply the bundled example.
- :class:`ModelSpec` (``schedlang.runtime.models``) and ``schedlang.runtime.intake``: a user's
  model factory, cut into stages and checked (PyTorch's pipeline tracer for any ``nn.Module``).
- :func:`spawn` (``schedlang.runtime.launch``) starts worker processes on one machine.
- Timelines and Chrome traces: ``schedlang.runtime.timeline``.

From the compiler this package imports only :mod:`schedlang.isa` and :mod:`schedlang.isa_check`. Importing the package is
light; torch loads with the submodules.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "ModelSpec",
    "PipelineError",
    "PipelineRunner",
    "StreamError",
    "check_streams",
    "TinyGPT",
    "spawn",
    "split_sequential",
    "tiny_gpt",
]

_WHERE = {
    "PipelineRunner": "schedlang.runtime.executor",
    "PipelineError": "schedlang.runtime.fault",
    "StreamError": "schedlang.isa_check",
    "check_streams": "schedlang.isa_check",
    "spawn": "schedlang.runtime.launch",
    "split_sequential": "schedlang.runtime.models",
    "TinyGPT": "schedlang.runtime.models",
    "tiny_gpt": "schedlang.runtime.models",
    "ModelSpec": "schedlang.runtime.models",
}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        import importlib

        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'schedlang.runtime' has no attribute {name!r}")
