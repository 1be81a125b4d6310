"""A user's model, checked once in the launching process before any worker starts.

:func:`check_model_for` imports and calls the factory (``MODULE:FACTORY`` or
``path/to/file.py:FACTORY``, :mod:`schedlang.runtime.intake`), cuts the model into the
schedule's stages, checks that the batch divides into the microbatches and runs one microbatch
through the stages on the CPU (forward, loss and backward). Each mistake is one
:class:`~schedlang.source.SchedlangError` naming the factory. :func:`schedlang.api.run` and
``schedlang profile`` call it; the workers then check that they built the same initial weights
(the digest it returns).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from schedlang.ir import Program
from schedlang.source import SchedlangError

__all__ = ["DEFAULT_MODEL", "CheckedModel", "check_model_for", "model_parts"]

DEFAULT_MODEL = "schedlang.runtime.models:tiny_gpt"


def model_parts(program: Program) -> int:
    """How many model parts a program's pipeline runs: the stages of one chain (Chimera's two
    chains run replicas of the same parts)."""
    from schedlang import isa
    from schedlang.codegen import stage_graph

    return len(isa.chains_of(program.num_stages, stage_graph(program))[0])


def _split_list(split: str | Sequence[str] | None) -> list[str] | None:
    if split is None:
        return None
    names = [s.strip() for s in split.split(",")] if isinstance(split, str) else [str(s).strip() for s in split]
    if not names or any(not n for n in names):
        raise SchedlangError(f"--split expects comma-separated module names, got {split!r}")
    return names


@dataclass
class CheckedModel:
    """A model that passed the checks: the prepared stages, a one-line summary, and the digest
    of its initial weights (the workers check that they built the same)."""

    prepared: Any
    summary: str
    fingerprint: str
    split: tuple[str, ...] | None = None


def check_model_for(num_stages: int, num_microbatches: int, model: str,
                    split: str | Sequence[str] | None = None, *, split_backward: str = "autograd") -> CheckedModel:
    """Build the model for the pipeline's shape and run one microbatch through it.

    With ``split_backward="kernels"`` every stage with parameters must have layers the
    :mod:`schedlang.kernels` split layers replace. A mistake is a :class:`SchedlangError`
    naming the factory.
    """
    try:
        import torch  # noqa: F401
    except ModuleNotFoundError:
        raise SchedlangError("running a model needs torch: pip install 'schedlang[runtime]'") from None
    from schedlang.runtime.intake import ModelError, check_model, fingerprint, prepare_model

    try:
        prepared = prepare_model(model, num_stages, num_microbatches, _split_list(split))
        digest = fingerprint(prepared.stages)
        summary = check_model(prepared, num_microbatches)
    except ModelError as exc:
        raise SchedlangError(str(exc)) from None
    if split_backward == "kernels":
        _check_kernel_layers(model, prepared.stages)
    names = _split_list(split)
    return CheckedModel(prepared, summary, digest, tuple(names) if names else None)


def _check_kernel_layers(model: str, stages: Sequence[Any]) -> None:
    from torch import nn

    from schedlang.kernels.layers import split_modules

    plain = [s for s, st in enumerate(stages)
             if any(p.requires_grad for p in st.parameters()) and not any(split_modules(st))
             and not any(isinstance(m, (nn.Linear, nn.LayerNorm)) for m in st.modules())]
    if plain:
        raise SchedlangError(f"model {model}: --split-backward kernels splits nn.Linear and nn.LayerNorm "
                             f"layers, and stage{'s' if len(plain) > 1 else ''} {', '.join(map(str, plain))} "
                             "ha" + ("ve" if len(plain) > 1 else "s") + " none (a traced model's layers are "
                             "traced operations); use --split-backward autograd")
