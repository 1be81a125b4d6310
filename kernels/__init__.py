"""Split-backward kernels for zero-bubble pipeline schedules (``schedlang.kernels``).

A zero-bubble schedule splits each backward into B (gradient w.r.t. the stage input, on the
critical path) and W (gradient w.r.t. the weights, deferrable). This package supplies:

- :mod:`schedlang.kernels.matmul`: Triton kernels for a linear layer's F, B and W, each with a
  plain torch reference (``*_ref``).
- :mod:`schedlang.kernels.norms`: the same for RMSNorm and LayerNorm.
- :mod:`schedlang.kernels.layers`: ``SplitLinear``, ``SplitRMSNorm``, ``SplitLayerNorm`` modules
  whose backward computes B only and stashes what W needs in a ``WeightGradStore`` keyed by
  (stage, microbatch); ``store.run_w(stage, mb)`` runs the deferred W later.
- :mod:`schedlang.kernels.profile`: ``profile_ops`` measures T_F, T_B, T_W and activation memory
  per stage; ``format_params`` turns the result into schedlang parameter overrides.

No GPU: set ``TRITON_INTERPRET=1`` before importing the kernel modules to run the Triton kernels
on CPU tensors (slow; for tests). Without it, on CPU tensors the layers fall back to the torch
references. Importing this package is light: torch and triton load with the submodules.
"""

from __future__ import annotations

__all__ = ["layers", "matmul", "norms", "profile"]
